"""Broken rule files: every class of mistake is reported as file:line: what is wrong, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_rules import resolv_conf_fixture, write  # noqa: F401 (fixtures)

from outwatch.errors import ExitCode, OutwatchError
from outwatch.rules import RulesError, load_rules


def _errors(tmp_path: Path, resolv_conf: Path, text: str | bytes) -> tuple[Path, list[str]]:
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(RulesError) as info:
        load_rules(extra_files=[path], system_dir=None, resolv_conf=resolv_conf)
    assert isinstance(info.value, OutwatchError) and info.value.code == ExitCode.BAD_CONFIG
    assert info.value.message == "\n".join(info.value.errors)
    return path, info.value.errors


RULE = '[[rule]]\nid = "T-1"\nscore = 5\n[rule.when]\n'

# (file text, line of the error, words the message must contain)
BAD: list[tuple[str, int, str]] = [
    (RULE + '"process.exectable" = "/x"\n', 5,
     "unknown field 'process.exectable' (did you mean 'process.executable'?)"),
    (RULE + '"user.id" = 0\n', 5, 'user.id is a string: 0 is an integer; write "0"'),
    (RULE + '"destination.port" = "443"\n', 5, "destination.port is an integer: '443' is a string; write 443"),
    (RULE + '"process.name" = { regex = "(" }\n', 5, "bad regex '('"),
    (RULE + '"destination.ip" = { cidr = "10.0.0.1/8" }\n', 5, "host bits set; did you mean 10.0.0.0/8?"),
    (RULE + '"destination.ip" = { cidr = "10.0.0.0/33" }\n', 5, "bad CIDR '10.0.0.0/33'"),
    (RULE + '"destination.ip" = "10.0.0.0/8"\n', 5, "bad IP address '10.0.0.0/8' (a network: use cidr)"),
    (RULE + '"process.name" = { startswith = "x" }\n', 5, "unknown operator 'startswith'"),
    (RULE + '"process.name" = { prefx = "x" }\n', 5, "unknown operator 'prefx' (did you mean 'prefix'?)"),
    (RULE + '"destination.port" = { range = [1, 70000] }\n', 5, "bad port range [1, 70000]: ports are 0-65535"),
    (RULE + '"destination.port" = { range = [90, 80] }\n', 5, "bad range [90, 80]: low is above high"),
    (RULE + '"destination.port" = { range = "80-90" }\n', 5, "bad range '80-90'"),
    (RULE + '"destination.port" = [80, 70000]\n', 5, "70000 is out of range for destination.port"),
    (RULE + '"destination.port" = { prefix = "8" }\n', 5, "prefix does not apply to destination.port (integer)"),
    (RULE + '"process.name" = { in = "@nope" }\n', 5, "unknown list '@nope'"),
    (RULE + '"process.name" = { in = [] }\n', 5, "empty array"),
    (RULE + '"process.name" = { equals = ["a", "b"] }\n', 5, "equals takes one value; use in"),
    (RULE + '"process.name" = { exists = "yes" }\n', 5, "exists takes true or false"),
    (RULE + '"process.name" = { not = "x" }\n', 5, "not takes a table of operators"),
    (RULE + 'any = []\n', 5, "any must be a non-empty array of condition tables"),
    (RULE + 'any = [ { "process.name" = "a" },\n  { "proc.name" = "b" } ]\n', 6, "unknown field 'proc.name'"),
    ('[[rule]]\nid = "T-1"\nscore = 5\n[rule.when]\n', 4, "empty condition table"),
    ('[[rule]]\nid = "T-1"\nscore = 1.5\nwhen = { "process.name" = "x" }\n', 3, "score must be an integer"),
    ('[[rule]]\nid = "T-1"\nscore = 5\nseverity = "severe"\nwhen = { "process.name" = "x" }\n', 4,
     "severity must be one of info, low, medium, high, critical"),
    ('[[rule]]\nid = "T-1"\nscore = 5\ntechnique = ["1059"]\nwhen = { "process.name" = "x" }\n', 4,
     "technique must be ATT&CK ids like 'T1059.004'"),
    ('[[rule]]\nid = "T-1"\nscore = 5\ntactic = "T1059"\nwhen = { "process.name" = "x" }\n', 4,
     "tactic must be ATT&CK ids like 'TA0011'"),
    ('[[rule]]\nid = "T-1"\nscore = 5\nwhy = "{process.nam}"\nwhen = { "process.name" = "x" }\n', 4,
     "why: unknown field {process.nam}"),
    ('[[rule]]\nid = "T-1"\nscore = 5\nscroe = 4\nwhen = { "process.name" = "x" }\n', 4,
     "unknown key 'scroe' (did you mean 'score'?)"),
    ('[[rule]]\nid = "T-1"\nwhen = { "process.name" = "x" }\n', 2, "a new rule needs score"),
    ('[[rule]]\nid = "T-1"\nscore = 5\n', 2, "a new rule needs when"),
    ('[[rule]]\nscore = 5\nwhen = { "process.name" = "x" }\n', 1, "a rule needs an id"),
    ('[[rule]]\nid = "has space"\nscore = 5\nwhen = { "process.name" = "x" }\n', 1, "bad rule id 'has space'"),
    (RULE + '"process.name" = "x"\n\n' + RULE + '"process.name" = "y"\n', 8, "duplicate rule id T-1 in this file"),
    ('disable = ["OW-PORT-IRQ"]\n', 1, "no rule 'OW-PORT-IRQ' was loaded before this file (did you mean 'OW-PORT-IRC'"),
    ('disable = "OW-PORT-IRC"\n', 1, "disable must be an array of rule ids"),
    ('disable = ["T-1"]\n' + RULE + '"process.name" = "x"\n', 1, "rule T-1 is both defined and disabled"),
    ('[lists]\nok = ["a"]\nweb = ["@webservers"]\n', 3, "list web: unknown list '@webservers'"),
    ('[lists]\nweb = "nginx"\n', 2, "list web must be an array"),
    ('[lists]\nweb = [true]\n', 2, "lists hold strings, numbers or [low, high] ranges"),
    ('[lists]\nbad = ["x", 1]\n' + RULE + '"process.name" = { in = "@bad" }\n', 7, "1 in list @bad"),
    ('[thresholds]\nlow = 10\nmedium = "40"\n', 3, "threshold medium must be an integer score"),
    ('[thresholds]\nalert = "loud"\n', 2, "alert must be one of info, low, medium, high, critical"),
    ('[thresholds]\nmeduim = 30\n', 2, "unknown threshold 'meduim' (did you mean 'medium'?)"),
    ('[thresholds]\nmedium = 80\n', 2, "thresholds must increase from low to critical, got low=10, medium=80, high=70"),
    ('[[rules]]\nid = "x"\n', 1, "unknown top-level key 'rules' (did you mean 'rule'?)"),
    ('rule = { id = "x" }\n', 1, "rule must be an array of tables"),
    ('[[rule]]\nid = "T-1"\nscore = 5\nwhen = "process.name == x"\n', 4, "when must be a table of conditions"),
    ('[[rule]]\nid = "T-1"\nscore = 5\n\n[rule.when\n', 5, "TOML syntax"),
    ('x = [\n', 1, "TOML syntax"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD, ids=[b[2][:60] for b in BAD])
def test_bad_input_is_reported_with_file_and_line(tmp_path: Path, resolv_conf: Path, text: str, line: int,
                                                  words: str) -> None:
    path, errors = _errors(tmp_path, resolv_conf, text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:{line}: "), errors[0]
    assert words in errors[0]


def test_every_error_of_every_file_is_reported_in_order(tmp_path: Path, resolv_conf: Path) -> None:
    first = write(tmp_path, "a.toml", '[thresholds]\nalert = "x"\n\n' + RULE + '"process.nme" = "x"\n'
                  '\n[[rule]]\nid = "T-2"\nscore = "5"\ncolour = 1\n[rule.when]\n"user.id" = 0\n')
    missing = tmp_path / "missing.toml"
    second = write(tmp_path, "b.toml",
                   '[[rule]]\nid = "T-3"\nscore = 5\nwhen = { "destination.port" = { range = [9, 1] } }\n')
    with pytest.raises(RulesError) as info:
        load_rules(extra_files=[first, missing, second], system_dir=None, resolv_conf=resolv_conf)
    errors = info.value.errors
    assert [e.split(": ", 1)[0] for e in errors] == [
        f"{first}:2", f"{first}:8", f"{first}:12", f"{first}:13", f"{first}:15", f"{missing}", f"{second}:4"]
    assert "cannot read" in errors[5]


def test_not_utf8(tmp_path: Path, resolv_conf: Path) -> None:
    path, errors = _errors(tmp_path, resolv_conf, b'# ok\n[lists]\nx = ["\xff"]\n')
    assert errors == [f"{path}:3: not UTF-8 text"]


def test_unreadable_rules_dir(tmp_path: Path, resolv_conf: Path) -> None:
    not_a_dir = write(tmp_path, "file", "")
    with pytest.raises(RulesError) as info:
        load_rules(system_dir=not_a_dir, resolv_conf=resolv_conf)
    assert info.value.errors[0].startswith(f"{not_a_dir}: cannot read the directory")


def test_error_in_a_default_rule_caused_by_a_user_list_names_both(tmp_path: Path, resolv_conf: Path) -> None:
    user = write(tmp_path, "lists.toml", '[lists]\nmetadata_ips = ["169.254.169.254/32"]\n')
    with pytest.raises(RulesError) as info:
        load_rules(extra_files=[user], system_dir=None, resolv_conf=resolv_conf)
    assert any("30-network.toml" in e and f"in list @metadata_ips ({user}:2)" in e and "bad IP address" in e
               for e in info.value.errors), info.value.errors


def test_config_thresholds_errors(resolv_conf: Path) -> None:
    with pytest.raises(RulesError) as info:
        load_rules(system_dir=None, resolv_conf=resolv_conf, thresholds={"high": 20})
    assert info.value.errors == ["[rules.thresholds] of the configuration: thresholds must increase from low to "
                                 "critical, got low=10, medium=40, high=20, critical=100"]
