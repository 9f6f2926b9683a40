"""Helpers of the sink tests: event lines, real receivers on loopback and unix sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson
import pytest

LINE_CAP = 16 << 10


def event_line(seq: int, pad: int = 0, severity: str = "high") -> bytes:
    """An ECS-shaped line as the tracer writes it: @timestamp first, one object, a newline."""
    ns = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
    event = {
        "@timestamp": stamp,
        "ecs": {"version": "9.4.0"},
        "event": {"kind": "alert", "module": "outwatch", "dataset": "outwatch.network", "sequence": seq},
        "process": {"pid": 4242, "args": ["/tmp/x", "-c", "a\nb\"c|d"], "name": "x" * pad},
        "outwatch": {"severity": severity, "score": 80},
    }
    return orjson.dumps(event) + b"\n"


def check_line(line: bytes) -> dict:
    """Every delivered line: under the cap, one JSON object, @timestamp RFC 3339."""
    assert len(line) < LINE_CAP
    event = orjson.loads(line)
    ts = event["@timestamp"]
    assert ts.endswith("Z")
    datetime.fromisoformat(ts[:26] + "+00:00")  # Python's parser takes at most microseconds
    return event


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll pred; fail the test (not a timing assertion: only a bound on a hang) if it never holds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


class StreamReceiver:
    """A real stream listener (TCP on loopback, or unix) that collects every byte, connection by connection,
    and splits them into lines per connection as an NDJSON receiver does.

    gate: while cleared, the receiver accepts but does not read (a stalled SIEM).
    kill(): the current connection is closed with whatever it did not read (the kernel resets it),
    as when a receiver dies; the next connection is served as usual.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[bytearray] = []  # one buffer per connection
        self.gate = threading.Event()
        self.gate.set()
        self._kill = threading.Event()
        self._stop = False
        sock.listen(8)
        sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def tcp(cls, rcvbuf: int | None = None) -> StreamReceiver:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", 0))
        return cls(sock)

    @classmethod
    def unix(cls, path: Path) -> StreamReceiver:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        return cls(sock)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def connections(self) -> int:
        return len(self.received)

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.received)

    def lines(self) -> list[bytes]:
        """Every complete line, in order; a connection's unterminated end is not a line."""
        out: list[bytes] = []
        for data in self.received:
            out += bytes(data[: data.rfind(b"\n") + 1]).splitlines(keepends=True)
        return out

    def fragments(self) -> list[bytes]:
        """What connections ended with, after their last newline (a line cut by a broken connection)."""
        return [bytes(data[data.rfind(b"\n") + 1 :]) for data in self.received if not data.endswith(b"\n")]

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            data = bytearray()
            self.received.append(data)
            with conn:
                conn.settimeout(0.2)
                while not self._stop:
                    if self._kill.is_set():
                        self._kill.clear()
                        break
                    if not self.gate.is_set():
                        time.sleep(0.02)
                        continue
                    try:
                        chunk = conn.recv(1 << 16)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    data += chunk

    def kill(self) -> None:
        self._kill.set()
        wait_until(lambda: not self._kill.is_set(), "the receiver to drop its connection")

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


class DatagramReceiver:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.datagrams: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.datagrams.append(self.sock.recv(1 << 17))
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()
