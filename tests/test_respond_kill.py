"""kill by pidfd on real processes this test starts: TERM, TERM ignored then KILL, identity checks,
the protected set, --tree, and the CLI with its audit records (in a private mount namespace)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_respond import Sandbox, require_root

from outwatch.errors import ExitCode, OutwatchError
from outwatch.respond.kill import Expectation, kill_process
from outwatch.respond.process import ProcessGuard, read_identity

SLEEPER = "import time; print('ready', flush=True); time.sleep(120)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
)


@pytest.fixture
def spawn() -> Iterator:
    """Start python children that report 'ready'; whatever is left is killed and reaped at the end."""
    require_root()
    procs: list[subprocess.Popen[str]] = []

    def start(code: str = SLEEPER, argv0: str | None = None) -> subprocess.Popen[str]:
        exe = argv0 or sys.executable
        p = subprocess.Popen([exe, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def guard(*extra: str) -> ProcessGuard:
    return ProcessGuard(extra)


def exited(pid: int) -> bool:
    """Whether a child of ours has exited (without reaping it)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], 0)[0])
    finally:
        os.close(fd)


def test_terminates_a_real_process(spawn) -> None:
    p = spawn()
    [r] = kill_process(p.pid, grace=10, guard=guard())
    assert (r.pid, r.signal, r.exited) == (p.pid, "SIGTERM", True)
    assert p.wait() == -signal.SIGTERM


def test_sigterm_ignored_then_sigkill_after_grace(spawn) -> None:
    p = spawn(STUBBORN)
    [r] = kill_process(p.pid, grace=0.3, guard=guard())
    assert (r.signal, r.exited) == ("SIGKILL", True)
    assert p.wait() == -signal.SIGKILL


def test_identity_changed_is_refused(spawn) -> None:
    p = spawn()
    ident = read_identity(p.pid)
    for wrong in (
        Expectation(start_ticks=ident.start_ticks + 1),
        Expectation(exe="/usr/bin/something-else"),
        Expectation(entity_id="0" * 32),
    ):
        with pytest.raises(OutwatchError) as err:
            kill_process(p.pid, grace=1, guard=guard(), expect=wrong)
        assert err.value.code == ExitCode.REFUSED
        assert "not the process meant" in err.value.message
    assert p.poll() is None, "a refused kill sent a signal"
    # The right identity (exe through its symlink, as an event names it, and the entity id) is accepted.
    right = Expectation(exe=sys.executable, start_ticks=ident.start_ticks, entity_id=ident.entity_id)
    [r] = kill_process(p.pid, grace=10, guard=guard(), expect=right)
    assert r.exited and p.wait() == -signal.SIGTERM


def kernel_thread_pid() -> int:
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "2":
            stat = Path(f"/proc/{name}/stat").read_text()
            if stat[stat.rindex(")") + 2 :].split()[1] == "2":
                return int(name)
    pytest.fail("no kernel thread found under kthreadd")


@pytest.mark.parametrize(
    ("which", "why"),
    [
        ("init", "PID 1"),
        ("self", "this outwatch process"),
        ("parent", "ancestor"),
        ("kthreadd", "kernel thread"),
        ("kthread", "kernel thread"),
    ],
)
def test_protected_processes_are_refused(which: str, why: str) -> None:
    require_root()
    pid = {
        "init": 1,
        "self": os.getpid(),
        "parent": os.getppid(),
        "kthreadd": 2,
        "kthread": kernel_thread_pid(),
    }[which]
    # dry_run: were the guard broken, the test fails without signalling init or the test runner.
    with pytest.raises(OutwatchError) as err:
        kill_process(pid, grace=1, guard=guard(), dry_run=True)
    assert err.value.code == ExitCode.REFUSED
    assert why in err.value.message


def test_protected_names_match_system_executables_only(spawn, tmp_path: Path) -> None:
    """A protected name protects /usr/bin/sleep, not a copy of it dropped as /tmp/.../sleep."""
    require_root()
    real = subprocess.Popen(["/usr/bin/sleep", "120"])
    fake_exe = tmp_path / "sleep"
    shutil.copy2("/usr/bin/sleep", fake_exe)
    fake = subprocess.Popen([str(fake_exe), "120"])
    try:
        with pytest.raises(OutwatchError) as err:
            kill_process(real.pid, grace=1, guard=guard("sleep"))
        assert err.value.code == ExitCode.REFUSED and "protected" in err.value.message
        with pytest.raises(OutwatchError):  # an absolute path entry protects exactly that file
            kill_process(fake.pid, grace=1, guard=guard(str(fake_exe)))
        [r] = kill_process(fake.pid, grace=5, guard=guard("sleep"))
        assert r.exited and fake.wait() == -signal.SIGTERM
    finally:
        for p in (real, fake):
            p.kill()
            p.wait()


def test_cli_spares_the_running_watch(tmp_path: Path) -> None:
    """`outwatch kill` asks the running watch its pid (control socket) and refuses to kill it."""
    box = Sandbox(tmp_path)
    watch = box.popen([sys.executable, "-m", "outwatch.cli", "watch", "--format", "ndjson", "--output", "/dev/null"])
    try:
        sock = box.run_dir / "outwatch" / "control.sock"
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert watch.poll() is None and time.monotonic() < deadline, "outwatch watch did not start"
            time.sleep(0.05)
        refused = box.cli("kill", str(watch.pid))
        assert refused.returncode == ExitCode.REFUSED, refused.stderr
        assert "it is the running outwatch watch" in refused.stderr
        assert watch.poll() is None
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
        box.close()


