"""Decoding the ring buffer's raw records (bpf/outwatch.h) into typed records.

Layouts mirror bpf/outwatch.h exactly; `tests/test_records.py` checks the sizes against the C
structs compiled by BCC, so a change on one side that is not made on the other fails the tests.
"""

from __future__ import annotations

import functools
import socket
import struct
from dataclasses import dataclass

EV_CONNECT = 1
EV_EXEC = 2
EV_EXIT = 3
EV_TCPERROR = 4
EV_NAMES = {EV_CONNECT: "connect", EV_EXEC: "exec", EV_EXIT: "exit", EV_TCPERROR: "tcperror"}

EXEC_ARGS_TRUNCATED = 1
EXEC_NO_ARGV = 2
DENIED = 1
PROBES = ("cgroup", "kprobe")

OUTCOMES = ("unknown", "success", "failure")  # OW_OUTCOME_*

_HEADER = "QIIIIQQQII16s"
HEADER = struct.Struct("<" + _HEADER)
CONNECT = struct.Struct("<" + _HEADER + "16s16sHHHBBBBBxI")
EXEC_HEAD = struct.Struct("<" + _HEADER + "IIII256s")
TCPERROR = struct.Struct("<" + _HEADER + "16s16sHHHxxiI")
UDP_KEY = struct.Struct("<IHH16sB7x")
TYPE_OFFSET = 8


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


@functools.lru_cache(maxsize=4096)
def ip_text(family: int, raw: bytes) -> str:
    """An address as text (remembered: a host talks to the same few addresses over and over)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


@dataclass(slots=True)
class Header:
    ts_ns: int
    pid: int
    tid: int
    ppid: int
    start_ns: int
    exec_ns: int  # the process image: its last exec's time, 0 = none seen, -1 = the current one
    cgroup_id: int
    uid: int
    gid: int
    comm: bytes


@dataclass(slots=True)
class ConnectRecord:
    h: Header
    family: int
    daddr: str
    dport: int
    protocol: int
    sock_type: int
    denied: bool
    probe: str
    count: int
    outcome: str = "unknown"  # success | failure | unknown
    saddr: str = ""
    sport: int = 0


@dataclass(slots=True)
class ExecRecord:
    h: Header
    old_pid: int
    filename: bytes
    argv: list[bytes]
    args_truncated: bool
    no_argv: bool


@dataclass(slots=True)
class ExitRecord:
    h: Header


@dataclass(slots=True)
class TcpErrorRecord:
    """The error that closed a failed TCP connect, matched to it on (daddr, sport, dport)."""

    h: Header
    family: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    error: int


Record = ConnectRecord | ExecRecord | ExitRecord | TcpErrorRecord


def _header(v: tuple) -> Header:
    return Header(v[0], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], _cstr(v[10]))


def decode(data: bytes) -> Record | None:
    """One raw record to a typed record; None for a record too short or of an unknown type."""
    if len(data) < HEADER.size:
        return None
    kind = int.from_bytes(data[TYPE_OFFSET:TYPE_OFFSET + 4], "little")
    if kind == EV_CONNECT and len(data) >= CONNECT.size:
        return decode_connect(data)
    if kind == EV_EXEC and len(data) >= EXEC_HEAD.size:
        v = EXEC_HEAD.unpack_from(data)
        argc, args_len, flags = v[12], v[13], v[14]
        blob = data[EXEC_HEAD.size:EXEC_HEAD.size + args_len]
        argv = blob.split(b"\0")[:argc] if argc else []
        return ExecRecord(_header(v), v[11], _cstr(v[15]), argv, bool(flags & EXEC_ARGS_TRUNCATED),
                          bool(flags & EXEC_NO_ARGV))
    if kind == EV_EXIT:
        return ExitRecord(_header(HEADER.unpack_from(data)))
    if kind == EV_TCPERROR and len(data) >= TCPERROR.size:
        v = TCPERROR.unpack_from(data)
        family = v[15]
        return TcpErrorRecord(_header(v), family, ip_text(family, v[11]), _unmapped(ip_text(family, v[12])),
                              v[13], v[14], v[16])
    return None


def decode_connect(data: bytes) -> ConnectRecord:
    """A struct ow_connect (from the ring buffer, or a held one taken from tcp_by_tid/tcp_by_sk)."""
    v = CONNECT.unpack_from(data)
    family, sport, outcome = v[15], v[14], v[20]
    return ConnectRecord(_header(v), family, ip_text(family, v[11]), v[13], v[16], v[17], v[18] == DENIED,
                         PROBES[v[19] & 1], v[21], OUTCOMES[outcome] if outcome < 3 else "unknown",
                         ip_text(family, v[12]) if sport else "", sport)


def _unmapped(ip: str) -> str:
    """::ffff:a.b.c.d as a.b.c.d: connect records report IPv4-mapped destinations as IPv4."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip
