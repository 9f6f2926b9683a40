"""Who a process is: host identity, start time, and an entity id stable per incarnation.

A pid is reused; (pid, start time) is not. Start times are kept in CLOCK_BOOTTIME nanoseconds, the
clock of both the BPF records (bpf_ktime_get_boot_ns) and /proc/PID/stat's starttime (clock ticks
since boot). The entity id hashes the start time at clock-tick resolution so that both sources give
the same id for the same process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK


@functools.cache
def host_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return socket.gethostname()


def entity_id(pid: int, start_ns: int) -> str:
    ticks = start_ns // NS_PER_TICK
    return hashlib.sha256(f"{host_id()}:{pid}:{ticks}".encode()).hexdigest()[:32]


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, start_ns since boot) from /proc/PID/stat; None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    lpar, rpar = raw.find(b"("), raw.rfind(b")")
    fields = raw[rpar + 2:].split()
    if lpar < 0 or rpar < 0 or len(fields) < 20:
        return None
    comm = raw[lpar + 1:rpar].decode("utf-8", "backslashreplace")
    return comm, int(fields[1]), int(fields[19]) * NS_PER_TICK


def entity_id_of(pid: int) -> str | None:
    """The entity id of the live process with this pid (None when there is none)."""
    stat = read_stat(pid)
    return entity_id(pid, stat[2]) if stat else None


class Clock:
    """Converts CLOCK_BOOTTIME nanoseconds (kernel records) to wall-clock nanoseconds."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def wall_ns(self, boot_ns: int) -> int:
        return boot_ns + self.offset_ns

    @staticmethod
    def now_boot_ns() -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
