"""Containment logic: targets, the gateway/DNS/loopback guard, the [respond] policy, kernel blocks
(TTL, merge, list, control handlers) against a recording deny-map backend, the audit log, and the
automatic Responder (which kills a real child process of this test)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from outwatch.errors import ExitCode, OutwatchError
from outwatch.event import rfc3339_ns
from outwatch.kernel.deny import DenyRule
from outwatch.proc.identity import Clock
from outwatch.respond.audit import AuditLog, Request, audited
from outwatch.respond.blocks import BlockManager, unavailable_handlers
from outwatch.respond.guards import check_block_allowed, default_gateways, dns_resolvers
from outwatch.respond.policy import ActionPolicy, ResponsePolicy, parse_policy
from outwatch.respond.process import read_identity
from outwatch.respond.responder import Responder
from outwatch.respond.target import make_target, parse_duration, parse_network

net = ipaddress.ip_network


# --- targets and durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        (" 198.51.100.0/24 ", "198.51.100.0/24"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:203.0.113.7", "203.0.113.7/32"),  # checked as IPv4 by the kernel hooks
    ],
)
def test_parse_network(text: str, expected: str) -> None:
    assert parse_network(text) == net(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.1.2.3/24", "10.1.2.3/24 has host bits set: give 10.1.2.3 for that one address or 10.1.2.0/24"),
        ("2001:db8::1/32", "has host bits set"),
        ("10.1.2.300", "is not an IP address or CIDR"),
        ("example.com", "is not an IP address or CIDR"),
        ("", "is not an IP address or CIDR"),
        ("10.0.0.0/33", "is not an IP address or CIDR"),
    ],
)
def test_parse_network_refuses_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_network(text)
    assert message in str(err.value)


def test_ports_protocols_and_durations() -> None:
    assert make_target("10.0.0.1", "443", "TCP") == DenyRule(net("10.0.0.1/32"), 443, "tcp")
    for port in ("0", "65536", "http", "-1"):
        with pytest.raises(ValueError, match="port"):
            make_target("10.0.0.1", port)
    with pytest.raises(ValueError, match="'icmp' is not one of: tcp, udp"):
        make_target("10.0.0.1", None, "icmp")
    assert [parse_duration(t) for t in ("90", "5s", "500ms", "10m", "1h30m", "2d", "1.5h")] == [
        90, 5, 0.5, 600, 5400, 172800, 5400
    ]
    for bad in ("", "5x", "h", "1h 30m", "-5s", "5s10"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)


# --- never cut the machine off ---------------------------------------------------------------------


def _ip_route_gateways() -> set[str]:
    """The default routes' next hops as iproute2 reports them: an oracle independent of our parser."""
    gws = set()
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", "-j", family, "route", "show", "default"], capture_output=True, check=True)
        gws |= {r["gateway"] for r in json.loads(out.stdout or b"[]") if "gateway" in r}
    return gws


def test_default_gateways_match_iproute2_and_are_protected() -> None:
    found = default_gateways()
    assert {str(g) for g in found} == _ip_route_gateways()
    for gw in found:
        host = DenyRule(net(gw))
        with pytest.raises(OutwatchError) as err:
            check_block_allowed(host, force=False)
        assert err.value.code == ExitCode.REFUSED and "default gateway" in err.value.message
        check_block_allowed(host, force=True)
        wide = DenyRule(net(gw).supernet(new_prefix=8 if gw.version == 4 else 32))
        with pytest.raises(OutwatchError, match="default gateway"):
            check_block_allowed(wide, force=False)


