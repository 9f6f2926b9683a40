"""Destinations a block must not cover without --force: the default gateway, the DNS resolvers and
loopback. Blocking any of them cuts the machine (and the admin) off, which is what an attacker would
like a careless containment to do.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel.deny import DenyRule

from .target import describe

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_RTF_GATEWAY = 0x2
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def default_gateways(
    route: Path = Path("/proc/net/route"), route6: Path = Path("/proc/net/ipv6_route")
) -> list[IPAddress]:
    """Next hops of the default routes, from the kernel's routing tables."""
    gws: list[IPAddress] = []
    try:
        lines = route.read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        f = line.split()
        if len(f) >= 4 and f[1] == "00000000" and int(f[3], 16) & _RTF_GATEWAY:
            gws.append(ipaddress.IPv4Address(socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))))
    try:
        lines6 = route6.read_text().splitlines()
    except OSError:
        lines6 = []
    for line in lines6:
        f = line.split()
        if len(f) >= 5 and f[1] == "00" and int(f[4], 16):
            gws.append(ipaddress.IPv6Address(int(f[4], 16)))
    return list(dict.fromkeys(gws))


def dns_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[IPAddress]:
    out: list[IPAddress] = []
    try:
        lines = resolv_conf.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) >= 2 and f[0] == "nameserver":
            try:
                out.append(ipaddress.ip_address(f[1].split("%", 1)[0]))
            except ValueError:
                continue
    return out


def critical_overlap(target: DenyRule) -> str | None:
    """Why blocking target would cut the machine off, or None."""
    net = target.network
    for gw in default_gateways():
        if gw in net:
            return f"it covers the default gateway {gw}, the machine's way out"
    for ns in dns_resolvers():
        if ns in net:
            return f"it covers the DNS resolver {ns} (/etc/resolv.conf)"
    for lo in _LOOPBACK:
        if lo.version == net.version and net.overlaps(lo):
            return f"it covers loopback ({lo}), which local services talk over"
    return None


def check_block_allowed(target: DenyRule, force: bool) -> None:
    why = None if force else critical_overlap(target)
    if why:
        raise OutwatchError(
            f"refusing to block {describe(target)}: {why}",
            hint="add --force if you really mean it",
            code=ExitCode.REFUSED,
        )
