"""`outwatch rules list | check | test` through click's runner, on real temp files (no root needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from conftest_rules import make_event, write

from outwatch.cli.rules import rules


@pytest.fixture(name="rules_dir")
def rules_dir_fixture(tmp_path: Path) -> Path:
    """An empty site rules directory, so the machine's /etc/outwatch/rules.d does not leak in."""
    path = tmp_path / "rules.d"
    path.mkdir()
    return path


def _run(*args: str | Path) -> object:
    return CliRunner().invoke(rules, [str(a) for a in args], catch_exceptions=False)


def test_list_shows_id_score_description_and_source(rules_dir: Path, tmp_path: Path) -> None:
    mine = write(tmp_path, "mine.toml", 'disable = ["OW-PORT-IRC"]\n[[rule]]\nid = "LOCAL-1"\nscore = 12\n'
                 'description = "my rule"\n[rule.when]\n"process.name" = "x"\n')
    result = _run("list", "--rules-dir", rules_dir, "--rules", mine)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["OW-EXE-TMP", "40"] and "default/10-executable.toml:5" in line for line in lines)
    assert any(line.split()[:2] == ["LOCAL-1", "12"] and "my rule" in line and f"{mine}:" in line for line in lines)
    assert any(line.startswith("OW-PORT-IRC") and "disabled" in line for line in lines)
    assert "alert at medium and above" in lines[-1]


def test_list_json(rules_dir: Path) -> None:
    result = _run("list", "--rules-dir", rules_dir, "--json")
    assert result.exit_code == 0
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    tmp = next(r for r in rows if r["id"] == "OW-EXE-TMP")
    assert tmp["score"] == 40 and tmp["technique"] == ["T1059", "T1105"]
    assert tmp["source"].endswith("10-executable.toml")
    assert all({"id", "score", "description", "source"} <= set(r) for r in rows)


def test_list_reads_the_rules_dir(rules_dir: Path) -> None:
    write(rules_dir, "50-site.toml", '[[rule]]\nid = "SITE-1"\nscore = 3\nwhen = { "process.name" = "x" }\n')
    result = _run("list", "--rules-dir", rules_dir)
    assert any(line.startswith("SITE-1") for line in result.stdout.splitlines())


def test_list_with_broken_rules_fails_cleanly(rules_dir: Path, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.toml", '[[rule]]\nid = "X"\nscore = 1\nwhen = { "nope" = 1 }\n')
    result = _run("list", "--rules-dir", rules_dir, "--rules", bad)
    assert result.exit_code == 7
    assert result.stderr.startswith("outwatch: invalid rules (1 errors):\n")
    assert f"{bad}:4: rule X: when.nope: unknown field 'nope'" in result.stderr
    assert "Traceback" not in result.output


def test_check_ok(rules_dir: Path, tmp_path: Path) -> None:
    good = write(tmp_path, "good.toml", '[[rule]]\nid = "LOCAL-1"\nscore = 5\nwhen = { "destination.port" = 9 }\n')
    result = _run("check", "--rules-dir", rules_dir, good)
    assert result.exit_code == 0
    assert result.stdout.startswith("ok: 48 rules")


def test_check_reports_every_error_with_file_and_line(rules_dir: Path, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.toml", '[[rule]]\nid = "A"\nscore = 1\n[rule.when]\n"destination.ip" = { cidr = "x" }\n'
                '"process.name" = { regex = "[" }\n')
    worse = write(tmp_path, "worse.toml", "[[rule]\n")
    result = _run("check", "--rules-dir", rules_dir, bad, worse)
    assert result.exit_code == 7
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:5: rule A: when.\"destination.ip\".cidr: bad CIDR 'x'")
    assert lines[1].startswith(f"{bad}:6: rule A: when.\"process.name\".regex: bad regex '['")
    assert lines[2].startswith(f"{worse}:1: TOML syntax")
    assert lines[3] == "outwatch: 3 error(s); `watch` would refuse to start with these rules"
    assert result.stdout == ""


def test_check_sees_the_rest_of_the_rules_dir(rules_dir: Path) -> None:
    write(rules_dir, "10-lists.toml", '[lists]\nmine = ["x"]\n')
    site = write(rules_dir, "20-site.toml", '[[rule]]\nid = "SITE-1"\nscore = 3\nwhen = { "process.name" = "@mine" }\n')
    result = _run("check", "--rules-dir", rules_dir, site)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 48 rules")


def _ndjson(tmp_path: Path, *events: dict | bytes) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(e if isinstance(e, bytes) else orjson.dumps(e) + b"\n" for e in events))
    return path


def test_test_rescores_and_shows_what_would_fire(rules_dir: Path, tmp_path: Path) -> None:
    quiet = make_event()
    loud = make_event({"process.executable": "/tmp/x\x1b[31m", "process.name": "x\x1b[31m",
                       "destination.port": 4444, "event.kind": "event"})
    events = _ndjson(tmp_path, quiet, b"{not json\n", b"[1, 2]\n", b"\n", loud,
                     orjson.dumps({"event": {"kind": "metric"}}) + b"\n")
    result = _run("test", "--rules-dir", rules_dir, events)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    who = "x\\x1b[31m[4242] /tmp/x\\x1b[31m"
    assert out[0].startswith(f"{events}:5: high 70 OW-EXE-TMP  {who} -> 93.184.215.14:4444/tcp")
    assert "    +40 OW-EXE-TMP: /tmp/x\\x1b[31m runs from a world-writable temporary directory" in out
    assert "\x1b" not in result.stdout
    assert out[-1] == "2 events scored, 1 at medium or above (1 high), 1 skipped (metrics, no destination), 2 bad lines"
    assert f"{events}:2: not JSON" in result.stderr
    assert f"{events}:3: not a JSON object, skipped" in result.stderr


def test_test_min_severity_json_and_extra_rules(rules_dir: Path, tmp_path: Path) -> None:
    events = _ndjson(tmp_path, make_event(), make_event({"destination.port": 4444}))
    result = _run("test", "--rules-dir", rules_dir, "--min-severity", "low", "--json", events)
    assert result.exit_code == 0
    rescored = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [e["outwatch"]["score"] for e in rescored] == [30]
    assert "2 events scored, 1 at low or above (1 low)" in result.stderr
    louder = write(tmp_path, "louder.toml", '[[rule]]\nid = "OW-PORT-REVSHELL"\nscore = 80\n')
    result = _run("test", "--rules-dir", rules_dir, "--rules", louder, events)
    assert result.stdout.splitlines()[0].startswith(f"{events}:2: high 80 OW-PORT-REVSHELL")


def test_test_missing_file(rules_dir: Path, tmp_path: Path) -> None:
    result = _run("test", "--rules-dir", rules_dir, tmp_path / "absent.ndjson")
    assert result.exit_code == 8
    assert result.stderr.startswith(f"outwatch: cannot read {tmp_path / 'absent.ndjson'}: No such file")
