"""`outwatch watch` as a user meets it: errors, filters, formats, signals."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import OUTWATCH, ROOT, Watch, loaded_outwatch_programs, require_root


def _run_as_nobody(*args: str) -> subprocess.CompletedProcess:
    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    return subprocess.run([*OUTWATCH, *args], capture_output=True, text=True, cwd=ROOT, preexec_fn=drop,
                          timeout=60)


def test_not_root_is_one_clear_line_and_a_distinct_exit_code() -> None:
    require_root()
    r = _run_as_nobody("watch")
    assert r.returncode == 3
    assert "needs root" in r.stderr and "Traceback" not in r.stderr


def test_kprobe_set_on_a_kernel_without_kprobes_says_so() -> None:
    require_root()
    r = subprocess.run([*OUTWATCH, "watch", "--probes", "kprobe"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    if Path("/sys/kernel/tracing/kprobe_events").exists():
        raise AssertionError("this machine has kprobes: this test expects the KERNEL.md machine")
    assert r.returncode == 6
    assert "kprobe" in r.stderr and "--probes cgroup" in r.stderr and "Traceback" not in r.stderr


def test_bad_output_url_is_a_usage_error() -> None:
    require_root()
    r = subprocess.run([*OUTWATCH, "watch", "--output", "tcp://nohostport"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_filters_sigterm_pretty_and_hash(tmp_path: Path, connect_once: Path) -> None:
    """--port keeps one destination port; pretty lines go to the file; SIGTERM flushes and exits 0;
    the second connect of a binary carries its sha256."""
    require_root()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(16)
    other_port = other.getsockname()[1]
    w = Watch(tmp_path, "--include-loopback", "--port", str(port))
    try:
        for _ in range(2):
            subprocess.run([str(connect_once), "--linger", "300", "127.0.0.1", str(port)], check=True,
                           capture_output=True)
            subprocess.run([str(connect_once), "127.0.0.1", str(other_port)], check=True, capture_output=True)
            time.sleep(0.5)
        events = w.wait_for(lambda e: e.get("destination", {}).get("port") == port, count=2)
        assert all(e["destination"]["port"] == port for e in w.events() if "destination" in e)
        digest = hashlib.sha256(connect_once.read_bytes()).hexdigest()
        assert events[-1]["process"]["hash"]["sha256"] == digest
    finally:
        rc = w.stop(signal.SIGTERM)
        srv.close()
        other.close()
    assert rc == 0
    assert w.events()[-1]["event"]["kind"] == "metric"  # the final record at exit

    pretty = Watch(tmp_path / "pretty", "--include-loopback", "--format", "pretty", "--port", str(port))
    try:
        srv = socket.socket()
        srv.bind(("127.0.0.1", port))
        srv.listen(4)
        subprocess.run([str(connect_once), "127.0.0.1", str(port)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and f":{port}/tcp" not in pretty.path.read_text(errors="replace"):
            time.sleep(0.1)
    finally:
        pretty.stop()
        srv.close()
    line = next(ln for ln in pretty.path.read_text().splitlines() if f":{port}/tcp" in ln)
    assert re.search(rf"connect_once .*-> 127\.0\.0\.1:{port}/tcp success", line), line
    assert f" {port} " in line and "root" in line


def test_stops_when_the_reader_of_its_pipe_has_gone(tmp_path: Path) -> None:
    """`outwatch watch | head` ends once head has exited, even with no event to write (the pipe's
    POLLERR says so), exits 0 and leaves no program loaded."""
    require_root()
    err = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen([*OUTWATCH, "watch", "--format", "ndjson"], stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while "probes:" not in (tmp_path / "stderr").read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.1)
        held = set(loaded_outwatch_programs(proc.pid))
        assert held, "the tracer should hold its programs while it runs"
        proc.stdout.close()  # type: ignore[union-attr]
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "stderr").read_text()
    assert rc == 0, text
    assert "the reader of standard output has gone" in text and "Traceback" not in text
    assert not held & set(loaded_outwatch_programs())


def test_missing_bcc_is_one_clear_line_and_a_distinct_exit_code(tmp_path: Path) -> None:
    """A Python without Debian's python3-bpfcc: a venv made without --system-site-packages that sees
    outwatch and its PyPI dependencies only (no mock: `import bcc` really fails there)."""
    require_root()
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "outwatch-test.pth").write_text("\n".join([*ours, str(ROOT / "src")]) + "\n")
    python = str(venv / "bin" / "python3")
    probe = subprocess.run([python, "-c", "import bcc"], capture_output=True, text=True)
    assert probe.returncode != 0, "this venv should not see BCC"
    r = subprocess.run([python, "-m", "outwatch.cli", "watch"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 4, r.stderr
    assert "BCC's Python bindings are missing" in r.stderr and "python3-bpfcc" in r.stderr
    assert "Traceback" not in r.stderr
