"""Helpers of the rules tests: an ordinary connect event to vary, and rule loading from real temp files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from outwatch.rules import RuleSet, load_rules

RESOLVER = "192.0.2.53"

BASE_EVENT: dict = {
    "@timestamp": "2026-12-03T18:45:00.123456789Z",
    "ecs": {"version": "9.4.0"},
    "event": {"kind": "event", "category": ["network"], "type": ["start"], "action": "connection_attempted",
              "outcome": "success", "module": "outwatch", "dataset": "outwatch.network", "sequence": 7},
    "host": {"name": "web01", "os": {"type": "linux", "kernel": "6.1.0"}},
    "process": {
        "pid": 4242, "name": "curl", "executable": "/usr/bin/curl", "args": ["curl", "-fsS", "https://example.org/"],
        "args_count": 3, "command_line": "curl -fsS https://example.org/", "working_directory": "/root",
        "start": "2026-12-03T18:44:59.000000000Z", "user": {"id": "0", "name": "root"},
        "parent": {"pid": 4100, "name": "bash", "executable": "/usr/bin/bash", "args": ["-bash"]},
    },
    "user": {"id": "0", "name": "root"},
    "source": {"ip": "10.0.2.15", "port": 49152},
    "destination": {"ip": "93.184.215.14", "port": 443},
    "network": {"transport": "tcp", "type": "ipv4", "iana_number": "6", "direction": "egress"},
    "outwatch": {
        "process": {
            "ancestors": [
                {"pid": 4100, "name": "bash", "executable": "/usr/bin/bash", "args": ["-bash"],
                 "user": {"id": "0", "name": "root"}},
                {"pid": 880, "name": "sshd", "executable": "/usr/sbin/sshd", "args": ["sshd: root@pts/0"],
                 "user": {"id": "0", "name": "root"}},
                {"pid": 1, "name": "systemd", "executable": "/usr/lib/systemd/systemd", "args": ["/sbin/init"],
                 "user": {"id": "0", "name": "root"}},
            ],
            "exe_deleted": False, "exe_memfd": False, "unit": "session-1.scope", "exe_uid": 0, "exe_mode": 0o100755,
            "exe_mtime": "2025-06-01T00:00:00Z", "age_ms": 1500,
        },
        "probe": "cgroup",
    },
}


def make_event(changes: dict | None = None) -> dict:
    """A copy of BASE_EVENT with dotted-path changes applied; a value of None removes the key."""
    event = copy.deepcopy(BASE_EVENT)
    for path, value in (changes or {}).items():
        *parents, key = path.split(".")
        node = event
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = copy.deepcopy(value)
    return event


def ancestors(*entries: tuple[str, str, list[str]], user: tuple[str, str] = ("0", "root")) -> list[dict]:
    """An ancestors list from (name, executable, args) triples, parent first."""
    return [{"pid": 100 + i, "name": n, "executable": e, "args": a, "user": {"id": user[0], "name": user[1]}}
            for i, (n, e, a) in enumerate(entries)]


@pytest.fixture(name="resolv_conf")
def resolv_conf_fixture(tmp_path: Path) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text(f"# generated\nsearch example.org\nnameserver {RESOLVER}\noptions edns0\n")
    return path


@pytest.fixture(name="default_rules")
def default_rules_fixture(resolv_conf: Path) -> RuleSet:
    return load_rules(system_dir=None, resolv_conf=resolv_conf)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def scored(ruleset: RuleSet, changes: dict | None = None) -> dict:
    event = make_event(changes)
    ruleset.score(event)
    return event


def fired(ruleset: RuleSet, changes: dict | None = None) -> set[str]:
    return {r["rule"] for r in scored(ruleset, changes)["outwatch"]["reasons"]}
