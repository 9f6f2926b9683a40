"""Decoding the ring buffer's raw records (bpf/outwatch.h) into typed records.

Layouts mirror bpf/outwatch.h exactly; `tests/test_records.py` checks the sizes against the C
structs compiled by BCC, so a change on one side that is not made on the other fails the tests.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

EV_CONNECT = 1
EV_EXEC = 2
EV_EXIT = 3
EV_TCPSTATE = 4
EV_TCPERROR = 5
EV_NAMES = {EV_CONNECT: "connect", EV_EXEC: "exec", EV_EXIT: "exit", EV_TCPSTATE: "tcpstate",
            EV_TCPERROR: "tcperror"}

EXEC_ARGS_TRUNCATED = 1
EXEC_NO_ARGV = 2
DENIED = 1
PROBES = ("cgroup", "kprobe")

TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_CLOSE = 7

_HEADER = "QIIIIQQII16s"
HEADER = struct.Struct("<" + _HEADER)
CONNECT = struct.Struct("<" + _HEADER + "16sHHBBBBII")
EXEC_HEAD = struct.Struct("<" + _HEADER + "IIII256s")
TCPSTATE = struct.Struct("<" + _HEADER + "Q16s16sHHHHiiiI")
UDP_KEY = struct.Struct("<IHH16sB7x")
TYPE_OFFSET = 8


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def ip_text(family: int, raw: bytes) -> str:
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
class TcpStateRecord:
    h: Header
    error_report: bool
    skaddr: int
    family: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    oldstate: int
    newstate: int
    error: int


Record = ConnectRecord | ExecRecord | ExitRecord | TcpStateRecord


def _header(v: tuple) -> Header:
    return Header(v[0], v[2], v[3], v[4], v[5], v[6], v[7], v[8], _cstr(v[9]))


def decode(data: bytes) -> Record | None:
    """One raw record to a typed record; None for a record too short or of an unknown type."""
    if len(data) < HEADER.size:
        return None
    kind = int.from_bytes(data[TYPE_OFFSET:TYPE_OFFSET + 4], "little")
    if kind == EV_CONNECT and len(data) >= CONNECT.size:
        v = CONNECT.unpack_from(data)
        family = v[12]
        return ConnectRecord(_header(v), family, ip_text(family, v[10]), v[11], v[13], v[14],
                             v[15] == DENIED, PROBES[v[16] & 1], v[17])
    if kind == EV_EXEC and len(data) >= EXEC_HEAD.size:
        v = EXEC_HEAD.unpack_from(data)
        argc, args_len, flags = v[11], v[12], v[13]
        blob = data[EXEC_HEAD.size:EXEC_HEAD.size + args_len]
        argv = blob.split(b"\0")[:argc] if argc else []
        return ExecRecord(_header(v), v[10], _cstr(v[14]), argv, bool(flags & EXEC_ARGS_TRUNCATED),
                          bool(flags & EXEC_NO_ARGV))
    if kind == EV_EXIT:
        return ExitRecord(_header(HEADER.unpack_from(data)))
    if kind in (EV_TCPSTATE, EV_TCPERROR) and len(data) >= TCPSTATE.size:
        v = TCPSTATE.unpack_from(data)
        family = v[15]
        return TcpStateRecord(_header(v), kind == EV_TCPERROR, v[10], family, ip_text(family, v[11]),
                              ip_text(family, v[12]), v[13], v[14], v[17], v[18], v[19])
    return None
