"""What every sink shares: a bounded queue filled by the tracer, drained by the sink's own thread.

put() is the tracer's hot path (called for every event from the ring-buffer reader): a length check
and a deque append, plus one eventfd write when the sink thread is asleep. A network sink's put()
never blocks (what it cannot send goes to its spool); a local sink (file, stdout) that falls behind
makes put() wait up to FULL_WAIT for room, because the usual cause is the writer thread getting too
little CPU while the reader runs flat out, and meanwhile the backlog waits in the kernel's ring
buffer, which is larger than this queue. Only then is a line counted as dropped. A sink thread that
emptied its queue after a big batch lingers LINGER seconds before it sleeps, so under a steady stream
it takes batches on its own and put() makes no system call; after a trickle it sleeps at once, so a
lone line is written as soon as it comes.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import sys
import threading
import time
import traceback
from collections import deque

from outwatch.sinks.url import SinkSpec

BATCH_BYTES = 256 << 10  # one write / writev / sendmsg carries at most about this much
IOV_MAX = 1024  # Linux's limit on buffers per writev/sendmsg
LINGER = 0.002  # after the queue drains, poll it this long before asking put() for a wake-up
LINGER_AFTER = 8  # ... but only after a batch of at least this many lines: a trickle is woken at once
FULL_WAIT = 1.0  # a local sink's full queue: how long put() waits for room before dropping
LOSS_REPORT_EVERY = 60.0  # seconds between two stderr lines about lost events


class Sink:
    waits_when_full = False  # local sinks: put() waits (up to FULL_WAIT) for room rather than dropping

    def __init__(self, spec: SinkSpec, queue_max: int) -> None:
        self.spec = spec
        self.delivered = 0
        self.dropped = 0  # counted by the sink thread: write failures, spool full
        self.connected = False
        self.last_error: str | None = None
        self._queue: deque[bytes] = deque()
        self._queue_max = queue_max
        self._overflow = 0  # counted by put(): the queue was full
        self._overflow_lock = threading.Lock()
        self._room = threading.Event()  # set by the sink thread each time it takes a batch
        self._stalled = False
        self._idle = False
        self._last_batch = 0  # lines in the last batch taken
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poll = select.poll()
        self._poll.register(self._wake_fd, select.POLLIN)
        self._reopen = False
        self._closing = False
        self._deadline = math.inf
        self._reported_lost = 0
        self._reported_at = -math.inf
        self._thread = threading.Thread(target=self._main, name=f"outwatch-sink {spec.url}", daemon=True)

    def put(self, line: bytes) -> None:
        queue = self._queue
        if len(queue) >= self._queue_max and self.waits_when_full and not self._stalled:
            self._wait_for_room()
        if len(queue) < self._queue_max:
            queue.append(line)
            if self._idle:
                self._idle = False
                os.eventfd_write(self._wake_fd, 1)
        else:
            with self._overflow_lock:
                self._overflow += 1

    def _wait_for_room(self) -> None:
        """Wait for the sink thread to take a batch; a writer that took nothing for FULL_WAIT is
        stalled (a stopped reader on a pipe), and put() drops without waiting until it moves again."""
        deadline = time.monotonic() + FULL_WAIT
        while len(self._queue) >= self._queue_max and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0 or not self._thread.is_alive():
                self._stalled = True
                return
            self._room.clear()
            self._room.wait(min(left, 0.05))

    def start(self) -> None:
        self._thread.start()

    def request_reopen(self) -> None:
        self._reopen = True
        os.eventfd_write(self._wake_fd, 1)

    def begin_close(self, deadline: float) -> None:
        self._deadline = deadline
        self._closing = True
        os.eventfd_write(self._wake_fd, 1)

    def join(self, timeout: float) -> bool:
        self._thread.join(max(timeout, 0.0))
        return not self._thread.is_alive()

    def _take(self, max_bytes: int = BATCH_BYTES, max_lines: int = IOV_MAX) -> list[bytes]:
        """Pop a batch of lines off the queue (the only consumer is this sink's thread)."""
        queue = self._queue
        lines: list[bytes] = []
        size = 0
        try:
            while size < max_bytes and len(lines) < max_lines:
                line = queue.popleft()
                lines.append(line)
                size += len(line)
        except IndexError:
            pass
        if lines:
            self._stalled = False
            self._room.set()
            self._last_batch = len(lines)
        return lines

    def _sleep(self, timeout: float, idle: bool) -> list[tuple[int, int]]:
        """Wait for the sink's fds (the wake fd and whatever the sink registered).

        With idle=True, put() wakes the thread; otherwise only close/reopen and the timeout do
        (a sink that is down does not want a wake-up per event).
        """
        self._report_losses()
        if idle:
            self._idle = True
            if self._queue:
                self._idle = False
                return []
        events = self._poll.poll(timeout * 1000)
        self._idle = False
        if any(fd == self._wake_fd for fd, _ in events):
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)
        return events

    def lost(self) -> int:
        return self.dropped + self._overflow

    @property
    def gone(self) -> bool:
        """Nothing written here can ever be read again (a pipe whose reader exited)."""
        return False

    def loss_message(self, lost: int) -> str:
        why = f"last error: {self.last_error}" if self.last_error else "its queue was full"
        return f"outwatch: output {self.spec.url}: {lost} events lost ({why})"

    def _report_losses(self) -> None:
        """Say on stderr that events are being lost, at most once a LOSS_REPORT_EVERY."""
        lost = self.lost()
        if lost > self._reported_lost and time.monotonic() - self._reported_at >= LOSS_REPORT_EVERY:
            print(f"{self.loss_message(lost)}, so far", file=sys.stderr)
            self._reported_lost, self._reported_at = lost, time.monotonic()

    def _wait_for_lines(self, timeout: float) -> list[tuple[int, int]]:
        """The queue is empty: after a big batch, linger (no wake-ups asked: under a stream the next
        lines are taken in a batch without a wake-up per put), then sleep until put() or timeout."""
        if self._last_batch >= LINGER_AFTER:
            self._last_batch = 0
            events = self._sleep(LINGER, idle=False)
            if self._queue or events:
                return events
        return self._sleep(timeout, idle=True)

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug must not take the tracer down; say what happened
            self.last_error = f"internal error: {exc!r}"
            traceback.print_exc(file=sys.stderr)
        finally:
            self._finish()

    def _run(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Called on the sink thread when it ends: flush or keep what is left, release what it holds."""

    def release(self) -> None:
        """After the thread ended: put() no longer writes the wake fd (the thread is not idle)."""
        os.close(self._wake_fd)

    @property
    def backlog(self) -> int:
        """Lines accepted but neither delivered nor kept on disk."""
        return len(self._queue)

    @property
    def spooled_bytes(self) -> int:
        return 0

    def stats(self) -> dict[str, object]:
        return {
            "url": self.spec.url,
            "delivered": self.delivered,
            "queued": self.backlog,
            "spooled_bytes": self.spooled_bytes,
            "dropped": self.lost(),
            "connected": self.connected,
            "last_error": self.last_error,
        }
