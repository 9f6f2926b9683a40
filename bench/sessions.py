"""The processes a benchmark round runs beside a workload: outwatch, the bpftrace one-liner, an `ss`
poller. Each is started, settled between workloads, stopped, and always cleaned up (close())."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from tools import ROOT, cpu_seconds, gen_command, status_kb

OUTWATCH = [str(ROOT / ".venv" / "bin" / "outwatch"), "watch"]
METRICS_INTERVAL = 0.5
ATTACH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
IDLE_WINDOW_S = 0.3
IDLE_CPU_S = 0.03  # at most this much CPU in IDLE_WINDOW_S counts as caught up
PROBE_RATE = 200  # connects/s of the start-up prober

# The peer an admin would type: every TCP connect (SYN_SENT, in the connecting process) with its
# destination, and every sendto. Tracepoints only: kprobes are compiled out here (KERNEL.md).
BPFTRACE_SCRIPT = r"""
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->newstate == 2/ {
  if (args->family == 2) { printf("%d %s %s %d\n", pid, comm, ntop(args->daddr), args->dport); }
  else { printf("%d %s %s %d\n", pid, comm, ntop(args->daddr_v6), args->dport); }
}
tracepoint:syscalls:sys_enter_sendto { printf("%d %s sendto %d\n", pid, comm, args->fd); }
"""


@dataclass(slots=True)
class Exit:
    code: int
    cpu_s: float  # user + system over the whole life (wait4 rusage)
    stop_s: float  # SIGINT to exit


def _wait(proc: subprocess.Popen, timeout: float) -> Exit | None:
    """Reap proc with its rusage (None if it did not exit within timeout)."""
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return Exit(proc.returncode, ru.ru_utime + ru.ru_stime, time.monotonic() - start)
        time.sleep(0.02)
    return None


def _stop(proc: subprocess.Popen | None, timeout: float = STOP_TIMEOUT_S) -> Exit | None:
    """SIGINT (outwatch and bpftrace flush and exit 0 on it), then SIGKILL if it hangs."""
    if proc is None or proc.returncode is not None:
        return None
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    done = _wait(proc, timeout)
    if done is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    return done


def _wait_for(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen, what: str,
              every: float = 0.01) -> float:
    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what}: timed out after {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start


def settle(pid: int, timeout: float = SETTLE_TIMEOUT_S) -> float:
    """Wait until a process has caught up (almost no CPU over IDLE_WINDOW_S); returns the wait."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < timeout:
        time.sleep(IDLE_WINDOW_S)
        now = cpu_seconds(pid)
        if now is None or last is None or now - last <= IDLE_CPU_S:
            break
        last = now
    return time.monotonic() - start


def kernel_lost(pid: int) -> dict[int, int] | None:
    """outwatch's per-CPU loss counters (map "lost": record type -> failed ring buffer reservations),
    summed over CPUs, found through the map fds the process holds; read with bpftool so it works
    whatever the output format (the metric record is not readable when the output is /dev/null)."""
    try:
        fdinfos = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return None
    for info in fdinfos:
        try:
            text = info.read_text()
        except OSError:
            continue
        m = re.search(r"^map_id:\s*(\d+)", text, re.M)
        if not m or not re.search(r"^map_type:\s*6$", text, re.M):  # BPF_MAP_TYPE_PERCPU_ARRAY
            continue
        show = subprocess.run(["bpftool", "-j", "map", "show", "id", m.group(1)], capture_output=True)
        if show.returncode != 0 or orjson.loads(show.stdout).get("name") != "lost":
            continue
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", m.group(1)], capture_output=True)
        if dump.returncode != 0:
            return None
        return {e["formatted"]["key"]: sum(v["value"] for v in e["formatted"]["values"])
                for e in orjson.loads(dump.stdout)}
    return None


