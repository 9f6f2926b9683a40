"""Audit records: every containment request, dry run, success and failure, with who asked and why.

A record is an ECS event (event.kind "event", dataset "outwatch.respond") appended as one JSON line
to the audit file and fsynced before the action goes on, so an action that was not recorded is an
action that did not happen. The same record can be handed to the event stream (on_record).
"""

from __future__ import annotations

import os
import pwd
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from outwatch.errors import ExitCode, OutwatchError
from outwatch.event import ECS_VERSION, rfc3339_ns
from outwatch.proc.identity import host_id

DEFAULT_AUDIT_PATH = Path("/var/log/outwatch/audit.ndjson")
_UNSET_LOGINUID = 4294967295

# event.category and event.type of each action
ACTIONS: dict[str, tuple[list[str], list[str]]] = {
    "block-destination": (["network"], ["denied"]),
    "unblock-destination": (["network"], ["allowed"]),
    "kill-process": (["process"], ["end"]),
    "stop-unit": (["process"], ["end"]),
}
# stage -> event.outcome
_OUTCOMES = {
    "requested": "unknown",
    "dry-run": "unknown",
    "done": "success",
    "refused": "failure",
    "failed": "failure",
    "skipped": "failure",
}

Record = dict[str, Any]


def timestamp(at: float | None = None) -> str:
    """RFC 3339 UTC with nanoseconds and Z, of now or of an epoch time."""
    return rfc3339_ns(time.time_ns() if at is None else int(at * 1e9))


def ecs_user(uid: int) -> dict[str, Any]:
    try:
        return {"id": str(uid), "name": pwd.getpwuid(uid).pw_name}
    except KeyError:
        return {"id": str(uid)}


def requester() -> dict[str, Any]:
    """ECS user of this process's request: the login user (audit loginuid, else sudo's SUDO_UID) who
    asked, with user.effective when the action runs as someone else (root)."""
    euid = os.geteuid()
    asked = os.getuid()
    try:
        loginuid = int(Path("/proc/self/loginuid").read_text())
    except (OSError, ValueError):
        loginuid = _UNSET_LOGINUID
    if loginuid != _UNSET_LOGINUID:
        asked = loginuid
    elif os.environ.get("SUDO_UID", "").isdigit():
        asked = int(os.environ["SUDO_UID"])
    user = ecs_user(asked)
    if asked != euid:
        user["effective"] = ecs_user(euid)
    return user


def alert_rule_ids(alert: Record) -> list[str]:
    """The rule ids that made an alert: rule.id and the rules of outwatch.reasons, in order."""
    ids: list[str] = []
    rid = alert.get("rule", {}).get("id")
    ids.extend([rid] if isinstance(rid, str) else [r for r in rid or [] if isinstance(r, str)])
    for reason in alert.get("outwatch", {}).get("reasons", []):
        if isinstance(reason, dict) and isinstance(reason.get("rule"), str):
            ids.append(reason["rule"])
    return list(dict.fromkeys(ids))


@dataclass(slots=True)
class Request:
    """One containment request; record() renders it at each stage."""

    action: str
    user: Record
    ecs: Record = field(default_factory=dict)  # e.g. {"destination": {...}} or {"process": {...}}
    details: Record = field(default_factory=dict)  # outwatch.respond.*: via, target, port, ...
    reason: str = ""
    dry_run: bool = False
    automatic: bool = False
    alert: Record | None = None

    def record(self, stage: str, *, error: str | None = None, **details: Any) -> Record:
        category, types = ACTIONS[self.action]
        event: Record = {
            "kind": "event",
            "category": category,
            "type": types,
            "action": self.action,
            "outcome": _OUTCOMES[stage],
            "module": "outwatch",
            "dataset": "outwatch.respond",
        }
        respond: Record = {"stage": stage, "dry_run": self.dry_run, "automatic": self.automatic}
        respond.update(self.details)
        respond.update(details)
        if error:
            respond["error"] = error
        ow: Record = {"respond": respond}
        reason = self.reason
        if self.alert is not None:
            ids = alert_rule_ids(self.alert)
            respond["rule_ids"] = ids
            seq = self.alert.get("event", {}).get("sequence")
            if seq is not None:
                respond["alert_sequence"] = seq
            reasons = self.alert.get("outwatch", {}).get("reasons")
            if reasons:
                ow["reasons"] = reasons
            reason = reason or "alert: " + ", ".join(ids)
        if reason:
            event["reason"] = reason
        rec: Record = {
            "@timestamp": timestamp(),
            "ecs": {"version": ECS_VERSION},
            "event": event,
            "host": {"name": socket.gethostname(), "id": host_id()},
        }
        rec.update(self.ecs)
        rec["user"] = self.user
        rec["outwatch"] = ow
        return rec


class AuditLog:
    """Appends records to an NDJSON file, fsynced; thread-safe. on_record also gets every record."""

    def __init__(self, path: Path = DEFAULT_AUDIT_PATH, on_record: Callable[[Record], None] | None = None):
        self.path = path
        self.on_record = on_record
        self._lock = threading.Lock()

    def write(self, record: Record) -> Record:
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise OutwatchError(
                    f"cannot write the audit log {self.path}: {exc.strerror or exc}",
                    hint="containment is only done when it can be recorded: fix the audit log's directory",
                    code=ExitCode.FAILURE,
                ) from None
        if self.on_record is not None:
            self.on_record(record)
        return record


@dataclass(slots=True)
class Outcome:
    records: list[Record]
    details: Record
    error: OutwatchError | None


def audited(log: AuditLog, req: Request, act: Callable[[], Record]) -> Outcome:
    """Record the request, run act (which returns details for the final record and honours
    req.dry_run itself), then record its outcome. An OutwatchError from act becomes a "refused" or
    "failed" record and is returned, not raised, so a caller can go on with its other actions."""
    records = [log.write(req.record("requested"))]
    try:
        details = act()
    except OutwatchError as exc:
        stage = "refused" if exc.code == ExitCode.REFUSED else "failed"
        records.append(log.write(req.record(stage, error=exc.message)))
        return Outcome(records, {}, exc)
    except Exception as exc:
        records.append(log.write(req.record("failed", error=f"{type(exc).__name__}: {exc}")))
        raise
    records.append(log.write(req.record("dry-run" if req.dry_run else "done", **details)))
    return Outcome(records, details, None)
