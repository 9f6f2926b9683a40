"""The process table: seeded from /proc at start, kept current by the kernel's exec/exit records.

Facts that die with a process (parent, executable, argv, start) come from the kernel records. Facts
only /proc has (cwd, the executable's inode and whether it was deleted, the cgroup) are read once
per process, the first time it connects, and only after checking the pid is still the same
incarnation. Exited processes stay for LINGER_NS so late records (a TCP outcome) still resolve.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from outwatch.kernel.records import ExecRecord, Header
from outwatch.proc.cgroup import CgroupInfo, read_cgroup
from outwatch.proc.exeinfo import ExeFacts, exe_facts
from outwatch.proc.identity import NS_PER_TICK, entity_id, read_stat

LINGER_NS = 60_000_000_000
MAX_ANCESTORS = 32
MAX_IMAGES = 4  # images kept per process (execs in a row before its connects were reported)


@dataclass(frozen=True, slots=True)
class KernelView:
    ppid: int  # 0 when the fork was not seen
    start_ns: int
    exec_ns: int  # the running image's exec time, 0 when none was seen
    exec_busy: bool = False  # an execve is under way: /proc may already describe the next image


def text(raw: bytes) -> str:
    """Kernel bytes to str: invalid UTF-8 is kept visible as \\x escapes, never dropped."""
    return raw.decode("utf-8", "backslashreplace")


def _trim_images(proc: Proc) -> None:
    """Keep at most MAX_IMAGES images of a process."""
    for _ in range(MAX_IMAGES - 1):
        if proc.prev is None:
            return
        proc = proc.prev
    proc.prev = None


def same_start(a: int, b: int) -> bool:
    """Whether two start times (one may be /proc's, at clock-tick resolution) are one process's;
    0 means unknown and matches anything."""
    return not a or not b or abs(a - b) < 2 * NS_PER_TICK


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    start_ns: int  # CLOCK_BOOTTIME ns of the fork, 0 when unknown
    comm: str
    exec_ns: int = 0  # the exec that made this image (its record's time), 0 when that exec was not seen
    ppid_from: str = "proc"  # kernel (its fork was seen) | proc
    exe: str | None = None
    argv: list[str] = field(default_factory=list)
    uid: int | None = None
    cwd: str | None = None
    exe_from: str = "missing"  # kernel | exec | proc | inherited | missing
    args_from: str = "missing"
    args_truncated: bool = False
    exited_ns: int = 0
    facts: ExeFacts | None = None
    cgroup: CgroupInfo | None = None
    probed: bool = False  # /proc facts were looked up (once per image)
    cache: dict | None = None  # the ECS process object, built once per image by event.py
    prev: Proc | None = None  # the image this one replaced (a connect may be reported after an exec)

    @property
    def entity_id(self) -> str:
        return entity_id(self.pid, self.start_ns)


class ProcessTable:
    def __init__(self, kernel_view: Callable[[int], KernelView | None] | None = None) -> None:
        """kernel_view(pid): what the kernel's fork map knows of a process: the parent of one that
        forked after start and never exec'd (a subshell, the middle of a double fork), and which
        image it runs now (so /proc is read only while it still runs the image being described)."""
        self.procs: dict[int, Proc] = {}
        self._kernel_view = kernel_view
        self._exited: deque[tuple[int, int]] = deque()
        self._users: dict[int, str | None] = {}

    def __len__(self) -> int:
        return len(self.procs)

    def seed(self) -> None:
        """Every process now in /proc (run after the probes are attached, so none falls between)."""
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                pid = int(entry.name)
                if pid not in self.procs:
                    self._from_proc(pid)

    def _from_proc(self, pid: int) -> Proc | None:
        stat = read_stat(pid)
        if stat is None:
            return None
        comm, ppid, start_ns = stat
        proc = Proc(pid, ppid, start_ns, comm)
        self._probe(proc)
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            proc.argv = [text(a) for a in raw.rstrip(b"\0").split(b"\0")] if raw else []
            proc.args_from = "proc"
            proc.uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            pass
        self.procs[pid] = proc
        return proc

    def _view(self, pid: int) -> KernelView | None:
        """The kernel's fork-map entry of a process; None when there is no kernel view or no entry."""
        return self._kernel_view(pid) if self._kernel_view is not None else None

    def _runs(self, proc: Proc) -> bool:
        """Whether the process still runs this image: the kernel's last exec time is the image's (0 for
        both when no exec was seen), and no exec is under way (/proc/PID/exe changes before the exec's
        record is made)."""
        view = self._view(proc.pid)
        if view is None:
            return True  # started before the tracer, or evicted from the LRU map: can't tell
        return view.exec_ns == proc.exec_ns and not view.exec_busy

    def _probe(self, proc: Proc) -> None:
        """Read what only /proc knows, once, if the pid is still this process running this image
        (checked before and after: an exec in between discards what was read)."""
        proc.probed = True
        stat = read_stat(proc.pid)
        if stat is None or not same_start(proc.start_ns, stat[2]) or not self._runs(proc):
            return
        facts = exe_facts(proc.pid)
        cwd = None
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{proc.pid}/cwd")
        cgroup = read_cgroup(proc.pid)
        if not self._runs(proc):
            return
        if facts is not None:
            proc.facts = facts
            proc.exe = facts.path
            proc.exe_from = "proc"
        proc.cwd = cwd or proc.cwd
        proc.cgroup = cgroup

    def get(self, h: Header) -> Proc:
        """The process image of a kernel record (the one whose exec the record names), created from
        the record (and /proc) when unknown."""
        proc = self.procs.get(h.pid)
        if proc is not None and not same_start(proc.start_ns, h.start_ns):
            proc = None  # the pid was reused since we last saw it
        if proc is None:
            view = self._view(h.pid) if h.exec_ns < 0 else None  # -1: the image running now
            exec_ns = view.exec_ns if view is not None else max(h.exec_ns, 0)
            proc = self._from_kernel(h.pid, h.ppid, h.start_ns, text(h.comm), exec_ns)
        elif h.exec_ns >= 0:
            image = proc
            while image.exec_ns > h.exec_ns and image.prev is not None:
                image = image.prev
            proc = image
        if h.uid >= 0 and h.uid != proc.uid:
            proc.uid, proc.cache = h.uid, None  # setuid since the last connect: the ECS user changes
        if not proc.probed:
            self._probe(proc)
        return proc

    def _from_kernel(self, pid: int, ppid: int, start_ns: int, comm: str, exec_ns: int = 0) -> Proc:
        """A process known from the kernel only: forked after the tracer started and not exec'd since
        (exec_ns is the image it inherited from its parent at the fork)."""
        if not ppid:
            view = self._view(pid)
            if view is not None:
                ppid, start_ns = view.ppid, view.start_ns or start_ns
        proc = Proc(pid, ppid, start_ns, comm, exec_ns=exec_ns, ppid_from="kernel" if ppid else "proc")
        self.procs[pid] = proc  # before the parent's lookup: a pid cycle (reused pids) ends here
        parent = self.lookup(ppid) if ppid else None
        while parent is not None and parent.exec_ns > exec_ns and parent.prev is not None:
            parent = parent.prev  # the parent has exec'd since the fork: the image the child got
        if parent is not None and not (start_ns and parent.start_ns - start_ns >= 2 * NS_PER_TICK):
            # forked without an exec (yet): the parent's image (unless that "parent" started after
            # the child: another process on a reused pid)
            proc.exe, proc.argv, proc.cwd = parent.exe, parent.argv, parent.cwd
            proc.exe_from = proc.args_from = "inherited" if parent.exe else "missing"
            proc.uid, proc.cgroup = parent.uid, parent.cgroup
        if not ppid or not start_ns:
            stat = read_stat(pid)
            if stat is not None:
                proc.ppid = proc.ppid or stat[1]
                proc.start_ns = proc.start_ns or stat[2]
        return proc

    def lookup(self, pid: int) -> Proc | None:
        """A process by pid, from the table, the kernel's fork map, or /proc."""
        proc = self.procs.get(pid)
        if proc is not None:
            return proc
        view = self._view(pid)
        if view is not None and view.ppid:
            return self._from_kernel(pid, view.ppid, view.start_ns, "", view.exec_ns)
        return self._from_proc(pid)

    def on_exec(self, rec: ExecRecord) -> Proc:
        h = rec.h
        proc = self.procs.get(h.pid)
        if proc is None or not same_start(proc.start_ns, h.start_ns):
            proc = Proc(h.pid, h.ppid, h.start_ns, text(h.comm), ppid_from="kernel" if h.ppid else "proc")
            self.procs[h.pid] = proc
            if not h.ppid or not h.start_ns:
                stat = read_stat(h.pid)
                if stat is not None:
                    proc.ppid = proc.ppid or stat[1]
                    proc.start_ns = proc.start_ns or stat[2]
        else:
            # a new image: a new record, so connects made by the old one keep it
            proc = replace(proc, ppid=h.ppid or proc.ppid, ppid_from="kernel" if h.ppid else proc.ppid_from,
                           exited_ns=0, prev=proc)
            _trim_images(proc)
            self.procs[h.pid] = proc
        proc.exec_ns = h.ts_ns
        proc.comm = text(h.comm)
        proc.uid = h.uid
        filename = text(rec.filename)
        if filename.startswith("/"):
            proc.exe, proc.exe_from = filename, "exec"
        else:
            base = self._cwd_hint(proc)
            proc.exe = os.path.normpath(os.path.join(base, filename)) if base else filename
            proc.exe_from = "exec"
        if rec.no_argv:
            proc.argv, proc.args_from = [], "missing"
        else:
            proc.argv, proc.args_from = [text(a) for a in rec.argv], "exec"
        proc.args_truncated = rec.args_truncated
        proc.facts, proc.probed, proc.cache = None, False, None
        return proc

    def _cwd_hint(self, proc: Proc) -> str | None:
        """Where a relative exec path was resolved: the process's cwd, else its parent's."""
        for pid in (proc.pid, proc.ppid):
            try:
                return os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
        return proc.cwd

    def on_exit(self, h: Header) -> None:
        proc = self.procs.get(h.pid)
        if proc is not None and not proc.exited_ns:
            proc.exited_ns = h.ts_ns
            self._exited.append((h.ts_ns, h.pid))

    def expire(self, now_ns: int) -> None:
        """Forget processes that exited more than LINGER_NS ago."""
        while self._exited and now_ns - self._exited[0][0] > LINGER_NS:
            ts, pid = self._exited.popleft()
            proc = self.procs.get(pid)
            if proc is not None and proc.exited_ns == ts:
                del self.procs[pid]

    def ancestors(self, proc: Proc) -> list[Proc]:
        """Parent first, up to pid 1 (bounded; a cycle from pid reuse stops the walk)."""
        chain: list[Proc] = []
        seen = {proc.pid}
        pid = proc.ppid
        while pid and pid not in seen and len(chain) < MAX_ANCESTORS:
            seen.add(pid)
            parent = self.lookup(pid)
            if parent is None:
                break
            chain.append(parent)
            pid = parent.ppid
        return chain

    def user_name(self, uid: int | None) -> str | None:
        if uid is None or uid < 0:
            return None
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]
