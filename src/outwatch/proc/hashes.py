"""Executable sha256, computed off the hot path and cached by (device, inode, mtime).

The first connection of a new binary is reported without a hash (it is being computed); later
ones carry it. Hashing reads /proc/PID/exe, so a deleted or memfd executable is hashed too.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

from outwatch.proc.exeinfo import ExeFacts, sha256_of

_MAX_PENDING = 1024


class HashCache:
    def __init__(self) -> None:
        self._done: dict[tuple[int, int, int], str] = {}
        self._asked: set[tuple[int, int, int]] = set()
        self._queue: queue.Queue[tuple[int, ExeFacts] | None] = queue.Queue(_MAX_PENDING)
        self._thread = threading.Thread(target=self._work, name="outwatch-hash", daemon=True)
        self._thread.start()

    def get(self, pid: int, facts: ExeFacts) -> str | None:
        """The digest if known; otherwise queue it (once) and return None."""
        key = (facts.dev, facts.ino, facts.mtime_ns)
        digest = self._done.get(key)
        if digest is None and key not in self._asked:
            try:
                self._queue.put_nowait((pid, facts))
                self._asked.add(key)
            except queue.Full:
                pass
        return digest

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            pid, facts = item
            key = (facts.dev, facts.ino, facts.mtime_ns)
            try:
                self._done[key] = sha256_of(pid)
            except OSError:
                if _still_same_file(facts):
                    with contextlib.suppress(OSError):
                        self._done[key] = sha256_of(facts.path)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)


def _still_same_file(facts: ExeFacts) -> bool:
    """The path still names the file the process ran (the process itself is gone)."""
    try:
        st = os.stat(facts.path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino, st.st_mtime_ns) == (facts.dev, facts.ino, facts.mtime_ns)
