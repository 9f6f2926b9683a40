"""Output URLs: what `--output` and `[watch] outputs` accept, parsed once into a SinkSpec.

Accepted forms:
  "-" or "stdout"                      NDJSON on standard output
  /path/file, ./file, file:///path     NDJSON appended to a file
  tcp://HOST:PORT                      NDJSON over TCP (Vector, Fluent Bit, Logstash)
  unix:///path                         NDJSON over a unix socket, stream or datagram (detected)
  syslog://HOST[:PORT]                 RFC 5424 over TCP, octet-counting framing (RFC 6587); port 514
  syslog+udp://HOST[:PORT]             RFC 5424, one datagram per event; port 514
  syslog+unix:///path, unix:///dev/log the local syslog socket (the format syslog(3) uses)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from outwatch.errors import ExitCode, OutwatchError

FORMS = "-, FILE, file:///PATH, tcp://HOST:PORT, unix:///PATH, syslog://HOST:PORT, syslog+udp://HOST:PORT"
SYSLOG_PORT = 514
_SCHEMES = ("file", "tcp", "unix", "syslog", "syslog+udp", "syslog+unix")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True, slots=True)
class SinkSpec:
    url: str
    kind: str  # "stdout", "file", "tcp", "unix", "syslog", "syslog+udp", "syslog+unix"
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def spooled(self) -> bool:
        """Network sinks spool to disk while their receiver is away; stdout and files do not."""
        return self.kind not in ("stdout", "file")


def _bad(url: str, what: str) -> OutwatchError:
    return OutwatchError(f"bad output {url!r}: {what}", hint=f"use one of: {FORMS}", code=ExitCode.USAGE)


def _host_port(url: str, default_port: int | None) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise _bad(url, "only HOST:PORT may follow the scheme")
    if not parts.hostname:
        raise _bad(url, "no host")
    try:
        port = parts.port
    except ValueError:
        raise _bad(url, "the port must be a number from 1 to 65535") from None
    if port is None:
        if default_port is None:
            raise _bad(url, "no port (HOST:PORT)")
        port = default_port
    if not 0 < port < 65536:
        raise _bad(url, "the port must be a number from 1 to 65535")
    return parts.hostname, port


def _socket_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
        raise _bad(url, "expected an absolute path after the scheme, e.g. unix:///run/vector.sock")
    return Path(parts.path)


def parse_output(url: str) -> SinkSpec:
    """Parse one output URL, raising OutwatchError(USAGE) that says what is wrong with it."""
    if not url or url.strip() != url:
        raise _bad(url, "empty or surrounded by spaces")
    if url in ("-", "stdout"):
        return SinkSpec(url, "stdout")
    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else ""
    if m is None or not url[m.end() :].startswith("//"):
        if scheme in _SCHEMES:
            raise _bad(url, f"expected {scheme}://...")
        return SinkSpec(url, "file", path=Path(url).absolute())
    if scheme == "file":
        return SinkSpec(url, "file", path=_socket_path(url))
    if scheme == "tcp":
        host, port = _host_port(url, None)
        return SinkSpec(url, "tcp", host=host, port=port)
    if scheme == "syslog":
        host, port = _host_port(url, SYSLOG_PORT)
        return SinkSpec(url, "syslog", host=host, port=port)
    if scheme == "syslog+udp":
        host, port = _host_port(url, SYSLOG_PORT)
        return SinkSpec(url, "syslog+udp", host=host, port=port)
    if scheme == "unix":
        path = _socket_path(url)
        return SinkSpec(url, "syslog+unix" if path == Path("/dev/log") else "unix", path=path)
    if scheme == "syslog+unix":
        return SinkSpec(url, "syslog+unix", path=_socket_path(url))
    raise _bad(url, f"unknown scheme {scheme!r}")
