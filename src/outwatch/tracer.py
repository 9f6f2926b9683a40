"""The live tracer's loop: ring buffer -> decode -> process table -> event -> score -> sinks.

One thread runs the loop; records are handled in the order the kernel queued them, so a process's
exec is in the table before its connects are enriched. Sinks never block it (sinks/).
"""

from __future__ import annotations

import fnmatch
import queue
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from outwatch.encode import encode
from outwatch.event import ECS_VERSION, EventBuilder, rfc3339_ns
from outwatch.flows import FailedConnects
from outwatch.kernel.probes import POLL_BATCH, KernelProbes
from outwatch.kernel.records import (
    EV_NAMES,
    ConnectRecord,
    ExecRecord,
    ExitRecord,
    Record,
    TcpErrorRecord,
)
from outwatch.pretty import format_event
from outwatch.proc.hashes import HashCache
from outwatch.proc.identity import Clock
from outwatch.proc.table import KernelView, Proc, ProcessTable

POLL_MS = 50
SWITCH_INTERVAL_S = 0.0005  # the output threads get the GIL often enough to keep up with the reader
FINAL_DRAIN_S = 5.0  # at exit, how long to keep reading a ring buffer that is still being filled
SWEEP_NS = 250_000_000  # kernel-held UDP repeats and TCP connects without an outcome
GATHER_S = 0.001
"""After a poll that found records, wait this long before the next: under load records arrive in
batches of tens instead of one wake-up (and one loop turn) per record or two; a quiet tracer still
sleeps in poll, and a record waits at most this much longer."""
SEVERITIES = ("info", "low", "medium", "high", "critical")


class Sinks(Protocol):
    def emit(self, line: bytes) -> None: ...
    def stats(self) -> Any: ...
    def reopen(self) -> None: ...
    def close(self, timeout: float = 5.0) -> None: ...


class Scorer(Protocol):
    def score(self, event: dict, image: object = None) -> None: ...


@dataclass(slots=True)
class Filters:
    """Narrowing for an investigation: a record must match every filter given."""

    pids: frozenset[int] = frozenset()
    uids: frozenset[int] = frozenset()
    exe_globs: tuple[str, ...] = ()
    ports: frozenset[int] = frozenset()

    def match(self, rec: ConnectRecord, proc: Proc) -> bool:
        if self.pids and rec.h.pid not in self.pids:
            return False
        if self.uids and (proc.uid if rec.h.uid < 0 else rec.h.uid) not in self.uids:
            return False
        if self.ports and rec.dport not in self.ports:
            return False
        return not self.exe_globs or any(fnmatch.fnmatchcase(proc.exe or "", g) for g in self.exe_globs)


@dataclass(slots=True)
class WatchOptions:
    probes: str = "auto"
    include_loopback: bool = False
    pretty: bool = False
    filters: Filters = field(default_factory=Filters)
    min_severity: str | None = None
    metrics_interval: float = 10.0