def test_route_table_parsing(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    (tmp_path / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
    )
    assert default_gateways(tmp_path / "route", tmp_path / "ipv6_route") == [
        ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("fd00::1")
    ]
    (tmp_path / "resolv.conf").write_text("# c\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch x\n")
    assert dns_resolvers(tmp_path / "resolv.conf") == [
        ipaddress.ip_address("10.255.255.53"), ipaddress.ip_address("fe80::1")
    ]


def test_resolvers_and_loopback_are_protected() -> None:
    for ns in dns_resolvers():
        with pytest.raises(OutwatchError, match="DNS resolver"):
            check_block_allowed(DenyRule(net(ns), 53, "udp"), force=False)
    for lo in ("127.0.0.1", "127.0.0.0/8", "::1", "0.0.0.0/0"):
        with pytest.raises(OutwatchError) as err:
            check_block_allowed(DenyRule(net(lo)), force=False)
        assert "--force" in err.value.hint
    check_block_allowed(DenyRule(net("127.0.0.1")), force=True)
    check_block_allowed(DenyRule(net("203.0.113.7")), force=False)


# --- policy ----------------------------------------------------------------------------------------


def test_policy_defaults_and_full_table() -> None:
    assert parse_policy({}) == ResponsePolicy()
    p = parse_policy({
        "dry_run": True,
        "protected_processes": ["myapp", "/opt/app/bin/app"],
        "protected_units": ["myapp", "worker@1.service"],
        "block": {"min_severity": "medium", "per_minute": 3, "ttl": "10m"},
        "kill": {"min_severity": "OFF", "grace": "2s"},
        "stop_unit": {"min_severity": "critical", "disable": True},
    })
    assert p.block == ActionPolicy("medium", 3) and p.block_ttl == 600
    assert p.kill.min_severity is None and p.kill_grace == 2
    assert p.stop_unit == ActionPolicy("critical", 2) and p.stop_disable
    assert p.dry_run and p.protected_processes == {"myapp", "/opt/app/bin/app"}
    assert p.protected_units == {"myapp.service", "worker@1.service"}
    assert parse_policy({"block": {"ttl": ""}}).block_ttl is None
    assert p.block.applies("high") and p.block.applies("medium") and not p.block.applies("low")
    assert not p.kill.applies("critical") and not p.block.applies("bogus") and not p.block.applies(None)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"blok": {}}, "respond.blok: unknown key"),
        ({"block": {"min_severity": "severe"}}, "respond.block.min_severity: 'severe' is not one of"),
        ({"block": {"per_minute": 0}}, "respond.block.per_minute"),
        ({"block": {"per_minute": True}}, "respond.block.per_minute"),
        ({"block": {"ttl": "forever"}}, "respond.block.ttl: 'forever' is not a duration"),
        ({"block": {"ttl": "0s"}}, "respond.block.ttl: '0s' must be longer than 0"),
        ({"block": {"grace": "1s"}}, "respond.block.grace: unknown key"),
        ({"kill": "yes"}, "respond.kill must be a table"),
        ({"kill": {"grace": 5}}, "respond.kill.grace: 5 is not a duration"),
        ({"dry_run": "no"}, "respond.dry_run: 'no' is not true or false"),
        ({"protected_processes": "sshd"}, "respond.protected_processes: must be a list"),
        ({"protected_units": ["--now"]}, "respond.protected_units: '--now' is not a systemd unit name"),
        ({"protected_units": ["user.slice"]}, "respond.protected_units: user.slice is not a unit of processes"),
    ],
)
def test_policy_errors_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_policy(table)
    assert str(err.value).startswith(message)


# --- kernel blocks against a recording backend --------------------------------------------------------


class RecordingBackend:
    """Stands in for the tracer's deny map in these unit tests (the real one: test_respond_kernel.py)."""

    def __init__(self, fail_over: int | None = None) -> None:
        self.calls: list[list[DenyRule]] = []
        self.fail_over = fail_over

    def set_rules(self, rules: Sequence[DenyRule]) -> None:
        if self.fail_over is not None and len(rules) > self.fail_over:
            raise ValueError("at most 8 port/protocol blocks cover one destination")
        self.calls.append(list(rules))

    @property
    def rules(self) -> list[DenyRule]:
        return self.calls[-1] if self.calls else []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


ROOT = {"id": "0", "name": "root"}
A = DenyRule(net("203.0.113.7/32"))
B = DenyRule(net("198.51.100.0/24"), 443, "tcp")


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "log" / "audit.ndjson")


def lines(log: AuditLog) -> list[dict]:
    return [orjson.loads(x) for x in log.path.read_bytes().splitlines()]


