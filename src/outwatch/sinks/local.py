"""stdout and file sinks: whole lines with writev, so a line is never split between writes or files.

A file is opened O_APPEND and reopened on reopen() (SIGHUP) and when the path no longer names the
open file (logrotate's `create` mode renamed it away): the path's (st_dev, st_ino) is compared with
the open file's at most once a second, between batches. Lines written between the rename and the
check land, whole, in the renamed file. copytruncate is never needed nor supported.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time

from outwatch.errors import ExitCode, OutwatchError
from outwatch.sinks.base import IOV_MAX, Sink
from outwatch.sinks.url import SinkSpec

FILE_MODE = 0o640  # events carry command lines: not for every local user
ROTATION_CHECK = 1.0  # seconds between two stat()s of the path


def write_lines(fd: int, lines: list[bytes]) -> int:
    """writev all lines, finishing partial writes; return how many whole lines were written.

    On an error the OSError is raised with `lines_written` set on it.
    """
    done, offset = 0, 0
    while done < len(lines):
        bufs: list[bytes | memoryview] = list(lines[done : done + IOV_MAX])
        if offset:
            bufs[0] = memoryview(bufs[0])[offset:]
        try:
            n = os.writev(fd, bufs) + offset
        except BlockingIOError:  # a terminal or pipe someone else made non-blocking
            select.select([], [fd], [])
            continue
        except OSError as exc:
            exc.lines_written = done  # type: ignore[attr-defined]
            raise
        while done < len(lines) and n >= len(lines[done]):
            n -= len(lines[done])
            done += 1
        offset = n
    return done


class LocalSink(Sink):
    """stdout (fd 1) or an appended file."""

    waits_when_full = True

    def __init__(self, spec: SinkSpec, queue_max: int) -> None:
        super().__init__(spec, queue_max)
        self._fd = 1
        self._identity: tuple[int, int] = (0, 0)
        self._next_check = 0.0
        self._dead = False
        if spec.kind == "file":
            self._open_file(initial=True)
        elif stat.S_ISFIFO(os.fstat(1).st_mode):
            self._poll.register(1, 0)  # no events asked: poll still says POLLERR once the reader has gone
        self.connected = True

    def _open_file(self, initial: bool = False) -> None:
        assert self.spec.path is not None
        try:
            fd = os.open(self.spec.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            if initial:
                bad_path = exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)
                code = ExitCode.USAGE if bad_path else ExitCode.FAILURE
                raise OutwatchError(
                    f"cannot open output file {self.spec.path}: {exc.strerror}",
                    hint="check that its directory exists and is writable (mkdir -p -m 0750 DIR)",
                    code=code,
                ) from None
            self.last_error = f"reopen {self.spec.path}: {exc.strerror}"
            self.connected = False
            return
        if self._fd > 2:
            os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self.connected = True

    def _check_rotation(self) -> None:
        now = time.monotonic()
        if not self._reopen and now < self._next_check and self.connected:
            return
        self._next_check = now + ROTATION_CHECK
        if self._reopen:
            self._reopen = False
            self._open_file()
            return
        try:
            st = os.stat(self.spec.path)  # type: ignore[arg-type]
            renamed = (st.st_dev, st.st_ino) != self._identity
        except FileNotFoundError:
            renamed = True
        if renamed or not self.connected:
            self._open_file()

    def _run(self) -> None:
        while True:
            lines = self._take()
            if not lines:
                if self._closing:
                    return
                if any(fd == 1 and ev & select.POLLERR for fd, ev in self._wait_for_lines(1.0)):
                    self._poll.unregister(1)
                    self._dead, self.connected = True, False
                    self.last_error = "the reader of the pipe has gone"
                if self._reopen and self.spec.kind == "file":
                    self._check_rotation()
                continue
            if self._dead or (self._closing and time.monotonic() > self._deadline):
                self.dropped += len(lines)
                continue
            if self.spec.kind == "file":
                self._check_rotation()
            self._write(lines)

    @property
    def gone(self) -> bool:
        return self._dead

    def _write(self, lines: list[bytes]) -> None:
        try:
            self.delivered += write_lines(self._fd, lines)
        except OSError as exc:
            written = exc.lines_written  # type: ignore[attr-defined]
            self.delivered += written
            self.dropped += len(lines) - written
            self.last_error = f"write: {exc.strerror}"
            if self.spec.kind == "stdout":
                self._dead = exc.errno == errno.EPIPE  # nobody reads any more: count, never retry
                self.connected = not self._dead
            else:
                self.connected = False  # reopened at the next batch

    def _finish(self) -> None:
        self.dropped += len(self._queue)
        self._queue.clear()
        if self._fd > 2:
            os.close(self._fd)
            self._fd = -1
