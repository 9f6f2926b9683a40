"""The benchmark's building blocks: compiling the C load generators, running them, reading what they
report, and small statistics. Nothing here knows about outwatch."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
CFLAGS = ["-O2", "-Wall", "-Wextra"]
# name -> (source, extra flags); storm_child is static when libc.a is there (a faster exec)
PROGRAMS = {
    "connect_gen": ("connect_gen.c", ["-pthread"]),
    "storm": ("storm.c", ["-pthread"]),
    "storm_child": ("storm_child.c", ["-static"]),
    "tail_stamp": ("tail_stamp.c", []),
}
ATTEMPT = struct.Struct("<qHB5x")  # struct attempt in connect_gen.c
CLK_TCK = os.sysconf("SC_CLK_TCK")


def compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no C compiler found (cc, gcc or clang): apt-get install gcc")


def build(out_dir: Path = BUILD) -> dict[str, Path]:
    """Compile the generators into out_dir (skipped when a binary is newer than its source)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cc = compiler()
    built = {}
    for name, (source, flags) in PROGRAMS.items():
        src, binary = BENCH / source, out_dir / name
        built[name] = binary
        if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
            continue
        cmd = [cc, *CFLAGS, *flags, "-o", str(binary), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 and "-static" in flags:
            cmd.remove("-static")
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {source} failed:\n{done.stderr}")
    return built


@dataclass(slots=True)
class GenResult:
    mode: str
    pid: int
    port: int
    attempts: int
    successes: int
    elapsed_ns: int
    rate: float
    start_wall_ns: int
    log: Path | None = None
    cpu_s: float = 0.0  # the generator's user + system CPU time (both ends of its loopback connects)


@dataclass(slots=True)
class Attempt:
    start_ns: int
    port: int
    ok: bool


def gen_command(binary: Path, mode: str, seconds: float, rate: float = 0.0, log: Path | None = None,
                max_attempts: int = 0) -> list[str]:
    cmd = [str(binary), mode, "-d", str(seconds)]
    if rate:
        cmd += ["-r", str(rate)]
    if max_attempts:
        cmd += ["-n", str(max_attempts)]
    if log is not None:
        cmd += ["-o", str(log)]
    return cmd


def run_gen(binary: Path, mode: str, seconds: float, rate: float = 0.0, log: Path | None = None,
            max_attempts: int = 0) -> GenResult:
    """Run connect_gen to completion and return its summary, with the CPU time it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(gen_command(binary, mode, seconds, rate, log, max_attempts),
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen = parse_gen(done.stdout, log)
    gen.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return gen


def parse_gen(stdout: str, log: Path | None = None) -> GenResult:
    d = json.loads(stdout.strip().splitlines()[-1])
    return GenResult(d["mode"], d["pid"], d["port"], d["attempts"], d["successes"], d["elapsed_ns"],
                     d["rate"], d["start_wall_ns"], log)


def read_attempts(log: Path) -> list[Attempt]:
    return [Attempt(ts, port, bool(ok)) for ts, port, ok in ATTEMPT.iter_unpack(log.read_bytes())]


@dataclass(slots=True)
class Child:
    pid: int
    ppid: int
    exe: str
    spawn_ns: int
    reap_ns: int
    status: int


@dataclass(slots=True)
class StormResult:
    pid: int
    port: int
    exe: str
    children: int
    ok: int
    elapsed_ns: int
    rate: float
    life_ms_p50: float
    life_ms_p99: float
    life_ms_max: float
    kids: list[Child]


def run_storm(storm: Path, child: Path, n: int, inflight: int, report: Path) -> StormResult:
    """Run the process storm to completion; every child is listed in the result."""
    cmd = [str(storm), str(child), "-n", str(n), "-j", str(inflight), "-o", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    d = json.loads(done.stdout.strip().splitlines()[-1])
    kids = []
    for line in report.read_text().splitlines():
        pid, ppid, exe, spawn_ns, reap_ns, status = line.split(" ")
        kids.append(Child(int(pid), int(ppid), exe, int(spawn_ns), int(reap_ns), int(status)))
    return StormResult(d["pid"], d["port"], d["exe"], d["children"], d["ok"], d["elapsed_ns"], d["rate"],
                       d["life_ms_p50"], d["life_ms_p99"], d["life_ms_max"], kids)


def read_stamps(path: Path) -> list[int]:
    """tail_stamp's output: the arrival time (wall ns) of each line of the watched file."""
    raw = path.read_bytes()
    return list(struct.unpack(f"<{len(raw) // 8}q", raw))


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int | None:
    """A kB field of /proc/PID/status (VmHWM, VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def text(self, fmt: str = "{:.3g}") -> str:
        if self.n == 0:
            return "n/a"
        if self.n == 1 or self.low == self.high:
            return fmt.format(self.median)
        return f"{fmt.format(self.median)} ({fmt.format(self.low)}–{fmt.format(self.high)})"


def summarize(values: list[float]) -> Summary:
    """Median and range (min–max) over rounds."""
    if not values:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    return Summary(statistics.median(values), min(values), max(values), len(values))
