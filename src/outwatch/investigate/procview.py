"""A live process as the ECS fields the tracer emits (process.*, user.*, outwatch.process.*), from /proc.

Used by snapshot, inspect and audit so a finding about a socket carries the same fields a live connect
event would, and the same rules score it. Everything comes from /proc now, so provenance is "proc";
what could not be read is absent and named in `missing` (with why), never guessed.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field
from functools import cache

import psutil

from outwatch.investigate.common import rfc3339, rfc3339_ns
from outwatch.proc.cgroup import read_cgroup
from outwatch.proc.exeinfo import ExeFacts, exe_facts, sha256_of
from outwatch.proc.identity import entity_id_of


@dataclass(slots=True)
class ProcView:
    pid: int
    process: dict  # ECS process.*
    user: dict  # ECS user.*
    extra: dict  # outwatch.process.*
    exe: ExeFacts | None
    create_time: float
    missing: dict[str, str] = field(default_factory=dict)  # field -> why it is absent
    state: str = ""  # "kernel thread", "zombie", or "" for a live user-space process

    def fields(self) -> dict:
        """The ECS pieces to merge into an event."""
        return {"process": self.process, "user": self.user, "outwatch": {"process": self.extra}}


@cache
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@cache
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def ecs_user(uid: int) -> dict:
    user = {"id": str(uid)}
    name = user_name(uid)
    if name:
        user["name"] = name
    return user


class ProcViews:
    """Views of live processes, each built once per command (a snapshot's sockets share parents)."""

    def __init__(self, *, hash_exe: bool = True) -> None:
        self._hash_exe = hash_exe
        self._views: dict[int, ProcView | None] = {}
        self._hashes: dict[tuple[int, int, int], str | None] = {}

    def get(self, pid: int) -> ProcView | None:
        if pid not in self._views:
            self._views[pid] = self._build(pid)
        return self._views[pid]

    def _build(self, pid: int) -> ProcView | None:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                name = p.name()
                ppid = p.ppid()
                create_time = p.create_time()
                uid = p.uids().real
                state = "kernel thread" if pid == 2 or ppid == 2 else "zombie" if p.status() == "zombie" else ""
                missing: dict[str, str] = {}
                args = None if state else _try(p.cmdline, "process.args", missing)
                cwd = None if state else _try(p.cwd, "process.working_directory", missing)
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:
            # /proc mounted with hidepid: the pid exists but nothing about it can be read.
            return ProcView(pid, {"pid": pid}, {}, {}, None, 0.0, {"process": "permission denied"})
        process: dict = {"pid": pid, "name": name, "start": rfc3339(create_time)}
        entity = entity_id_of(pid)
        if entity:
            process["entity_id"] = entity
        facts = exe_facts(pid)
        if facts is not None:
            process["executable"] = facts.path
        elif not state:
            missing["process.executable"] = _why_exe(pid)
        if args:
            process["args"] = args
            process["args_count"] = len(args)
            process["command_line"] = " ".join(args)
        if cwd:
            process["working_directory"] = cwd
        digest = self._hash(pid, facts, missing)
        if digest:
            process["hash"] = {"sha256": digest}
        user = ecs_user(uid)
        process["user"] = dict(user)
        ancestors = self._ancestors(ppid)
        known = ("executable" in process, "args" in process, bool(ancestors), True)
        extra: dict = {
            "provenance": {
                k: "proc" for k, ok in zip(("executable", "args", "parent", "user"), known, strict=True) if ok
            }
        }
        if ancestors:
            parent = ancestors[0]
            process["parent"] = {
                k: parent[k] for k in ("pid", "entity_id", "name", "executable", "args") if k in parent
            }
            extra["ancestors"] = ancestors
        if facts is not None:
            extra.update(
                exe_deleted=facts.deleted,
                exe_memfd=facts.memfd,
                exe_uid=facts.uid,
                exe_mode=facts.mode,
                exe_mtime=rfc3339_ns(facts.mtime_ns),
            )
        cg = read_cgroup(pid)
        if cg is not None:
            if cg.unit:
                extra["unit"] = cg.unit
            if cg.user_unit:
                extra["user_unit"] = cg.user_unit
            if cg.container_id:
                extra["container_id"] = cg.container_id
        return ProcView(pid, process, user, extra, facts, create_time, missing, state)

    def _hash(self, pid: int, facts: ExeFacts | None, missing: dict[str, str]) -> str | None:
        if not self._hash_exe or facts is None:
            return None
        key = (facts.dev, facts.ino, facts.mtime_ns)
        if key not in self._hashes:
            try:
                self._hashes[key] = sha256_of(pid)
            except OSError as e:
                missing["process.hash.sha256"] = e.strerror or str(e)
                self._hashes[key] = None
        return self._hashes[key]

    def _ancestors(self, ppid: int) -> list[dict]:
        chain: list[dict] = []
        seen: set[int] = set()
        pid = ppid
        while pid > 0 and pid not in seen:
            seen.add(pid)
            level = _level(pid)
            if level is None:
                break
            entry, pid = level
            chain.append(entry)
        return chain


def _level(pid: int) -> tuple[dict, int] | None:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            entry: dict = {"pid": pid, "name": p.name()}
            entity = entity_id_of(pid)
            if entity:
                entry["entity_id"] = entity
            ppid = p.ppid()
            uid = p.uids().real
            try:
                args = p.cmdline()
            except psutil.AccessDenied:
                args = []
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    facts = exe_facts(pid)
    if facts is not None:
        entry["executable"] = facts.path
    if args:
        entry["args"] = args
    entry["user"] = ecs_user(uid)
    return entry, ppid


def _try(getter, name: str, missing: dict[str, str]):
    try:
        return getter()
    except psutil.AccessDenied:
        missing[name] = "permission denied"
    except (psutil.NoSuchProcess, FileNotFoundError):
        missing[name] = "the process exited"
    return None


def _why_exe(pid: int) -> str:
    try:
        os.readlink(f"/proc/{pid}/exe")
    except PermissionError:
        return "permission denied"
    except OSError:
        return "the process exited"
    return "changed while read"
