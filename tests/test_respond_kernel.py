"""Kernel blocks for real: BlockManager drives the tracer's deny map (cgroup hooks loaded and attached
by this test), and real connect() and UDP sendto() calls of other processes fail with EPERM, or
don't. Loopback addresses stand in for the remote ends (the programs see loopback when asked to),
so no packet leaves the machine; blocking them takes force=True, as loopback is guarded."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import loaded_outwatch_programs
from conftest_respond import RESPOND_CLI, Sandbox, require_root

from outwatch.errors import ExitCode
from outwatch.kernel.deny import DenyRule
from outwatch.kernel.probes import KernelProbes
from outwatch.kernel.records import ConnectRecord
from outwatch.respond.audit import AuditLog
from outwatch.respond.blocks import BlockManager

BLOCKED, OTHER = "127.0.0.2", "127.0.0.3"
ROOT = {"id": "0", "name": "root"}

# Prints the errno of a TCP connect and of a UDP sendto to (host, port), 0 for success.
PROBE = """
import errno, socket, sys
host, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
try:
    socket.create_connection((host, tport), timeout=5).close()
    out.append(0)
except OSError as exc:
    out.append(exc.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", (host, uport))
    out.append(0)
except OSError as exc:
    out.append(exc.errno)
print(out[0], out[1])
"""


class Tracer:
    """The tracer's kernel side, loaded in this process, with its ring buffer drained by a thread."""

    def __init__(self) -> None:
        self.probes = KernelProbes(probes="cgroup", include_loopback=True)
        self.records: list[ConnectRecord] = []
        self._stop = threading.Event()
        self.probes.start(self._on_record)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _on_record(self, record: object) -> None:
        if isinstance(record, ConnectRecord):
            self.records.append(record)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.probes.poll(100)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.probes.close()


@pytest.fixture(scope="module")
def tracer() -> Iterator[Tracer]:
    require_root()
    t = Tracer()
    try:
        ids = set(loaded_outwatch_programs(os.getpid()))
        yield t
    finally:
        t.close()
    assert ids and not ids & set(loaded_outwatch_programs()), "BPF programs still loaded after the tracer closed"


@pytest.fixture(scope="module")
def listeners() -> Iterator[tuple[int, int]]:
    """A TCP and a UDP port listening on all of 127/8."""
    tcp = socket.create_server(("0.0.0.0", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    stop = threading.Event()

    def accept() -> None:
        tcp.settimeout(0.1)
        while not stop.is_set():
            try:
                tcp.accept()[0].close()
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield tcp.getsockname()[1], udp.getsockname()[1]
    finally:
        stop.set()
        t.join()
        tcp.close()
        udp.close()


def attempt(host: str, ports: tuple[int, int]) -> tuple[int, int]:
    """(errno of connect, errno of sendto) from a separate process."""
    out = subprocess.run([sys.executable, "-c", PROBE, host, *map(str, ports)], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    return int(out[0]), int(out[1])


def host_rule(addr: str, **kw: object) -> DenyRule:
    return DenyRule(ipaddress.ip_network(addr), **kw)  # type: ignore[arg-type]


def test_block_denies_connect_and_sendto_with_eperm(tracer: Tracer, listeners, tmp_path: Path) -> None:
    assert tracer.probes.deny is not None, "the cgroup probe set did not give a deny map"
    audit = AuditLog(tmp_path / "audit.ndjson")
    bm = BlockManager(tracer.probes.deny, audit)
    assert attempt(BLOCKED, listeners) == (0, 0)

    assert bm.add(host_rule(BLOCKED), ttl=None, reason="test", user=ROOT, force=True).error is None
    assert attempt(BLOCKED, listeners) == (errno.EPERM, errno.EPERM)
    assert attempt(OTHER, listeners) == (0, 0), "a block of one address stopped another"
    denied = [r for r in tracer.records if r.daddr == BLOCKED and r.denied]
    deadline = time.monotonic() + 10
    while {r.protocol for r in denied} != {6, 17}:
        assert time.monotonic() < deadline, "the denials did not arrive as records"
        time.sleep(0.05)
        denied = [r for r in tracer.records if r.daddr == BLOCKED and r.denied]

    assert bm.remove(host_rule(BLOCKED), user=ROOT).error is None
    assert attempt(BLOCKED, listeners) == (0, 0), "unblock did not restore traffic"

    # A port/protocol block denies only that: UDP to the port, not TCP.
    bm.add(host_rule(BLOCKED, port=listeners[1], proto="udp"), ttl=None, reason="", user=ROOT, force=True)
    assert attempt(BLOCKED, listeners) == (0, errno.EPERM)
    bm.close(ROOT)
    assert attempt(BLOCKED, listeners) == (0, 0), "closing the manager left a rule in the kernel"
    stages = [r["outwatch"]["respond"]["stage"] for r in map(orjson.loads, audit.path.read_bytes().splitlines())]
    assert stages == ["requested", "done"] * 4


def test_ttl_expires_in_the_kernel(tracer: Tracer, listeners, tmp_path: Path) -> None:
    bm = BlockManager(tracer.probes.deny, AuditLog(tmp_path / "audit.ndjson"))  # type: ignore[arg-type]
    bm.start()
    try:
        bm.add(host_rule(BLOCKED), ttl=1.0, reason="", user=ROOT, force=True)
        bm.add(host_rule(OTHER), ttl=None, reason="", user=ROOT, force=True)
        assert attempt(BLOCKED, listeners)[0] == errno.EPERM
        deadline = time.monotonic() + 15
        while attempt(BLOCKED, listeners) != (0, 0):
            assert time.monotonic() < deadline, "the TTL never lifted the kernel block"
            time.sleep(0.2)
        assert attempt(OTHER, listeners) == (errno.EPERM, errno.EPERM), "the TTL lifted a block without one"
    finally:
        bm.close(ROOT)
    assert attempt(OTHER, listeners) == (0, 0)


def test_cli_blocks_through_the_control_socket(listeners, tmp_path: Path) -> None:
    """The real `outwatch watch` in a sandbox whose /run (control socket) and /var/log (audit log) are
    private; blocks from another process land in its deny map, and the denials and audit records
    reach its event stream."""
    box = Sandbox(tmp_path)
    events = tmp_path / "events.ndjson"
    watch = box.popen([*RESPOND_CLI, "watch", "--include-loopback", "--format", "ndjson", "--output", str(events)])
    try:
        deadline = time.monotonic() + 60
        while box.cli("status").returncode != 0:
            assert watch.poll() is None and time.monotonic() < deadline, "outwatch watch did not start"
            time.sleep(0.2)
        refused = box.cli("block", BLOCKED)
        assert refused.returncode == ExitCode.REFUSED and "covers loopback" in refused.stderr

        done = box.cli("block", BLOCKED, "--force", "--ttl", "10m", "--reason", "beacon")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"blocked {BLOCKED} in the kernel (bpf), until 2")
        assert attempt(BLOCKED, listeners) == (errno.EPERM, errno.EPERM)

        listed = box.cli("blocks", "--json")
        [row] = [orjson.loads(line) for line in listed.stdout.splitlines()]
        assert row["target"] == f"{BLOCKED}/32" and row["via"] == "bpf" and row["reason"] == "beacon"
        assert row["until"] > row["since"]

        undone = box.cli("unblock", BLOCKED)
        assert undone.returncode == 0, undone.stderr
        assert undone.stdout == f"unblocked {BLOCKED} in the kernel (bpf)\n"
        assert attempt(BLOCKED, listeners) == (0, 0)
        again = box.cli("unblock", BLOCKED, "--via", "bpf")
        assert again.returncode == ExitCode.NOT_FOUND and "is not blocked in the kernel" in again.stderr

        box.cli("block", BLOCKED, "--force", "--port", str(listeners[0]), "--proto", "tcp")
        assert attempt(BLOCKED, listeners) == (errno.EPERM, 0)
    finally:
        watch.terminate()
        watch.wait(timeout=30)
        box.close()
    assert attempt(BLOCKED, listeners) == (0, 0), "a block outlived the watch"
    stream = [orjson.loads(line) for line in events.read_bytes().splitlines()]
    denied = [e for e in stream if e["event"].get("action") == "connection_denied"]
    assert {(e["destination"]["ip"], e["network"]["transport"]) for e in denied} >= {(BLOCKED, "tcp"), (BLOCKED, "udp")}
    assert all("denied" in e["event"]["type"] and e["event"]["outcome"] == "failure" for e in denied)
    streamed = [e for e in stream if e["event"].get("dataset") == "outwatch.respond"]
    assert [r["outwatch"]["respond"]["stage"] for r in streamed] == [
        r["outwatch"]["respond"]["stage"] for r in box.audit()]
    stages = [(r["event"]["action"], r["outwatch"]["respond"]["stage"]) for r in box.audit()]
    assert stages == [
        ("block-destination", "requested"), ("block-destination", "refused"),
        ("block-destination", "requested"), ("block-destination", "done"),
        ("unblock-destination", "requested"), ("unblock-destination", "done"),
        ("unblock-destination", "requested"), ("unblock-destination", "failed"),
        ("block-destination", "requested"), ("block-destination", "done"),
        ("unblock-destination", "requested"), ("unblock-destination", "done"),  # lifted as the watch stopped
    ]
