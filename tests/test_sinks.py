"""Sinks against real receivers: TCP and unix listeners, a stalled reader, a full spool, file rotation, stdout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from conftest_sinks import DatagramReceiver, StreamReceiver, check_line, event_line, wait_until

from outwatch.errors import ExitCode, OutwatchError
from outwatch.sinks import open_sinks, parse_output
from outwatch.sinks.spool import Spool
from outwatch.sinks.syslog import Rfc5424


def sequences(lines: list[bytes]) -> list[int]:
    return [check_line(line)["event"]["sequence"] for line in lines]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("-", "stdout"),
        ("stdout", "stdout"),
        ("/var/log/outwatch/events.ndjson", "file"),
        ("events.ndjson", "file"),
        ("file:///var/log/x.ndjson", "file"),
        ("tcp://127.0.0.1:9000", "tcp"),
        ("tcp://[::1]:9000", "tcp"),
        ("unix:///run/vector.sock", "unix"),
        ("unix:///dev/log", "syslog+unix"),
        ("syslog://siem.example:6514", "syslog"),
        ("syslog+udp://10.0.0.1", "syslog+udp"),
    ],
)
def test_output_urls(url: str, kind: str) -> None:
    assert parse_output(url).kind == kind


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("tcp://127.0.0.1", "no port"),
        ("tcp://127.0.0.1:99999", "port"),
        ("tcp://:9000", "no host"),
        ("tcp://h:1/path", "only HOST:PORT"),
        ("tcp:127.0.0.1:9000", "expected tcp://"),
        ("unix://run/x.sock", "absolute path"),
        ("http://siem:80", "unknown scheme 'http'"),
        ("", "empty"),
    ],
)
def test_bad_output_urls_say_what_is_wrong(url: str, what: str) -> None:
    with pytest.raises(OutwatchError) as info:
        open_sinks([url])
    assert info.value.code == ExitCode.USAGE
    assert what in info.value.message
    assert "tcp://HOST:PORT" in info.value.hint


def test_output_given_twice_and_unopenable_file(tmp_path: Path) -> None:
    with pytest.raises(OutwatchError, match="given twice"):
        open_sinks(["-", "stdout"])
    with pytest.raises(OutwatchError, match="cannot open output file") as info:
        open_sinks([str(tmp_path / "missing-dir" / "events.ndjson")])
    assert info.value.code == ExitCode.USAGE


def test_syslog_rfc5424_octet_counting() -> None:
    line = event_line(7, severity="critical")
    framed = Rfc5424(octet_counting=True)(line)
    length, _, message = framed.partition(b" ")
    assert int(length) == len(message)
    header, _, msg = message.partition(b" - ")
    pri_version, ts, _host, app, pid, msgid = header.split(b" ")
    assert pri_version == b"<26>1"  # facility daemon (3) * 8 + severity crit (2), RFC 5424 version 1
    assert (app, pid, msgid) == (b"outwatch", str(os.getpid()).encode(), b"outwatch.network")
    assert ts.endswith(b"Z") and len(ts.split(b".")[1]) == 7  # microseconds + Z
    assert msg == line[:-1]


def test_tcp_and_unix_sinks_deliver_every_line_in_order(tmp_path: Path) -> None:
    tcp = StreamReceiver.tcp()
    unix_stream = StreamReceiver.unix(tmp_path / "stream.sock")
    unix_dgram = DatagramReceiver(tmp_path / "dgram.sock")
    lines = [event_line(i) for i in range(2000)]
    try:
        sinks = open_sinks(
            [f"tcp://127.0.0.1:{tcp.port}", f"unix://{tmp_path}/stream.sock", f"unix://{tmp_path}/dgram.sock"],
            spool_dir=tmp_path / "spool",
        )
        for line in lines:
            sinks.emit(line)
        wait_until(lambda: len(tcp.lines()) == len(lines) and len(unix_stream.lines()) == len(lines)
                   and len(unix_dgram.datagrams) == len(lines), "every line at every receiver")
        sinks.close()
        assert tcp.lines() == lines and not tcp.fragments()
        assert unix_stream.lines() == lines and not unix_stream.fragments()
        assert unix_dgram.datagrams == lines  # one event per datagram, detected as SOCK_DGRAM
        stats = sinks.stats()
        assert [s["delivered"] for s in stats["sinks"]] == [len(lines)] * 3
        assert stats["dropped"] == 0 and stats["spooled_bytes"] == 0
    finally:
        tcp.close()
        unix_stream.close()
        unix_dgram.close()


def test_stalled_receiver_spools_then_delivers(tmp_path: Path) -> None:
    receiver = StreamReceiver.tcp(rcvbuf=4096)
    receiver.gate.clear()  # accepts the connection, reads nothing
    lines = [event_line(i, pad=3000) for i in range(4000)]  # ~12 MB: far more than the socket buffers hold
    try:
        sinks = open_sinks([f"tcp://127.0.0.1:{receiver.port}"], spool_dir=tmp_path / "spool")
        wait_until(lambda: receiver.connections == 1, "the connection")
        for line in lines:
            sinks.emit(line)  # never blocks: this loop ends while the receiver reads nothing
        wait_until(lambda: sinks.stats()["spooled_bytes"] > 1 << 20, "the stalled lines to reach the spool")
        assert not receiver.size
        spool_dir = next((tmp_path / "spool").iterdir())
        assert any(p.suffix == ".ndjson" and p.stat().st_size for p in spool_dir.iterdir())
        receiver.gate.set()
        wait_until(lambda: receiver.size >= sum(map(len, lines)), "delivery after the receiver resumed")
        sinks.close()
        assert receiver.lines() == lines and not receiver.fragments()  # in order, nothing lost, nothing twice
        stats = sinks.stats()["sinks"][0]
        assert stats["dropped"] == 0 and stats["resent"] == 0 and stats["spooled_bytes"] == 0
        assert receiver.connections == 1
    finally:
        receiver.close()


def test_receiver_that_dies_while_stalled_loses_nothing(tmp_path: Path) -> None:
    receiver = StreamReceiver.tcp(rcvbuf=4096)
    lines = [event_line(i, pad=3000) for i in range(2000)]  # ~6 MB
    try:
        sinks = open_sinks([f"tcp://127.0.0.1:{receiver.port}"], spool_dir=tmp_path / "spool")
        for line in lines[:200]:
            sinks.emit(line)
        wait_until(lambda: len(receiver.lines()) == 200, "the first lines")
        receiver.gate.clear()
        for line in lines[200:]:
            sinks.emit(line)
        wait_until(lambda: sinks.stats()["spooled_bytes"] > 0, "the sink to notice the stall")
        receiver.kill()  # dies with unread data: the connection is reset
        receiver.gate.set()  # "restarted": the next connection is read
        wait_until(lambda: {orjson.loads(x)["event"]["sequence"] for x in receiver.lines()} == set(range(len(lines))),
                   "every line after the receiver came back")
        sinks.close()
    finally:
        receiver.close()
    first: dict[int, bytes] = {}
    for line in receiver.lines():
        seq = check_line(line)["event"]["sequence"]
        assert first.setdefault(seq, line) == line  # a duplicate is the same line
    assert list(first) == list(range(len(lines)))  # first occurrences in order
    assert receiver.connections == 2 and sinks.stats()["sinks"][0]["resent"] > 0
    # NDJSON over TCP: the line being read when the connection broke may reach the receiver cut short
    # (without its newline, at the end of that connection); it is sent again whole
    for fragment in receiver.fragments():
        assert any(line.startswith(fragment) for line in lines)


def test_full_spool_counts_reports_and_keeps_the_oldest(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    holder = socket.socket()  # bound, not listening: connects are refused until listen()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    lines = [event_line(i, pad=800) for i in range(400)]
    sinks = open_sinks([url], spool_dir=tmp_path / "spool", spool_max_bytes=128 << 10)
    for line in lines:
        sinks.emit(line)

    def kept() -> int:
        return sum(p.read_bytes().count(b"\n") for p in (tmp_path / "spool").glob("*/*.ndjson"))

    wait_until(lambda: sinks.stats()["dropped"] + kept() == len(lines), "every line spooled or counted")
    stats = sinks.stats()["sinks"][0]
    assert stats["connected"] is False and stats["last_error"]
    assert 0 < kept() < len(lines)
    assert stats["spooled_bytes"] <= 128 << 10
    sinks.close()
    kept_lines = kept()
    err = capfd.readouterr().err
    assert f"{len(lines) - kept_lines} events lost" in err  # at close
    assert "events lost (last error: " in err and ", so far" in err  # and while it happened
    assert "sent at the next start" in err

    receiver = StreamReceiver(holder)  # the receiver comes up on the same address; next start replays
    try:
        again = open_sinks([url], spool_dir=tmp_path / "spool", spool_max_bytes=128 << 10)
        again.emit(event_line(10_000))
        wait_until(lambda: len(receiver.lines()) == kept_lines + 1, "the spool's replay")
        again.close()
        assert sequences(receiver.lines()) == [*range(kept_lines), 10_000]  # the oldest kept, replayed first
    finally:
        receiver.close()


def test_spool_close_keeps_unread_part_and_prepended_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", 1 << 20)
    assert spool.append([b"1\n", b"2\n", b"3\n"]) == 0
    assert spool.read(2) == [b"1\n"]
    assert spool.prepend([b"0\n"]) == 0
    with pytest.raises(OutwatchError, match="in use by another outwatch"):
        Spool(tmp_path / "s", 1 << 20)  # a second sink (or process) on the same spool
    spool.close()
    reopened = Spool(tmp_path / "s", 1 << 20)
    assert reopened.read(1 << 10) == [b"0\n", b"2\n", b"3\n"]  # "1" was read before the close
    assert reopened.read(1 << 10) == []
    assert reopened.append([b"4\n"]) == 0
    assert reopened.read(1 << 10) == [b"4\n"]
    reopened.close()


def test_file_sink_rename_rotation_loses_and_splits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sinks = open_sinks([str(path)])
    total = 30_000
    done = threading.Event()

    def produce() -> None:
        for i in range(total):
            sinks.emit(event_line(i))
            if i % 100 == 0:
                time.sleep(0.01)  # spread the lines over the rotations
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    rotated = []
    while not done.is_set():
        time.sleep(0.4)
        target = tmp_path / f"events.ndjson.{len(rotated) + 1}"
        path.rename(target)  # logrotate's create mode: rename, create the new file, signal (or not)
        path.touch(mode=0o640)
        rotated.append(target)
        if len(rotated) % 2:
            sinks.reopen()  # half the rotations come with SIGHUP, half are noticed by the rename check
    producer.join()
    sinks.close()
    assert len(rotated) >= 3
    files = [*rotated, path]
    seqs: list[int] = []
    for f in files:
        data = f.read_bytes()
        assert not data or data.endswith(b"\n")  # no line split across files
        seqs += sequences(data.splitlines())
    assert sorted(seqs) == list(range(total))
    assert sum(1 for f in files if f.stat().st_size) >= 3  # the lines really went to several files
    assert sinks.stats()["dropped"] == 0


def test_stdout_sink_and_a_reader_that_goes_away() -> None:
    code = (
        "import sys, orjson\n"
        "from outwatch.sinks import open_sinks\n"
        "s = open_sinks(['-'])\n"
        "for i in range(int(sys.argv[1])):\n"
        "    event = {'@timestamp': '2026-01-01T00:00:00.000000001Z', 'event': {'sequence': i}}\n"
        "    s.emit(orjson.dumps(event) + b'\\n')\n"
        "s.close()\n"
        "print(orjson.dumps(s.stats()).decode(), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "5000"], capture_output=True, check=True)
    assert sequences(done.stdout.splitlines()) == list(range(5000))
    # `| head -1`: the pipe closes early; the sink counts the rest as dropped and nothing crashes
    head = subprocess.Popen([sys.executable, "-c", code, "200000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert head.stdout is not None
    first = head.stdout.readline()
    head.stdout.close()
    err = head.stderr.read() if head.stderr else b""
    assert head.wait(60) == 0, err
    assert check_line(first)["event"]["sequence"] == 0
    stats = orjson.loads(err.splitlines()[-1])
    assert stats["dropped"] > 0 and stats["delivered"] + stats["dropped"] == 200000
    assert b"Traceback" not in err


def test_a_file_output_that_falls_behind_slows_the_reader_instead_of_dropping(tmp_path: Path) -> None:
    """A tiny queue and a fast producer: put() waits for the writer, nothing is dropped."""
    path = tmp_path / "events.ndjson"
    sinks = open_sinks([str(path)], spool_dir=tmp_path / "spool", queue_max=8)
    lines = [event_line(i) for i in range(20_000)]
    for line in lines:
        sinks.emit(line)
    sinks.close()
    stats = sinks.stats()
    assert stats["dropped"] == 0
    assert path.read_bytes().splitlines(keepends=True) == lines
