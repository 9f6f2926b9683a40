"""outwatch snapshot against real sockets: a test listener, clients connected to it, odd executables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_investigate import (
    connected_client,
    ndjson,
    no_traceback,
    require_root,
    run_cli,
    started,
    tcp_listener,
    wait_for,
)

from outwatch.investigate.snapshot import take_snapshot
from outwatch.investigate.sockets import read_sockets

_UDP_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.send(b"x")
print("connected", s.getsockname()[1], flush=True)
time.sleep(300)
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def _for_pid(findings: list[dict], pid: int) -> list[dict]:
    return [f for f in findings if f.get("process", {}).get("pid") == pid]


def test_outbound_tcp_with_process_chain_and_no_inbound_side() -> None:
    with tcp_listener() as srv, connected_client(srv.getsockname()[1]) as (client, cport):
        port = srv.getsockname()[1]
        accepted, _ = srv.accept()
        try:
            snap = take_snapshot()
        finally:
            accepted.close()
    mine = _for_pid(snap.findings, client.pid)
    assert len(mine) == 1
    event = mine[0]
    assert event["destination"] == {"ip": "127.0.0.1", "port": port}
    assert event["source"] == {"ip": "127.0.0.1", "port": cport}
    assert event["network"]["transport"] == "tcp" and event["network"]["direction"] == "egress"
    assert event["network"]["community_id"].startswith("1:")
    assert event["process"]["executable"] == os.path.realpath(sys.executable)
    assert event["process"]["args"][0] == sys.executable
    assert event["process"]["parent"]["pid"] == os.getpid()
    chain = [a["pid"] for a in event["outwatch"]["process"]["ancestors"]]
    assert chain[0] == os.getpid() and chain[-1] == 1
    assert isinstance(event["outwatch"]["score"], int) and "reasons" in event["outwatch"]
    assert event["outwatch"]["socket"]["state"] == "ESTABLISHED"
    # The accepted (server) end and the listener are not outbound connections.
    assert not [f for f in snap.findings if f.get("source", {}).get("port") == port]
    scores = [f["outwatch"]["score"] for f in snap.findings]
    assert scores == sorted(scores, reverse=True)


def test_connected_udp_and_ipv6(tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp_port = udp.getsockname()[1]
    six = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    six.bind(("::1", 0))
    six.listen()
    code = "import socket,time; s=socket.create_connection(('::1', %d)); print('ok', flush=True); time.sleep(300)"
    try:
        with (
            started([sys.executable, "-c", _UDP_CLIENT, str(udp_port)], stdout=subprocess.PIPE, text=True) as u,
            started([sys.executable, "-c", code % six.getsockname()[1]], stdout=subprocess.PIPE, text=True) as v,
        ):
            assert u.stdout.readline().startswith("connected") and v.stdout.readline().startswith("ok")
            snap = take_snapshot()
    finally:
        udp.close()
        six.close()
    (ue,) = _for_pid(snap.findings, u.pid)
    assert ue["network"]["transport"] == "udp" and ue["destination"]["port"] == udp_port
    (ve,) = _for_pid(snap.findings, v.pid)
    assert ve["destination"]["ip"] == "::1" and ve["network"]["type"] == "ipv6"


def test_deleted_executable_scores_by_the_rules(tmp_path: Path) -> None:
    exe = tmp_path / "beacon"
    exe.write_bytes(Path(os.path.realpath(sys.executable)).read_bytes())
    exe.chmod(0o755)
    with tcp_listener() as srv, connected_client(srv.getsockname()[1], python=str(exe)) as (client, _):
        exe.unlink()
        snap = take_snapshot()
    (event,) = _for_pid(snap.findings, client.pid)
    assert event["outwatch"]["process"]["exe_deleted"] is True
    assert event["process"]["executable"] == str(exe)
    rules = {r["rule"] for r in event["outwatch"]["reasons"]}
    assert "OW-EXE-DELETED" in rules and "OW-EXE-TMP" in rules
    assert event["outwatch"]["score"] == sum(r["score"] for r in event["outwatch"]["reasons"])


def test_cli_json_and_human(tmp_path: Path) -> None:
    with tcp_listener() as srv, connected_client(srv.getsockname()[1]) as (client, cport):
        port = srv.getsockname()[1]
        as_json = run_cli("snapshot", "--json")
        human = run_cli("snapshot")
    for proc in (as_json, human):
        assert proc.returncode == 0, proc.stderr
        no_traceback(proc)
    events = ndjson(as_json.stdout)
    assert _for_pid(events, client.pid)
    assert all(e["ecs"]["version"] and e["event"]["dataset"] == "outwatch.snapshot" for e in events)
    assert f"pid {client.pid} " in human.stdout and f"127.0.0.1:{cport} -> 127.0.0.1:{port}" in human.stdout


def test_as_non_root_says_what_it_could_not_see() -> None:
    """A root-owned connection is invisible to nobody: listed without a process, and counted."""
    with tcp_listener() as srv, connected_client(srv.getsockname()[1]) as (_client, cport):
        proc = run_cli("snapshot", "--json", as_nobody=True)
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert "without a visible process (run as root" in proc.stderr
    events = ndjson(proc.stdout)
    (mine,) = [e for e in events if e["source"]["port"] == cport]
    assert "process" not in mine and mine["outwatch"]["partial"] is True
    assert mine["user"]["id"] == "0"


def test_socket_table_owners_match_the_process() -> None:
    with tcp_listener() as srv, connected_client(srv.getsockname()[1]) as (client, cport):
        port = srv.getsockname()[1]
        wait_for(lambda: any(s.local_port == cport for s in read_sockets().sockets), "the client socket")
        table = read_sockets()
    (sock,) = [s for s in table.sockets if s.local_port == cport and s.transport == "tcp"]
    assert table.pids_of(sock) == [client.pid]
    (listener,) = [s for s in table.sockets if s.local_port == port and s.listening]
    assert listener.remote_ip is None and os.getpid() in table.pids_of(listener)


_NETNS_PAIR = """
import os, socket, subprocess, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
pid = os.fork()
if pid == 0:
    c = socket.create_connection(srv.getsockname())
    time.sleep(300)
    os._exit(0)
