"""Network sinks (tcp, unix, syslog): reconnect, spool to disk while the receiver is away, replay in order.

Order is kept by one rule: lines leave in the order redo -> spool -> queue, and the queue is only
moved to the end of the spool.

"redo" holds lines that may not have reached the receiving program when a connection broke. TCP says
nothing about what the peer program read, only about what its kernel acknowledged, so the lines
written on a stream are retained (every unacknowledged one, and RETAIN_BYTES at least) until the
socket has been quiet for QUIET seconds with an empty send queue (SIOCOUTQ). When the receiver closes
cleanly (FIN: a TCP stack resets the connection instead when the program closes with data unread),
only the unacknowledged tail is sent again; after a reset or an error, all retained lines are.
Delivery is therefore at-least-once: a receiver that resets may see up to RETAIN_BYTES of lines
twice, identical, with the same event.sequence; one that dies with more than that read by its kernel
but not by itself loses the excess. Datagram sinks (UDP, unix datagram) cannot know and keep
nothing: a datagram sent into a dead UDP port is lost, the ICMP error only arrives afterwards.

The queue is spilled to the spool when the sink is down, when the socket has accepted nothing for
STALL seconds (a receiver that stopped reading), or when the queue is half full.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import re
import select
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from outwatch.sinks.base import BATCH_BYTES, IOV_MAX, Sink
from outwatch.sinks.spool import Spool
from outwatch.sinks.syslog import LocalSyslog, Rfc5424
from outwatch.sinks.url import SinkSpec

CONNECT_TIMEOUT = 3.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
STALL = 1.0
QUIET = 1.0
RETAIN_BYTES = 4 << 20
TCP_USER_TIMEOUT_MS = 30_000  # unacknowledged data for this long breaks the connection
_POLL_ERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


def spool_name(url: str) -> str:
    """A directory name for the sink's spool: readable, and unique per URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9.-]+", "_", url).strip("_")[:80] + "-" + digest


