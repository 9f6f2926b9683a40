"""The systemd side: sd_notify against a real datagram socket, the unit (systemd-analyze verify and our
own reading of it), install/uninstall under a prefix, logrotate's real rotation, `outwatch status`.

systemd is not PID 1 on the test machines, so the unit cannot be started here: it is checked with
`systemd-analyze verify` (which works without a running systemd) and by reading its keys.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from conftest_sinks import check_line, event_line, wait_until

from outwatch.cli.service import service_cli, status_cli
from outwatch.config import load_config
from outwatch.control import ControlServer
from outwatch.errors import ExitCode
from outwatch.service import Notifier, outwatch_executable, render_logrotate, render_unit, systemd_running, verify_unit
from outwatch.sinks import open_sinks


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    yield sock
    sock.close()


def test_notifier_ready_status_watchdog_stopping(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ  # children (ufw, systemctl) must not notify in our name
    assert notifier.enabled and notifier.watchdog_interval == pytest.approx(0.1)
    notifier.ready()
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=tracing"
    notifier.status("42 events")
    assert notify_socket.recv(4096) == b"STATUS=42 events"
    pings = 0
    deadline = time.monotonic() + 0.35  # the main loop ticks far more often than the interval
    while time.monotonic() < deadline:
        notifier.tick()
        time.sleep(0.01)
    notify_socket.settimeout(0.2)
    with contextlib.suppress(TimeoutError):
        while notify_socket.recv(4096) == b"WATCHDOG=1":
            pings += 1
    assert 2 <= pings <= 5  # rate-limited to one per interval, not one per tick
    notifier.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    notifier.tick()
    with pytest.raises(TimeoutError):  # no watchdog pings once stopping
        notify_socket.recv(4096)


def test_notifier_abstract_socket_and_no_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"outwatch-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is meant for another process
        notifier = Notifier()
        assert notifier.watchdog_interval is None
        notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier()
    assert not quiet.enabled
    quiet.ready()  # no manager: nothing sent, nothing raised
    quiet.tick()


def unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    """Our own reading of a unit file: section -> key -> values (for keys that may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(m.group(1), {})
            continue
        m = re.fullmatch(r"([A-Za-z]+)=(.*)", line)
        assert m and current is not None, f"line {number} is not KEY=value in a section: {line!r}"
        current.setdefault(m.group(1), []).append(m.group(2))
    return sections


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "outwatch.service"
    unit.write_text(render_unit(outwatch_executable()))
    problems = verify_unit(unit)
    if shutil.which("systemd-analyze") is None:
        assert problems is None  # reported as "not verified" by install; the key checks below still run
    else:
        assert problems == "", problems
        broken = tmp_path / "broken.service"  # the same check does catch a bad unit
        broken.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
        assert "Unknown key 'ProtectSystm'" in (verify_unit(broken) or "")


def test_unit_keys(tmp_path: Path) -> None:
    exe = outwatch_executable()
    text = render_unit(exe)
    keys = unit_keys(text)
    service = keys["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"] and int(service["WatchdogSec"][0]) > 0
    assert service["ExecStart"] == [f"{exe} watch"]  # outputs come from the starter config
    assert os.access(exe, os.X_OK)
    assert service["ProtectSystem"] == ["strict"] and service["ProtectHome"] == ["read-only"]
    assert service["NoNewPrivileges"] == ["yes"] and service["PrivateTmp"] == ["yes"]
    assert service["LimitMEMLOCK"] == ["infinity"]
    for name in ("Logs", "State", "Runtime", "Cache"):  # /var/log, /var/lib, /run, /var/cache: writable
        assert service[f"{name}Directory"] == ["outwatch"]
    caps = service["CapabilityBoundingSet"][0].split()
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN", "CAP_KILL",
            "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"} <= set(caps)
    assert service["AmbientCapabilities"][0].split() == caps
    for cap in caps:  # each capability is explained in a comment
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.M), f"{cap} has no comment"
    for risky in ("ProtectKernelTunables", "ProtectKernelModules", "MemoryDenyWriteExecute"):
        assert risky not in service  # each would break BCC (see the comments in the unit)
        assert re.search(rf"^#\s+{risky}\s+\S", text, re.M), f"why {risky} is not set is not said"
    assert keys["Install"]["WantedBy"] == ["multi-user.target"]


