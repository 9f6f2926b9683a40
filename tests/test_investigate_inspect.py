"""outwatch inspect and its evidence bundle on real processes: deleted, memfd, LD_PRELOAD, cron-launched."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_investigate import (
    SLEEP,
    build_preload_lib,
    connected_client,
    memfd_process,
    ndjson,
    no_traceback,
    require_root,
    run_cli,
    sleep_copy,
    started,
    tcp_listener,
    wait_for,
)

from outwatch.errors import ExitCode
from outwatch.investigate.inspect import inspect_pid
from outwatch.investigate.units import timer_for


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def _rules(record: dict) -> set[str]:
    return {r["rule"] for r in record["outwatch"]["reasons"]}


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_deleted_executable_with_connection(tmp_path: Path) -> None:
    exe = tmp_path / "updater"
    shutil.copy2(os.path.realpath(sys.executable), exe)
    original = _sha256(exe)
    with tcp_listener() as srv, connected_client(srv.getsockname()[1], python=str(exe)) as (client, cport):
        port = srv.getsockname()[1]
        exe.unlink()
        result = inspect_pid(client.pid)
    record = result.record
    info = record["outwatch"]["inspect"]
    assert info["executable"]["path"] == str(exe) and info["executable"]["deleted"] is True
    assert info["executable"]["sha256"] == original == record["process"]["hash"]["sha256"]
    assert info["executable"]["package"] is None and info["executable"]["on_disk_now"] == "missing"
    assert {"OW-INS-DELETED", "OW-INS-EXE-TEMP", "OW-INS-NO-PACKAGE", "OW-INS-CONN"} <= _rules(record)
    assert record["process"]["args"][1] == "-c"
    assert record["process"]["parent"]["pid"] == os.getpid()
    assert [a["pid"] for a in record["outwatch"]["process"]["ancestors"]][-1] == 1
    assert record["process"]["user"] == {"id": "0", "name": "root"}
    assert record["process"]["uptime"] >= 0 and record["process"]["start"].endswith("Z")
    (sock,) = [s for s in info["sockets"] if s["direction"] == "egress"]
    assert sock["remote"] == {"ip": "127.0.0.1", "port": port} and sock["local"]["port"] == cport
    (conn,) = result.connections
    assert conn["destination"]["port"] == port and "OW-EXE-DELETED" in {r["rule"] for r in conn["outwatch"]["reasons"]}
    journal = info["journal"]
    assert "unavailable" in journal or "lines" in journal


def test_package_binary_is_verified() -> None:
    with started([SLEEP, "300"]) as proc:
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep"), "sleep to exec")
        record = inspect_pid(proc.pid).record
    pkg = record["outwatch"]["inspect"]["executable"]["package"]
    assert pkg["name"] == "coreutils" and pkg["checksum"] == "match"
    assert pkg["listed_path"] in ("/bin/sleep", "/usr/bin/sleep")
    assert "OW-INS-NO-PACKAGE" not in _rules(record)


def test_memfd_process() -> None:
    with memfd_process("kworker-x") as proc:
        record = inspect_pid(proc.pid).record
    exe = record["outwatch"]["inspect"]["executable"]
    assert exe["memfd"] is True and exe["path"] == "/memfd:kworker-x"
    assert exe["sha256"] == _sha256(SLEEP)
    assert {"OW-INS-MEMFD", "OW-INS-KTHREAD-NAME"} <= _rules(record)


def test_ld_preload_environment_and_mapping(tmp_path: Path) -> None:
    lib = build_preload_lib(tmp_path)
    env = {
        "PATH": "/usr/bin:/bin",
        "LD_PRELOAD": str(lib),
        "https_proxy": "http://10.9.9.9:3128",
        "HISTFILE": "/dev/null",
    }
    with started([SLEEP, "300"], env=env) as proc:
        wait_for(lambda: str(lib) in Path(f"/proc/{proc.pid}/maps").read_text(), "the preloaded library to map")
        record = inspect_pid(proc.pid).record
    assert f"LD_PRELOAD={lib}" in record["process"]["env_vars"]
    assert "https_proxy=http://10.9.9.9:3128" in record["process"]["env_vars"]
    assert not any(v.startswith("PATH=") for v in record["process"]["env_vars"])  # an ordinary PATH is not shown
    odd = record["outwatch"]["inspect"]["odd_mappings"]
    assert [m["path"] for m in odd] == [str(lib)]
    assert {"OW-INS-ENV-PRELOAD", "OW-INS-LIB-ODD-DIR", "OW-INS-ENV-PROXY", "OW-INS-ENV-NOHISTORY"} <= _rules(record)


def test_cron_origin_children_and_temp_files(tmp_path: Path) -> None:
    """A shell named cron runs a job: the chain shows cron as the origin, the job's child is listed."""
    cron = tmp_path / "cron"
    shutil.copy2(os.path.realpath("/bin/bash"), cron)
    dropped = tmp_path / "payload.log"
    script = f"exec 7>{dropped}; {SLEEP} 301 & wait"
    with started([str(cron), "-c", script]) as parent:
        wait_for(lambda: parent_children(parent.pid), "the job to start")
        (job,) = parent_children(parent.pid)
        try:
            job_record = inspect_pid(job).record
            parent_record = inspect_pid(parent.pid).record
        finally:
            os.kill(job, 9)  # the job is ours too: it would outlive its killed parent
    assert job_record["outwatch"]["inspect"]["origin"] == {"kind": "cron", "via": f"cron({parent.pid})"}
    kids = parent_record["outwatch"]["inspect"]["children"]
    assert [(k["pid"], k["depth"], k["args"]) for k in kids] == [(job, 1, [SLEEP, "301"])]
    temp = parent_record["outwatch"]["inspect"]["temp_files"]
    assert {"fd": 7, "path": str(dropped), "deleted": False} in temp