def test_block_list_merge_ttl_and_unblock(audit: AuditLog) -> None:
    backend, clock = RecordingBackend(), FakeClock()
    bm = BlockManager(backend, audit, clock=clock)
    out = bm.add(A, ttl=60, reason="c2", user=ROOT)
    assert out.error is None and backend.rules == [A]
    assert out.details == {"target": "203.0.113.7/32", "via": "bpf", "since": rfc3339_ns(int(clock.now * 1e9)),
                           "until": rfc3339_ns(int((clock.now + 60) * 1e9)), "reason": "c2", "requested_by": "0"}
    bm.add(B, ttl=None, reason="", user=ROOT)
    assert backend.rules == [A, B]

    # Merge: a shorter TTL does not shorten the block, a longer one extends it, none makes it permanent.
    clock.now += 10
    bm.add(A, ttl=5, reason="again", user=ROOT)
    assert bm.list()[0].until == clock.now - 10 + 60 and bm.list()[0].reason == "c2"
    bm.add(A, ttl=600, reason="", user=ROOT)
    assert bm.list()[0].until == clock.now + 600
    assert [b.target for b in bm.list()] == [A, B] and len(backend.rules) == 2

    assert bm.covers(DenyRule(net("203.0.113.7/32"), 80, "udp"))
    assert bm.covers(DenyRule(net("198.51.100.9/32"), 443, "tcp"))
    assert not bm.covers(DenyRule(net("198.51.100.9/32"), 80, "tcp"))
    assert not bm.covers(DenyRule(net("198.51.100.0/23"), 443, "tcp"))

    clock.now += 599
    assert bm.expire() == [] and backend.rules == [A, B]
    clock.now += 1
    [gone] = bm.expire()
    assert gone.target == A and backend.rules == [B]

    missing = bm.remove(A, user=ROOT)
    assert missing.error is not None and missing.error.code == ExitCode.NOT_FOUND
    assert bm.remove(B, user=ROOT).error is None and backend.rules == []

    recs = lines(audit)
    assert [(r["event"]["action"], r["outwatch"]["respond"]["stage"]) for r in recs][-6:] == [
        ("unblock-destination", "requested"), ("unblock-destination", "done"),  # the TTL lift
        ("unblock-destination", "requested"), ("unblock-destination", "failed"),  # not blocked
        ("unblock-destination", "requested"), ("unblock-destination", "done"),
    ]
    assert recs[-5]["event"]["reason"] == "ttl expired"
    first = recs[1]
    assert first["destination"] == {"ip": "203.0.113.7"} and first["event"]["category"] == ["network"]
    assert first["event"]["type"] == ["denied"] and first["event"]["outcome"] == "success"
    assert first["user"] == ROOT and first["ecs"]["version"] and first["host"]["id"]


def test_refusals_leave_the_kernel_set_unchanged(audit: AuditLog) -> None:
    backend = RecordingBackend(fail_over=1)
    bm = BlockManager(backend, audit)
    bm.add(A, ttl=None, reason="", user=ROOT)
    full = bm.add(B, ttl=None, reason="", user=ROOT)
    assert full.error is not None and full.error.code == ExitCode.REFUSED
    assert [b.target for b in bm.list()] == [A] and backend.rules == [A]

    lo = bm.add(DenyRule(net("127.0.0.0/8")), ttl=None, reason="", user=ROOT)
    assert lo.error is not None and "loopback" in lo.error.message
    assert [r["outwatch"]["respond"]["stage"] for r in lines(audit)][-2:] == ["requested", "refused"]

    dry = bm.add(DenyRule(net("192.0.2.99")), ttl=None, reason="", user=ROOT, dry_run=True)
    assert dry.error is None and backend.rules == [A] and len(bm.list()) == 1
    assert lines(audit)[-1]["outwatch"]["respond"]["stage"] == "dry-run"
    assert lines(audit)[-1]["event"]["outcome"] == "unknown"


