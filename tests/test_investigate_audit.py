"""outwatch audit in a network namespace of our own, where the test sets the nftables rules (never the
host's firewall), with a real listener that looks like a bind shell on a database port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest_investigate import ndjson, no_traceback, require_root, run_cli, sleep_copy

from outwatch.investigate.audit import run_audit
from outwatch.investigate.firewall import FirewallState, parse_nft, parse_ufw

_IN_NETNS = r"""
import socket, subprocess, sys, orjson
if sys.argv[1] == "deny-out":
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
        "table inet t {\n chain out {\n type filter hook output priority 0; policy drop;\n oif lo accept\n }\n}\n"))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 6379))
srv.listen()
from outwatch.investigate.audit import run_audit
result = run_audit()
for e in result.findings:
    sys.stdout.buffer.write(orjson.dumps(e) + b"\n")
print(orjson.dumps({"verdicts": result.verdicts}).decode())
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def _audit_in_netns(mode: str) -> tuple[list[dict], list[str]]:
    out = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", _IN_NETNS, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    return [orjson.loads(x) for x in lines[:-1]], orjson.loads(lines[-1])["verdicts"]


def test_open_firewall_and_a_bind_shell_on_a_database_port() -> None:
    findings, verdicts = _audit_in_netns("open")
    (listener,) = [e for e in findings if e["event"]["action"] == "listening_socket" and e["server"]["port"] == 6379]
    assert listener["server"]["ip"] == "0.0.0.0" and listener["process"]["name"].startswith("python")
    rules = {r["rule"] for r in listener["outwatch"]["reasons"]}
    assert {"OW-AUD-EXPOSED", "OW-AUD-RISKY-PORT", "OW-AUD-SHELL-LISTENS"} <= rules
    (fw,) = [e for e in findings if e["event"]["action"] == "firewall_state"]
    assert fw["outwatch"]["audit"]["firewall"]["outbound_restricted"] is False
    assert any(v.startswith("outbound traffic is not restricted") for v in verdicts)
    assert any("close tcp 0.0.0.0:6379 (python" in v for v in verdicts)


def test_outbound_default_deny_is_recognised() -> None:
    findings, verdicts = _audit_in_netns("deny-out")
    (fw,) = [e for e in findings if e["event"]["action"] == "firewall_state"]
    assert fw["outwatch"]["audit"]["firewall"]["outbound"] == "default deny"
    assert fw["outwatch"]["audit"]["firewall"]["outbound_restricted"] is True
    assert not any(v.startswith("outbound traffic is not restricted") for v in verdicts)


def test_ufw_and_nft_parsing_of_real_outputs() -> None:
    state = FirewallState()
    parse_ufw(
        "Status: active\nLogging: on (low)\nDefault: deny (incoming), deny (outgoing), disabled (routed)\n", state
    )
    assert (state.ufw, state.ufw_defaults) == ("active", "deny (incoming), deny (outgoing), disabled (routed)")
    # `nft -j list ruleset` of an iptables-nft setup: OUTPUT accepts, but jumps to a chain that drops one host.
    ruleset = {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {
                "chain": {
                    "family": "ip",
                    "table": "filter",
                    "name": "OUTPUT",
                    "type": "filter",
                    "hook": "output",
                    "prio": 0,
                    "policy": "accept",
                }
            },
            {"chain": {"family": "ip", "table": "filter", "name": "ufw-user-output"}},
            {
                "rule": {
                    "family": "ip",
                    "table": "filter",
                    "chain": "OUTPUT",
                    "expr": [{"jump": {"target": "ufw-user-output"}}],
                }
            },
            {
                "rule": {
                    "family": "ip",
                    "table": "filter",
                    "chain": "ufw-user-output",
                    "expr": [
                        {
                            "match": {
                                "op": "==",
                                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                "right": "203.0.113.7",
                            }
                        },
                        {"reject": None},
                    ],
                }
            },
        ]
    }
    parse_nft(orjson.dumps(ruleset).decode(), state)
    assert state.output.label == "open, with 1 drop/reject rule(s)" and not state.output.default_deny
    assert state.input.label == "open (nothing filters it)"
    parse_nft("not json", state)
    assert state.notes == ["nft printed something that is not its JSON ruleset"]


def test_cli_on_this_host_and_as_non_root() -> None:
    human = run_cli("audit")
    assert human.returncode == 0, human.stderr
    no_traceback(human)
    assert "== firewall" in human.stdout and "what to tighten:" in human.stdout
    nobody = run_cli("audit", "--json", as_nobody=True)
    assert nobody.returncode == 0, nobody.stderr
    no_traceback(nobody)
    (fw,) = [e for e in ndjson(nobody.stdout) if e["event"]["action"] == "firewall_state"]
    assert "OW-AUD-FIREWALL-UNKNOWN" in {r["rule"] for r in fw["outwatch"]["reasons"]}
    assert "partial: nft list ruleset failed" in nobody.stderr


def test_processes_from_temp_and_running_replaced_code(tmp_path: Path) -> None:
    with sleep_copy(tmp_path, "dropper") as (dropper, _), sleep_copy(tmp_path, "daemon") as (daemon, exe):
        exe.unlink()
        exe.write_bytes(b"the upgraded version")
        result = run_audit()
    by_pid = {(e["event"]["action"], e["process"]["pid"]): e for e in result.findings if "process" in e}
    odd = by_pid[("odd_process", dropper.pid)]
    assert {r["rule"] for r in odd["outwatch"]["reasons"]} == {"OW-AUD-EXE-TEMP"}
    assert f"inspect it: outwatch inspect {dropper.pid}" in result.verdicts
    assert ("stale_process", daemon.pid) in by_pid and ("stale_process", dropper.pid) not in by_pid
    # Replaced by a new file at the same path (an upgrade), the old inode is not reported as deleted.
    assert "OW-AUD-DELETED" not in {r["rule"] for r in by_pid[("odd_process", daemon.pid)]["outwatch"]["reasons"]}
    assert any(
        v.startswith("restart ") and "process(es) still running code an upgrade replaced" in v for v in result.verdicts
    )
