"""Scoring and the rule language: operators, groups, lists, override and disable, thresholds, annotations."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_rules import (  # noqa: F401 (fixtures)
    RESOLVER,
    ancestors,
    default_rules_fixture,
    fired,
    make_event,
    resolv_conf_fixture,
    scored,
    write,
)

from outwatch.rules import SEVERITIES, RuleSet, load_rules, severity_at_least


def _rules(tmp_path: Path, resolv_conf: Path, *texts: str) -> RuleSet:
    files = [write(tmp_path, f"{i}.toml", text) for i, text in enumerate(texts)]
    return load_rules(extra_files=files, system_dir=None, resolv_conf=resolv_conf)


def _rule(when: str, rule_id: str = "T-1", score: int = 7, extra: str = "") -> str:
    return f'[[rule]]\nid = "{rule_id}"\nscore = {score}\n{extra}\n[rule.when]\n{when}\n'


# (condition, changes where it holds, changes where it does not)
OPERATORS: list[tuple[str, dict, dict]] = [
    ('"process.name" = "curl"', {}, {"process.name": "wget"}),
    ('"process.name" = { equals = "curl" }', {}, {"process.name": "curly"}),
    ('"process.name" = ["wget", "curl"]', {}, {"process.name": "nc"}),
    ('"destination.port" = { in = [80, [400, 450]] }', {"destination.port": 443}, {"destination.port": 451}),
    ('"process.executable" = { prefix = ["/usr/", "/opt/"] }', {}, {"process.executable": "/tmp/usr/curl"}),
    ('"process.executable" = { glob = "/usr/*/curl" }', {}, {"process.executable": "/usr/bin/curl2"}),
    ('"process.command_line" = { regex = "-f\\\\w*S" }', {}, {"process.command_line": "curl -s"}),
    ('"destination.ip" = { cidr = "93.184.0.0/16" }', {}, {"destination.ip": "93.185.0.1"}),
    ('"destination.ip" = { cidr = ["2001:db8::/32"] }', {"destination.ip": "2001:db8::7"},
     {"destination.ip": "2001:db9::7"}),
    ('"destination.ip" = { cidr = "10.0.0.0/8" }', {"destination.ip": "::ffff:10.1.2.3"},
     {"destination.ip": "::ffff:11.1.2.3"}),
    ('"destination.ip" = "93.184.215.14"', {}, {"destination.ip": "93.184.215.15"}),
    ('"outwatch.process.age_ms" = { range = [1000, 2000] }', {}, {"outwatch.process.age_ms": 2001}),
    ('"destination.port" = { range = [[1, 10], [440, 445]] }', {}, {"destination.port": 446}),
    ('"outwatch.process.unit" = { exists = true }', {}, {"outwatch.process.unit": None}),
    ('"outwatch.process.unit" = { exists = false }', {"outwatch.process.unit": None}, {}),
    ('"process.name" = { not = { in = ["wget", "nc"] } }', {}, {"process.name": "nc"}),
    ('"outwatch.process.exe_deleted" = false', {}, {"outwatch.process.exe_deleted": True}),
    ('"process.args" = "-fsS"', {}, {"process.args": ["curl", "-s"]}),
    ('"process.args" = { prefix = "https://", regex = "^-f" }', {}, {"process.args": ["curl", "https://x"]}),
    ('"outwatch.process.ancestors.name" = "sshd"', {},
     {"outwatch.process.ancestors": ancestors(("bash", "/usr/bin/bash", ["bash"]))}),
    ('"outwatch.process.ancestors.name" = { not = { in = ["nginx"] } }', {},
     {"outwatch.process.ancestors": ancestors(("nginx", "/usr/sbin/nginx", []), ("systemd", "/sbin/init", []))}),
    ('"outwatch.process.ancestors.args" = { regex = "root@pts" }', {},
     {"outwatch.process.ancestors": ancestors(("sshd", "/usr/sbin/sshd", ["sshd: alice@pts/1"]))}),
    ('"outwatch.process.ancestors.user.name" = "root"', {},
     {"outwatch.process.ancestors": ancestors(("bash", "/usr/bin/bash", []), user=("1000", "alice"))}),
    ('"computed.exe_name" = "curl"', {"process.executable": "/opt/x/curl"}, {"process.executable": "/opt/curl/x"}),
    ('"computed.name_mismatch" = true', {"process.name": "sshd"}, {}),
    ('"computed.script" = "https://example.org/"', {}, {"process.args": ["curl", "-fsS"]}),
    ('"computed.exe_age_at_start_s" = { range = [0, 60] }', {"outwatch.process.exe_mtime": "2026-12-03T18:44:30Z"}, {}),
    ('process.executable = "/usr/bin/curl"', {}, {"process.executable": "/usr/bin/wget"}),  # unquoted dotted key
    ('all = [ { "process.name" = "curl" }, { "destination.port" = 443 } ]', {}, {"destination.port": 80}),
    ('any = [ { "process.name" = "wget" }, { "destination.port" = 443 } ]', {}, {"destination.port": 80}),
    ('not = { "process.name" = "wget" }', {}, {"process.name": "wget"}),
    ('not = { "outwatch.process.container_id" = "abc" }', {}, {"outwatch.process.container_id": "abc"}),
]


@pytest.mark.parametrize(("when", "holds", "fails"), OPERATORS, ids=[o[0] for o in OPERATORS])
def test_operators(tmp_path: Path, resolv_conf: Path, when: str, holds: dict, fails: dict) -> None:
    ruleset = _rules(tmp_path, resolv_conf, _rule(when))
    assert "T-1" in fired(ruleset, holds)
    assert "T-1" not in fired(ruleset, fails)


def test_a_test_on_an_absent_field_is_false_even_under_not(tmp_path: Path, resolv_conf: Path) -> None:
    ruleset = _rules(tmp_path, resolv_conf, _rule('"outwatch.process.unit" = { not = { equals = "x" } }'))
    assert "T-1" in fired(ruleset)
    assert "T-1" not in fired(ruleset, {"outwatch.process.unit": None})


def test_array_of_tables_conditions(tmp_path: Path, resolv_conf: Path) -> None:
    text = ('[[rule]]\nid = "T-1"\nscore = 5\n[rule.when]\n"destination.port" = 443\n'
            '[[rule.when.any]]\n"process.name" = "wget"\n[[rule.when.any]]\n"process.name" = "curl"\n')
    ruleset = _rules(tmp_path, resolv_conf, text)
    assert "T-1" in fired(ruleset)
    assert "T-1" not in fired(ruleset, {"process.name": "nc"})


def test_named_lists_extend_and_replace(tmp_path: Path, resolv_conf: Path) -> None:
    first = '[lists]\ntools = ["wget"]\n' + _rule('"process.name" = { in = "@tools" }')
    extend = '[lists]\ntools = ["@tools", "curl"]\n'
    ruleset = _rules(tmp_path, resolv_conf, first, extend)
    assert "T-1" in fired(ruleset) and "T-1" in fired(ruleset, {"process.name": "wget"})
    replace = '[lists]\ntools = ["nc"]\n'
    ruleset = _rules(tmp_path, resolv_conf, first, replace)
    assert "T-1" not in fired(ruleset) and "T-1" in fired(ruleset, {"process.name": "nc"})


def test_extending_a_default_list_reaches_the_default_rules(tmp_path: Path, resolv_conf: Path) -> None:
    changes = {"user.id": "990", "user.name": "myapp"}
    assert "OW-USER-SERVICE" not in fired(load_rules(system_dir=None, resolv_conf=resolv_conf), changes)
    ruleset = _rules(tmp_path, resolv_conf, '[lists]\nservice_users = ["@service_users", "myapp"]\n')
    assert "OW-USER-SERVICE" in fired(ruleset, changes)


def test_override_by_id_keeps_what_it_does_not_give(tmp_path: Path, resolv_conf: Path) -> None:
    ruleset = _rules(tmp_path, resolv_conf, '[[rule]]\nid = "OW-PORT-REVSHELL"\nscore = 5\n')
    rule = next(r for r in ruleset.rules if r.id == "OW-PORT-REVSHELL")
    assert rule.score == 5
    assert rule.source == tmp_path / "0.toml"
    assert rule.technique == ("T1571",)  # kept from the default pack
    event = scored(ruleset, {"destination.port": 4444})
    assert event["outwatch"]["reasons"] == [
        {"rule": "OW-PORT-REVSHELL", "score": 5,
         "why": "connection to 93.184.215.14:4444, a reverse-shell port"}]


def test_override_replaces_the_conditions(tmp_path: Path, resolv_conf: Path) -> None:
    ruleset = _rules(tmp_path, resolv_conf, _rule('"destination.port" = 8443', rule_id="OW-PORT-REVSHELL"))
    assert "OW-PORT-REVSHELL" not in fired(ruleset, {"destination.port": 4444})
    assert "OW-PORT-REVSHELL" in fired(ruleset, {"destination.port": 8443})


def test_disable_by_id_and_redefine_later(tmp_path: Path, resolv_conf: Path) -> None:
    ruleset = _rules(tmp_path, resolv_conf, 'disable = ["OW-PORT-REVSHELL", "OW-PORT-IRC"]\n')
    assert "OW-PORT-REVSHELL" not in fired(ruleset, {"destination.port": 4444})
    assert set(ruleset.disabled) == {"OW-PORT-REVSHELL", "OW-PORT-IRC"}
    assert ruleset.disabled["OW-PORT-IRC"] == tmp_path / "0.toml"
    ruleset = _rules(tmp_path, resolv_conf, 'disable = ["OW-PORT-REVSHELL"]\n',
                     _rule('"destination.port" = 4444', rule_id="OW-PORT-REVSHELL", score=3))
    assert "OW-PORT-REVSHELL" in fired(ruleset, {"destination.port": 4444})
    assert "OW-PORT-REVSHELL" not in ruleset.disabled


def test_system_dir_files_load_sorted_before_extra_files(tmp_path: Path, resolv_conf: Path) -> None:
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    write(rules_d, "20-b.toml", '[[rule]]\nid = "T-1"\nscore = 2\n')
    write(rules_d, "10-a.toml", _rule('"process.name" = "curl"', score=1))
    write(rules_d, "notes.txt", "not a rules file")
    write(rules_d, ".#10-a.toml", "an editor's lock file")
    extra = write(tmp_path, "extra.toml", '[[rule]]\nid = "T-1"\nscore = 3\n')
    ruleset = load_rules(extra_files=[extra], system_dir=rules_d, resolv_conf=resolv_conf)
    assert next(r for r in ruleset.rules if r.id == "T-1").score == 3
    assert ruleset.sources[-3:] == [rules_d / "10-a.toml", rules_d / "20-b.toml", extra]
    assert load_rules(system_dir=tmp_path / "absent", resolv_conf=resolv_conf).rules


def test_reasons_explain_every_point(default_rules: RuleSet) -> None:
    event = scored(default_rules, {"process.executable": "/tmp/.x/curl", "destination.port": 4444,
                                   "outwatch.process.age_ms": 200})
    ow = event["outwatch"]
    assert sum(r["score"] for r in ow["reasons"]) == ow["score"] == 40 + 30 + 20 + 30
    assert [r["score"] for r in ow["reasons"]] == sorted((r["score"] for r in ow["reasons"]), reverse=True)
    why = {r["rule"]: r["why"] for r in ow["reasons"]}
    assert why["OW-EXE-TMP"] == "/tmp/.x/curl runs from a world-writable temporary directory"
    assert why["OW-EXE-FAST-CONNECT"] == "/tmp/.x/curl connected 200 ms after it started"
    assert "4444" in why["OW-PORT-REVSHELL"]
    assert ow["severity"] == "critical" and event["event"]["kind"] == "alert"
    assert event["rule"]["id"] == "OW-EXE-TMP"
    assert event["rule"]["name"] == "Executable in a temporary directory"
    assert event["threat"]["framework"] == "MITRE ATT&CK"
    assert set(event["threat"]["technique"]["id"]) == {"T1059", "T1105", "T1564", "T1071", "T1571"}
    assert event["threat"]["technique"]["subtechnique"]["id"] == ["T1564.001"]
    assert set(event["threat"]["tactic"]["id"]) == {"TA0002", "TA0011", "TA0005"}


def test_why_without_template_names_the_matched_values(tmp_path: Path, resolv_conf: Path) -> None:
    text = _rule('"outwatch.process.ancestors.name" = "sshd"\n"destination.port" = 443', extra='name = "Via ssh"')
    event = scored(_rules(tmp_path, resolv_conf, text))
    assert event["outwatch"]["reasons"] == [
        {"rule": "T-1", "score": 7, "why": "Via ssh (outwatch.process.ancestors.name=sshd; destination.port=443)"}]


def test_why_matched_placeholder_and_long_values(tmp_path: Path, resolv_conf: Path) -> None:
    text = _rule('any = [ { "process.name" = "nope" }, { "process.args" = { regex = "^x+$" } } ]',
                 extra='why = "got {matched} from {process.name}"')
    event = scored(_rules(tmp_path, resolv_conf, text), {"process.args": ["curl", "x" * 500]})
    why = event["outwatch"]["reasons"][0]["why"]
    assert why.startswith("got xxx") and why.endswith(" from curl")
    assert len(why) < 260


def test_thresholds_and_alert_level_from_a_file(tmp_path: Path, resolv_conf: Path) -> None:
    text = '[thresholds]\nlow = 5\nmedium = 20\nhigh = 30\ncritical = 50\nalert = "high"\n' + _rule(
        '"process.name" = "curl"', score=25)
    ruleset = _rules(tmp_path, resolv_conf, text)
    event = scored(ruleset)
    ow = event["outwatch"]
    assert (ow["score"], ow["severity"], event["event"]["kind"]) == (25, "medium", "event")
    event = scored(ruleset, {"destination.port": 4444})  # + OW-PORT-REVSHELL 30
    assert (event["outwatch"]["severity"], event["event"]["kind"]) == ("critical", "alert")


def test_thresholds_from_the_configuration_override_the_files(tmp_path: Path, resolv_conf: Path) -> None:
    ruleset = load_rules(system_dir=None, resolv_conf=resolv_conf, thresholds={"medium": 30, "alert": "low"})
    assert (ruleset.thresholds.medium, ruleset.thresholds.alert, ruleset.thresholds.high) == (30, "low", 70)
    event = scored(ruleset, {"destination.port": 4444})
    assert (event["outwatch"]["severity"], event["event"]["kind"]) == ("medium", "alert")


def test_severity_floor_and_allowlist_cancelling_it(tmp_path: Path, resolv_conf: Path) -> None:
    floor = _rule('"process.name" = "curl"', score=5, extra='severity = "high"')
    allow = _rule('"destination.port" = 443', rule_id="T-ALLOW", score=-1000)
    event = scored(_rules(tmp_path, resolv_conf, floor))
    assert (event["outwatch"]["score"], event["outwatch"]["severity"], event["event"]["kind"]) == (5, "high", "alert")
    event = scored(_rules(tmp_path, resolv_conf, floor, allow))
    ow = event["outwatch"]
    assert (ow["score"], ow["severity"], event["event"]["kind"]) == (-995, "info", "event")


def test_metric_events_and_events_without_destination_are_left_alone(default_rules: RuleSet) -> None:
    metric = {"event": {"kind": "metric"}, "outwatch": {"metrics": {"seen": 3}}}
    default_rules.score(metric)
    assert metric == {"event": {"kind": "metric"}, "outwatch": {"metrics": {"seen": 3}}}
    no_dest = make_event({"destination": None})
    default_rules.score(no_dest)
    assert "score" not in no_dest["outwatch"]


def test_rescoring_replaces_an_earlier_result(tmp_path: Path, resolv_conf: Path, default_rules: RuleSet) -> None:
    event = scored(default_rules, {"destination.port": 4444, "process.executable": "/tmp/curl"})
    assert event["event"]["kind"] == "alert" and "threat" in event
    quiet = load_rules(extra_files=[write(tmp_path, "q.toml", 'disable = ["OW-PORT-REVSHELL", "OW-EXE-TMP"]')],
                       system_dir=None, resolv_conf=resolv_conf)
    quiet.score(event)
    assert event["event"]["kind"] == "event"
    assert "rule" not in event and "threat" not in event
    assert event["outwatch"]["score"] == 0 and event["outwatch"]["reasons"] == []


ODD_EVENTS = [
    {"destination": {"ip": "not an ip", "port": "4444"}},
    {"destination": {"ip": 42, "port": None}, "process": "oops", "outwatch": [1, 2]},
    {"destination": {}, "process": {"args": "curl -x", "name": 3, "executable": ["a"]},
     "outwatch": {"process": {"ancestors": ["x", {"name": 5, "args": "y"}, None]}}},
    {"destination": {"ip": "fe80::1%eth0", "port": 53}, "network": {"transport": "udp"},
     "process": {"start": "yesterday"}, "outwatch": {"process": {"exe_mtime": 12, "age_ms": "fast"}}},
    {"destination": {"ip": "1.2.3.4", "port": 4444}, "event": "not a table"},
]


@pytest.mark.parametrize("event", ODD_EVENTS)
def test_events_of_odd_shapes_are_scored_without_raising(default_rules: RuleSet, event: dict) -> None:
    default_rules.score(event)
    ow = event["outwatch"]
    assert isinstance(ow["score"], int) and ow["severity"] in SEVERITIES
    assert sum(r["score"] for r in ow["reasons"]) == ow["score"]


def test_severity_at_least() -> None:
    assert severity_at_least("high", "medium") and severity_at_least("medium", "medium")
    assert not severity_at_least("low", "medium")
    assert severity_at_least({"outwatch": {"severity": "critical"}}, "high")
    assert not severity_at_least({"event": {"kind": "event"}}, "low")  # not scored: info
    assert severity_at_least({}, "info")
    with pytest.raises(ValueError, match="unknown severity"):
        severity_at_least("high", "severe")


def test_resolv_conf_parsing(tmp_path: Path) -> None:
    from outwatch.rules.loader import read_resolvers

    conf = write(tmp_path, "resolv.conf", "nameserver 10.0.0.2 # lan\n;nameserver 9.9.9.9\nnameserver fe80::1%eth0\n"
                                          "nameserver bogus\noptions rotate\n")
    assert read_resolvers(conf) == ["10.0.0.2", "fe80::1"]
    assert read_resolvers(tmp_path / "absent") == ["127.0.0.1", "::1"]


def test_a_rule_that_shows_a_volatile_field_is_not_remembered(tmp_path: Path, resolv_conf: Path) -> None:
    """A rule whose test reads only stable fields but whose `why` shows the source port is still
    worked out per event: a remembered sentence would name another connect's port."""
    rules = _rules(tmp_path, resolv_conf, _rule('"process.name" = "curl"', extra='why = "from port {source.port}"'),
                   _rule('"source.port" = { range = [40000, 50000] }', rule_id="T-2"))
    image = object()
    whys = []
    for port in (49152, 55000):
        event = make_event({"source.port": port})
        rules.score(event, image)
        whys.append({r["rule"]: r["why"] for r in event["outwatch"]["reasons"]})
    assert whys[0]["T-1"] == "from port 49152" and "T-2" in whys[0]
    assert whys[1] == {"T-1": "from port 55000"}