class NetworkSink(Sink):
    def __init__(self, spec: SinkSpec, queue_max: int, spool_dir: Path, spool_max_bytes: int) -> None:
        super().__init__(spec, queue_max)
        self.spool = Spool(spool_dir / spool_name(spec.url), spool_max_bytes)
        self.dropped += self.spool.salvage_dropped
        self.resent = 0
        self._sock: socket.socket | None = None
        self._frame: Callable[[bytes], bytes] | None = None
        self._stream = True
        self._out: list[bytes] = []  # the batch being sent
        self._frames: list[bytes] = []
        self._sent = 0  # whole lines of _out sent
        self._offset = 0  # bytes of _frames[_sent] sent
        self._retained: deque[tuple[bytes, int]] = deque()  # (line, its framed size), oldest first
        self._retained_bytes = 0
        self._redo: deque[bytes] = deque()
        self._backoff = BACKOFF_FIRST
        self._next_try = 0.0
        self._progress_at = 0.0
        self._sent_at = 0.0

    @property
    def backlog(self) -> int:
        return len(self._queue) + max(len(self._out) - self._sent, 0) + len(self._redo)

    @property
    def spooled_bytes(self) -> int:
        return self.spool.pending

    def stats(self) -> dict[str, object]:
        stats = super().stats()
        stats["resent"] = self.resent
        return stats

    # -- the sink thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            if self._closing and (
                now >= self._deadline or self._drained() or (self._sock is None and now < self._next_try)
            ):
                return
            if self._reopen:
                self._reopen = False
                self._next_try = now
            if self._sock is None:
                if now >= self._next_try:
                    self._connect()
                if self._sock is None:
                    self._spill()
                    self._sleep(min(max(self._next_try - now, 0.01), 0.25), idle=False)
                    continue
            if self._sent >= len(self._out):
                self._fill()
            sock_fd = self._sock.fileno()
            if self._sent >= len(self._out):
                self._confirm(now)
                self._poll.modify(sock_fd, select.POLLIN)
                timeout = 0.05 if self._closing else QUIET / 2 if self._retained else 5.0
                events = self._wait_for_lines(timeout)
            else:
                self._poll.modify(sock_fd, select.POLLIN | select.POLLOUT)
                events = self._sleep(0.1, idle=False)
            for fd, ev in events:
                if fd == sock_fd:
                    if ev & (select.POLLIN | _POLL_ERR):
                        self._check_peer()
                    if self._sock is not None and ev & select.POLLOUT:
                        self._send()
            if self._sent < len(self._out) and (
                now - self._progress_at > STALL or len(self._queue) > self._queue_max // 2
            ):
                self._spill()

    def _drained(self) -> bool:
        return not (
            self._queue or self._redo or self._retained or self._sent < len(self._out) or self.spool.pending
        )

    def _connect(self) -> None:
        timeout = max(min(CONNECT_TIMEOUT, self._deadline - time.monotonic()), 0.1)
        try:
            self._sock = self._open(timeout)
        except OSError as exc:
            self.last_error = f"connect: {exc.strerror or exc}"
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            return
        self._sock.setblocking(False)
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._backoff = BACKOFF_FIRST
        self.connected = True

    def _open(self, timeout: float) -> socket.socket:
        spec = self.spec
        kind = spec.kind
        if kind in ("tcp", "syslog"):
            sock = socket.create_connection((spec.host, spec.port), timeout=timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
            self._stream = True
        elif kind == "syslog+udp":
            family, _, _, _, addr = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
            self._stream = False
        else:
            sock = self._open_unix(str(spec.path), timeout)
        self._frame = {
            "syslog": Rfc5424(octet_counting=True),
            "syslog+udp": Rfc5424(octet_counting=False),
            "syslog+unix": LocalSyslog(stream=self._stream),
        }.get(kind)
        return sock

    def _open_unix(self, path: str, timeout: float) -> socket.socket:
        """Connect to a unix socket, stream if it is one, else datagram (as /dev/log often is)."""
        for kind, stream in ((socket.SOCK_STREAM, True), (socket.SOCK_DGRAM, False)):
            sock = socket.socket(socket.AF_UNIX, kind)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE and stream:
                    continue
                raise
            self._stream = stream
            return sock
        raise AssertionError("unreachable")

    def _check_peer(self) -> None:
        """The receiver wrote, closed, or an error (ICMP unreachable, reset) is pending."""
        assert self._sock is not None
        # before recv (see _fail); TCP only: a unix socket's peer discards what it did not read, silently
        tcp = self._sock.family != socket.AF_UNIX and self._stream
        unacknowledged = self._unacknowledged() if tcp else None
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        if not data and self._stream:
            self._fail("connection closed by the receiver", unacknowledged)

    def _fill(self) -> None:
        if self._redo:
            lines, size = [], 0
            while self._redo and size < BATCH_BYTES and len(lines) < IOV_MAX:
                lines.append(self._redo.popleft())
                size += len(lines[-1])
        elif self.spool.pending:
            lines = self.spool.read(BATCH_BYTES)
        else:
            lines = self._take()
        frame = self._frame
        self._out = lines
        self._frames = lines if frame is None else [frame(line) for line in lines]
        self._sent = self._offset = 0
        self._progress_at = time.monotonic()

    def _send(self) -> None:
        assert self._sock is not None
        if not self._stream:
            self._send_datagrams()
            return
        bufs: list[bytes | memoryview] = list(self._frames[self._sent : self._sent + IOV_MAX])
        if self._offset:
            bufs[0] = memoryview(bufs[0])[self._offset :]
        try:
            n = self._sock.sendmsg(bufs) + self._offset
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        self._progress_at = self._sent_at = time.monotonic()
        frames, out = self._frames, self._out
        while self._sent < len(out) and n >= len(frames[self._sent]):
            n -= len(frames[self._sent])
            self._retained.append((out[self._sent], len(frames[self._sent])))
            self._retained_bytes += len(frames[self._sent])
            self._sent += 1
        self._offset = n
        # keep every unacknowledged byte, and RETAIN_BYTES at least: the peer may not have read them
        keep = max(RETAIN_BYTES, self._unacknowledged() - n)
        while self._retained and self._retained_bytes - self._retained[0][1] >= keep:
            self._retained_bytes -= self._retained.popleft()[1]
            self.delivered += 1

    def _send_datagrams(self) -> None:
        assert self._sock is not None
        while self._sent < len(self._out):
            try:
                self._sock.send(self._frames[self._sent])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    self._fail(exc.strerror or str(exc))
                    return
                self.dropped += 1  # larger than the socket can ever carry
                self.last_error = f"send: {exc.strerror}"
            else:
                self.delivered += 1
            self._sent += 1
            self._progress_at = time.monotonic()

    def _confirm(self, now: float) -> None:
        """The peer's kernel has it all and the socket was quiet: count the retained lines as delivered."""
        if not self._retained or self._sock is None:
            return
        if not self._closing and now - self._sent_at < QUIET:
            return
        if self._unacknowledged() == 0:
            self.delivered += len(self._retained)
            self._retained.clear()
            self._retained_bytes = 0

    def _unacknowledged(self) -> int:
        """Bytes written to the socket that the peer's kernel has not acknowledged (SIOCOUTQ)."""
        assert self._sock is not None
        return struct.unpack("i", fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]

    def _fail(self, why: str, unacknowledged: int | None = None) -> None:
        """Drop the connection; what it may not have delivered is sent again first after a reconnect.

        unacknowledged: given when the receiver closed cleanly (FIN: a TCP stack resets instead when
        the program closes with data unread), so everything acknowledged was read; only the lines
        overlapping the unacknowledged tail are sent again. Otherwise the whole retained window is.
        """
        assert self._sock is not None
        self.last_error = why
        self.connected = False
        self._poll.unregister(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if unacknowledged is not None:
            missing = unacknowledged - self._offset
            keep = 0
            while missing > 0 and keep < len(self._retained):
                keep += 1
                missing -= self._retained[-keep][1]
            while len(self._retained) > keep:
                self._retained.popleft()
                self.delivered += 1
        self.resent += len(self._retained)
        self._redo.extendleft(reversed([*(line for line, _ in self._retained), *self._out[self._sent :]]))
        self._retained.clear()
        self._retained_bytes = 0
        self._out, self._frames = [], []
        self._sent = self._offset = 0
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _spill(self) -> None:
        """Move the whole queue to the end of the spool."""
        while self._queue:
            lost = self.spool.append(self._take(max_lines=1 << 16))
            if lost:
                self.dropped += lost
                self.last_error = self.spool.error or f"spool full ({self.spool.max_bytes / 2**20:g} MiB)"

    def _finish(self) -> None:
        """Keep on disk, in order, everything not known to be delivered."""
        if self._sock is not None:
            self._confirm(time.monotonic())
            self._sock.close()
            self._sock = None
            self.connected = False
        front = [*(line for line, _ in self._retained), *self._out[self._sent :], *self._redo]
        self._retained.clear()
        self._out, self._frames, self._sent = [], [], 0
        self._redo.clear()
        self.dropped += self.spool.prepend(front)
        self._spill()
        self.spool.close()
