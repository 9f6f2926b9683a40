"""Killing by pidfd: the process that was checked is the process that gets the signal.

A pidfd pins one process incarnation: once open, a signal sent through it cannot reach a later
process that reused the pid. The identity read from /proc after opening is confirmed to belong to
the pinned process by a null signal through the pidfd afterwards (had it exited and its pid been
reused in between, that signal fails).

--tree: the root is stopped (SIGSTOP) first, then its descendants, top-down, re-scanning until no
new one appears, so nothing in the tree can fork away or respawn a killed child while we work. Each
descendant is pinned by its own pidfd and must still be a child of a pinned process (else its pid
was reused). Protected descendants are left alone and reported. Then every pinned process gets
SIGTERM and SIGCONT together, the grace period runs for all of them at once, and SIGKILL goes to
the ones still alive.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from outwatch.errors import ExitCode, OutwatchError

from .audit import Record
from .process import ProcessGuard, ProcIdentity, read_identity

START_TOLERANCE_S = 1.0  # an event's process.start may be rounded; the executable narrows it further
KILL_WAIT_S = 5.0  # how long to wait for SIGKILL to take effect (a task in D state can take a while)


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the caller believes the pid is. Every field given must match."""

    exe: str | None = None
    start_ticks: int | None = None
    started_at: datetime | None = None
    entity_id: str | None = None


@dataclass(frozen=True, slots=True)
class KillResult:
    pid: int
    name: str
    exe: str | None
    signal: str | None  # the last signal sent (None: none sent)
    exited: bool
    note: str = ""

    def to_dict(self) -> Record:
        out: Record = {"pid": self.pid, "name": self.name, "exited": self.exited}
        if self.exe is not None:
            out["executable"] = self.exe
        if self.signal is not None:
            out["signal"] = self.signal
        if self.note:
            out["note"] = self.note
        return out


@dataclass(slots=True)
class _Pinned:
    ident: ProcIdentity
    fd: int
    signal: str | None = None


def _pin(pid: int) -> _Pinned:
    """Open a pidfd on pid and read who it is. ProcessLookupError when it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError as exc:
        # A thread id gives EINVAL or ENOENT (kernels differ); /proc still knows its process.
        tgid = read_identity(pid).tgid  # ProcessLookupError when there is no such task at all
        if tgid != pid:
            raise OutwatchError(
                f"{pid} is a thread of process {tgid}, not a process",
                hint=f"give the process id: outwatch kill {tgid}",
                code=ExitCode.USAGE,
            ) from None
        raise OutwatchError(f"cannot open process {pid}: {exc.strerror}") from None
    try:
        ident = read_identity(pid)
        signal.pidfd_send_signal(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return _Pinned(ident, fd)


def _describe(ident: ProcIdentity) -> str:
    return f"{ident.pid} ({ident.name}{', ' + ident.exe if ident.exe else ''})"


def mismatch(ident: ProcIdentity, expect: Expectation) -> str | None:
    """Why ident is not the process expected, or None."""
    if expect.exe is not None and ident.exe not in (expect.exe, os.path.realpath(expect.exe)):
        return f"its executable is {ident.exe or 'unknown'}, not {expect.exe}"
    if expect.start_ticks is not None and ident.start_ticks != expect.start_ticks:
        return f"it started at tick {ident.start_ticks}, not {expect.start_ticks}"
    if expect.started_at is not None:
        started = ident.started
        if abs((started - expect.started_at).total_seconds()) > START_TOLERANCE_S:
            return f"it started at {started.isoformat()}, not {expect.started_at.isoformat()}"
    if expect.entity_id is not None and ident.entity_id != expect.entity_id:
        return f"its entity id is {ident.entity_id}, not {expect.entity_id}"
    return None


def _send(p: _Pinned, signum: signal.Signals) -> None:
    try:
        signal.pidfd_send_signal(p.fd, signum)
    except ProcessLookupError:
        return  # already exited and reaped
    if signum != signal.SIGCONT:
        p.signal = signum.name


def _wait(pinned: Iterable[_Pinned], timeout: float) -> list[_Pinned]:
    """Wait until every pinned process exited or timeout passed; returns those still alive."""
    pending = {p.fd: p for p in pinned}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            pending.pop(fd, None)
    return list(pending.values())


def _children_of(parents: set[int]) -> list[int]:
    """Pids whose parent is in parents (one pass over /proc)."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        if ppid in parents:
            kids.append(int(name))
    return kids


