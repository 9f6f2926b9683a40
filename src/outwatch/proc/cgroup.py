"""A process's systemd unit and container from the text of /proc/PID/cgroup.

The cgroup path is the one place where systemd (unit = cgroup) and container runtimes (one scope or
directory per container, named after its 64-hex id) leave a name behind, and it can be read for any
pid without privileges. Lines are ``hierarchy-id:controllers:path``; the cgroup v2 line is ``0::path``,
the v1 hierarchy systemd manages is ``N:name=systemd:path``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Unit types that hold processes (slices only group other units).
_PROCESS_UNIT_SUFFIXES = (".service", ".scope")
# docker-<id>.scope (docker, systemd driver), cri-containerd-<id>.scope and crio-<id>.scope
# (kubernetes), libpod-<id>.scope (podman; libpod-conmon-<id>.scope is its monitor, not the container).
_RUNTIME_SCOPE = re.compile(r"^(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{64})\.scope$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_USER_MANAGER = re.compile(r"^user@\d+\.service$")


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    path: str | None
    unit: str | None
    user_unit: str | None
    container_id: str | None


def parse_cgroup(text: str) -> CgroupInfo:
    """Parse /proc/PID/cgroup: the v2 path if it says more than "/", else the v1 name=systemd path."""
    v2: str | None = None
    named: str | None = None
    others: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "name=systemd" in controllers.split(","):
            named = path
        else:
            others.append(path)
    path = next((p for p in (v2, named) if p and p != "/"), v2 or named)
    unit, user_unit = _units(path or "")
    container_id = _container_id(path or "")
    if container_id is None:
        # cgroup v1 with the cgroupfs driver puts the container only under the resource controllers.
        container_id = next(filter(None, map(_container_id, others)), None)
    return CgroupInfo(path=path, unit=unit, user_unit=user_unit, container_id=container_id)


def read_cgroup(pid: int) -> CgroupInfo | None:
    """The cgroup facts of a live pid, or None when it vanished or /proc cannot be read."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return parse_cgroup(text)


def _units(path: str) -> tuple[str | None, str | None]:
    unit: str | None = None
    for part in path.split("/"):
        if not part.endswith(_PROCESS_UNIT_SUFFIXES):
            continue
        if unit is None:
            unit = part
            if not _USER_MANAGER.match(part):
                return unit, None
        else:
            return unit, part
    return unit, None


def _container_id(path: str) -> str | None:
    parts = path.split("/")
    for i, part in enumerate(parts):
        m = _RUNTIME_SCOPE.match(part)
        if m:
            return m.group(1)
        # /docker/<id>, /kubepods/burstable/pod<uid>/<id> (cgroupfs driver).
        if _HEX64.match(part):
            return part
        if part.startswith("lxc.payload."):
            return part.removeprefix("lxc.payload.") or None
        if part == "lxc" and i == 1 and len(parts) > 2 and parts[2]:
            return parts[2]
    return None
