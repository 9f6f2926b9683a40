"""The live tracer on the real kernel: real programs loaded, real processes, the real NDJSON."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import Watch, loaded_outwatch_programs, require_root


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts and closes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    srv.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def _pids(out: bytes) -> tuple[int, int]:
    m = re.search(rb"pid=(\d+) ppid=(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def _to(port: int, pid: int | None = None):
    def pred(e: dict) -> bool:
        return (e.get("destination", {}).get("port") == port
                and (pid is None or e.get("process", {}).get("pid") == pid))
    pred.hint = f'"port":{port}}}'.encode()  # type: ignore[attr-defined]
    return pred


def test_short_lived_process_from_temp_dir_is_attributed(watch: Watch, listener: int, connect_once: Path,
                                                         copy_of) -> None:
    exe = copy_of(connect_once, "beacon")
    out = subprocess.run([str(exe), "127.0.0.1", str(listener)], capture_output=True, check=True).stdout
    pid, ppid = _pids(out)
    (ev,) = watch.wait_for(_to(listener, pid))
    p = ev["process"]
    assert p["executable"] == str(exe)
    assert p["args"] == [str(exe), "127.0.0.1", str(listener)]
    assert p["parent"]["pid"] == ppid == os.getpid()
    assert p["parent"]["executable"] == os.path.realpath(sys.executable)
    assert ev["event"]["outcome"] == "success"
    assert ev["network"]["transport"] == "tcp" and ev["network"]["type"] == "ipv4"
    assert ev["source"]["ip"] == "127.0.0.1" and ev["source"]["port"] > 0
    assert ev["network"]["community_id"].startswith("1:")
    assert ev["outwatch"]["process"]["provenance"]["executable"] in ("exec", "proc")
    assert ev["process"]["entity_id"] and ev["process"]["start"].endswith("Z")


def test_ipv6_tcp(watch: Watch, connect_once: Path) -> None:
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("::1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        out = subprocess.run([str(connect_once), "::1", str(port)], capture_output=True, check=True).stdout
    finally:
        srv.close()
    pid, _ = _pids(out)
    (ev,) = watch.wait_for(_to(port, pid))
    assert ev["destination"]["ip"] == "::1"
    assert ev["network"]["type"] == "ipv6" and ev["network"]["transport"] == "tcp"
    assert ev["event"]["outcome"] == "success"


def test_refused_connect_is_a_failure_with_the_reason(watch: Watch, connect_once: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # bound, not listening: refused
    try:
        out = subprocess.run([str(connect_once), "127.0.0.1", str(port)], capture_output=True).stdout
    finally:
        s.close()
    pid, _ = _pids(out)
    (ev,) = watch.wait_for(_to(port, pid))
    assert ev["event"]["outcome"] == "failure"
    assert ev["event"]["reason"].startswith("ECONNREFUSED")


def test_udp_sendto_and_udp_connect(watch: Watch, connect_once: Path) -> None:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    try:
        out1 = subprocess.run([str(connect_once), "--udp", "127.0.0.1", str(port)], capture_output=True).stdout
        out2 = subprocess.run([str(connect_once), "--udp-connect", "127.0.0.1", str(port)],
                              capture_output=True).stdout
    finally:
        u.close()
    for out in (out1, out2):
        pid, _ = _pids(out)
        (ev,) = watch.wait_for(_to(port, pid))
        assert ev["network"]["transport"] == "udp"
        assert ev["network"]["packets"] == 1


def test_udp_burst_is_counted_not_flooded(watch: Watch, connect_once: Path) -> None:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    try:
        out = subprocess.run([str(connect_once), "--udp", "--count", "10000", "127.0.0.1", str(port)],
                             capture_output=True).stdout
    finally:
        u.close()
    pid, _ = _pids(out)
    time.sleep(1.5)  # the window closes; the sweep reports the repeats
    to_port = _to(port, pid)
    events = watch.wait_for(to_port)
    deadline = time.monotonic() + 5
    while sum(e["outwatch"]["repeat"] for e in events) < 10000 and time.monotonic() < deadline:
        time.sleep(0.2)
        events = [e for e in watch.events(to_port.hint) if to_port(e)]
    assert sum(e["outwatch"]["repeat"] for e in events) == 10000
    assert len(events) <= 5
    assert events[0]["outwatch"]["repeat"] == 1  # the first send is reported at once


def test_process_that_deletes_its_executable(watch: Watch, listener: int, connect_once: Path, copy_of) -> None:
    exe = copy_of(connect_once, "dropper")
    out = subprocess.run([str(exe), "--delete-self", "--linger", "1500", "127.0.0.1", str(listener)],
                         capture_output=True).stdout
    pid, _ = _pids(out)
    (ev,) = watch.wait_for(_to(listener, pid))
    assert not exe.exists()
    assert ev["process"]["executable"] == str(exe)
    assert ev["outwatch"]["process"]["exe_deleted"] is True
    assert ev["outwatch"]["process"]["exe_memfd"] is False


def test_executable_run_from_memfd(watch: Watch, listener: int, connect_once: Path) -> None:
    code = (
        "import os,sys;fd=os.memfd_create('innocent');os.write(fd,open(sys.argv[1],'rb').read());"
        "os.execve(fd,['innocent','--linger','1500','127.0.0.1',sys.argv[2]],{})"
    )
    out = subprocess.run([sys.executable, "-c", code, str(connect_once), str(listener)],
                         capture_output=True).stdout
    pid, _ = _pids(out)
    (ev,) = watch.wait_for(_to(listener, pid))
    assert ev["outwatch"]["process"]["exe_memfd"] is True
    assert ev["process"]["executable"].startswith("/memfd:innocent")
    assert ev["process"]["args"][0] == "innocent"


def test_double_fork_daemon_keeps_its_true_parent(watch: Watch, listener: int, connect_once: Path) -> None:
    out = subprocess.run([str(connect_once), "--daemon", "127.0.0.1", str(listener)],
                         capture_output=True, timeout=10).stdout
    pid, ppid_now = _pids(out)
    (ev,) = watch.wait_for(_to(listener, pid))
    parent = ev["process"]["parent"]
    assert parent["pid"] != ppid_now or ppid_now != 1  # reparented, yet the fork parent is reported
    assert parent["executable"] == str(connect_once)
    ancestors = [a["pid"] for a in ev["outwatch"]["process"]["ancestors"]]
    assert os.getpid() in ancestors  # the chain reaches the test process through the exited middle


def test_renamed_process_shows_its_true_executable(watch: Watch, listener: int, connect_once: Path) -> None:
    out = subprocess.run([str(connect_once), "--rename", "kworker/0:1", "127.0.0.1", str(listener)],
                         capture_output=True).stdout
    pid, _ = _pids(out)
    (ev,) = watch.wait_for(_to(listener, pid))
    assert ev["process"]["name"] == "kworker/0:1"
    assert ev["process"]["executable"] == str(connect_once)


def test_hostile_argv_stays_valid_ndjson(watch: Watch, listener: int, connect_once: Path, copy_of) -> None:
    exe = copy_of(connect_once, "evil\nname\x1b[31m")
    # Linux caps one argument at 128 KiB (MAX_ARG_STRLEN): 1 MB of arguments is eight of those
    huge = [b"A" * (128 * 1024 - 1)] * 8
    hostile = [b"line1\nline2", b'quote" \\ back', b"\x1b[2J\x1b[31mred", b"bad\xff\xfeutf8", *huge]
    out = subprocess.run([bytes(exe), *hostile, b"127.0.0.1", str(listener).encode()],
                         capture_output=True).stdout
    pid, _ = _pids(out)
    (ev,) = watch.wait_for(_to(listener, pid))
    raw = [line for line in watch.lines() if f'"pid":{pid},'.encode() in line]
    assert raw and all(len(line) < 16 * 1024 for line in raw)
    for line in raw:
        orjson.loads(line)
    args = ev["process"]["args"]
    assert args[1] == "line1\nline2" and args[2] == 'quote" \\ back'
    assert "\\xff" in args[4]
    assert ev["outwatch"].get("truncated") or ev["outwatch"]["process"].get("args_truncated")


def test_metric_record_reports_losses(watch: Watch) -> None:
    (m,) = watch.wait_for(lambda e: e["event"]["kind"] == "metric", hint=b'"kind":"metric"')[-1:]
    metrics = m["outwatch"]["metrics"]
    assert metrics["lost_in_kernel"] == sum(metrics["lost_in_kernel_by_type"].values())
    assert set(metrics["lost_in_kernel_by_type"]) >= {"connect", "exec", "exit"}
    assert metrics["processes_tracked"] > 0
    assert "dropped_in_userspace" in metrics


def test_loopback_is_left_out_by_default_and_sigkill_detaches(tmp_path: Path, connect_once: Path,
                                                              listener: int) -> None:
    require_root()
    w = Watch(tmp_path)
    try:
        ours = loaded_outwatch_programs(w.proc.pid)
        assert "ow_connect4" in ours.values()
        tree = subprocess.run(["bpftool", "cgroup", "tree"], capture_output=True, text=True).stdout
        assert "ow_connect4" in tree
        out = subprocess.run([str(connect_once), "127.0.0.1", str(listener)], capture_output=True).stdout
        pid, _ = _pids(out)
        time.sleep(1)
        assert not [e for e in w.events() if e.get("process", {}).get("pid") == pid]
    finally:
        w.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while set(ours) & set(loaded_outwatch_programs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(ours) & set(loaded_outwatch_programs()), "programs outlived a SIGKILLed outwatch"