def test_control_handlers(audit: AuditLog) -> None:
    backend = RecordingBackend()
    bm = BlockManager(backend, audit)
    h = bm.control_handlers()
    assert set(h) == {"block", "unblock", "blocks"}
    alice = {"id": "1000", "name": "alice", "effective": {"id": "0", "name": "root"}}
    reply = h["block"]({"op": "block", "target": "2001:db8::/32", "proto": "udp", "ttl": 30, "user": alice,
                        "peer": {"pid": 1, "uid": 0, "gid": 0}})
    assert reply["block"]["target"] == "2001:db8::/32" and reply["block"]["proto"] == "udp"
    assert backend.rules == [DenyRule(net("2001:db8::/32"), None, "udp")]
    assert lines(audit)[-1]["user"] == alice
    assert h["blocks"]({"op": "blocks"})["blocks"][0]["requested_by"] == "1000"

    for bad, code in (
        ({"target": "10.0.0.1/8"}, ExitCode.USAGE),
        ({"target": "10.0.0.1", "port": 70000}, ExitCode.USAGE),
        ({"target": "10.0.0.1", "ttl": -1}, ExitCode.USAGE),
        ({"target": "10.0.0.1", "ttl": "1h"}, ExitCode.USAGE),
        ({}, ExitCode.USAGE),
        ({"target": "127.0.0.1"}, ExitCode.REFUSED),
    ):
        with pytest.raises(OutwatchError) as err:
            h["block"]({"op": "block", "peer": {"uid": 0}, **bad})
        assert err.value.code == code, bad
    with pytest.raises(OutwatchError) as err:
        h["unblock"]({"op": "unblock", "target": "2001:db8::/32", "peer": {"uid": 0}})  # proto differs
    assert err.value.code == ExitCode.NOT_FOUND
    reply = h["unblock"]({"op": "unblock", "target": "2001:db8::/32", "proto": "udp", "peer": {"uid": 0}})
    assert reply["unblock"]["target"] == "2001:db8::/32" and backend.rules == []
    assert lines(audit)[-1]["user"]["id"] == "0"  # no user sent: the socket peer's uid


def test_expiry_thread_and_close(audit: AuditLog) -> None:
    backend = RecordingBackend()
    bm = BlockManager(backend, audit)
    bm.start()
    try:
        bm.add(A, ttl=0.2, reason="", user=ROOT)
        bm.add(B, ttl=None, reason="", user=ROOT)
        deadline = time.monotonic() + 10
        while A in backend.rules:
            assert time.monotonic() < deadline, "the TTL never lifted the block"
            time.sleep(0.02)
        assert backend.rules == [B]
    finally:
        bm.close(ROOT)
    assert backend.rules == [] and bm.list() == []
    assert lines(audit)[-1]["event"]["reason"] == "outwatch watch stopped"


# --- audit log ---------------------------------------------------------------------------------------


def test_audit_log_file_stream_and_unwritable(tmp_path: Path) -> None:
    streamed: list[dict] = []
    log = AuditLog(tmp_path / "a" / "audit.ndjson", on_record=streamed.append)
    req = Request("kill-process", ROOT, ecs={"process": {"pid": 4242}}, reason="why\nnot")
    out = audited(log, req, lambda: {"processes": []})
    assert out.error is None and streamed == lines(log) == out.records
    assert oct(log.path.stat().st_mode & 0o777) == "0o640"
    assert log.path.read_bytes().count(b"\n") == 2  # the newline in the reason is escaped

    def refuse() -> dict:
        raise OutwatchError("no", code=ExitCode.REFUSED)

    assert audited(log, req, refuse).records[-1]["outwatch"]["respond"] == {
        "stage": "refused", "dry_run": False, "automatic": False, "error": "no"}

    (tmp_path / "file").write_text("")
    broken = AuditLog(tmp_path / "file" / "audit.ndjson")
    ran = []
    with pytest.raises(OutwatchError, match="cannot write the audit log"):
        audited(broken, req, lambda: ran.append(1) or {})
    assert ran == [], "an action ran although its request could not be recorded"


# --- the automatic responder ---------------------------------------------------------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def alert(severity: str, pid: int, dest: str = "203.0.113.7", seq: int = 1) -> dict:
    ident = read_identity(pid)
    return {
        "event": {"kind": "alert", "sequence": seq},
        "process": {"pid": pid, "name": ident.name, "executable": ident.exe, "entity_id": ident.entity_id,
                    "start": rfc3339_ns(Clock().wall_ns(ident.start_ns))},
        "destination": {"ip": dest, "port": 4444},
        "rule": {"id": "OW-EXE-TMP"},
        "outwatch": {"severity": severity, "reasons": [{"rule": "OW-EXE-TMP", "score": 40, "why": "tmp"},
                                                        {"rule": "OW-PORT", "score": 20, "why": "port"}]},
    }


