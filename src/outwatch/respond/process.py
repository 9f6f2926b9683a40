"""Who a pid is right now, and whether outwatch may touch it.

Identity is what survives pid reuse: the start time in clock ticks since boot (/proc/PID/stat field
22) and the executable. Protection is decided on facts a process cannot fake: pid 1, the
kernel-thread flag, our own lineage, the running watch's pid (which its control socket reports), and
protected names matched against the executable's path (not the comm or argv, which any process sets
as it likes) and only for executables in system directories, so a binary dropped as /tmp/sshd does
not inherit sshd's protection. A protected entry given as an absolute path protects exactly that
executable, wherever it lives.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from outwatch.proc.identity import NS_PER_TICK, Clock, entity_id

PF_KTHREAD = 0x00200000
KTHREADD_PID = 2
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")
DEFAULT_PROTECTED_PROCESSES = frozenset(
    {
        "sshd",
        "systemd",
        "systemd-journald",
        "systemd-logind",
        "dbus-daemon",
        "dbus-broker",
        "apt",
        "apt-get",
        "aptitude",
        "dpkg",
        "unattended-upgrade",
    }
)


@dataclass(frozen=True, slots=True)
class ProcIdentity:
    pid: int
    tgid: int
    ppid: int
    name: str
    state: str
    flags: int
    start_ticks: int
    uid: int
    exe: str | None  # None for kernel threads and zombies; without the " (deleted)" suffix
    exe_deleted: bool

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD) or KTHREADD_PID in (self.pid, self.ppid)

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def start_ns(self) -> int:
        """Start time in CLOCK_BOOTTIME nanoseconds (clock-tick resolution)."""
        return self.start_ticks * NS_PER_TICK

    @property
    def started(self) -> datetime:
        return datetime.fromtimestamp(Clock().wall_ns(self.start_ns) / 1e9, UTC)

    @property
    def entity_id(self) -> str:
        return entity_id(self.pid, self.start_ns)


def read_identity(pid: int) -> ProcIdentity:
    """Raises ProcessLookupError when the pid does not exist (or vanished while being read)."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
        with open(f"{base}/status", "rb") as f:
            status = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(pid) from None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2 :].split()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    exe: str | None
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = None
    deleted = exe is not None and exe.endswith(" (deleted)")
    if exe is not None and deleted:
        exe = exe.removesuffix(" (deleted)")
    return ProcIdentity(
        pid=pid,
        tgid=int(fields["Tgid"]),
        ppid=int(rest[1]),
        name=name,
        state=rest[0],
        flags=int(rest[6]),
        start_ticks=int(rest[19]),
        uid=int(fields["Uid"].split()[0]),
        exe=exe,
        exe_deleted=deleted,
    )


def lineage(pid: int) -> list[int]:
    """pid and its ancestors up to pid 1."""
    chain = []
    while pid > 0 and pid not in chain:
        chain.append(pid)
        try:
            pid = read_identity(pid).ppid
        except ProcessLookupError:
            break
    return chain


class ProcessGuard:
    """Refuses pid 1, kernel threads, outwatch (this process, its ancestors, the running watch) and
    protected executables."""

    def __init__(self, extra_protected: Iterable[str] = (), watch_pid: int | None = None) -> None:
        entries = DEFAULT_PROTECTED_PROCESSES | frozenset(extra_protected)
        self.names = frozenset(e for e in entries if "/" not in e)
        self.paths = frozenset(e for e in entries if "/" in e)
        self.watch_pid = watch_pid

    def refusal(self, ident: ProcIdentity) -> str | None:
        """Why outwatch must not signal this process, or None."""
        if ident.pid == 1:
            return "it is PID 1 (init): the whole machine depends on it"
        if ident.kernel_thread:
            return "it is a kernel thread"
        if ident.pid == os.getpid():
            return "it is this outwatch process"
        if ident.pid in lineage(os.getpid()):  # now, not at start: an ancestor's pid may be reused
            return "it is an ancestor of this outwatch process (e.g. your shell or sudo)"
        if ident.pid == self.watch_pid:
            return "it is the running outwatch watch"
        exe = ident.exe
        if exe is not None:
            if exe in self.paths:
                return f"its executable {exe} is on the protected list"
            base = os.path.basename(exe)
            if base in self.names and exe.startswith(SYSTEM_DIRS):
                return f"it is {base} ({exe}), a protected process"
        return None
