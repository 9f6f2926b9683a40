"""Building the ECS event (shared/DESIGN.md) from a connect record and the process table.

The process part of an event is built once per process image and reused for each of its
connections; only the network part is built per event.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
from datetime import UTC, datetime

from outwatch.community_id import community_id
from outwatch.kernel.records import ConnectRecord
from outwatch.proc.hashes import HashCache
from outwatch.proc.identity import Clock, host_id
from outwatch.proc.table import Proc, ProcessTable, text

ECS_VERSION = "9.4.0"
TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}


@functools.lru_cache(maxsize=64)
def _second(secs: int) -> str:
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def rfc3339_ns(wall_ns: int) -> str:
    """RFC 3339, UTC, nanoseconds (the date part is formatted once per second)."""
    secs, ns = divmod(wall_ns, 1_000_000_000)
    return f"{_second(secs)}{ns:09d}Z"


def _host() -> dict:
    uname = os.uname()
    return {"name": socket.gethostname(), "id": host_id(),
            "os": {"type": "linux", "kernel": uname.release}, "architecture": uname.machine}


class EventBuilder:
    def __init__(self, table: ProcessTable, clock: Clock, hashes: HashCache | None = None) -> None:
        self.table = table
        self.clock = clock
        self.hashes = hashes
        self.host = _host()

    def _user(self, uid: int | None) -> dict:
        if uid is None or uid < 0:
            return {}
        name = self.table.user_name(uid)
        return {"id": str(uid), "name": name} if name else {"id": str(uid)}

    def _brief(self, proc: Proc) -> dict:
        out: dict = {"pid": proc.pid, "entity_id": proc.entity_id, "name": proc.comm}
        if proc.exe:
            out["executable"] = proc.exe
        if proc.argv:
            out["args"] = proc.argv
        user = self._user(proc.uid)
        if user:
            out["user"] = user
        return out

    def process_part(self, proc: Proc) -> tuple[dict, dict]:
        """(ECS process object, outwatch.process object), cached on the process."""
        if proc.cache is not None:
            return proc.cache["process"], proc.cache["outwatch"]
        process: dict = {"pid": proc.pid, "entity_id": proc.entity_id, "name": proc.comm}
        ow: dict = {}
        provenance = {"executable": proc.exe_from, "args": proc.args_from}
        if proc.exe:
            process["executable"] = proc.exe
        if proc.argv:
            process["args"] = proc.argv
            process["args_count"] = len(proc.argv)
            process["command_line"] = " ".join(proc.argv)
        if proc.args_truncated:
            ow["args_truncated"] = True
        if proc.cwd:
            process["working_directory"] = proc.cwd
        if proc.start_ns:
            process["start"] = rfc3339_ns(self.clock.wall_ns(proc.start_ns))
        user = self._user(proc.uid)
        if user:
            process["user"] = user
        ancestors = self.table.ancestors(proc)
        if ancestors:
            parent = self._brief(ancestors[0])
            process["parent"] = parent
            provenance["parent"] = proc.ppid_from
            ow["ancestors"] = [self._brief(a) for a in ancestors]
        facts = proc.facts
        if facts is not None:
            ow["exe_deleted"] = facts.deleted
            ow["exe_memfd"] = facts.memfd
            ow["exe_uid"] = facts.uid
            ow["exe_mode"] = facts.mode
            ow["exe_mtime"] = rfc3339_ns(facts.mtime_ns)
            if proc.start_ns:
                ow["exe_age_at_start_s"] = round(
                    (self.clock.wall_ns(proc.start_ns) - facts.mtime_ns) / 1e9, 3)
        if proc.cgroup is not None:
            if proc.cgroup.unit:
                ow["unit"] = proc.cgroup.unit
            if proc.cgroup.user_unit:
                ow["user_unit"] = proc.cgroup.user_unit
            if proc.cgroup.container_id:
                ow["container_id"] = proc.cgroup.container_id
        ow["provenance"] = provenance
        proc.cache = {"process": process, "outwatch": ow}
        return process, ow

    def connect_event(self, rec: ConnectRecord, proc: Proc, error: int = 0) -> dict:
        """The ECS event of a connect; error is the errno that closed a failed TCP connect."""
        h = rec.h
        process, ow_process = self.process_part(proc)
        process = dict(process)
        process["thread"] = {"id": h.tid}
        if h.comm:
            process["name"] = text(h.comm)  # the name at connect time: prctl(PR_SET_NAME) shows here
        if self.hashes is not None and proc.facts is not None:
            digest = self.hashes.get(proc.pid, proc.facts)
            if digest:
                process["hash"] = {"sha256": digest}
        ow_proc = dict(ow_process)
        if proc.start_ns:
            ow_proc["age_ms"] = max(0, (h.ts_ns - proc.start_ns) // 1_000_000)
        transport = TRANSPORTS.get(rec.protocol, str(rec.protocol))
        ipv = "ipv4" if rec.family == socket.AF_INET else "ipv6"
        network: dict = {"transport": transport, "type": ipv, "iana_number": str(rec.protocol),
                         "direction": "egress"}
        event: dict = {"kind": "event", "category": ["network"], "module": "outwatch",
                       "dataset": "outwatch.network"}
        if rec.denied:
            event.update(type=["connection", "denied"], action="connection_denied", outcome="failure",
                         reason="blocked by outwatch (in-kernel deny map)")
        elif rec.protocol == 17:
            event.update(type=["connection", "start"], action="datagram_sent", outcome=rec.outcome)
        else:
            event.update(type=["connection", "start"], action="connection_attempted", outcome=rec.outcome)
        if error:
            event["reason"] = f"{_errno_name(error)}: {os.strerror(error)}"
        doc: dict = {
            "@timestamp": rfc3339_ns(self.clock.wall_ns(h.ts_ns)),
            "ecs": {"version": ECS_VERSION},
            "event": event,
            "host": self.host,
            "process": process,
            "destination": {"ip": rec.daddr, "port": rec.dport},
            "network": network,
        }
        user = process.get("user")
        if user:
            doc["user"] = user
        if rec.sport:
            doc["source"] = {"ip": rec.saddr, "port": rec.sport}
            network["community_id"] = community_id(rec.saddr, rec.sport, rec.daddr, rec.dport, rec.protocol)
        ow: dict = {"process": ow_proc, "probe": rec.probe}
        if rec.protocol == 17:
            network["packets"] = rec.count
            ow["repeat"] = rec.count
        doc["outwatch"] = ow
        return doc


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")
