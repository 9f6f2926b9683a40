"""Syslog sinks against a real rsyslogd (Debian's rsyslog package), run as a child with a private config.

The config loads only the inputs named here (a loopback TCP and UDP port, a unix socket in the test's
directory) and writes only to files in the test's directory: the machine's /dev/log and /var/log are
not touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_sinks import check_line, event_line, wait_until

from outwatch.sinks import open_sinks

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.tcp_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.unix_path = tmp / "log.sock"
        self.conf = tmp / "rsyslog.conf"
        (tmp / "work").mkdir()
        # %msg% of a local (/dev/log-style) message starts with the space after "tag:"; cut it.
        self.conf.write_text(f"""
global(workDirectory="{tmp}/work" maxMessageSize="64k")
module(load="imtcp")
module(load="imudp")
module(load="imuxsock" SysSock.Use="off")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="tcp")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="udp" rcvbufSize="4m")
input(type="imuxsock" Socket="{self.unix_path}" RateLimit.Interval="0" ruleset="unix")
template(name="fields" type="string" string="%syslogseverity%|%app-name%|%procid%|%msgid%|%msg%\\n")
template(name="local" type="string" string="%syslogseverity%|%app-name%|%procid%|-|%msg:2:$%\\n")
ruleset(name="tcp") {{ action(type="omfile" file="{tmp}/tcp.log" template="fields") }}
ruleset(name="udp") {{ action(type="omfile" file="{tmp}/udp.log" template="fields") }}
ruleset(name="unix") {{ action(type="omfile" file="{tmp}/unix.log" template="local") }}
""")
        self.proc: subprocess.Popen | None = None
        self.log = (tmp / "rsyslogd.out").open("ab")

    def start(self) -> None:
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "pid")],
                                     stdout=self.log, stderr=self.log)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"rsyslogd exited: {(self.dir / 'rsyslogd.out').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
            except OSError:
                return False
            return self.unix_path.exists()

        wait_until(listening, "rsyslogd to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self, name: str) -> list[tuple[list[bytes], bytes]]:
        """(severity, app, procid, msgid) and MSG of every message written to name.log."""
        path = self.dir / f"{name}.log"
        lines = path.read_bytes().splitlines() if path.exists() else []
        return [(parts[:4], parts[4]) for parts in (line.split(b"|", 4) for line in lines)]


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.close()


@pytest.mark.parametrize("stop_at", [999, 1000], ids=["stopped-in-a-pause", "stopped-in-a-burst"])
def test_syslog_tcp_survives_a_receiver_restart(rsyslog: Rsyslog, tmp_path: Path, stop_at: int) -> None:
    """Stopped while the sink is idle, rsyslog closes cleanly (FIN) and nothing needs sending twice;
    stopped in a burst it resets the connection and the sink sends its retained window again."""
    n = 3000
    lines = [event_line(i) for i in range(n)]
    sinks = open_sinks([f"syslog://127.0.0.1:{rsyslog.tcp_port}"], spool_dir=tmp_path / "spool")
    try:
        for i, line in enumerate(lines):
            sinks.emit(line)
            if i % 50 == 49:
                time.sleep(0.02)  # a steady stream, so the restart falls in the middle of it
            if i == stop_at:
                rsyslog.stop()  # mid-stream; lines keep coming while it is down
            if i == 1800:
                rsyslog.start()
        wait_until(lambda: {check_line(m)["event"]["sequence"] for _, m in rsyslog.received("tcp")} >= set(range(n)),
                   "all events at rsyslog after its restart")
    finally:
        sinks.close()
    received = rsyslog.received("tcp")
    msgs = [m for _, m in received]
    seqs = [check_line(m)["event"]["sequence"] for m in msgs]
    assert set(seqs) == set(range(n))  # all N arrived
    first_seen: dict[int, bytes] = {}
    order = []
    for seq, msg in zip(seqs, msgs, strict=True):
        if seq in first_seen:
            assert msg == first_seen[seq]  # a duplicate is the same event: event.sequence reveals it
        else:
            first_seen[seq] = msg
            order.append(seq)
    assert order == list(range(n))  # in order
    assert all(m + b"\n" == lines[s] for s, m in zip(seqs, msgs, strict=True))  # MSG is the line, byte for byte
    fields, _ = received[0]
    assert fields == [b"3", b"outwatch", str(os.getpid()).encode(), b"outwatch.network"]  # high -> err (3)
    stats = sinks.stats()["sinks"][0]
    assert stats["dropped"] == 0 and stats["spooled_bytes"] == 0
    assert stats["delivered"] >= n


def test_syslog_udp_and_local_socket(rsyslog: Rsyslog, tmp_path: Path) -> None:
    n = 300
    lines = [event_line(i, severity="low") for i in range(n)]
    sinks = open_sinks([f"syslog+udp://127.0.0.1:{rsyslog.udp_port}", f"syslog+unix://{rsyslog.unix_path}"],
                       spool_dir=tmp_path / "spool")
    try:
        for line in lines:
            sinks.emit(line)
        wait_until(lambda: len(rsyslog.received("udp")) == n and len(rsyslog.received("unix")) == n,
                   "every datagram at rsyslog")
    finally:
        sinks.close()
    for name, msgid in (("udp", b"outwatch.network"), ("unix", b"-")):
        received = rsyslog.received(name)
        assert [m + b"\n" for _, m in received] == lines
        assert received[0][0] == [b"5", b"outwatch", str(os.getpid()).encode(), msgid]  # low -> notice (5)