def test_install_and_uninstall_under_a_prefix(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(service_cli, ["install", "--prefix", str(tmp_path)])
    assert result.exit_code == 0, result.output
    unit = tmp_path / "etc/systemd/system/outwatch.service"
    logrotate = tmp_path / "etc/logrotate.d/outwatch"
    assert unit.read_text() == render_unit(outwatch_executable())
    assert logrotate.read_text() == render_logrotate()
    assert f"installed {unit} (verified)" in result.output
    config = load_config(tmp_path / "etc/outwatch/outwatch.toml")  # the starter config is valid
    assert config is not None and config.watch.outputs == ["/var/log/outwatch/events.ndjson"]
    if not systemd_running():  # as on the test machines: said plainly, the unit is still written
        assert "systemd is not running on this machine (PID 1 is " in result.output
    assert runner.invoke(service_cli, ["install", "--prefix", str(tmp_path)]).exit_code == 0  # idempotent

    foreign = tmp_path / "other" / "outwatch.service"  # a unit someone else wrote is left alone
    foreign.parent.mkdir()
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    refused = runner.invoke(service_cli, ["install", "--prefix", str(tmp_path), "--unit-dir", str(foreign.parent)])
    assert refused.exit_code == ExitCode.REFUSED
    assert "was not installed by outwatch" in refused.output
    assert foreign.read_text() == "[Service]\nExecStart=/bin/true\n"

    removed = runner.invoke(service_cli, ["uninstall", "--prefix", str(tmp_path)])
    assert removed.exit_code == 0, removed.output
    assert not unit.exists() and not logrotate.exists()
    assert (tmp_path / "etc/outwatch/outwatch.toml").exists()  # the admin's settings are kept
    assert f"removed {unit}" in removed.output


def test_logrotate_rotation_with_a_live_file_sink(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate")
    if logrotate is None:
        pytest.fail("logrotate is not installed (apt install logrotate)")
    logs = tmp_path / "log"
    logs.mkdir()
    conf = tmp_path / "logrotate.conf"
    # the paths point at the test's directory and postrotate does nothing: no signal is sent to a real
    # outwatch.service; the sink notices the rename by itself
    text = render_logrotate().replace("/var/log/outwatch/", f"{logs}/")
    text = re.sub(r"(?m)^\s*systemctl kill .*$", "        :", text)
    assert "systemctl" not in text
    conf.write_text(text)
    path = logs / "events.ndjson"
    sinks = open_sinks([str(path)])
    written = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal written
        while not stop.is_set():
            sinks.emit(event_line(written))
            written += 1
            if written % 200 == 0:
                time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for _ in range(2):
            mark = written
            wait_until(lambda m=mark: written > m + 1000, "events to write")
            done = subprocess.run([logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            time.sleep(1.5)  # longer than the sink's rename check: the next rotation compresses .1
    finally:
        stop.set()
        producer.join()
    sinks.close()
    total = written
    assert sorted(p.name for p in logs.iterdir()) == ["events.ndjson", "events.ndjson.1", "events.ndjson.2.gz"]
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    seqs = []
    for name in ("events.ndjson.2.gz", "events.ndjson.1", "events.ndjson"):
        data = (logs / name).read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        assert data and data.endswith(b"\n")
        seqs += [check_line(line)["event"]["sequence"] for line in data.splitlines()]
    assert sorted(seqs) == list(range(total))


def test_status_command(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the control socket is root only)")
    path = tmp_path / "run" / "control.sock"
    runner = CliRunner()
    none = runner.invoke(status_cli, ["--socket", str(path)])
    assert none.exit_code == ExitCode.NOT_FOUND
    assert f"no running `outwatch watch` (no control socket at {path})" in none.output

    reply = {  # the shape of cli/watch.py's status handler
        "pid": 4242, "since_ns": time.time_ns() - 3_723 * 10**9, "probe_set": "cgroup", "rules": 37,
        "records_seen": {"connect": 10, "exec": 5}, "lost_in_kernel": 0, "lost_in_kernel_by_type": {},
        "dropped_in_userspace": 2, "events_emitted": 15, "events_filtered": 1, "processes_tracked": 80,
        "sinks": {"sinks": [
            {"url": "/var/log/outwatch/events.ndjson", "delivered": 15, "queued": 0, "spooled_bytes": 0,
             "dropped": 0, "connected": True, "last_error": None},
            {"url": "syslog://10.0.0.5:514", "delivered": 3, "queued": 2, "spooled_bytes": 3 << 20,
             "dropped": 2, "connected": False, "last_error": "connect: Connection refused", "resent": 0},
        ], "delivered": 18, "queued": 2, "spooled_bytes": 3 << 20, "dropped": 2},
    }
    server = ControlServer({"status": lambda _r: reply}, path=path)
    server.start()
    try:
        human = runner.invoke(status_cli, ["--socket", str(path)])
        as_json = runner.invoke(status_cli, ["--socket", str(path), "--json"])
    finally:
        server.close()
    assert human.exit_code == 0, human.output
    out = human.output
    assert "outwatch watch is running (pid 4242)" in out
    assert "(up 1h 2m 3s)" in out or "(up 1h 2m 4s)" in out
    assert re.search(r"probes +cgroup\n", out) and re.search(r"rules +37 loaded\n", out)
    assert "15 emitted, 1 filtered out" in out and "2 dropped by outputs" in out
    assert re.search(r"processes tracked +80\n", out)
    assert re.search(r"syslog://10\.0\.0\.5:514\s+DOWN .*spooled 3\.0 MiB .*Connection refused", out)
    assert orjson.loads(as_json.output) == reply