class OutwatchSession:
    """One `outwatch watch` (root) beside the workloads of a round."""

    def __init__(self, workdir: Path, label: str, *, fmt: str = "ndjson", to_file: bool = True,
                 loopback: bool = True, extra: tuple[str, ...] = (), tail_stamp: Path | None = None,
                 prober: Path | None = None) -> None:
        self.label = label
        self.output = workdir / f"{label}.{fmt}" if to_file else Path("/dev/null")
        self.err = workdir / f"{label}.err"
        self.stamps = workdir / f"{label}.stamps" if tail_stamp else None
        self.args = [*OUTWATCH, "--format", fmt, "--output", str(self.output),
                     "--metrics-interval", str(METRICS_INTERVAL),
                     *(["--include-loopback"] if loopback else []), *extra]
        self.fmt = fmt
        self._tail_stamp = tail_stamp
        self._prober = prober
        self.proc: subprocess.Popen | None = None
        self.tail: subprocess.Popen | None = None
        self.attached_s = float("nan")
        self.first_event_s = float("nan")
        self.cpu_ready = 0.0
        self.hwm_kb = 0
        self.exit: Exit | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        probe = None
        if self._prober is not None:
            probe = subprocess.Popen(gen_command(self._prober, "tcp4", 30, PROBE_RATE),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with self.err.open("wb") as err:
                t0 = time.monotonic()
                self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=err, start_new_session=True)
            _wait_for(lambda: b"outwatch: probes:" in self.err.read_bytes(), ATTACH_TIMEOUT_S, self.proc,
                      f"{self.label}: attach")
            self.attached_s = time.monotonic() - t0
            if probe is not None:
                _wait_for(self._has_event, ATTACH_TIMEOUT_S, self.proc, f"{self.label}: first event", every=0.002)
                self.first_event_s = time.monotonic() - t0
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.err.read_text(errors='replace')}") from exc
        finally:
            if probe is not None:
                probe.terminate()
                probe.wait()
        if self._tail_stamp is not None and self.stamps is not None:
            self.tail = subprocess.Popen([str(self._tail_stamp), str(self.output), str(self.stamps)])
        settle(self.pid)
        self.cpu_ready = cpu_seconds(self.pid) or 0.0

    def _has_event(self) -> bool:
        return self.output.exists() and b'"connection_attempted"' in self.output.read_bytes()

    def settle(self) -> float:
        return settle(self.pid)

    def metrics(self, timeout: float = 5.0) -> dict | None:
        """The first metric record written from now on (None for /dev/null or pretty output)."""
        if self.fmt != "ndjson" or not self.output.is_file():
            return None
        offset = self.output.stat().st_size
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.output.open("rb") as f:
                f.seek(offset)
                for line in f.read().splitlines():
                    if b'"outwatch.metrics"' in line:
                        return orjson.loads(line)["outwatch"]["metrics"]
            time.sleep(0.05)
        return None

    def stop(self) -> Exit:
        """SIGINT (flush and exit 0), with the peak RSS and CPU of the whole run."""
        self.hwm_kb = status_kb(self.pid, "VmHWM") or 0
        self.exit = _stop(self.proc)
        if self.exit is None:
            raise RuntimeError(f"{self.label}: outwatch did not exit on SIGINT within {STOP_TIMEOUT_S:.0f} s")
        _stop(self.tail)
        return self.exit

    def close(self) -> None:
        _stop(self.proc, 10.0)
        _stop(self.tail, 5.0)

    def final_metrics(self) -> dict | None:
        """The metric record written at exit (the file's last one)."""
        if self.fmt != "ndjson" or not self.output.is_file():
            return None
        with self.output.open("rb") as f:
            f.seek(max(0, self.output.stat().st_size - (1 << 20)))
            for line in reversed(f.read().splitlines()):
                if b'"outwatch.metrics"' in line:
                    return orjson.loads(line)["outwatch"]["metrics"]
        return None


class BpftraceSession:
    """The bpftrace one-liner (BPFTRACE_SCRIPT) writing to a file."""

    def __init__(self, workdir: Path, label: str = "bpftrace") -> None:
        self.label = label
        self.script = workdir / f"{label}.bt"
        self.output = workdir / f"{label}.out"
        self.err = workdir / f"{label}.err"
        self.proc: subprocess.Popen | None = None
        self.attached_s = float("nan")
        self.hwm_kb = 0
        self.exit: Exit | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.script.write_text(BPFTRACE_SCRIPT)
        self.output.touch()
        with self.err.open("wb") as err:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(["bpftrace", "-o", str(self.output), str(self.script)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        try:
            _wait_for(lambda: b"Attaching" in self.output.read_bytes(), ATTACH_TIMEOUT_S, self.proc,
                      "bpftrace: attach")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.err.read_text(errors='replace')}") from exc
        self.attached_s = time.monotonic() - t0
        settle(self.pid)

    def settle(self) -> float:
        return settle(self.pid)

    def stop(self) -> Exit:
        self.hwm_kb = status_kb(self.pid, "VmHWM") or 0
        self.exit = _stop(self.proc)
        if self.exit is None:
            raise RuntimeError(f"bpftrace did not exit on SIGINT within {STOP_TIMEOUT_S:.0f} s")
        return self.exit

    def close(self) -> None:
        _stop(self.proc, 10.0)


class SsPoller:
    """`ss -tpn` once a second, as the seed guide does: which pids were seen owning a TCP socket."""

    PID = re.compile(rb"pid=(\d+)")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.pids: set[int] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ss", "-tpnH"], capture_output=True, timeout=30).stdout
            self.polls += 1
            self.pids.update(int(p) for p in self.PID.findall(out))
            self._stop.wait(self.interval)

    def __enter__(self) -> SsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
