"""The benchmark's load generators build and report exactly what they did (counts, not timings), and
its pairing of events with attempts is right. Real processes and loopback sockets; no root needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import analyze
import micro
import profile_hot
import tools

from outwatch.kernel.records import decode
from outwatch.proc.table import Proc


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tools.build(tmp_path_factory.mktemp("bench-build"))


def test_every_generator_builds(bins: dict[str, Path]) -> None:
    assert sorted(bins) == sorted(tools.PROGRAMS)
    for path in bins.values():
        assert path.is_file() and os.access(path, os.X_OK)


@pytest.mark.parametrize(("mode", "n"), [("tcp4", 300), ("tcp6", 300), ("udp4", 5000), ("udp6", 5000)])
def test_connect_gen_reports_exact_counts(bins: dict[str, Path], tmp_path: Path, mode: str, n: int) -> None:
    log = tmp_path / "attempts.bin"
    gen = tools.run_gen(bins["connect_gen"], mode, seconds=60, log=log, max_attempts=n)
    assert (gen.mode, gen.attempts, gen.successes) == (mode, n, n)
    assert gen.cpu_s > 0  # its own CPU time, for the CPU budget at the top rate
    attempts = tools.read_attempts(log)
    assert len(attempts) == n
    assert all(a.ok for a in attempts)
    starts = [a.start_ns for a in attempts]
    assert starts == sorted(starts) and starts[0] >= gen.start_wall_ns
    if mode.startswith("tcp"):
        assert all(a.port for a in attempts)  # the local port of each connect, for pairing with events


def test_connect_gen_paced_stops_at_max(bins: dict[str, Path]) -> None:
    gen = tools.run_gen(bins["connect_gen"], "tcp4", seconds=60, rate=500, max_attempts=25)
    assert (gen.attempts, gen.successes) == (25, 25)


@pytest.mark.parametrize("args", [["tcp5"], ["tcp"], ["udp4", "-d", "0"], ["tcp4", "-n", "-1"], []])
def test_connect_gen_refuses_bad_usage(bins: dict[str, Path], args: list[str]) -> None:
    done = subprocess.run([str(bins["connect_gen"]), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage" in done.stderr


def test_storm_lists_every_child(bins: dict[str, Path], tmp_path: Path) -> None:
    storm = tools.run_storm(bins["storm"], bins["storm_child"], 40, 2, tmp_path / "storm.txt")
    assert (storm.children, storm.ok, len(storm.kids)) == (40, 40, 40)
    assert len({k.pid for k in storm.kids}) == 40
    assert {k.ppid for k in storm.kids} == {storm.pid}
    assert {k.exe for k in storm.kids} == {str(bins["storm_child"].resolve())}
    assert all(k.status == 0 and k.reap_ns >= k.spawn_ns for k in storm.kids)


def test_tail_stamp_stamps_every_line(bins: dict[str, Path], tmp_path: Path) -> None:
    watched, out = tmp_path / "events.ndjson", tmp_path / "stamps.bin"
    watched.write_bytes(b"")
    tail = subprocess.Popen([str(bins["tail_stamp"]), str(watched), str(out)])
    try:
        with watched.open("ab", buffering=0) as f:
            for batch in range(5):
                f.write(b"".join(b'{"n":%d}\n' % (batch * 20 + i) for i in range(20)))
                time.sleep(0.01)
            f.write(b'{"partial":')  # no newline: not a line yet
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=30) == 0
    stamps = tools.read_stamps(out)
    assert len(stamps) == 100
    assert stamps == sorted(stamps)


def test_latency_pairs_by_port_with_reuse() -> None:
    ms = 1_000_000
    attempts = [tools.Attempt(1 * ms, 40000, True), tools.Attempt(2 * ms, 40001, True),
                tools.Attempt(3 * ms, 40000, True), tools.Attempt(4 * ms, 40002, False)]
    # (line index, source port, kernel ts): port 40000 is used twice, and the second event pairs with
    # the attempt at 3 ms, not the first one; an event with no source port is not paired
    lines = [(0, 40000, 1 * ms + 10_000), (1, 40001, 2 * ms + 10_000), (2, 40000, 3 * ms + 10_000),
             (3, 0, 4 * ms + 10_000)]
    stamps = [2 * ms, 4 * ms, 5 * ms, 6 * ms]
    lat = analyze.latencies(attempts, lines, stamps)
    assert lat.write_ms == [1.0, 2.0, 2.0]
    assert lat.kernel_us == [10.0, 10.0, 10.0]
    assert lat.unmatched == 1


def test_timestamp_parsing_keeps_nanoseconds() -> None:
    assert analyze.timestamp_ns("2026-12-03T18:45:00.123456789Z") == 1796323500_123456789
    assert analyze.timestamp_ns("2026-12-03T18:45:00.5Z") == 1796323500_500000000


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert tools.percentile(values, 50) == 50.0
    assert tools.percentile(values, 99) == 99.0
    assert tools.percentile([7.0], 99) == 7.0


def test_bpftrace_output_counts_lines_per_pid_and_losses(tmp_path: Path) -> None:
    out, err = tmp_path / "bt.out", tmp_path / "bt.err"
    out.write_bytes(b"Attaching 2 probes...\n4242 connect_gen 127.0.0.1 5000\n4242 connect_gen 127.0.0.1 5000\n"
                    b"77 storm_child sendto 3\nLost 12 events\n")
    err.write_bytes(b"Lost 3 events\n")
    peer = analyze.scan_bpftrace(out, err)
    assert peer.per_pid == {4242: 2, 77: 1}
    assert peer.lost == 15


def test_profile_aggregation_leaves_out_entry_frames() -> None:
    raw = ("<module> (/v/bin/outwatch:8);Tracer.run (/s/outwatch/tracer.py:140);"
           "Tracer.drain (/s/outwatch/tracer.py:170);decode (/s/outwatch/kernel/records.py:120) 3\n"
           "<module> (/v/bin/outwatch:8);Tracer.run (/s/outwatch/tracer.py:140);"
           "Tracer.drain (/s/outwatch/tracer.py:171) 1\n")
    total, leaf, inclusive = profile_hot.aggregate(raw)
    assert total == 4
    assert leaf == {"decode (kernel/records.py)": 3, "Tracer.drain (outwatch/tracer.py)": 1}
    assert inclusive == {"decode (kernel/records.py)": 3, "Tracer.drain (outwatch/tracer.py)": 4}


def test_micro_raw_record_matches_the_decoder() -> None:
    """The microbenchmark packs a kernel connect record by hand; a layout change must show here."""
    me = Proc(os.getpid(), os.getppid(), 1, "python3", uid=0)
    rec = decode(micro.raw_connect(micro.header(me), "203.0.113.7", 443, "10.0.2.15", 49152))
    assert rec is not None
    assert (rec.h.pid, rec.daddr, rec.dport, rec.saddr, rec.sport, rec.protocol, rec.outcome, rec.count) == \
        (os.getpid(), "203.0.113.7", 443, "10.0.2.15", 49152, 6, "success", 1)