def kill_process(
    pid: int,
    *,
    grace: float,
    guard: ProcessGuard,
    expect: Expectation | None = None,
    tree: bool = False,
    dry_run: bool = False,
) -> list[KillResult]:
    """SIGTERM, wait up to grace, SIGKILL. The first result is pid's; descendants follow (--tree).

    Raises OutwatchError: NOT_FOUND (no such process), REFUSED (protected, or not the process
    expected), USAGE (a thread id)."""
    if pid <= 0:
        raise OutwatchError(f"{pid} is not a process id", code=ExitCode.USAGE)
    try:
        root = _pin(pid)
    except ProcessLookupError:
        raise OutwatchError(
            f"no process {pid}", hint="it may have exited already", code=ExitCode.NOT_FOUND
        ) from None
    pinned = [root]
    skipped: list[KillResult] = []
    frozen = False  # the tree was stopped and has not been signalled yet
    try:
        why = guard.refusal(root.ident)
        if why:
            raise OutwatchError(f"refusing to kill {_describe(root.ident)}: {why}", code=ExitCode.REFUSED)
        wrong = mismatch(root.ident, expect or Expectation())
        if wrong:
            raise OutwatchError(
                f"refusing to kill {_describe(root.ident)}: it is not the process meant, {wrong}",
                hint="the pid may have been reused by another process; look again (outwatch inspect PID)",
                code=ExitCode.REFUSED,
            )
        if root.ident.zombie:
            return [KillResult(pid, root.ident.name, root.ident.exe, None, True, "already exited")]
        if tree:
            frozen = not dry_run
            skipped = _pin_descendants(pinned, guard, stop=frozen)
        if dry_run:
            return [_result(p, False, "dry run") for p in pinned] + skipped
        for p in pinned:
            _send(p, signal.SIGTERM)
            _send(p, signal.SIGCONT)
        frozen = False
        alive = _wait(pinned, grace)
        for p in alive:
            _send(p, signal.SIGKILL)
        alive = _wait(alive, KILL_WAIT_S)
        return [_result(p, p not in alive) for p in pinned] + skipped
    finally:
        for p in pinned:
            if frozen:  # something went wrong between SIGSTOP and SIGTERM: leave nothing stopped
                _send(p, signal.SIGCONT)
            os.close(p.fd)


def _pin_descendants(pinned: list[_Pinned], guard: ProcessGuard, *, stop: bool) -> list[KillResult]:
    """Pin (and with stop, SIGSTOP) every descendant of pinned[0], appending to pinned."""
    if stop:
        _send(pinned[0], signal.SIGSTOP)
    left_alone: dict[int, KillResult] = {}
    while True:
        known = {p.ident.pid for p in pinned}
        new = [c for c in _children_of(known) if c not in known and c not in left_alone]
        if not new:
            return list(left_alone.values())
        for child in new:
            try:
                p = _pin(child)
            except (ProcessLookupError, OutwatchError):
                continue
            why = guard.refusal(p.ident)
            if p.ident.ppid not in known or why:
                os.close(p.fd)
                if why:
                    left_alone[child] = KillResult(
                        child, p.ident.name, p.ident.exe, None, False, f"left alone: {why}"
                    )
                continue
            pinned.append(p)
            if stop:
                _send(p, signal.SIGSTOP)


def _result(p: _Pinned, exited: bool, note: str = "") -> KillResult:
    return KillResult(p.ident.pid, p.ident.name, p.ident.exe, p.signal, exited, note)
