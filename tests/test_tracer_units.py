"""Pieces of the tracer that are plain logic: filters, the header fallback, failed-connect pairing."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from outwatch.errors import ExitCode, OutwatchError
from outwatch.event import EventBuilder
from outwatch.flows import ERROR_WAIT_NS, FailedConnects
from outwatch.kernel.headers import find_headers
from outwatch.kernel.records import ConnectRecord, ExecRecord, Header, TcpErrorRecord
from outwatch.proc.identity import Clock
from outwatch.proc.table import KernelView, Proc, ProcessTable
from outwatch.tracer import Filters


def _rec(pid: int = 10, uid: int = 1000, dport: int = 443, outcome: str = "success",
         sport: int = 40000) -> ConnectRecord:
    h = Header(1, pid, pid, 1, 1, 0, 0, uid, uid, b"curl")
    return ConnectRecord(h, 2, "203.0.113.7", dport, 6, 1, False, "cgroup", 1, outcome, "10.0.0.2", sport)


PROC = Proc(10, 1, 1, "curl", exe="/usr/bin/curl")


@pytest.mark.parametrize(("filters", "expected"), [
    (Filters(), True),
    (Filters(pids=frozenset({10})), True),
    (Filters(pids=frozenset({11})), False),
    (Filters(uids=frozenset({1000})), True),
    (Filters(uids=frozenset({0})), False),
    (Filters(exe_globs=("/usr/bin/c*",)), True),
    (Filters(exe_globs=("/tmp/*",)), False),
    (Filters(ports=frozenset({443, 80})), True),
    (Filters(ports=frozenset({22})), False),
    (Filters(pids=frozenset({10}), ports=frozenset({22})), False),  # every filter given must match
])
def test_filters(filters: Filters, expected: bool) -> None:
    assert filters.match(_rec(), PROC) is expected


def test_a_failed_connect_waits_for_its_error_then_goes_without_it() -> None:
    failed = FailedConnects()
    assert failed.add(_rec(outcome="failure"), PROC, now_ns=0) == []
    err = TcpErrorRecord(Header(2, 0, 0, 0, 0, 0, 0, 0, 0, b""), 2, "10.0.0.2", "203.0.113.7", 40000, 443, 111)
    [(rec, proc, errno)] = failed.on_error(err)
    assert (rec.dport, proc, errno) == (443, PROC, 111)
    failed.add(_rec(outcome="failure", sport=40001), PROC, now_ns=0)
    assert failed.flush(ERROR_WAIT_NS - 1) == []
    [(rec, _, errno)] = failed.flush(ERROR_WAIT_NS)
    assert (rec.sport, errno) == (40001, 0)


def test_headers_fall_back_to_debian_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    src = tmp_path / "src"
    for tree in ("linux-headers-6.1.0-9-amd64", "linux-headers-6.1.0-9-common"):
        (src / tree / "include" / "linux").mkdir(parents=True)
    (src / "linux-headers-6.1.0-9-amd64" / "include" / "generated").mkdir()
    (src / "linux-headers-6.1.0-9-common" / "include" / "linux" / "bpf.h").write_text("/* common */")
    found = find_headers("9.9.9-custom", src_root=src, farm_root=tmp_path / "farm")
    assert found.fallback and "6.1.0-9-amd64" in found.note and "9.9.9-custom" in found.note
    assert (found.path / "include" / "linux" / "bpf.h").read_text() == "/* common */"
    assert (found.path / "include" / "generated").is_dir()


def test_no_headers_at_all_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    with pytest.raises(OutwatchError) as err:
        find_headers("9.9.9-custom", src_root=tmp_path, farm_root=tmp_path / "farm")
    assert err.value.code == ExitCode.NO_HEADERS
    assert "linux-headers-amd64" in err.value.hint


@pytest.mark.parametrize(("exec_busy", "expected"), [(True, "/usr/bin/bash"), (False, "/usr/bin/sleep")])
def test_proc_is_not_read_while_an_exec_is_under_way(exec_busy: bool, expected: str) -> None:
    """bash connects, then execs sleep: /proc/PID/exe already names sleep before sched_process_exec
    updates the fork map. A real `sleep` stands for that process; its exec record says bash. While
    the kernel view says an exec is under way, /proc is not taken as the bash image's executable."""
    with subprocess.Popen(["/usr/bin/sleep", "30"]) as child:
        try:
            table = ProcessTable(kernel_view=lambda pid: KernelView(0, 0, 1000, exec_busy))
            h = Header(1000, child.pid, child.pid, 0, 0, 0, 0, 0, 0, b"bash")
            table.on_exec(ExecRecord(h, child.pid, b"/usr/bin/bash", [b"bash"], False, False))
            proc = table.get(Header(2000, child.pid, child.pid, 0, 0, 1000, 0, 0, 0, b"bash"))
        finally:
            child.kill()
    assert proc.exe == expected


@pytest.mark.parametrize(("exec_since", "expected"), [(5000, "/usr/bin/bash"), (0, "/usr/bin/sleep")])
def test_proc_is_not_read_for_a_fork_that_has_exec_d_since(exec_since: int, expected: str) -> None:
    """A subshell of a shell started before the tracer (no exec seen: image time 0) connects, then
    execs sleep. Its connect is handled after the exec: /proc names sleep, the kernel view's exec time
    is no longer 0, so /proc is not taken for the subshell; it keeps its parent's executable."""
    with subprocess.Popen(["/usr/bin/sleep", "30"]) as child:
        try:
            table = ProcessTable(kernel_view=lambda pid: KernelView(os.getpid(), 0, exec_since, False)
                                 if pid == child.pid else None)
            parent = table.lookup(os.getpid())
            assert parent is not None
            parent.exe = "/usr/bin/bash"
            proc = table.get(Header(2000, child.pid, child.pid, os.getpid(), 0, 0, 0, 0, 0, b"bash"))
        finally:
            child.kill()
    assert proc.exe == expected


def test_a_pid_cycle_in_the_fork_map_does_not_recurse() -> None:
    """Reused pids can leave the fork map saying A's parent is B and B's parent is A."""
    table = ProcessTable(kernel_view=lambda pid: KernelView(4_000_001 if pid == 4_000_000 else 4_000_000, 0, 0, False))
    assert table.lookup(4_000_000) is not None
    assert table.ancestors(table.procs[4_000_000])[0].pid == 4_000_001


def test_a_process_that_changes_user_is_reported_with_its_new_user() -> None:
    """A process that connects as root, drops to another uid (setuid) and connects again: the second
    event carries the uid the kernel saw at that connect, not the first one's (the per-image ECS
    objects are rebuilt)."""
    table = ProcessTable()
    builder = EventBuilder(table, Clock())
    me = os.getpid()
    users = []
    for uid in (0, 65534):
        h = Header(1000, me, me, 0, 0, 0, 0, uid, uid, b"x")
        proc = table.get(h)
        rec = ConnectRecord(h, socket.AF_INET, "203.0.113.7", 443, 6, 1, False, "cgroup", 1)
        users.append(builder.connect_event(rec, proc)["user"]["id"])
    assert users == ["0", "65534"]
