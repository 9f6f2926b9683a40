"""Reading a filesystem tree as if it were "/": the live system, or a mounted image (hunt --root).

Paths are resolved the way the kernel would inside a chroot at the root: absolute symlinks and ".."
never leave the tree (an image's /lib -> usr/lib works; a link to /etc/shadow means the image's
shadow, not this host's). Only regular files are opened, non-blocking, so a FIFO or device planted
in an image cannot hang or touch anything. Nothing from the tree is ever executed.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_MAX_LINKS = 40
_MAX_LINE = 64 * 1024


class NotReadable(Exception):
    """A file exists but cannot be read: its message says why, for the partial-results notes."""


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # as seen inside the tree, e.g. "/etc/crontab"
    real: Path  # where it is on this host
    st: os.stat_result


class Tree:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path("/")
        self.offline = root is not None
        self.denied: list[str] = []  # tree paths that could not be looked into (not root)

    def resolve(self, path: str) -> Path | None:
        """Host path of `path` inside the tree, symlinks followed without escaping it; None if absent."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            real = self.root.joinpath(*done, part)
            try:
                st = os.lstat(real)
            except PermissionError:
                self.denied.append(self.inside(real.parent))
                return None
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    return None
                try:
                    target = os.readlink(real)
                except OSError:
                    return None
                if target.startswith("/"):
                    done = []
                todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            done.append(part)
        return self.root.joinpath(*done)

    def inside(self, real: Path) -> str:
        """The tree path of a host path under the root."""
        rel = os.path.relpath(real, self.root)
        return "/" if rel == "." else "/" + rel

    def entry(self, path: str) -> Entry | None:
        """The resolved file or directory at `path` (stat of the final target), or None."""
        real = self.resolve(path)
        if real is None:
            return None
        try:
            return Entry(self.inside(real), real, os.stat(real, follow_symlinks=False))
        except OSError:
            return None

    def children(self, path: str) -> list[Entry]:
        """Entries directly in directory `path` (not following symlinked entries), sorted by name."""
        real = self.resolve(path)
        if real is None:
            return []
        try:
            with os.scandir(real) as it:
                items = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        except PermissionError:
            self.denied.append(self.inside(real))
            return []
        except OSError:
            return []
        base = self.inside(real).rstrip("/")
        return [Entry(f"{base}/{name}", real / name, st) for name, st in sorted(items, key=lambda x: x[0])]

    def walk(self, path: str, max_entries: int) -> tuple[Iterator[Entry], list[str]]:
        """Every non-directory entry under `path`, depth first, without following symlinks or
        crossing into other filesystems on the live system. The list gets a note when cut short."""
        notes: list[str] = []
        return self._walk(path, max_entries, notes), notes

    def _walk(self, path: str, max_entries: int, notes: list[str]) -> Iterator[Entry]:
        top = self.entry(path)
        if top is None or not stat.S_ISDIR(top.st.st_mode):
            return
        stack = [top]
        seen = 0
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory.real) as it:
                    items = [(e.name, e.stat(follow_symlinks=False)) for e in it]
            except PermissionError:
                notes.append(f"{directory.path}: permission denied")
                continue
            except OSError:
                continue
            for name, st in items:
                seen += 1
                if seen > max_entries:
                    notes.append(f"{path}: stopped after {max_entries} entries")
                    return
                entry = Entry(f"{directory.path.rstrip('/')}/{name}", directory.real / name, st)
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev == top.st.st_dev or self.offline:
                        stack.append(entry)
                else:
                    yield entry

    def read_bytes(self, real: Path, limit: int) -> bytes:
        """Up to `limit` bytes of a regular file. Raises NotReadable."""
        with self._open(real) as f:
            return f.read(limit)

    def lines(self, real: Path) -> Iterator[str]:
        """Lines of a (possibly huge, possibly binary, possibly .gz) text file, streamed; each cut at
        64 KiB. Raises NotReadable, also midway through a corrupt .gz."""
        with self._open(real) as raw:
            f = gzip.GzipFile(fileobj=raw) if real.name.endswith(".gz") else raw
            try:
                while chunk := f.readline(_MAX_LINE):
                    yield chunk.decode("utf-8", "replace").rstrip("\r\n")
            except (OSError, EOFError, zlib.error) as e:
                raise NotReadable(f"corrupt compressed log: {e}") from e

    def read_text(self, real: Path, limit: int = 1 << 20) -> str:
        return self.read_bytes(real, limit).decode("utf-8", "replace")

    def _open(self, real: Path):
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError as e:
            raise NotReadable("permission denied") from e
        except OSError as e:
            raise NotReadable(e.strerror or str(e)) from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotReadable("not a regular file")
            return os.fdopen(fd, "rb", buffering=1 << 16)
        except BaseException:
            os.close(fd)
            raise
