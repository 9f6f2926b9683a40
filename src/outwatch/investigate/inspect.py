"""Everything a responder asks of one process, as one scored finding plus one finding per connection.

Read-only: only /proc is read (no ptrace, no signals), so inspecting a process does not disturb it.
What cannot be read (another user's environ without root, a process that exits midway) is listed
under outwatch.missing and the finding is marked partial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from outwatch.errors import ExitCode, OutwatchError
from outwatch.investigate.common import (
    ODD_EXEC_DIRS,
    TEMP_DIRS,
    apply_reasons,
    host_fields,
    new_event,
    os_reason,
    reason,
    rfc3339_ns,
    under,
)
from outwatch.investigate.dpkg import owner_of
from outwatch.investigate.journal import JournalUnavailable, journal
from outwatch.investigate.procview import ProcView, ProcViews, ecs_user, group_name, user_name
from outwatch.investigate.snapshot import connection_event
from outwatch.investigate.sockets import SocketTable, is_inbound, listener_index, read_sockets
from outwatch.investigate.units import timer_for
from outwatch.proc.exeinfo import digests_of

# Environment variables worth a responder's eye: library injection, traffic redirection, where a
# login came from, sudo context, shell history suppression, interpreter code injection.
ENV_THAT_MATTERS = (
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "no_proxy",
    "NO_PROXY",
    "SSH_CONNECTION",
    "SSH_CLIENT",
    "SSH_ORIGINAL_COMMAND",
    "SUDO_USER",
    "SUDO_UID",
    "SUDO_COMMAND",
    "HISTFILE",
    "HISTSIZE",
    "HISTFILESIZE",
    "PYTHONPATH",
    "PERL5LIB",
    "RUBYLIB",
    "NODE_OPTIONS",
    "BASH_ENV",
)
SYSTEM_LIB_DIRS = (
    "/usr/lib",
    "/lib",
    "/lib64",
    "/usr/lib64",
    "/lib32",
    "/usr/lib32",
    "/libx32",
    "/usr/libx32",
)
_CRON = ("cron", "CRON", "crond", "anacron")
_WEB = ("nginx", "apache2", "httpd", "php-fpm", "lighttpd", "uwsgi", "gunicorn", "tomcat", "caddy")
_KTHREAD_NAMES = ("kworker", "kthreadd", "ksoftirqd", "kswapd", "migration", "rcu_", "watchdog")
JOURNAL_BEFORE_S, JOURNAL_AFTER_S, JOURNAL_MAX_LINES = 120, 300, 40


@dataclass(slots=True)
class Inspection:
    record: dict  # the process finding
    connections: list[dict]  # its outbound connections, scored by the rules like live events
    view: ProcView

    @property
    def findings(self) -> list[dict]:
        return [self.record, *self.connections]


def inspect_pid(pid: int, table: SocketTable | None = None) -> Inspection:
    views = ProcViews()
    view = views.get(pid)
    if view is None:
        raise OutwatchError(
            f"no process with pid {pid}",
            "it may have exited; `outwatch snapshot` lists the processes connected now",
            ExitCode.NOT_FOUND,
        )
    if "process" in view.missing:
        raise OutwatchError(
            f"cannot read /proc/{pid}: permission denied",
            "run as root (is /proc mounted with hidepid?)",
            ExitCode.NOT_ROOT,
        )
    event = new_event(
        dataset="inspect",
        action="process_inspected",
        category=["process"],
        type_=["info"],
        host=host_fields(),
    )
    fields = view.fields()
    event["process"] = fields["process"]
    event["user"] = fields["user"]
    missing = dict(view.missing)
    reasons: list[dict] = []
    info: dict = {}
    ow = {"process": fields["outwatch"]["process"], "inspect": info}
    event["outwatch"] = ow

    _credentials(pid, event["process"], reasons, missing)
    event["process"]["uptime"] = max(0, int(time.time() - view.create_time))
    info["children"] = _children(pid)
    if view.state:
        # A kernel thread has no executable, memory map or environment; a zombie has given them back.
        info["state"] = view.state
    else:
        info["executable"] = _executable(pid, view, reasons, missing)
        env = _environment(pid, reasons, missing)
        if env:
            event["process"]["env_vars"] = [f"{k}={v}" for k, v in env.items()]
        _cwd(event["process"], reasons)
        _masquerade(event["process"], view, reasons)
        info["odd_mappings"] = _odd_mappings(pid, view, reasons, missing)
        info["temp_files"] = _temp_files(pid, reasons, missing)
    origin = _origin(view)
    if origin:
        info["origin"] = origin
        if origin["kind"] == "web server":
            reasons.append(reason("OW-INS-WEB-CHILD", 30, f"spawned under a web server ({origin['via']}): webshell?"))

    info["sockets"], connections = _sockets(pid, table or read_sockets(), event["host"], views)
    if "outwatch.inspect.temp_files" in missing:  # its fd table could not be read: neither can its sockets
        missing["outwatch.inspect.sockets"] = missing["outwatch.inspect.temp_files"]

    info["journal"] = _journal(view)
    if missing:
        ow["partial"] = True
        ow["missing"] = missing
    if connections:
        top = max(connections, key=lambda e: e["outwatch"].get("score", 0))
        if top["outwatch"].get("score", 0):
            reasons.append(
                reason(
                    "OW-INS-CONN",
                    top["outwatch"]["score"] // 2,
                    "its riskiest connection scored "
                    f"{top['outwatch']['score']} ({top['destination']['ip']}:{top['destination']['port']})",
                )
            )
    apply_reasons(event, reasons)
    return Inspection(event, connections, view)


def _sockets(pid: int, table: SocketTable, host: dict, views: ProcViews) -> tuple[list[dict], list[dict]]:
    """Every socket of the process (listening, inbound, outbound), and its outbound ones as scored findings."""
    listeners = listener_index(table)
    summary: list[dict] = []
    connections: list[dict] = []
    for sock in table.of_pid(pid):
        entry: dict = {
            "transport": sock.transport,
            "state": sock.state,
            "local": {"ip": sock.local_ip, "port": sock.local_port},
        }
        if sock.remote_ip is not None:
            entry["remote"] = {"ip": sock.remote_ip, "port": sock.remote_port}
        if sock.connected:
            inbound = is_inbound(sock, listeners)
            entry["direction"] = "ingress" if inbound else "egress"
            if not inbound:
                connections.append(connection_event(sock, table, host, pid, views))
        elif sock.listening:
            entry["direction"] = "listening"
        summary.append(entry)
    return summary, connections


def _executable(pid: int, view: ProcView, reasons: list[dict], missing: dict[str, str]) -> dict:
    facts = view.exe
    if facts is None:
        return {}
    out: dict = {
        "path": facts.path,
        "deleted": facts.deleted,
        "memfd": facts.memfd,
        "owner": ecs_user(facts.uid),
        "mode": f"{facts.mode:04o}",
        "mtime": rfc3339_ns(facts.mtime_ns),
        "size": facts.size,
    }
    try:
        digests = digests_of(pid, "sha256", "md5")
        out["sha256"] = digests["sha256"]
    except OSError as e:
        digests = {}
        missing["process.hash.sha256"] = e.strerror or str(e)
    # The package database of the process's own root: a container's exe is looked up in the container.
    pkg = None if facts.memfd else owner_of(facts.path, Path(f"/proc/{pid}/root"))
    if pkg is None:
        out["package"] = None
    else:
        out["package"] = {"name": pkg.package, "listed_path": pkg.listed_path}
        if pkg.md5 and digests:
            out["package"]["checksum"] = "match" if pkg.md5 == digests["md5"] else "DIFFERS"
    if facts.memfd:
        reasons.append(reason("OW-INS-MEMFD", 60, "runs from an anonymous memory file (memfd): nothing on disk"))
    elif facts.deleted:
        out["on_disk_now"] = _on_disk_now(pid, facts.path)
        if pkg is not None and out["on_disk_now"] == "a different file":
            reasons.append(
                reason(
                    "OW-INS-DELETED-UPGRADED",
                    5,
                    f"executable replaced on disk since start (package {pkg.package} upgraded?): restart it",
                )
            )
        else:
            reasons.append(reason("OW-INS-DELETED", 40, "its executable was deleted after it started"))
    if not facts.memfd and under(facts.path, TEMP_DIRS):
        reasons.append(reason("OW-INS-EXE-TEMP", 40, f"executable under {_top_dir(facts.path)}"))
    elif not facts.memfd and under(facts.path, ODD_EXEC_DIRS):
        reasons.append(reason("OW-INS-EXE-ODD-DIR", 25, f"executable under {_top_dir(facts.path)}"))
    if pkg is None and not facts.memfd:
        reasons.append(reason("OW-INS-NO-PACKAGE", 10, "executable is not from a Debian package"))
    if pkg is not None and out["package"].get("checksum") == "DIFFERS":
        reasons.append(reason("OW-INS-PKG-MODIFIED", 60, f"content differs from package {pkg.package}'s checksum"))
    if facts.mode & 0o002 and not facts.memfd:
        reasons.append(reason("OW-INS-EXE-WORLD-WRITABLE", 30, "anyone can overwrite its executable"))
    return out


def _on_disk_now(pid: int, path: str) -> str:
    try:
        os.stat(f"/proc/{pid}/root{path}")
    except OSError:
        return "missing"
    return "a different file"


def _credentials(pid: int, process: dict, reasons: list[dict], missing: dict[str, str]) -> None:
    status = _read_text(f"/proc/{pid}/status", "status", missing)
    if status is None:
        return
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        ruid, euid, suid, _fsuid = (int(x) for x in fields["Uid"].split())
        rgid, egid, sgid, _fsgid = (int(x) for x in fields["Gid"].split())
        groups = [int(x) for x in fields.get("Groups", "").split()]
    except (KeyError, ValueError):
        missing["process.user"] = "unparsable /proc status"
        return
    process["real_user"] = ecs_user(ruid)
    process["saved_user"] = ecs_user(suid)
    process["group"] = _ecs_group(egid)
    process["real_group"] = _ecs_group(rgid)
    process["saved_group"] = _ecs_group(sgid)
    process["supplemental_groups"] = [_ecs_group(g) for g in groups]
    if euid != ruid:
        process["user"] = ecs_user(euid)
        process["real_user"] = ecs_user(ruid)
        if euid == 0:
            reasons.append(reason("OW-INS-SETUID-ROOT", 10, f"runs as root on behalf of {user_name(ruid) or ruid}"))


def _ecs_group(gid: int) -> dict:
    group = {"id": str(gid)}
    name = group_name(gid)
    if name:
        group["name"] = name
    return group


def _environment(pid: int, reasons: list[dict], missing: dict[str, str]) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read(1 << 20)
    except OSError as e:
        missing["process.env_vars"] = os_reason(e)
        return {}
    everything = dict(_all_env(raw))
    env = {k: everything[k] for k in ENV_THAT_MATTERS if k in everything}
    path = everything.get("PATH")
    if path is not None:
        odd = [p for p in path.split(":") if p in ("", ".") or under(p, TEMP_DIRS)]
        if odd:
            env["PATH"] = path
            reasons.append(reason("OW-INS-ENV-PATH", 20, f"PATH searches {', '.join(repr(p) for p in odd)}"))
    if "LD_PRELOAD" in env or "LD_AUDIT" in env:
        reasons.append(reason("OW-INS-ENV-PRELOAD", 40, "LD_PRELOAD/LD_AUDIT injects a library into it"))
    libpath = env.get("LD_LIBRARY_PATH", "")
    if any(under(p, ODD_EXEC_DIRS) for p in libpath.split(":")):
        reasons.append(reason("OW-INS-ENV-LIBPATH", 30, "LD_LIBRARY_PATH loads libraries from an odd directory"))
    if env.get("HISTFILE") == "/dev/null" or env.get("HISTSIZE") == "0" or env.get("HISTFILESIZE") == "0":
        reasons.append(reason("OW-INS-ENV-NOHISTORY", 20, "shell history is switched off (anti-forensics)"))
    if any(k.lower().endswith("_proxy") and k.lower() != "no_proxy" for k in env):
        reasons.append(reason("OW-INS-ENV-PROXY", 5, "its traffic goes through a proxy set in the environment"))
    return env


def _all_env(raw: bytes) -> Iterator[tuple[str, str]]:
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            yield key, value


def _cwd(process: dict, reasons: list[dict]) -> None:
    cwd = process.get("working_directory")
    if not cwd:
        return
    if cwd.endswith(" (deleted)"):
        reasons.append(reason("OW-INS-CWD-DELETED", 15, "its working directory was deleted"))
    if under(cwd, TEMP_DIRS):
        reasons.append(reason("OW-INS-CWD-TEMP", 15, f"works in {_top_dir(cwd)}"))


def _masquerade(process: dict, view: ProcView, reasons: list[dict]) -> None:
    """A userspace process named like a kernel thread ([kworker/0:1]) is hiding in `ps`."""
    args = process.get("args") or []
    first = args[0] if args else ""
    names = (process["name"], first.rpartition("/")[2])
    if view.exe is not None and (first.startswith("[") or any(n.startswith(_KTHREAD_NAMES) for n in names)):
        reasons.append(
            reason(
                "OW-INS-KTHREAD-NAME",
                40,
                f"a program named like a kernel thread ({first or process['name']})",
            )
        )


def _children(pid: int) -> list[dict]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    depth = {pid: 0}
    out = []
    for child in kids:
        try:
            with child.oneshot():
                parent = child.ppid()
                entry = {"pid": child.pid, "name": child.name(), "ppid": parent}
                entry["depth"] = depth.get(parent, 0) + 1
                depth[child.pid] = entry["depth"]
                try:
                    entry["args"] = child.cmdline()
                    entry["executable"] = child.exe()
                except psutil.AccessDenied:
                    pass
        except psutil.Error:
            continue
        out.append(entry)
    return out


def _origin(view: ProcView) -> dict | None:
    """How it was launched, when the ancestry or unit says: cron, at, a timer, sshd, a web server."""
    for level in view.extra.get("ancestors", []):
        name = level.get("name", "")
        via = f"{name}({level['pid']})"
        if name in _CRON:
            return {"kind": "cron", "via": via}
        if name == "atd":
            return {"kind": "at job", "via": via}
        if name.startswith(_WEB):
            return {"kind": "web server", "via": via}
        if name == "sshd":
            return {"kind": "ssh session", "via": via}
    unit = view.extra.get("unit")
    if unit:
        timer = timer_for(unit)
        if timer is not None:
            return {"kind": "timer", "via": timer.name, "file": str(timer)}
    return None


def _odd_mappings(pid: int, view: ProcView, reasons: list[dict], missing: dict[str, str]) -> list[dict]:
    maps = _read_text(f"/proc/{pid}/maps", "outwatch.inspect.odd_mappings", missing)
    if maps is None:
        return []
    exe = view.exe.path if view.exe else None
    seen: dict[str, dict] = {}
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        perms, path = parts[1], parts[5]
        deleted = path.endswith(" (deleted)")
        clean = path.removesuffix(" (deleted)")
        if clean == exe or path in seen:
            continue
        why = _mapping_oddity(clean, perms, deleted)
        if why:
            seen[path] = {"path": clean, "perms": perms, "deleted": deleted, "why": why}
    if any(under(m["path"], ODD_EXEC_DIRS) or m["path"].startswith("/memfd:") for m in seen.values()):
        reasons.append(reason("OW-INS-LIB-ODD-DIR", 40, "code mapped from a temp, home, web or memory file"))
    elif any(m["deleted"] for m in seen.values()):
        reasons.append(reason("OW-INS-LIB-DELETED", 10, "a mapped library was deleted (upgraded since start?)"))
    elif seen:
        reasons.append(reason("OW-INS-LIB-NONSYSTEM", 5, "libraries loaded from outside the system library dirs"))
    return list(seen.values())


def _mapping_oddity(path: str, perms: str, deleted: bool) -> str | None:
    executable = "x" in perms
    if path.startswith("/memfd:"):
        return "code from an anonymous memory file" if executable else None
    if under(path, ODD_EXEC_DIRS) and (executable or ".so" in path):
        return f"library under {_top_dir(path)}"
    if not executable:
        return None
    if deleted:
        return "library deleted since it was loaded"
    if not under(path, SYSTEM_LIB_DIRS):
        return "outside the system library directories"
    return None


def _temp_files(pid: int, reasons: list[dict], missing: dict[str, str]) -> list[dict]:
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError as e:
        missing["outwatch.inspect.temp_files"] = os_reason(e)
        return []
    out = []
    for name in sorted(names, key=int):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        deleted = target.endswith(" (deleted)")
        path = target.removesuffix(" (deleted)")
        if under(path, TEMP_DIRS) or (deleted and path.startswith("/") and not path.startswith("/memfd:")):
            out.append({"fd": int(name), "path": path, "deleted": deleted})
    if out:
        reasons.append(reason("OW-INS-TEMP-FILES", 5, f"{len(out)} open file(s) under temp dirs or deleted"))
    return out


def _journal(view: ProcView) -> dict:
    unit = view.extra.get("unit")
    start = view.create_time
    match = ["--unit", unit] if unit else [f"_PID={view.pid}"]
    args = [*match, f"--since=@{int(start) - JOURNAL_BEFORE_S}", f"--until=@{int(start) + JOURNAL_AFTER_S}"]
    out: dict = {"query": " ".join(args)}
    lines: list[str] = []
    try:
        for line in journal(args):
            lines.append(line)
            if len(lines) >= JOURNAL_MAX_LINES:
                out["truncated"] = True
                break
    except JournalUnavailable as e:
        out["unavailable"] = str(e)
        return out
    out["lines"] = lines
    return out


def _read_text(path: str, field: str, missing: dict[str, str]) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        missing[field] = os_reason(e)
        return None


def _top_dir(path: str) -> str:
    return next((d for d in ODD_EXEC_DIRS if under(path, (d,))), str(Path(path).parent))
