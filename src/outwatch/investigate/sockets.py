"""Every inet, raw and packet socket on the host, in every network namespace, with the processes holding it.

The `ss -tupn` view, read straight from /proc: /proc/PID/net/{tcp,tcp6,udp,udp6,raw,raw6,packet} of one
process per network namespace (so container sockets are seen too), joined to owners by socket inode
through /proc/PID/fd. Without root, other users' fds and namespaces cannot be read: those sockets
are still listed (with the owning uid the kernel records) and counted as having no visible process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections import defaultdict
from dataclasses import dataclass, field

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
# TCP states of a connection the local side opened or still holds (TIME_WAIT has no owner left).
CONNECTED_TCP = frozenset({"ESTABLISHED", "SYN_SENT", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING"})
_INET_FILES = (("tcp", 4), ("tcp6", 6), ("udp", 4), ("udp6", 6), ("raw", 4), ("raw6", 6))


@dataclass(frozen=True, slots=True)
class Sock:
    transport: str  # tcp, udp, raw, packet
    family: int  # 4 or 6; 0 for packet sockets
    local_ip: str
    local_port: int  # for raw sockets the IP protocol number, for packet sockets the ethertype
    remote_ip: str | None
    remote_port: int | None
    state: str  # TCP state name; UDP: ESTABLISHED (connected) or UNCONN; raw/packet: UNCONN
    uid: int
    inode: int
    netns: int  # inode of the network namespace

    @property
    def listening(self) -> bool:
        if self.transport == "tcp":
            return self.state == "LISTEN"
        return self.state == "UNCONN"

    @property
    def connected(self) -> bool:
        if self.transport == "tcp":
            return self.state in CONNECTED_TCP
        return self.transport == "udp" and self.state == "ESTABLISHED"


@dataclass(slots=True)
class SocketTable:
    sockets: list[Sock]
    owners: dict[int, list[tuple[int, int]]]  # socket inode -> [(pid, fd)]
    own_netns: int
    netns_seen: int
    pids_unreadable: int = 0  # processes whose fd table could not be read (not root)
    errors: list[str] = field(default_factory=list)

    def pids_of(self, sock: Sock) -> list[int]:
        return sorted({pid for pid, _fd in self.owners.get(sock.inode, ())})

    def of_pid(self, pid: int) -> list[Sock]:
        return [s for s in self.sockets if any(p == pid for p, _ in self.owners.get(s.inode, ()))]


def read_sockets() -> SocketTable:
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    own_netns = _netns_of("self") or 0
    reader_of: dict[int, str] = {own_netns: "self"}
    owners: dict[int, list[tuple[int, int]]] = defaultdict(list)
    unreadable = 0
    for pid in pids:
        ns = _netns_of(str(pid))
        if ns is not None:
            reader_of.setdefault(ns, str(pid))
        fds = _socket_fds(pid)
        if fds is None:
            unreadable += 1
            continue
        for fd, inode in fds:
            owners[inode].append((pid, fd))
    table = SocketTable([], dict(owners), own_netns, len(reader_of), unreadable)
    seen: set[int] = set()
    for ns, reader in reader_of.items():
        for sock in _read_netns(reader, ns, table.errors):
            # Inode 0: a socket in TIME_WAIT or an orphan; listed once per namespace anyway.
            if sock.inode and sock.inode in seen:
                continue
            seen.add(sock.inode)
            table.sockets.append(sock)
    return table


def is_inbound(sock: Sock, listeners: dict[tuple[int, str, int], set[str]]) -> bool:
    """A connected socket whose local end is a port this namespace listens on was accepted, not opened."""
    addrs = listeners.get((sock.netns, sock.transport, sock.local_port))
    if not addrs:
        return False
    local = unmap(sock.local_ip)
    return local in addrs or "::" in addrs or ("0.0.0.0" in addrs and ":" not in local)


def listener_index(table: SocketTable) -> dict[tuple[int, str, int], set[str]]:
    index: dict[tuple[int, str, int], set[str]] = defaultdict(set)
    for s in table.sockets:
        if s.listening and s.transport in ("tcp", "udp") and s.local_port:
            index[(s.netns, s.transport, s.local_port)].add(unmap(s.local_ip))
    return index


def unmap(ip: str) -> str:
    """::ffff:10.0.0.1 (an IPv4 peer of a dual-stack socket) -> 10.0.0.1."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def is_loopback(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(unmap(ip)).is_loopback
    except ValueError:
        return False


def _netns_of(pid: str) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return int(link[link.index("[") + 1 : -1])


def _socket_fds(pid: int) -> list[tuple[int, int]] | None:
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    out = []
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.append((int(name), int(target[8:-1])))
    return out


def _read_netns(reader: str, ns: int, errors: list[str]) -> list[Sock]:
    out: list[Sock] = []
    for name, family in _INET_FILES:
        transport = name.rstrip("6")
        try:
            with open(f"/proc/{reader}/net/{name}", encoding="ascii", errors="replace") as f:
                next(f, None)
                out.extend(s for s in (_inet_line(line, transport, family, ns) for line in f) if s)
        except FileNotFoundError:
            continue  # IPv6 disabled, or the namespace's last process just exited
        except OSError as e:
            errors.append(f"/proc/{reader}/net/{name}: {e.strerror}")
    try:
        with open(f"/proc/{reader}/net/packet", encoding="ascii", errors="replace") as f:
            next(f, None)
            out.extend(s for s in (_packet_line(line, ns) for line in f) if s)
    except FileNotFoundError:
        pass
    except OSError as e:
        errors.append(f"/proc/{reader}/net/packet: {e.strerror}")
    return out


def _inet_line(line: str, transport: str, family: int, ns: int) -> Sock | None:
    # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
    parts = line.split()
    if len(parts) < 10:
        return None
    try:
        lip, lport = _addr(parts[1], family)
        rip, rport = _addr(parts[2], family)
        code = int(parts[3], 16)
        uid, inode = int(parts[7]), int(parts[9])
    except ValueError:
        return None
    state = TCP_STATES.get(code, f"STATE_{code}") if transport == "tcp" else "ESTABLISHED" if code == 1 else "UNCONN"
    if not rport and rip in ("0.0.0.0", "::"):
        return Sock(transport, family, lip, lport, None, None, state, uid, inode, ns)
    return Sock(transport, family, lip, lport, rip, rport, state, uid, inode, ns)


def _packet_line(line: str, ns: int) -> Sock | None:
    # sk RefCnt Type Proto Iface R Rmem User Inode
    parts = line.split()
    if len(parts) < 9:
        return None
    try:
        proto, uid, inode = int(parts[3], 16), int(parts[7]), int(parts[8])
    except ValueError:
        return None
    return Sock("packet", 0, f"ifindex {parts[4]}", proto, None, None, "UNCONN", uid, inode, ns)


def _addr(text: str, family: int) -> tuple[str, int]:
    hexip, _, hexport = text.partition(":")
    raw = bytes.fromhex(hexip)
    if sys.byteorder == "little":
        # The kernel prints each 32-bit word of the address in host byte order.
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    return unmap(socket.inet_ntop(af, raw)) if family == 6 else socket.inet_ntop(af, raw), int(hexport, 16)