def test_responder_blocks_at_high_and_kills_at_critical(audit: AuditLog, child) -> None:
    backend = RecordingBackend()
    r = Responder(ResponsePolicy(), BlockManager(backend, audit), audit, dry_run=False)
    assert r.on_alert(alert("medium", child.pid)) == []
    recs = r.on_alert(alert("high", child.pid))
    assert [x["outwatch"]["respond"]["stage"] for x in recs] == ["requested", "done"]
    assert backend.rules == [DenyRule(net("203.0.113.7/32"))] and child.poll() is None
    done = recs[1]
    assert done["outwatch"]["respond"]["automatic"] and done["outwatch"]["respond"]["rule_ids"] == [
        "OW-EXE-TMP", "OW-PORT"]
    assert done["outwatch"]["reasons"][0]["rule"] == "OW-EXE-TMP" and done["event"]["reason"].startswith("alert:")
    assert done["outwatch"]["respond"]["until"]  # the policy's default TTL

    recs = r.on_alert(alert("critical", child.pid, seq=2))  # destination already blocked: only the kill
    assert [(x["event"]["action"], x["outwatch"]["respond"]["stage"]) for x in recs] == [
        ("kill-process", "requested"), ("kill-process", "done")]
    assert recs[1]["process"]["pid"] == child.pid and recs[1]["event"]["category"] == ["process"]
    assert child.wait() == -signal.SIGTERM
    assert lines(audit)[-2:] == recs


def test_responder_dry_run_rate_limit_and_repeats(audit: AuditLog, child) -> None:
    backend = RecordingBackend()
    policy = ResponsePolicy(block=ActionPolicy("high", 2), kill=ActionPolicy("critical", 5))
    r = Responder(policy, BlockManager(backend, audit), audit, dry_run=True)
    recs = r.on_alert(alert("critical", child.pid))
    assert [x["outwatch"]["respond"]["stage"] for x in recs] == ["requested", "dry-run"] * 2
    assert all(x["outwatch"]["respond"]["dry_run"] and x["event"]["outcome"] == "unknown" for x in recs)
    assert backend.rules == [] and child.poll() is None
    assert recs[-1]["outwatch"]["respond"]["processes"][0]["note"] == "dry run"

    assert r.on_alert(alert("critical", child.pid)) == []  # the same targets again within the minute
    assert len(r.on_alert(alert("high", child.pid, "203.0.113.8"))) == 2  # second block of the minute
    [skip] = r.on_alert(alert("high", child.pid, "203.0.113.9"))  # third: over the limit, recorded once
    assert skip["outwatch"]["respond"]["stage"] == "skipped" and "rate limit" in skip["outwatch"]["respond"]["error"]
    assert r.on_alert(alert("high", child.pid, "203.0.113.10")) == []


def test_responder_never_kills_itself_or_a_recycled_pid(audit: AuditLog, child) -> None:
    # A dry run: the refusals come before it, and were they broken nothing would be signalled.
    r = Responder(ResponsePolicy(block=ActionPolicy(None, 1)), BlockManager(RecordingBackend(), audit), audit,
                  dry_run=True)
    recs = r.on_alert(alert("critical", os.getpid()))
    assert recs[-1]["outwatch"]["respond"]["stage"] == "refused"
    assert "this outwatch process" in recs[-1]["outwatch"]["respond"]["error"]

    stale = alert("critical", child.pid)
    stale["process"]["entity_id"] = "f" * 32  # the alert was about an earlier process with this pid
    recs = r.on_alert(stale)
    assert recs[-1]["outwatch"]["respond"]["stage"] == "refused" and child.poll() is None
    assert "not the process meant" in recs[-1]["outwatch"]["respond"]["error"]


def test_handlers_of_a_watch_that_cannot_block() -> None:
    h = unavailable_handlers("this watch uses kprobes, which cannot deny a connect")
    assert h["blocks"]({"op": "blocks"}) == {"blocks": []}
    for op in ("block", "unblock"):
        with pytest.raises(OutwatchError) as err:
            h[op]({"op": op, "target": "203.0.113.7"})
        assert err.value.code == ExitCode.KERNEL_UNSUPPORTED and "--via ufw" in err.value.hint