conn, _ = srv.accept()
print(pid, srv.getsockname()[1], flush=True)
time.sleep(300)
"""


def test_connections_in_another_network_namespace() -> None:
    """A container's beacon lives in its own network namespace: it is still seen, and its netns named."""
    with started(
        ["unshare", "--net", "--", sys.executable, "-c", _NETNS_PAIR], stdout=subprocess.PIPE, text=True
    ) as ns:
        child, port = (int(x) for x in ns.stdout.readline().split())
        try:
            their_netns = os.stat(f"/proc/{ns.pid}/ns/net").st_ino
            snap = take_snapshot()
        finally:
            os.kill(child, 9)
    assert their_netns != os.stat("/proc/self/ns/net").st_ino
    (event,) = _for_pid(snap.findings, child)
    assert event["destination"] == {"ip": "127.0.0.1", "port": port}
    assert event["outwatch"]["socket"]["netns"] == their_netns
    # The accepted end in that namespace is inbound there, so not listed.
    assert not [e for e in snap.findings if e.get("source", {}).get("port") == port]


_PENDING = """
import socket, subprocess, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
rules = "table inet t {\\n chain o {\\n type filter hook output priority 0;\\n tcp dport 9 drop\\n }\\n}\\n"
subprocess.run(["nft", "-f", "-"], check=True, text=True, input=rules)
s = socket.socket()
s.setblocking(False)
try:
    s.connect(("127.0.0.1", 9))
except BlockingIOError:
    pass
print(s.getsockname()[1], flush=True)
time.sleep(300)
"""


def test_pending_connect_in_syn_sent() -> None:
    """A connect whose SYN goes unanswered (dropped by nftables in a namespace of the test's own)."""
    with started(["unshare", "--net", "--", sys.executable, "-c", _PENDING], stdout=subprocess.PIPE, text=True) as ns:
        port = int(ns.stdout.readline())
        snap = take_snapshot()
    (event,) = _for_pid(snap.findings, ns.pid)
    assert event["source"]["port"] == port and event["destination"]["port"] == 9
    assert event["outwatch"]["socket"]["state"] == "SYN_SENT" and event["event"]["outcome"] == "unknown"
