"""Real processes with odd executables for the investigation tests (imported explicitly).

Each helper starts a real process and yields it; the finally block kills only that process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SLEEP = shutil.which("sleep") or "/bin/sleep"

# The child replaces itself with /bin/sleep's bytes run from an anonymous memory file.
_MEMFD_CHILD = """
import os, sys
fd = os.memfd_create(sys.argv[1], 0)
with open(sys.argv[2], "rb") as f:
    os.write(fd, f.read())
os.execv(f"/proc/self/fd/{fd}", [sys.argv[1], "300"])
"""


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests read other processes' /proc entries, unshare namespaces and mount: run as root")


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _exe_target(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@contextlib.contextmanager
def started(argv: list[str], **kw) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def sleep_copy(directory: Path, name: str = "beacon") -> Iterator[tuple[subprocess.Popen, Path]]:
    """A copy of sleep run from `directory` (the file is left in place; the caller may delete it)."""
    exe = directory / name
    shutil.copy2(SLEEP, exe)
    with started([str(exe), "300"]) as proc:
        wait_for(lambda: _exe_target(proc.pid).startswith(str(exe)), "the copy to exec")
        yield proc, exe


@contextlib.contextmanager
def memfd_process(name: str = "memfd-beacon") -> Iterator[subprocess.Popen]:
    with started([sys.executable, "-c", _MEMFD_CHILD, name, SLEEP]) as proc:
        wait_for(lambda: _exe_target(proc.pid).startswith(f"/memfd:{name}"), "the memfd exec")
        yield proc


def build_preload_lib(directory: Path) -> Path:
    """A tiny real shared object to put in LD_PRELOAD."""
    src = directory / "hook.c"
    src.write_text("int outwatch_test_hook(void) { return 42; }\n")
    lib = directory / "libhook.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


@contextlib.contextmanager
def tcp_listener() -> Iterator[socket.socket]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv
    finally:
        srv.close()


_CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", s.getsockname()[1], flush=True)
time.sleep(300)
"""


@contextlib.contextmanager
def connected_client(port: int, python: str = sys.executable) -> Iterator[tuple[subprocess.Popen, int]]:
    """A child process holding an established TCP connection to 127.0.0.1:port; yields (proc, its port)."""
    with started([python, "-c", _CLIENT, str(port)], stdout=subprocess.PIPE, text=True) as proc:
        line = proc.stdout.readline().split()
        assert line and line[0] == "connected", f"client did not connect: {line}"
        yield proc, int(line[1])


def run_cli(command: str, *args: str, as_nobody: bool = False, cwd: str = "/") -> subprocess.CompletedProcess:
    """Run one of the investigation click commands in a fresh interpreter, as a user would."""
    code = f"from outwatch.cli.investigate import {command}; {command}(prog_name='outwatch {command}')"
    kw = {}
    if as_nobody:
        kw = {"user": 65534, "group": 65534, "extra_groups": []}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False, **kw
    )


def ndjson(text: str) -> list[dict]:
    import orjson

    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
