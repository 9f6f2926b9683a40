"""A size-capped, append-only on-disk FIFO of NDJSON lines: one directory per network sink.

Lines are kept as they are (so a spool is readable with `cat | jq`) in numbered segment files;
segments are read oldest first and deleted once read. Only the sink's own thread touches a spool,
and an flock on the directory keeps a second outwatch away from it.

Crash semantics: a clean close() folds the read position into the files, so the next start replays
exactly what was not delivered. After a crash the partly read oldest segment is replayed from its
start: duplicates, which event.sequence reveals, never a loss of what reached the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from outwatch.errors import OutwatchError

_SUFFIX = ".ndjson"
_FIRST = 10**12  # segment numbers start high so that lines can be put back in front (prepend)


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(max(max_bytes // 16, 64 << 10), 8 << 20)
        self.salvage_dropped = 0  # torn lines cut from a segment a crash left half-written
        self.error: str | None = None  # the last write that failed (disk full...)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OutwatchError(
                f"cannot use spool directory {directory}: {exc.strerror}",
                hint="give a writable --spool-dir (or spool_dir in [watch]), or run as root",
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise OutwatchError(
                f"spool directory {directory} is in use by another outwatch process",
                hint="give this instance its own --spool-dir",
            ) from None
        self._segments: list[list[int]] = []  # [number, size], oldest first
        for path in sorted(directory.glob("*" + _SUFFIX)):
            if path.stem.isdigit():
                self._segments.append([int(path.stem), self._salvage(path)])
        self._read_offset = 0
        self._tail_fd = -1
        self.size = sum(size for _, size in self._segments)  # bytes on disk, read or not

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{_SUFFIX}"

    def _salvage(self, path: Path) -> int:
        """Cut a torn last line (the process died mid-write) so every kept line is whole."""
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            self.salvage_dropped += 1
            os.truncate(path, keep)
        return keep

    @property
    def pending(self) -> int:
        """Bytes not yet read."""
        return self.size - self._read_offset

    def append(self, lines: list[bytes]) -> int:
        """Keep what fits under the cap, in order; return how many lines were not kept."""
        room = self.max_bytes - self.size
        fit = 0
        while fit < len(lines) and len(lines[fit]) <= room:
            room -= len(lines[fit])
            fit += 1
        done = 0
        try:
            while done < fit:
                if self._tail_fd < 0 or self._segments[-1][1] >= self.segment_bytes:
                    self._new_tail()
                tail = self._segments[-1]
                end, size = done, 0
                while end < fit and (size == 0 or tail[1] + size + len(lines[end]) <= self.segment_bytes):
                    size += len(lines[end])
                    end += 1
                self._write(tail, lines[done:end])
                done = end
        except OSError as exc:
            self.error = f"spool {self.directory}: {exc.strerror}"
        return len(lines) - done

    def _new_tail(self) -> None:
        if self._tail_fd >= 0:
            os.close(self._tail_fd)
        number = self._segments[-1][0] + 1 if self._segments else _FIRST
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self._tail_fd = os.open(self._path(number), flags, 0o600)
        self._segments.append([number, 0])

    def _write(self, tail: list[int], lines: list[bytes]) -> None:
        data = b"".join(lines)
        try:
            written = os.write(self._tail_fd, data)
            while written < len(data):
                written += os.write(self._tail_fd, data[written:])
        except OSError:
            os.ftruncate(self._tail_fd, tail[1])  # no torn line left behind
            raise
        tail[1] += len(data)
        self.size += len(data)

    def read(self, max_bytes: int) -> list[bytes]:
        """The oldest unread lines, about max_bytes of them (at least one); [] when empty."""
        while self._segments:
            number, size = self._segments[0]
            if self._read_offset < size:
                break
            self._drop_head()
        else:
            return []
        want = max_bytes
        with open(self._path(number), "rb") as f:
            while True:
                f.seek(self._read_offset)
                chunk = f.read(want)
                cut = chunk.rfind(b"\n") + 1
                if cut or len(chunk) < want:
                    break
                want *= 2  # a line longer than max_bytes
        self._read_offset += cut
        return chunk[:cut].splitlines(keepends=True)

    def _drop_head(self) -> None:
        number, size = self._segments.pop(0)
        if not self._segments and self._tail_fd >= 0:
            os.close(self._tail_fd)
            self._tail_fd = -1
        os.unlink(self._path(number))
        self.size -= size
        self._read_offset = 0

    def prepend(self, lines: list[bytes]) -> int:
        """Put lines back in front of everything (at close: what was in flight); return how many did not fit.

        A partly read oldest segment is rewritten without its read part, so the files alone say
        what is left and no cursor file is needed.
        """
        rest, folded = b"", None
        if self._segments and self._read_offset:
            folded = self._segments[0]
            with open(self._path(folded[0]), "rb") as f:
                f.seek(self._read_offset)
                rest = f.read()
        room = self.max_bytes - (self.size - (folded[1] if folded else 0)) - len(rest)
        fit = 0
        while fit < len(lines) and len(lines[fit]) <= room:
            room -= len(lines[fit])
            fit += 1
        data = b"".join(lines[:fit]) + rest
        if not data:
            if folded is not None:
                self._drop_head()
            return len(lines)
        number = self._segments[0][0] - 1 if self._segments else _FIRST
        tmp = self.directory / "prepend.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            tmp.rename(self._path(number))
        except OSError as exc:
            self.error = f"spool {self.directory}: {exc.strerror}"
            return len(lines)
        if folded is not None:
            self._segments.pop(0)
            if not self._segments and self._tail_fd >= 0:
                os.close(self._tail_fd)
                self._tail_fd = -1
            os.unlink(self._path(folded[0]))
            self.size -= folded[1]
            self._read_offset = 0
        self._segments.insert(0, [number, len(data)])
        self.size += len(data)
        return len(lines) - fit

    def close(self) -> None:
        if self._read_offset:
            self.prepend([])
        if self._tail_fd >= 0:
            os.close(self._tail_fd)
            self._tail_fd = -1
        with contextlib.suppress(OSError):
            os.close(self._lock)
