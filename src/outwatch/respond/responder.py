"""Automatic containment (`watch --respond`): alerts in, audited actions out.

For an alert at or above an action's minimum severity, in this order: block the destination in the
kernel (first, because it stops the traffic at once), stop the unit behind the process, kill the
process. Each action has its own rate limit; once it is reached, the first skip of the minute is
recorded and the rest are dropped silently until the minute is over. The same target is acted on
once a minute at most (a beacon retrying a blocked address raises an alert per attempt).

The process is identified by the alert's start time (and entity_id): the pid is pinned by a pidfd
and killed only if it is still the incarnation that made the connection. The alert's executable is
not compared: for a script it is the script's path while /proc names the interpreter.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from outwatch.errors import OutwatchError
from outwatch.kernel.deny import DenyRule

from .audit import AuditLog, Record, Request, audited, ecs_user
from .blocks import BlockManager, destination_fields
from .kill import Expectation, kill_process
from .policy import ActionPolicy, ResponsePolicy
from .process import ProcessGuard
from .unit import UnitRef, stop_unit, unit_of_pid

WINDOW_S = 60.0


class Responder:
    def __init__(
        self,
        policy: ResponsePolicy,
        blocks: BlockManager,
        audit: AuditLog,
        dry_run: bool,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.blocks = blocks
        self.audit = audit
        self.dry_run = dry_run or policy.dry_run
        self.guard = ProcessGuard(policy.protected_processes)
        self.user = ecs_user(os.geteuid())  # automatic actions are the watch's own
        self._clock = clock
        self._done: dict[str, deque[float]] = {}
        self._skip_noted: dict[str, float] = {}
        self._recent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def on_alert(self, event: Record) -> list[Record]:
        """The audit records of what was done (or would be, in dry run) for one alert. Alerts are
        handled one at a time (a kill may wait out its grace period)."""
        severity = event.get("outwatch", {}).get("severity")
        records: list[Record] = []
        with self._lock:
            if self.policy.block.applies(severity):
                records += self._block(event)
            if self.policy.stop_unit.applies(severity):
                records += self._stop_unit(event)
            if self.policy.kill.applies(severity):
                records += self._kill(event)
        return records

    # --- bookkeeping ----------------------------------------------------------------------------

    def _admit(self, req: Request, key: str, policy: ActionPolicy) -> list[Record] | None:
        """None when the action may run now; else the records of its skipping (maybe none)."""
        now = self._clock()
        self._recent = {k: t for k, t in self._recent.items() if now - t < WINDOW_S}
        if (req.action, key) in self._recent:
            return []
        done = self._done.setdefault(req.action, deque())
        while done and now - done[0] >= WINDOW_S:
            done.popleft()
        if len(done) >= policy.per_minute:
            noted = self._skip_noted.get(req.action)
            if noted is not None and now - noted < WINDOW_S:
                return []
            self._skip_noted[req.action] = now
            why = f"rate limit: {policy.per_minute} a minute; further skips this minute go unrecorded"
            return [self.audit.write(req.record("skipped", error=why))]
        done.append(now)
        self._recent[(req.action, key)] = now
        return None

    # --- actions ----------------------------------------------------------------------------------

    def _block(self, event: Record) -> list[Record]:
        try:
            net = ipaddress.ip_network(event.get("destination", {}).get("ip", ""))
        except ValueError:
            return []
        target = DenyRule(net)
        if self.blocks.covers(target):
            return []
        req = Request("block-destination", self.user, ecs=destination_fields(target),
                      details={"via": "bpf", "target": str(net)}, dry_run=self.dry_run, automatic=True,
                      alert=event)
        skipped = self._admit(req, str(net), self.policy.block)
        if skipped is not None:
            return skipped
        out = self.blocks.add(target, ttl=self.policy.block_ttl, reason="", user=self.user,
                              dry_run=self.dry_run, automatic=True, alert=event)
        return out.records

    def _process(self, event: Record) -> tuple[int, Record] | None:
        proc = event.get("process", {})
        pid = proc.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return None
        ecs = {k: proc[k] for k in ("pid", "name", "executable", "entity_id", "start") if k in proc}
        return pid, ecs

    def _kill(self, event: Record) -> list[Record]:
        found = self._process(event)
        if found is None:
            return []
        pid, ecs = found
        expect = Expectation(started_at=_parse_time(ecs.get("start")), entity_id=ecs.get("entity_id"))
        grace = self.policy.kill_grace
        req = Request("kill-process", self.user, ecs={"process": ecs},
                      details={"via": "pidfd", "grace_s": grace}, dry_run=self.dry_run,
                      automatic=True, alert=event)
        skipped = self._admit(req, str(ecs.get("entity_id", pid)), self.policy.kill)
        if skipped is not None:
            return skipped

        def act() -> Record:
            results = kill_process(pid, grace=grace, guard=self.guard, expect=expect, dry_run=self.dry_run)
            return {"processes": [r.to_dict() for r in results]}

        return audited(self.audit, req, act).records

    def _stop_unit(self, event: Record) -> list[Record]:
        found = self._process(event)
        if found is None:
            return []
        pid, ecs = found
        try:
            unit = unit_of_pid(pid)
        except OutwatchError:
            name = event.get("outwatch", {}).get("process", {}).get("unit")
            if not isinstance(name, str):
                return []
            unit = UnitRef(name)
        req = Request("stop-unit", self.user, ecs={"process": ecs},
                      details={"via": "systemctl", "unit": unit.name, "disable": self.policy.stop_disable},
                      dry_run=self.dry_run, automatic=True, alert=event)
        skipped = self._admit(req, str(unit), self.policy.stop_unit)
        if skipped is not None:
            return skipped

        def act() -> Record:
            argvs = stop_unit(unit, disable=self.policy.stop_disable, dry_run=self.dry_run,
                              protected=self.policy.protected_units)
            return {"argv": argvs}

        return audited(self.audit, req, act).records


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class ResponderWorker:
    """Runs the Responder off the tracer's thread: a kill may wait out its grace period, and the ring
    buffer must keep draining meanwhile. Alerts beyond the bounded queue are counted, not queued."""

    def __init__(self, responder: Responder, max_pending: int = 1024) -> None:
        self.responder = responder
        self.dropped = 0
        self._queue: queue.Queue[Record | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="outwatch-respond", daemon=True)
        self._thread.start()

    def submit(self, alert: Record) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            try:
                self.responder.on_alert(alert)
            except Exception as exc:  # one failed response must not end automatic containment
                sequence = alert.get("event", {}).get("sequence")
                print(f"outwatch: automatic response to alert {sequence} failed: {exc}", file=sys.stderr)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
