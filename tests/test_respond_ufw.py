"""block/unblock --via ufw for real: ufw runs in a private mount namespace (the sandbox) inside the
client network namespace of a NetnsPair, whose test host listens at the other end of a veth pair. The machine's own
firewall (iptables, ip6tables, nft) must be byte-for-byte the same afterwards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import NetnsPair
from conftest_respond import Sandbox

from outwatch.errors import ExitCode
from outwatch.respond.ufw import parse_added

HOST = NetnsPair.HOST_IP
PORT = 8080
CONNECT = f"""
import socket, sys
try:
    socket.create_connection(("{HOST}", {PORT}), timeout=1.5).close()
except OSError:
    sys.exit(1)
"""


def host_firewall() -> dict[str, str]:
    return {
        name: subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for name, argv in (
            ("iptables", ["iptables-save"]),
            ("ip6tables", ["ip6tables-save"]),
            ("nft", ["nft", "list", "ruleset"]),
        )
    }


class Net:
    """The sandbox on the client side of a NetnsPair, ufw enabled there; the test host listens."""

    def __init__(self, box: Sandbox, pair: NetnsPair) -> None:
        self.box, self.pair = box, pair

    def reaches_host(self) -> bool:
        return self.pair.run(sys.executable, "-c", CONNECT).returncode == 0


@pytest.fixture
def net(netns_pair: NetnsPair, tmp_path: Path) -> Iterator[Net]:
    before = host_firewall()
    netns_pair.listen(PORT)
    box = Sandbox(tmp_path, netns=netns_pair.client, ufw=True)
    try:
        box.sh(["ufw", "--force", "enable"])
        yield Net(box, netns_pair)
    finally:
        box.close()
    assert host_firewall() == before, "the machine's own firewall changed"


def test_block_stops_traffic_and_unblock_restores_it(net: Net) -> None:
    box = net.box
    assert net.reaches_host(), "no traffic to the test host before any block"

    # No watch runs in the sandbox (its /run is private), so the default is ufw, with a note.
    done = box.cli("block", HOST, "--reason", "c2 beacon")
    assert done.returncode == 0, done.stderr
    assert "no watch is running, so blocking with ufw" in done.stderr
    assert f"blocked {HOST} with ufw: ufw prepend deny out to {HOST} comment outwatch" in done.stdout
    assert not net.reaches_host(), "traffic still flows after block --via ufw"

    again = box.cli("block", HOST, "--via", "ufw")
    assert again.returncode == 0 and "already blocked" in again.stdout

    listed = box.cli("blocks", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert row["target"] == f"{HOST}/32" and row["via"] == "ufw" and row["enforced"] is True
    assert row["reason"] == "c2 beacon" and row["requested_by"] == "0" and row["since"].endswith("Z")
    human = box.cli("blocks")
    assert f"{HOST}/32" in human.stdout and "c2 beacon" in human.stdout and "unblock" in human.stdout
    assert " root " in human.stdout  # who asked, by name

    undone = box.cli("unblock", HOST)
    assert undone.returncode == 0, undone.stderr
    assert f"unblocked {HOST} in ufw: ufw delete deny out to {HOST}" in undone.stdout
    assert net.reaches_host(), "traffic does not flow again after unblock"
    assert [r for r in parse_added(box.sh(["ufw", "show", "added"])) if r.ours] == []

    stages = [(r["event"]["action"], r["outwatch"]["respond"]["stage"]) for r in box.audit()]
    assert stages == [
        ("block-destination", "requested"),
        ("block-destination", "done"),
        ("block-destination", "requested"),
        ("block-destination", "done"),
        ("unblock-destination", "requested"),
        ("unblock-destination", "done"),
    ]
    block_done = box.audit()[1]
    assert block_done["destination"] == {"ip": HOST}
    assert block_done["event"]["type"] == ["denied"] and block_done["event"]["outcome"] == "success"
    assert block_done["outwatch"]["respond"]["via"] == "ufw"
    assert block_done["outwatch"]["respond"]["argv"] == ["ufw", "prepend", "deny", "out", "to", HOST,
                                                         "comment", "outwatch"]
    records = orjson.loads((box.varlib / "outwatch" / "blocks.json").read_bytes())
    assert records == {"blocks": []}


def test_port_block_leaves_other_ports_and_admin_rules_alone(net: Net) -> None:
    box = net.box
    other = box.cli("block", HOST, "--port", "9999", "--proto", "tcp", "--via", "ufw")
    assert other.returncode == 0, other.stderr
    assert net.reaches_host(), "a block of port 9999 stopped traffic to port 8080"

    box.sh(["ufw", "allow", "out", "to", HOST, "port", str(PORT), "proto", "tcp"])
    refused = box.cli("block", HOST, "--port", str(PORT), "--proto", "tcp", "--via", "ufw")
    assert refused.returncode == ExitCode.REFUSED
    assert "not added by outwatch" in refused.stderr
    missing = box.cli("unblock", HOST, "--port", str(PORT), "--proto", "tcp", "--via", "ufw")
    assert missing.returncode == ExitCode.NOT_FOUND and "which outwatch did not add" in missing.stderr
    rules = parse_added(box.sh(["ufw", "show", "added"]))
    assert [r.action for r in rules if r.port == PORT] == ["allow"], "the admin's own rule was changed"

    gone = box.cli("unblock", HOST, "--port", "9999", "--proto", "tcp")
    assert gone.returncode == 0, gone.stderr
    nothing = box.cli("unblock", HOST)
    assert nothing.returncode == ExitCode.NOT_FOUND and "is not blocked" in nothing.stderr


def test_inactive_ufw_and_bad_input(net: Net) -> None:
    box = net.box
    box.sh(["ufw", "disable"])
    inactive = box.cli("block", HOST, "--via", "ufw")
    assert inactive.returncode == ExitCode.FAILURE
    assert "ufw is inactive, so a ufw rule would block nothing" in inactive.stderr
    assert box.audit()[-1]["outwatch"]["respond"]["stage"] == "failed"
    listed = box.cli("blocks")
    assert listed.returncode == 0 and "nothing is blocked" in listed.stdout
    assert "not enforced" not in listed.stderr  # no ufw block to warn about

    ttl = box.cli("block", HOST, "--via", "ufw", "--ttl", "1h")
    assert ttl.returncode == 2 and "--ttl works only for kernel blocks" in ttl.stderr
    bpf = box.cli("block", HOST, "--via", "bpf")
    assert bpf.returncode == ExitCode.NOT_FOUND and "start `outwatch watch`" in bpf.stderr

    for args, message in (
        (["10.213.0.1/24"], "host bits set"),
        (["10.213.0.300"], "is not an IP address or CIDR"),
        ([HOST, "--port", "70000"], "70000 is not in the range"),
        ([HOST, "--proto", "icmp"], "'icmp' is not one of"),
        ([HOST, "--ttl", "0s"], "must be longer than 0"),
    ):
        bad = box.cli("block", *args)
        assert bad.returncode == 2, args
        assert message in bad.stderr and "Traceback" not in bad.stderr

    lo = box.cli("block", "127.0.0.1", "--via", "ufw")
    assert lo.returncode == ExitCode.REFUSED and "covers loopback" in lo.stderr and "--force" in lo.stderr
