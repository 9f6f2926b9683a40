"""Pieces every investigation finding shares: ECS envelope, times, host, own scores and reasons."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from outwatch.event import ECS_VERSION, rfc3339_ns
from outwatch.proc.identity import host_id
from outwatch.rules.engine import Thresholds, severity_at_least

# Where droppers write and run payloads: world-writable, often not mounted noexec.
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# Temp dirs plus the other places a process has no business executing from.
ODD_EXEC_DIRS = (*TEMP_DIRS, "/run/user", "/var/www", "/home", "/root", "/var/spool", "/var/mail")
# The rule engine's default thresholds, so a file finding and a connection with the same score agree.
THRESHOLDS = Thresholds()


def rfc3339(epoch: float) -> str:
    return rfc3339_ns(round(epoch * 1_000_000_000))


def now_ns() -> int:
    return time.time_ns()


def under(path: str | None, prefixes: tuple[str, ...]) -> bool:
    if not path:
        return False
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def host_fields(root: Path | None = None) -> dict:
    """ECS host.* of this machine, or of the system installed under `root` (hunt --root)."""
    if root is None:
        uname = os.uname()
        return {
            "name": socket.gethostname(),
            "id": host_id(),
            "os": {"type": "linux", "kernel": uname.release},
            "architecture": uname.machine,
        }
    host: dict = {"os": {"type": "linux"}}
    name = _first_line(root / "etc/hostname")
    if name:
        host["name"] = name
    machine_id = _first_line(root / "etc/machine-id")
    if machine_id:
        host["id"] = machine_id
    return host


def new_event(
    *,
    dataset: str,
    action: str,
    category: list[str],
    type_: list[str],
    host: dict,
    timestamp_ns: int | None = None,
) -> dict:
    return {
        "@timestamp": rfc3339_ns(timestamp_ns if timestamp_ns is not None else now_ns()),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": category,
            "type": type_,
            "action": action,
            "module": "outwatch",
            "dataset": f"outwatch.{dataset}",
        },
        "host": host,
    }


def reason(rule: str, score: int, why: str) -> dict:
    return {"rule": rule, "score": score, "why": why}


def apply_reasons(event: dict, reasons: list[dict]) -> None:
    """Score a finding the rule engine does not cover (files, cron lines, log lines) from its reasons."""
    total = sum(r["score"] for r in reasons)
    ow = event.setdefault("outwatch", {})
    ow["score"] = total
    ow["severity"] = THRESHOLDS.severity(total)
    ow["reasons"] = sorted(reasons, key=lambda r: -r["score"])
    event["event"]["kind"] = "alert" if severity_at_least(ow["severity"], THRESHOLDS.alert) else "event"


def score_of(event: dict) -> int:
    return int(event.get("outwatch", {}).get("score", 0))


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(256).strip() or None
    except OSError:
        return None


def os_reason(e: OSError) -> str:
    """Why a /proc or file read failed, in the words a responder needs."""
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, (FileNotFoundError, ProcessLookupError)):
        return "the process exited"
    return e.strerror or str(e)