def parent_children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in out if os.readlink(f"/proc/{p}/exe").endswith("sleep")]


def test_timer_for_reads_unit_files(tmp_path: Path) -> None:
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "nightly.timer").write_text("[Timer]\nOnCalendar=daily\nUnit=backup.service\n")
    (units / "sync.timer").write_text("[Unit]\nDescription=x\n[Timer]\nOnBootSec=5m\n")
    assert timer_for("backup.service", tmp_path) == units / "nightly.timer"
    assert timer_for("sync.service", tmp_path) == units / "sync.timer"
    assert timer_for("other.service", tmp_path) is None


def test_evidence_bundle_of_deleted_executable(tmp_path: Path) -> None:
    bundle = tmp_path / "evidence"
    with sleep_copy(tmp_path) as (proc, exe):
        original = _sha256(exe)
        exe.unlink()
        out = run_cli("inspect", str(proc.pid), "--evidence", str(bundle), "--json")
    assert out.returncode == 0, out.stderr
    no_traceback(out)
    assert _sha256(bundle / "exe") == original
    assert (bundle / "exe").stat().st_mode & 0o777 == 0o400
    names = {p.name for p in bundle.iterdir()}
    assert {"exe", "cmdline", "environ", "maps", "status", "fds.txt", "MANIFEST.sha256", "COLLECTION.txt"} <= names
    assert (bundle / "cmdline").read_bytes() == f"{exe}\x00300\x00".encode()
    check = subprocess.run(
        ["sha256sum", "-c", "--strict", "MANIFEST.sha256"], cwd=bundle, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = (bundle / "MANIFEST.sha256").read_text()
    assert f"{original}  exe\n" in manifest
    (record,) = [e for e in ndjson(out.stdout) if e["event"]["action"] == "process_inspected"]
    assert record["process"]["pid"] == proc.pid


def test_evidence_of_memfd_and_refusal_to_overwrite(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    with memfd_process() as proc:
        first = run_cli("inspect", str(proc.pid), "--evidence", str(bundle))
        again = run_cli("inspect", str(proc.pid), "--evidence", str(bundle))
    assert first.returncode == 0, first.stderr
    assert _sha256(bundle / "exe") == _sha256(SLEEP)
    assert again.returncode == ExitCode.REFUSED
    assert "not empty" in again.stderr and "fix:" in again.stderr
    no_traceback(again)


def test_vanished_pid() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    out = run_cli("inspect", str(proc.pid))
    assert out.returncode == ExitCode.NOT_FOUND
    assert f"no process with pid {proc.pid}" in out.stderr
    no_traceback(out)
    bad = run_cli("inspect", "abc")
    assert bad.returncode == ExitCode.USAGE and "Traceback" not in bad.stderr


def test_non_root_gets_a_partial_report() -> None:
    """nobody may read a root process's status but not its environ, fds or exe: the report says so."""
    with started([SLEEP, "300"]) as proc:
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"), "sleep to exec")
        out = run_cli("inspect", str(proc.pid), "--json", as_nobody=True)
        human = run_cli("inspect", str(proc.pid), as_nobody=True)
    assert out.returncode == 0, out.stderr
    no_traceback(out)
    (record,) = ndjson(out.stdout)
    assert record["outwatch"]["partial"] is True
    missing = record["outwatch"]["missing"]
    assert missing["process.env_vars"] == "permission denied"
    assert missing["process.executable"] == "permission denied"
    assert missing["outwatch.inspect.sockets"] == "permission denied"
    assert record["process"]["args"] == [SLEEP, "300"]
    assert "PARTIAL" in human.stdout and "permission denied" in human.stdout


def test_evidence_on_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    """The bundle goes to a 64 KiB tmpfs, mounted in a private mount namespace that dies with the command."""
    target = tmp_path / "small"
    target.mkdir()
    code = "from outwatch.cli.investigate import inspect; inspect(prog_name='outwatch inspect')"
    with sleep_copy(tmp_path) as (proc, _exe):
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3" "$4" --evidence "$1/ev"', "sh",
             str(target), sys.executable, code, str(proc.pid)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert out.returncode == ExitCode.FAILURE, out.stderr
    no_traceback(out)
    assert "cannot write evidence to" in out.stderr and "No space left on device" in out.stderr
    assert not any(target.iterdir())  # the tmpfs lived only in the namespace
