"""Shared fixtures: a real `outwatch watch` on the real kernel, and a compiled connect workload.

Tests that need root or BPF fail (never skip) when they cannot run here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTWATCH = [sys.executable, "-m", "outwatch.cli"]
PROGS = Path(__file__).resolve().parent / "progs"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root and a BPF-capable kernel (run `make test` as root)")


def _held_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds an fd of (program or link fds, from fdinfo)."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def loaded_outwatch_programs(pid: int | None = None) -> dict[int, str]:
    """Loaded BPF programs called ow_*, by id -> name (those held by `pid` when given)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True).stdout
    held = _held_prog_ids(pid) if pid is not None else None
    return {p["id"]: p["name"] for p in orjson.loads(out)
            if p.get("name", "").startswith("ow_") and (held is None or p["id"] in held)}


class Watch:
    """A running `outwatch watch --format ndjson` writing to a file we read."""

    def __init__(self, tmp: Path, *args: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.path = tmp / "events.ndjson"
        self.stderr_path = tmp / "stderr.txt"
        self._stderr = self.stderr_path.open("wb")
        if "--format" not in args:
            args = ("--format", "ndjson", *args)
        self.proc = subprocess.Popen(
            [*OUTWATCH, "watch", "--output", str(self.path), *args],
            stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=ROOT,
        )
        self._offset = 0
        self._lines: list[bytes] = []
        self._parsed: dict[int, dict] = {}
        deadline = time.monotonic() + 60
        while "probes:" not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"outwatch watch did not start:\n{self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def lines(self) -> list[bytes]:
        return self.path.read_bytes().splitlines() if self.path.exists() else []

    def _read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        self._lines.extend(line for line in data[:end].splitlines() if line)

    def _events(self, hint: bytes | None) -> list[dict]:
        """Lines are parsed only when asked for, and only those holding `hint` when one is given: a
        busy machine's loopback traffic must not fill this process's memory."""
        out = []
        for i, line in enumerate(self._lines):
            if hint is None or hint in line:
                if i not in self._parsed:
                    self._parsed[i] = orjson.loads(line)
                out.append(self._parsed[i])
        return out

    def wait_for(self, pred: Callable[[dict], bool], count: int = 1, timeout: float = 10.0,
                 hint: bytes | None = None) -> list[dict]:
        """Events matching pred (among lines holding `hint`, or pred.hint); fails the test if fewer than
        count arrive in time."""
        hint = hint or getattr(pred, "hint", None)
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            found = [e for e in self._events(hint) if pred(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"expected {count} matching events, got {len(found)}; stderr:\n{self.stderr()}")
            time.sleep(0.05)

    def events(self, hint: bytes | None = None) -> list[dict]:
        self._read()
        return self._events(hint)

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def connect_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/progs/connect_once.c compiled with the system compiler."""
    out = tmp_path_factory.mktemp("progs") / "connect_once"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(PROGS / "connect_once.c")], check=True)
    return out


@pytest.fixture(scope="session")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    """One live tracer shared by the tests of a session (loopback included, 1 s metrics)."""
    require_root()
    w = Watch(tmp_path_factory.mktemp("watch"), "--include-loopback", "--metrics-interval", "1")
    yield w
    ids = set(loaded_outwatch_programs(w.proc.pid))
    w.stop()
    assert ids and not ids & set(loaded_outwatch_programs()), "BPF programs left loaded after outwatch exited"


@pytest.fixture
def copy_of(tmp_path: Path) -> Callable[[Path, str], Path]:
    """A copy of an executable under a temp directory."""

    def make(src: Path, name: str) -> Path:
        dst = tmp_path / name
        shutil.copy2(src, dst)
        dst.chmod(0o755)
        return dst

    return make


class NetnsPair:
    """Two network namespaces joined by a veth pair: a client side and a test host with a TCP listener.
    Nothing changes in the machine's own namespace."""

    CLIENT_IP = "10.213.7.1"
    HOST_IP = "10.213.7.2"

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.client, self.host = f"owc{tag}", f"owh{tag}"
        self._listener: subprocess.Popen | None = None
        for ns in (self.client, self.host):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        veth_c, veth_h = f"vc{tag}", f"vh{tag}"
        cmds = [
            ["ip", "-n", self.client, "link", "add", veth_c, "type", "veth", "peer", "name", veth_h,
             "netns", self.host],
            ["ip", "-n", self.client, "addr", "add", f"{self.CLIENT_IP}/30", "dev", veth_c],
            ["ip", "-n", self.host, "addr", "add", f"{self.HOST_IP}/30", "dev", veth_h],
            ["ip", "-n", self.client, "link", "set", veth_c, "up"],
            ["ip", "-n", self.host, "link", "set", veth_h, "up"],
            ["ip", "-n", self.client, "link", "set", "lo", "up"],
            ["ip", "-n", self.host, "link", "set", "lo", "up"],
        ]
        for cmd in cmds:
            subprocess.run(cmd, check=True)

    def listen(self, port: int) -> None:
        """A TCP listener on the test host that accepts and closes (python, bounded lifetime)."""
        code = (
            "import socket,sys,time\n"
            "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('{self.HOST_IP}',{port}));s.listen(64);s.settimeout(0.5);print('up',flush=True)\n"
            "end=time.time()+120\n"
            "while time.time()<end:\n"
            "  try: c,_=s.accept(); c.close()\n"
            "  except OSError: pass\n"
        )
        self._listener = subprocess.Popen(["ip", "netns", "exec", self.host, sys.executable, "-c", code],
                                          stdout=subprocess.PIPE)
        assert self._listener.stdout is not None and self._listener.stdout.readline() == b"up\n"

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.client, *cmd], **kw)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.kill()
            self._listener.wait()
        for ns in (self.client, self.host):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    require_root()
    pair = NetnsPair()
    try:
        yield pair
    finally:
        pair.close()