class Tracer:
    def __init__(self, opts: WatchOptions, sinks: Sinks, scorer: Scorer | None = None,
                 load_scorer: Callable[[], Scorer] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.sinks = sinks
        self.scorer = scorer
        self._load_scorer = load_scorer
        self.on_alert: Callable[[dict], None] | None = None  # e.g. the automatic responder
        self._log = log or (lambda msg: print(f"outwatch: {msg}", file=sys.stderr, flush=True))
        self.probes = KernelProbes(opts.probes, opts.include_loopback)
        self.clock = Clock()
        self.table = ProcessTable()
        self.hashes: HashCache | None = None
        self.builder: EventBuilder | None = None
        self.failed = FailedConnects()
        self.internal_errors = 0
        self._inbox: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self._stop = False
        self._reload = False
        self.seen: Counter[str] = Counter()
        self.emitted = 0
        self.filtered = 0
        self.sequence = 0
        self.started_wall_ns = time.time_ns()
        self.ready_after_s: float | None = None
        self._min_rank = SEVERITIES.index(opts.min_severity) if opts.min_severity else 0

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> str:
        """Attach the probes and seed the process table; returns the probe choice for the user."""
        t0 = time.monotonic()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        choice = self.probes.start(self._on_record)
        self.table = ProcessTable(kernel_view=self._kernel_view)
        self.table.seed()
        self.hashes = HashCache()
        self.builder = EventBuilder(self.table, self.clock, self.hashes)
        self.ready_after_s = time.monotonic() - t0
        return f"probes: {choice.probe_set} ({choice.reason}); {self.probes.headers_note}"

    def _kernel_view(self, pid: int) -> KernelView | None:
        entry = self.probes.fork_entry(pid)
        return KernelView(*entry) if entry is not None else None

    def stop(self, *_: object) -> None:
        self._stop = True

    def request_reload(self, *_: object) -> None:
        self._reload = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def run(self, until: Callable[[], bool] | None = None, tick: Callable[[], None] | None = None) -> None:
        """Loop until stop() (a signal) or until() says so; then flush everything. tick() runs once per
        loop turn (the service watchdog)."""
        next_metric = Clock.now_boot_ns() + int(self.opts.metrics_interval * 1e9)
        next_sweep = Clock.now_boot_ns() + SWEEP_NS
        try:
            while not self._stop and not (until and until()):
                if 0 < self.probes.poll(POLL_MS) < POLL_BATCH:
                    time.sleep(GATHER_S)
                self.drain()
                if tick is not None:
                    tick()
                now = Clock.now_boot_ns()
                for rec, proc, error in self.failed.flush(now):
                    self._emit_connect(rec, proc, error)
                if now >= next_sweep:
                    for rec in (*self.probes.sweep_udp(now), *self.probes.sweep_tcp(now)):
                        self._connect(rec)
                    next_sweep = now + SWEEP_NS
                if now >= next_metric:
                    self.emit(self.metric_event())
                    next_metric = now + int(self.opts.metrics_interval * 1e9)
                self.table.expire(now)
                if self._reload:
                    self._reload = False
                    self.reload()
        finally:
            self.finish()

    def finish(self) -> None:
        """Drain what the kernel still holds (for up to FINAL_DRAIN_S), report, detach."""
        deadline = time.monotonic() + FINAL_DRAIN_S
        while self.probes.poll(0) >= POLL_BATCH and time.monotonic() < deadline:
            pass
        self.drain()
        for rec in (*self.probes.sweep_udp(1 << 62), *self.probes.sweep_tcp(1 << 62)):
            self._connect(rec)
        for rec, proc, error in self.failed.drain():
            self._emit_connect(rec, proc, error)
        self.emit(self.metric_event())
        self.probes.close()
        if self.hashes is not None:
            self.hashes.close()

    def reload(self) -> None:
        """SIGHUP: reopen file outputs, reload rules (a failed reload keeps the running rules)."""
        self.sinks.reopen()
        if self._load_scorer is None:
            return
        try:
            self.scorer = self._load_scorer()
            self._log("rules reloaded")
        except Exception as exc:  # a broken rules file must not stop the tracer
            message = getattr(exc, "message", str(exc))
            self._log(f"rules reload failed, keeping the running rules: {message}")

    # -- records --------------------------------------------------------------------------------
    def submit(self, event: dict) -> None:
        """An event from another thread (audit records of blocks, kills): emitted by the loop, in order."""
        self._inbox.put(event)

    def _on_record(self, rec: Record) -> None:
        """Records are handled poll batch by poll batch: nothing piles up in Python while a burst
        waits in the kernel's buffer."""
        try:
            self.handle(rec)
        except Exception as exc:  # one record that trips a bug must not stop the tracer
            self.internal_errors += 1
            if self.internal_errors <= 3:
                self._log(f"internal error on a {type(rec).__name__} (event skipped): {exc!r}")

    def drain(self) -> None:
        """Events other threads submitted (audit records)."""
        while not self._inbox.empty():
            self.emit(self._inbox.get_nowait())

    def handle(self, rec: Record) -> None:
        if isinstance(rec, ConnectRecord):
            self.seen["connect"] += 1
            self._connect(rec)
        elif isinstance(rec, ExecRecord):
            self.seen["exec"] += 1
            self.table.on_exec(rec)
        elif isinstance(rec, TcpErrorRecord):
            self.seen["tcperror"] += 1
            for ready, proc, error in self.failed.on_error(rec):
                self._emit_connect(ready, proc, error)
        elif isinstance(rec, ExitRecord):
            self.seen["exit"] += 1
            self.table.on_exit(rec.h)

    def _connect(self, rec: ConnectRecord) -> None:
        """Attribute to the process image that made the connect; a failed TCP connect then waits
        briefly for the error that closed it."""
        proc = self.table.get(rec.h)
        if not self.opts.filters.match(rec, proc):
            self.filtered += 1
            return
        if rec.outcome == "failure" and not rec.denied:
            for ready, held, error in self.failed.add(rec, proc, Clock.now_boot_ns()):
                self._emit_connect(ready, held, error)
            return
        self._emit_connect(rec, proc, 0)

    def _emit_connect(self, rec: ConnectRecord, proc: Proc, error: int) -> None:
        assert self.builder is not None
        event = self.builder.connect_event(rec, proc, error)
        if self.scorer is not None:
            self.scorer.score(event, proc.cache)
        severity = event.get("outwatch", {}).get("severity", "info")
        if SEVERITIES.index(severity) >= self._min_rank:
            self.emit(event)
        else:
            self.filtered += 1
        if self.on_alert is not None and event["event"]["kind"] == "alert":
            self.on_alert(event)  # contained even when --min-severity hides it

    # -- output ---------------------------------------------------------------------------------
    def emit(self, event: dict) -> None:
        self.sequence += 1
        event["event"]["sequence"] = self.sequence
        if self.opts.pretty:
            self.sinks.emit(format_event(event).encode() + b"\n")
        else:
            self.sinks.emit(encode(event))
        self.emitted += 1

    def stats(self) -> dict:
        lost = self.probes.lost() if self.probes.choice else {}
        sink_stats = self.sinks.stats()
        dropped = 0
        if isinstance(sink_stats, list | tuple):
            dropped = sum(int(s.get("dropped", 0)) for s in sink_stats if isinstance(s, dict))
        elif isinstance(sink_stats, dict):
            dropped = int(sink_stats.get("dropped", 0))
        return {
            "records_seen": {name: self.seen.get(name, 0) for name in EV_NAMES.values()},
            "lost_in_kernel": sum(lost.values()),
            "lost_in_kernel_by_type": lost,
            "dropped_in_userspace": dropped,
            "events_emitted": self.emitted,
            "events_filtered": self.filtered,
            "processes_tracked": len(self.table),
            "failed_connects_waiting": len(self.failed),
            "internal_errors": self.internal_errors,
            "sinks": sink_stats,
        }

    def metric_event(self) -> dict:
        return {
            "@timestamp": rfc3339_ns(time.time_ns()),
            "ecs": {"version": ECS_VERSION},
            "event": {"kind": "metric", "category": ["host"], "type": ["info"], "module": "outwatch",
                      "dataset": "outwatch.metrics"},
            "host": self.builder.host if self.builder else {},
            "outwatch": {"metrics": self.stats(),
                         "probe": self.probes.choice.probe_set if self.probes.choice else None},
        }

