"""Reading what outwatch and the bpftrace peer wrote, and comparing it with what the generators did."""

from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from tools import Attempt, StormResult

CLOCK_SKEW_NS = 200_000  # the event's kernel time (converted to wall clock) may read a little early


@dataclass(slots=True)
class Seen:
    """The connect events of one process in outwatch's NDJSON."""

    events: int = 0
    repeats: int = 0  # sum of outwatch.repeat: UDP sends counted in the kernel
    lines: list[tuple[int, int, int]] = field(default_factory=list)  # (line index, source port, ts ns)
    first: dict | None = None


@dataclass(slots=True)
class Scan:
    seen: dict[int, Seen]
    lines: int
    bytes: int


_SECOND_CACHE: dict[str, int] = {}


def timestamp_ns(text: str) -> int:
    """RFC 3339 with nanoseconds and Z ("2026-12-03T18:45:00.123456789Z") to ns since the epoch."""
    head, _, frac = text.rstrip("Z").partition(".")
    base = _SECOND_CACHE.get(head)
    if base is None:
        base = int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()) * 10**9
        _SECOND_CACHE[head] = base
    return base + int((frac + "000000000")[:9])


def scan_ndjson(path: Path, pids: set[int], timed: set[int], storm: set[int]) -> Scan:
    """Count the connect events of each pid in pids; keep (line, source port, time) for the pids in
    timed (latency) and the first event of the pids in storm (attribution)."""
    seen: dict[int, Seen] = {}
    lines = 0
    size = 0
    with path.open("rb") as f:
        for index, line in enumerate(f):
            lines += 1
            size += len(line)
            event = orjson.loads(line)
            pid = event.get("process", {}).get("pid")
            if pid not in pids:
                continue
            s = seen.get(pid)
            if s is None:
                s = seen[pid] = Seen()
            s.events += 1
            s.repeats += event.get("outwatch", {}).get("repeat", 0)
            if pid in timed:
                port = event.get("source", {}).get("port", 0)
                s.lines.append((index, port, timestamp_ns(event["@timestamp"])))
            if pid in storm and s.first is None:
                s.first = event
    return Scan(seen, lines, size)


@dataclass(slots=True)
class Latency:
    write_ms: list[float]  # generator's stamp before connect() -> line readable in the file
    kernel_us: list[float]  # generator's stamp -> the event's @timestamp (kernel time): clock sanity
    unmatched: int  # events without a source port (outcome unknown) or with no attempt to pair


def latencies(attempts: list[Attempt], lines: list[tuple[int, int, int]], stamps: list[int]) -> Latency:
    """Pair each event with its attempt by source port: the latest attempt on that port that started
    before the event's kernel time (a port is reused over a long flood)."""
    by_port: dict[int, deque[int]] = defaultdict(deque)
    for a in attempts:
        if a.ok and a.port:
            by_port[a.port].append(a.start_ns)
    out = Latency([], [], 0)
    for index, port, ts in lines:
        queue = by_port.get(port)
        start = None
        while queue and queue[0] <= ts + CLOCK_SKEW_NS:
            start = queue.popleft()
        if start is None or index >= len(stamps):
            out.unmatched += 1
            continue
        out.write_ms.append((stamps[index] - start) / 1e6)
        out.kernel_us.append((ts - start) / 1e3)
    return out


@dataclass(slots=True)
class Attribution:
    children: int
    captured: int  # children with a connect event
    exe_ok: int
    parent_ok: int
    args_ok: int
    all_ok: int


def storm_attribution(storm: StormResult, seen: dict[int, Seen]) -> Attribution:
    """Each short-lived child: was its connect reported, with its true executable, parent and argv?"""
    out = Attribution(len(storm.kids), 0, 0, 0, 0, 0)
    for kid in storm.kids:
        s = seen.get(kid.pid)
        if s is None or s.first is None:
            continue
        out.captured += 1
        process = s.first.get("process", {})
        exe = process.get("executable") == kid.exe
        parent = process.get("parent", {}).get("pid") == kid.ppid
        args = process.get("args") == [kid.exe, str(storm.port)]
        out.exe_ok += exe
        out.parent_ok += parent
        out.args_ok += args
        out.all_ok += exe and parent and args
    return out


@dataclass(slots=True)
class PeerOutput:
    per_pid: dict[int, int]
    lost: int  # bpftrace's own "Lost N events" lines


_LOST = re.compile(rb"Lost (\d+) events")


def scan_bpftrace(path: Path, err: Path) -> PeerOutput:
    """Lines per pid in bpftrace's output; its "Lost N events" warnings, wherever it wrote them."""
    per_pid: dict[int, int] = defaultdict(int)
    lost = sum(int(n) for n in _LOST.findall(err.read_bytes())) if err.exists() else 0
    with path.open("rb") as f:
        for line in f:
            head = line.split(b" ", 1)[0]
            if head.isdigit():
                per_pid[int(head)] += 1
            else:
                m = _LOST.search(line)
                if m:
                    lost += int(m.group(1))
    return PeerOutput(dict(per_pid), lost)


def lost_in_kernel(metrics: dict | None) -> int | None:
    return None if metrics is None else int(metrics.get("lost_in_kernel", 0))


def dropped(metrics: dict | None) -> int | None:
    return None if metrics is None else int(metrics.get("dropped_in_userspace", 0))


def records_seen(metrics: dict | None) -> int | None:
    return None if metrics is None else sum(metrics.get("records_seen", {}).values())


def delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before