def test_gone_thread_zombie_and_dry_run(spawn) -> None:
    gone = spawn()
    gone.kill()
    gone.wait()
    with pytest.raises(OutwatchError) as err:
        kill_process(gone.pid, grace=1, guard=guard())
    assert err.value.code == ExitCode.NOT_FOUND

    threaded = spawn(
        "import threading, time; threading.Thread(target=time.sleep, args=(120,), daemon=True).start(); "
        "print('ready', flush=True); time.sleep(120)"
    )
    tid = max(int(t) for t in os.listdir(f"/proc/{threaded.pid}/task"))
    assert tid != threaded.pid
    with pytest.raises(OutwatchError) as err:
        kill_process(tid, grace=1, guard=guard())
    assert err.value.code == ExitCode.USAGE and f"thread of process {threaded.pid}" in err.value.message

    zombie = spawn("print('ready', flush=True)")
    while not exited(zombie.pid):
        select.select([], [], [], 0.01)
    [r] = kill_process(zombie.pid, grace=1, guard=guard())
    assert (r.exited, r.signal, r.note) == (True, None, "already exited")

    alive = spawn()
    [r] = kill_process(alive.pid, grace=1, guard=guard(), dry_run=True)
    assert (r.signal, r.note) == (None, "dry run")
    assert alive.poll() is None


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this test process the reaper of orphans (the killed tree's grandchildren), then reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


# A root with three children (one ignores SIGTERM, one has a child of its own); prints "ready" once
# all four descendants have said they run.
TREE = """
import subprocess, sys
def start(code):
    p = subprocess.Popen([sys.executable, "-c", code + "; print('ready', flush=True); time.sleep(120)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p
kids = [
    start("import time"),
    start("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"),
    start("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', "
          "'import time; print(1, flush=True); time.sleep(120)'], stdout=subprocess.PIPE); g.stdout.readline()"),
]
print('ready', flush=True)
import time
time.sleep(120)
"""


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [int(k) for t in os.listdir(f"/proc/{p}/task") for k in
                Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        out += kids
        todo += kids
    return out


def test_tree_takes_all_descendants(spawn, subreaper) -> None:
    root = spawn(TREE)
    tree = descendants(root.pid)
    assert len(tree) == 4
    pidfds = {pid: os.pidfd_open(pid) for pid in tree}
    try:
        results = kill_process(root.pid, grace=0.5, guard=guard(), tree=True)
        assert {r.pid for r in results} == {root.pid, *tree}
        assert all(r.exited for r in results)
        assert {r.signal for r in results} == {"SIGTERM", "SIGKILL"}  # the stubborn child needed KILL
        for fd in pidfds.values():
            assert select.select([fd], [], [], 0)[0], "a descendant survived --tree"
    finally:
        for fd in pidfds.values():
            os.close(fd)
        for pid in tree:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def test_without_tree_children_survive(spawn, subreaper) -> None:
    root = spawn(TREE)
    tree = descendants(root.pid)
    try:
        [r] = kill_process(root.pid, grace=5, guard=guard())
        assert r.exited
        assert not any(exited(pid) for pid in tree)
    finally:
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_cli_kill_output_exit_codes_and_audit(spawn, tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    try:
        p = spawn(STUBBORN)
        done = box.cli("kill", str(p.pid), "--grace", "300ms", "--reason", "beacon")
        assert done.returncode == 0, done.stderr
        assert f"{p.pid} (python" in done.stdout and "killed (SIGKILL" in done.stdout
        assert p.wait() == -signal.SIGKILL

        refused = box.cli("kill", "1", "--dry-run")  # refusals come first; --dry-run in case they don't
        assert refused.returncode == ExitCode.REFUSED
        assert "refusing to kill 1" in refused.stderr and "Traceback" not in refused.stderr

        mine = box.cli("kill", str(os.getpid()), "--dry-run")  # the CLI's ancestor (nsenter's parent)
        assert mine.returncode == ExitCode.REFUSED and "ancestor" in mine.stderr

        for pid in ("12x", "0", "-1"):
            bad = box.cli("kill", "--", pid)
            assert bad.returncode == 2 and "is not a process id" in bad.stderr, pid
        bad = box.cli("kill", "1", "--grace", "soon")
        assert bad.returncode == 2 and "is not a duration" in bad.stderr

        stages = [(r["event"]["action"], r["outwatch"]["respond"]["stage"], r["event"]["outcome"]) for r in box.audit()]
        assert stages == [
            ("kill-process", "requested", "unknown"),
            ("kill-process", "done", "success"),
            ("kill-process", "requested", "unknown"),
            ("kill-process", "refused", "failure"),
            ("kill-process", "requested", "unknown"),
            ("kill-process", "refused", "failure"),
        ]
        first = box.audit()[1]
        assert first["user"]["id"] == "0" and first["event"]["reason"] == "beacon"
        assert first["process"]["pid"] == p.pid
        assert first["outwatch"]["respond"]["processes"][0]["signal"] == "SIGKILL"
    finally:
        box.close()
