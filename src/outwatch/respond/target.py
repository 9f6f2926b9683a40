"""What a block names (an address or network, optionally one port and protocol) and durations.

A target is a DenyRule, the same record the kernel deny map takes, so a block means the same thing
whichever way it is enforced. Bad input raises ValueError with a message fit for the user.
"""

from __future__ import annotations

import ipaddress
import re

from outwatch.kernel.deny import DenyRule, IPNetwork

PROTOCOLS = ("tcp", "udp")
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_network(text: str) -> IPNetwork:
    """An address or CIDR, v4 or v6. A CIDR with host bits set is refused rather than guessed at:
    "10.1.2.3/24" may mean the host or the whole /24, and blocking 256 addresses by accident is worse
    than asking. An IPv4-mapped IPv6 network is returned as IPv4, as the kernel checks it."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            host = text.split("/", 1)[0]
            raise ValueError(
                f"{text} has host bits set: give {host} for that one address or {loose} for the network"
            ) from None
        raise ValueError(
            f"{text!r} is not an IP address or CIDR network (e.g. 203.0.113.7, 2001:db8::/64)"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_MAPPED):
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def parse_port(value: int | str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"port {value!r} is not a number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def parse_proto(value: str) -> str:
    proto = value.strip().lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {value!r} is not one of: {', '.join(PROTOCOLS)}")
    return proto


def make_target(network: str, port: int | str | None = None, proto: str | None = None) -> DenyRule:
    return DenyRule(
        network=parse_network(network),
        port=None if port is None else parse_port(port),
        proto=None if proto is None else parse_proto(proto),
    )


def describe(target: DenyRule) -> str:
    """'203.0.113.7 port 443/tcp', '10.0.0.0/8 (udp)', '2001:db8::1'."""
    net = target.network
    where = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    if target.port is not None:
        return f"{where} port {target.port}/{target.proto or 'tcp+udp'}"
    if target.proto is not None:
        return f"{where} ({target.proto})"
    return where


def target_fields(target: DenyRule) -> dict[str, object]:
    """The target as JSON fields (network as CIDR text; port/proto absent when they apply to all)."""
    out: dict[str, object] = {"target": str(target.network)}
    if target.port is not None:
        out["port"] = target.port
    if target.proto is not None:
        out["proto"] = target.proto
    return out


def target_from_fields(fields: dict[str, object]) -> DenyRule:
    """The inverse of target_fields (also how a control request names its target)."""
    port, proto = fields.get("port"), fields.get("proto")
    if not isinstance(fields.get("target"), str):
        raise ValueError("the request names no target")
    if port is not None and not isinstance(port, int | str):
        raise ValueError(f"port {port!r} is not a number (1-65535)")
    if proto is not None and not isinstance(proto, str):
        raise ValueError(f"protocol {proto!r} is not one of: {', '.join(PROTOCOLS)}")
    return make_target(str(fields["target"]), port, proto)


def parse_duration(text: str) -> float:
    """Seconds from '90', '5s', '500ms', '10m', '1h30m', '2d'."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 10m, 1h30m, 2d)")
    return total
