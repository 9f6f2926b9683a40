"""What is connected out right now: `ss -tpn` + `ps auxf` + the rules, one finding per socket and process."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from outwatch.community_id import community_id
from outwatch.investigate.common import host_fields, new_event, score_of
from outwatch.investigate.procview import ProcViews, ecs_user
from outwatch.investigate.scoring import score_connection
from outwatch.investigate.sockets import Sock, SocketTable, is_inbound, listener_index, read_sockets

_IANA = {"tcp": "6", "udp": "17"}


@dataclass(slots=True)
class Snapshot:
    findings: list[dict]
    unseen_sockets: int = 0  # outbound sockets whose process could not be read (not root)
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.unseen_sockets or self.notes)


def take_snapshot(table: SocketTable | None = None, views: ProcViews | None = None) -> Snapshot:
    table = table or read_sockets()
    views = views or ProcViews()
    host = host_fields()
    listeners = listener_index(table)
    snap = Snapshot([])
    for sock in table.sockets:
        if not sock.connected or is_inbound(sock, listeners):
            continue
        pids = table.pids_of(sock)
        if not pids:
            snap.unseen_sockets += 1
            snap.findings.append(connection_event(sock, table, host, None, views))
            continue
        snap.findings.extend(connection_event(sock, table, host, pid, views) for pid in pids)
    snap.findings.sort(key=lambda e: (-score_of(e), e.get("process", {}).get("pid", 0)))
    if table.pids_unreadable:
        snap.notes.append(
            f"{table.pids_unreadable} processes' open files could not be read (not root): "
            "their sockets are listed without a process"
        )
    snap.notes.extend(table.errors)
    return snap


def connection_event(sock: Sock, table: SocketTable, host: dict, pid: int | None, views: ProcViews) -> dict:
    """A socket as the ECS connect event the tracer would have emitted for it, scored by the rules."""
    event = new_event(
        dataset="snapshot",
        action="connection_observed",
        category=["network"],
        type_=["connection", "info"],
        host=host,
    )
    # A handshake still in SYN_SENT may yet fail; every other state got an answer from the peer.
    event["event"]["outcome"] = "unknown" if sock.state == "SYN_SENT" else "success"
    event["source"] = {"ip": sock.local_ip, "port": sock.local_port}
    event["destination"] = {"ip": sock.remote_ip, "port": sock.remote_port}
    event["network"] = {
        "transport": sock.transport,
        "type": "ipv6" if ":" in (sock.remote_ip or "") else "ipv4",
        "iana_number": _IANA[sock.transport],
        "direction": "egress",
    }
    if sock.remote_ip and sock.remote_port is not None:
        with contextlib.suppress(ValueError):
            event["network"]["community_id"] = community_id(
                sock.local_ip, sock.local_port, sock.remote_ip, sock.remote_port, int(_IANA[sock.transport])
            )
    ow: dict = {"socket": {"state": sock.state, "inode": sock.inode, "uid": sock.uid}}
    if sock.netns != table.own_netns:
        ow["socket"]["netns"] = sock.netns
    view = views.get(pid) if pid is not None else None
    if view is not None:
        fields = view.fields()
        event["process"] = fields["process"]
        if view.user:
            event["user"] = fields["user"]
        ow["process"] = fields["outwatch"]["process"]
        if view.missing:
            ow["partial"] = True
            ow["missing"] = view.missing
    else:
        event["user"] = ecs_user(sock.uid)
        ow["partial"] = True
        ow["missing"] = {"process": "exited" if pid is not None else "not visible without root"}
    event["outwatch"] = ow
    score_connection(event)
    return event
