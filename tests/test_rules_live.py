"""Scoring end to end on the real kernel: real processes, the real tracer, the default pack."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import NetnsPair, Watch, require_root


def _pid(out: bytes) -> int:
    m = re.search(rb"pid=(\d+)", out)
    assert m, out
    return int(m.group(1))


def _reasons(ev: dict) -> set[str]:
    return {r["rule"] for r in ev["outwatch"].get("reasons", [])}


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv


def test_temp_dir_process_is_an_alert_with_reasons(watch: Watch, connect_once: Path, copy_of) -> None:
    exe = copy_of(connect_once, "updater")
    with _listener() as srv:
        port = srv.getsockname()[1]
        pid = _pid(subprocess.run([str(exe), "127.0.0.1", str(port)], capture_output=True).stdout)
        (ev,) = watch.wait_for(lambda e: e.get("process", {}).get("pid") == pid, hint=f'"pid":{pid},'.encode())
    assert ev["event"]["kind"] == "alert"
    assert "OW-EXE-TMP" in _reasons(ev)
    assert ev["outwatch"]["severity"] in ("medium", "high", "critical")
    assert ev["outwatch"]["score"] == sum(r["score"] for r in ev["outwatch"]["reasons"])
    assert ev["rule"]["id"] and ev["threat"]["technique"]["id"]


def test_shell_reverse_connection_is_high(watch: Watch, netns_pair: NetnsPair) -> None:
    """bash's /dev/tcp to a test host in a network namespace (not loopback: the shell rule applies)."""
    netns_pair.listen(4444)
    out = netns_pair.run("bash", "-c", f"echo pid=$$; exec 3<>/dev/tcp/{netns_pair.HOST_IP}/4444; sleep 0.3",
                         capture_output=True, timeout=10).stdout
    pid = _pid(out)
    (ev,) = watch.wait_for(lambda e: e.get("process", {}).get("pid") == pid, hint=f'"pid":{pid},'.encode())
    assert ev["destination"] == {"ip": netns_pair.HOST_IP, "port": 4444}
    # bash execs `sleep` right after connecting: the connect still belongs to the bash image
    assert ev["process"]["executable"] == "/usr/bin/bash" and ev["process"]["args"][0] == "bash"
    assert ev["source"]["ip"] == netns_pair.CLIENT_IP
    assert ev["event"]["outcome"] == "success"
    assert ev["event"]["kind"] == "alert"
    assert {"OW-PROC-SHELL", "OW-ARGS-REVSHELL", "OW-PORT-REVSHELL"} <= _reasons(ev)
    assert ev["outwatch"]["severity"] == "critical"


def test_ordinary_system_binary_stays_below_the_alert_threshold(watch: Watch) -> None:
    with _listener() as srv:
        port = srv.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
        proc = subprocess.run(["/usr/bin/python3", "-c", code], check=True)
        assert proc.returncode == 0
        (ev,) = watch.wait_for(lambda e: e.get("destination", {}).get("port") == port
                               and e["process"]["executable"].startswith("/usr/bin/python3"),
                               hint=f'"port":{port}}}'.encode())
    assert ev["event"]["kind"] == "event"
    assert ev["outwatch"]["severity"] in ("info", "low")


RULE = """
[[rule]]
id = "TEST-PORT"
name = "test port"
score = {score}
[rule.when]
"destination.port" = {port}
"""


def test_sighup_reloads_rules_and_a_broken_reload_keeps_the_running_ones(tmp_path: Path,
                                                                         connect_once: Path) -> None:
    require_root()
    rules = tmp_path / "site.toml"
    with _listener() as srv:
        port = srv.getsockname()[1]
        rules.write_text(RULE.format(score=5, port=port))
        w = Watch(tmp_path / "w", "--include-loopback", "--port", str(port), "--rules", str(rules))
        try:
            def connect_and_get(n: int) -> dict:
                subprocess.run([str(connect_once), "127.0.0.1", str(port)], capture_output=True, check=True)
                return w.wait_for(lambda e: e.get("destination", {}).get("port") == port, count=n)[-1]

            first = connect_and_get(1)
            assert {"rule": "TEST-PORT", "score": 5} in [
                {k: r[k] for k in ("rule", "score")} for r in first["outwatch"]["reasons"]]

            rules.write_text(RULE.format(score=77, port=port))
            w.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "rules reloaded" not in w.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            second = connect_and_get(2)
            assert any(r["rule"] == "TEST-PORT" and r["score"] == 77 for r in second["outwatch"]["reasons"])

            rules.write_text('[[rule]]\nid = "BROKEN"\nscore = "many"\n')
            w.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reload failed" not in w.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "keeping the running rules" in w.stderr()
            assert "site.toml" in w.stderr()
            third = connect_and_get(3)
            assert any(r["rule"] == "TEST-PORT" and r["score"] == 77 for r in third["outwatch"]["reasons"])
            assert w.proc.poll() is None
        finally:
            assert w.stop() == 0


def test_watch_refuses_a_broken_rules_file(tmp_path: Path) -> None:
    require_root()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nid = "X"\nscore = 1\n[rule.when]\n"destination.ip" = { cidr = "10.0.0.1/8" }\n')
    r = subprocess.run([sys.executable, "-m", "outwatch.cli", "watch", "--rules", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 7
    assert f"{bad}:5" in r.stderr and "Traceback" not in r.stderr


def test_min_severity_hides_what_is_below(tmp_path: Path, connect_once: Path, copy_of) -> None:
    require_root()
    exe = copy_of(connect_once, "dropper")
    with _listener() as srv:
        port = srv.getsockname()[1]
        w = Watch(tmp_path / "w", "--include-loopback", "--port", str(port), "--min-severity", "medium")
        try:
            subprocess.run(["/usr/bin/python3", "-c",
                            f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"], check=True)
            pid = _pid(subprocess.run([str(exe), "127.0.0.1", str(port)], capture_output=True).stdout)
            w.wait_for(lambda e: e.get("process", {}).get("pid") == pid)
            time.sleep(0.3)
            shown = [e for e in w.events() if e["event"]["kind"] != "metric"]
        finally:
            w.stop()
    assert [e["process"]["pid"] for e in shown] == [pid]
