"""Syslog framing of one NDJSON line: the JSON object is the MSG, untouched.

Network syslog is RFC 5424 (`<PRI>1 TIMESTAMP HOST outwatch PID MSGID - MSG`); over TCP each message
is prefixed with its length (octet counting, RFC 6587), so a JSON line can never be split or merged
by the receiver. The local socket (/dev/log) gets the format syslog(3) writes
(`<PRI>Mmm dd hh:mm:ss outwatch[PID]: MSG`), the one rsyslog's imuxsock, syslog-ng and journald all
parse.

TIMESTAMP, severity and MSGID are read from the line with a few `find`s, not a JSON parse: inside a
JSON string a quote is always escaped, so `"severity":"` can only be a key written by the encoder.
Receivers must accept messages as long as the longest line (16 KiB): rsyslog's default
maxMessageSize is 8k.
"""

from __future__ import annotations

import os
import re
import socket
import time

FACILITY_DAEMON = 3
SEVERITY_INFO = 6
# outwatch.severity -> syslog severity (2 crit, 3 err, 4 warning, 5 notice, 6 info)
_SEVERITY = {b"critical": 2, b"high": 3, b"medium": 4, b"low": 5}
_MSGID = re.compile(rb"[!-~]{1,32}")
_TS_PREFIX = b'{"@timestamp":"'


def _field(line: bytes, key: bytes) -> bytes | None:
    start = line.find(key)
    if start < 0:
        return None
    start += len(key)
    end = line.find(b'"', start)
    return line[start:end] if end > 0 else None


def severity(line: bytes) -> int:
    value = _field(line, b'"severity":"')
    return _SEVERITY.get(value, SEVERITY_INFO) if value else SEVERITY_INFO


def msgid(line: bytes) -> bytes:
    value = _field(line, b'"dataset":"')
    return value if value and _MSGID.fullmatch(value) else b"-"


def timestamp(line: bytes) -> bytes:
    """@timestamp (the encoder writes it first) cut to the microseconds RFC 5424 allows, or "-"."""
    if not line.startswith(_TS_PREFIX):
        return b"-"
    end = line.find(b'"', len(_TS_PREFIX))
    ts = line[len(_TS_PREFIX) : end]
    if not ts.endswith(b"Z") or len(ts) < 20:
        return b"-"
    dot = ts.find(b".")
    return ts if dot < 0 else ts[: dot + 7].rstrip(b"Z") + b"Z"


class Rfc5424:
    """RFC 5424 framing; `octet_counting` for TCP (RFC 6587), off for one-message datagrams."""

    def __init__(self, octet_counting: bool) -> None:
        host = socket.gethostname().encode("ascii", "replace")[:255] or b"-"
        self._middle = b" " + host + b" outwatch " + str(os.getpid()).encode() + b" "
        self._octet_counting = octet_counting

    def __call__(self, line: bytes) -> bytes:
        pri = FACILITY_DAEMON * 8 + severity(line)
        msg = b"<%d>1 %s%s%s - %s" % (pri, timestamp(line), self._middle, msgid(line), line.rstrip(b"\n"))
        return b"%d %s" % (len(msg), msg) if self._octet_counting else msg


class LocalSyslog:
    """The syslog(3) format for the local socket; NUL-terminated on a stream socket, as glibc does."""

    def __init__(self, stream: bool) -> None:
        self._tag = b" outwatch[" + str(os.getpid()).encode() + b"]: "
        self._end = b"\0" if stream else b""
        self._second = -1
        self._stamp = b""

    def __call__(self, line: bytes) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now)).encode()
        pri = FACILITY_DAEMON * 8 + severity(line)
        return b"<%d>%s%s%s%s" % (pri, self._stamp, self._tag, line.rstrip(b"\n"), self._end)
