"""outwatch audit: exposure now (listening sockets, services, firewall, temp-dir executables, outbound
filtering) and a short list of what to tighten. Read only: it never changes the firewall or a service."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from outwatch.investigate.common import (
    ODD_EXEC_DIRS,
    TEMP_DIRS,
    apply_reasons,
    host_fields,
    new_event,
    reason,
    score_of,
    under,
)
from outwatch.investigate.firewall import FirewallState, read_firewall
from outwatch.investigate.fsroot import NotReadable, Tree
from outwatch.investigate.procview import ProcView, ProcViews, ecs_user
from outwatch.investigate.sockets import Sock, SocketTable, is_loopback, read_sockets, unmap

# Interpreters and relays: one of these listening on the network is how a bind shell looks.
_SHELLISH = re.compile(r"^(?:nc|ncat|netcat|socat|bash|sh|dash|zsh|python[\d.]*|perl|php[\d.]*|ruby|node|lua|telnet)$")
# Services that should rarely face the network directly.
RISKY_PORTS = {
    21: "ftp",
    23: "telnet",
    111: "rpcbind",
    445: "smb",
    512: "rexec",
    513: "rlogin",
    514: "rsh",
    2375: "docker API (no TLS)",
    2376: "docker API",
    3306: "mysql",
    5432: "postgresql",
    5900: "vnc",
    6379: "redis",
    9200: "elasticsearch",
    11211: "memcached",
    27017: "mongodb",
}
_MAX_TEMP_FILES = 50_000
_MAX_VERDICT_LINES = 10


@dataclass(slots=True)
class AuditResult:
    findings: list[dict]
    verdicts: list[str]
    firewall: FirewallState
    systemd: bool
    notes: list[str] = field(default_factory=list)


def run_audit(table: SocketTable | None = None) -> AuditResult:
    table = table or read_sockets()
    views = ProcViews(hash_exe=False)
    host = host_fields()
    findings: list[dict] = []
    notes = list(table.errors)
    if table.pids_unreadable and os.geteuid() != 0:
        notes.append(f"{table.pids_unreadable} processes' sockets cannot be matched without root")
    for sock in table.sockets:
        if sock.listening and (sock.local_port or sock.transport in ("raw", "packet")):
            pids = table.pids_of(sock) or [None]
            findings.extend(_listener(sock, pid, views, host) for pid in pids)
    systemd = Path("/run/systemd/system").is_dir()
    findings += _services(systemd, views, host, notes)
    fw = read_firewall()
    notes += fw.notes
    findings.append(_firewall_finding(fw, host))
    findings += _processes(views, host)
    findings += _temp_files(host, notes)
    findings += _sshd(host, table)
    findings.sort(key=lambda e: -score_of(e))
    return AuditResult(findings, _verdicts(findings, fw, systemd), fw, systemd, notes)


def _event(action: str, category: list[str], host: dict, reasons: list[dict], message: str, advice: str = "") -> dict:
    event = new_event(dataset="audit", action=action, category=category, type_=["info"], host=host)
    event["message"] = message
    event["outwatch"] = {"audit": {"advice": advice} if advice else {}}
    apply_reasons(event, reasons)
    return event


def _listener(sock: Sock, pid: int | None, views: ProcViews, host: dict) -> dict:
    view = views.get(pid) if pid is not None else None
    exposed = sock.transport in ("raw", "packet") or not is_loopback(sock.local_ip)
    reasons: list[dict] = []
    name = view.process.get("name", "?") if view else None
    where = f"{sock.transport} {_addr(sock)}"
    if exposed and sock.transport in ("tcp", "udp"):
        reasons.append(reason("OW-AUD-EXPOSED", 10, f"reachable from the network on {_addr(sock)}"))
        service = RISKY_PORTS.get(sock.local_port)
        if service:
            reasons.append(reason("OW-AUD-RISKY-PORT", 20, f"{service} open to the network"))
    if sock.transport in ("raw", "packet"):
        reasons.append(reason("OW-AUD-RAW", 20, f"a {sock.transport} socket sees traffic before the firewall does"))
    if view is not None:
        reasons += _process_reasons(view)
        if exposed and _SHELLISH.match(name or ""):
            reasons.append(reason("OW-AUD-SHELL-LISTENS", 30, f"{name} listens on the network: a bind shell?"))
    elif os.geteuid() == 0:
        reasons.append(reason("OW-AUD-NO-PROCESS", 10, "no process holds it (a kernel service, or hidden)"))
    who = f"{name}[{pid}]" if view else "no visible process"
    advice = ""
    if exposed and sock.transport in ("tcp", "udp") and reasons:
        advice = f"close {where} ({who}) or bind it to 127.0.0.1, or allow only the peers that need it"
    event = _event("listening_socket", ["network"], host, reasons, f"{where} {who}", advice)
    event["server"] = {"ip": sock.local_ip, "port": sock.local_port}
    event["network"] = {"transport": sock.transport, "type": "ipv6" if ":" in unmap(sock.local_ip) else "ipv4"}
    if view is not None:
        _merge_process(event, view)
    else:
        event["user"] = ecs_user(sock.uid)
    event["outwatch"]["socket"] = {"state": sock.state, "inode": sock.inode, "exposed": exposed}
    return event


def _addr(sock: Sock) -> str:
    if sock.transport == "packet":
        return f"{sock.local_ip} ethertype 0x{sock.local_port:04x}"
    if sock.transport == "raw":
        return f"{sock.local_ip} protocol {sock.local_port}"
    return f"[{sock.local_ip}]:{sock.local_port}" if ":" in sock.local_ip else f"{sock.local_ip}:{sock.local_port}"


def _process_reasons(view: ProcView) -> list[dict]:
    facts = view.exe
    out = []
    if facts is None:
        return out
    if facts.memfd:
        out.append(reason("OW-AUD-MEMFD", 60, "runs from an anonymous memory file"))
    elif facts.deleted:
        out.append(reason("OW-AUD-DELETED", 40, "its executable was deleted after it started"))
    if under(facts.path, TEMP_DIRS):
        out.append(reason("OW-AUD-EXE-TEMP", 40, f"runs from {facts.path}"))
    return out


def _merge_process(event: dict, view: ProcView) -> None:
    fields = view.fields()
    event["process"] = fields["process"]
    if view.user:
        event["user"] = fields["user"]
    event["outwatch"]["process"] = fields["outwatch"]["process"]


def _services(systemd: bool, views: ProcViews, host: dict, notes: list[str]) -> list[dict]:
    """Running services: systemd's list when it runs, else the daemons PID 1 started."""
    out = []
    if systemd and shutil.which("systemctl"):
        try:
            argv = ["systemctl", "list-units", "--type=service", "--state=running", "--no-legend", "--plain"]
            proc = subprocess.run(
                [*argv, "--no-pager"], capture_output=True, text=True, errors="replace", timeout=15, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            notes.append(f"systemctl: {e}")
            return out
        for line in proc.stdout.splitlines():
            unit = line.split(None, 1)[0] if line.strip() else ""
            if unit.endswith(".service"):
                out.append(_event("service_running", ["process"], host, [], f"service {unit} running"))
                out[-1]["service"] = {"name": unit, "state": "running"}
        return out
    init = _name_of(1)
    notes.append(f"systemd is not running (PID 1 is {init}): services are listed as the daemons PID 1 started")
    for child in _children_of_init():
        view = views.get(child)
        if view is None or view.exe is None:
            continue
        event = _event(
            "service_running",
            ["process"],
            host,
            _process_reasons(view),
            f"daemon {view.process.get('name', '?')}[{child}] {view.exe.path}",
        )
        _merge_process(event, view)
        out.append(event)
    return out


def _name_of(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "unknown"


def _children_of_init() -> list[int]:
    try:
        return sorted(p.pid for p in psutil.Process(1).children())
    except psutil.Error:
        return []


def _firewall_finding(fw: FirewallState, host: dict) -> dict:
    reasons = []
    if fw.nft_readable and not fw.input.default_deny and not fw.input.deny_rules:
        reasons.append(reason("OW-AUD-NO-INBOUND-FILTER", 30, "nothing filters inbound traffic"))
    if fw.nft_readable and not fw.output.default_deny:
        why = "outbound traffic is not restricted: any process can connect anywhere"
        reasons.append(reason("OW-AUD-OUTBOUND-OPEN", 20 if not fw.output.deny_rules else 10, why))
    if not fw.nft_readable:
        reasons.append(reason("OW-AUD-FIREWALL-UNKNOWN", 10, "the firewall could not be read (needs root)"))
    ufw = f"ufw {fw.ufw}" if fw.ufw else "ufw not readable or not installed"
    if fw.ufw_defaults:
        ufw += f" ({fw.ufw_defaults})"
    nft = f"inbound {fw.input.label}, outbound {fw.output.label}" if fw.nft_readable else "nftables unreadable"
    event = _event("firewall_state", ["configuration", "network"], host, reasons, f"{ufw}; {nft}")
    event["outwatch"]["audit"]["firewall"] = {
        "ufw": fw.ufw,
        "ufw_defaults": fw.ufw_defaults,
        "inbound": fw.input.label if fw.nft_readable else None,
        "outbound": fw.output.label if fw.nft_readable else None,
        "outbound_restricted": fw.output.default_deny if fw.nft_readable else None,
    }
    return event


def _processes(views: ProcViews, host: dict) -> list[dict]:
    """Processes running from temp or home dirs, from memory, from deleted files, or still running code
    that an upgrade replaced on disk (the `ps aux | grep /tmp` and needrestart views)."""
    out = []
    stale: list[ProcView] = []
    for pid in psutil.pids():
        view = views.get(pid)
        if view is None or view.exe is None or view.state:
            continue
        exe = view.exe
        replaced = exe.deleted and not exe.memfd and os.path.exists(f"/proc/{pid}/root{exe.path}")
        if replaced or _replaced_libraries(pid):
            stale.append(view)
        reasons = _process_reasons(view)
        if under(exe.path, ODD_EXEC_DIRS) and not under(exe.path, TEMP_DIRS):
            reasons.append(reason("OW-AUD-EXE-ODD-DIR", 20, f"runs from {exe.path}"))
        if replaced:
            reasons = [r for r in reasons if r["rule"] != "OW-AUD-DELETED"]
        if reasons:
            event = _event(
                "odd_process",
                ["process"],
                host,
                reasons,
                f"pid {pid} runs {exe.path}",
                f"inspect it: outwatch inspect {pid}",
            )
            _merge_process(event, view)
            out.append(event)
    for view in stale:
        why = "runs an executable or libraries replaced on disk since it started (upgraded): restart it"
        event = _event(
            "stale_process",
            ["process"],
            host,
            [reason("OW-AUD-STALE", 5, why)],
            f"pid {view.pid} {view.process.get('name', '?')} runs replaced code",
            "restart",
        )
        _merge_process(event, view)
        out.append(event)
    return out


def _replaced_libraries(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return any(" (deleted)" in line and "x" in line.split(None, 2)[1] and " /memfd:" not in line for line in f)
    except OSError:
        return False


def _temp_files(host: dict, notes: list[str]) -> list[dict]:
    out = []
    tree = Tree()
    mounts = _mount_options()
    for top in TEMP_DIRS:
        options = _options_for(top, mounts)
        if options is not None and "noexec" not in options:
            out.append(
                _event(
                    "mount_exec",
                    ["configuration"],
                    host,
                    [reason("OW-AUD-TEMP-EXEC", 10, f"{top} allows running programs (no noexec)")],
                    f"{top} is mounted without noexec",
                    f"mount {top} with noexec,nosuid,nodev",
                )
            )
        entries, walk_notes = tree.walk(top, _MAX_TEMP_FILES)
        for entry in entries:
            if not stat.S_ISREG(entry.st.st_mode) or not entry.st.st_mode & 0o111:
                continue
            try:
                elf = tree.read_bytes(entry.real, 4) == b"\x7fELF"
            except NotReadable:
                elf = False
            what = "a compiled program (ELF)" if elf else "an executable file"
            message = f"{entry.path} ({'ELF' if elf else 'executable'}, {entry.st.st_size} bytes)"
            reasons = [reason("OW-AUD-TEMP-FILE", 30 if elf else 15, f"{what} in {top}")]
            event = _event("temp_executable", ["file"], host, reasons, message, "remove it")
            event["file"] = {
                "path": entry.path,
                "size": entry.st.st_size,
                "mode": f"{stat.S_IMODE(entry.st.st_mode):04o}",
            }
            out.append(event)
        notes += walk_notes
    return out


def _mount_options() -> list[tuple[str, set[str]]]:
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5:
                    out.append((parts[4].replace("\\040", " "), set(parts[5].split(","))))
    except OSError:
        pass
    return out


def _options_for(path: str, mounts: list[tuple[str, set[str]]]) -> set[str] | None:
    """Options of the mount that holds `path` (the last-mounted of the longest matching mount point)."""
    best: tuple[int, set[str]] | None = None
    for point, options in mounts:
        if (under(path, (point,)) or point == "/") and (best is None or len(point) >= best[0]):
            best = (len(point), options)
    return None if best is None else best[1]


def _sshd(host: dict, table: SocketTable) -> list[dict]:
    tree = Tree()
    entry = tree.entry("/etc/ssh/sshd_config")
    if entry is None:
        return []
    settings: dict[str, str] = {}
    files = [entry.real, *sorted(e.real for e in tree.children("/etc/ssh/sshd_config.d") if e.path.endswith(".conf"))]
    for real in files:
        try:
            lines = tree.read_text(real).splitlines()
        except NotReadable:
            continue
        for line in lines:
            words = line.split()
            # sshd keeps the first value it reads for a keyword; Match blocks are not followed.
            if words and words[0].lower() == "match":
                break
            if len(words) >= 2 and not words[0].startswith("#"):
                settings.setdefault(words[0].lower(), words[1].lower())
    listening = any(s.listening and s.transport == "tcp" and s.local_port == 22 for s in table.sockets)
    reasons = []
    if settings.get("permitrootlogin", "prohibit-password") == "yes":
        reasons.append(reason("OW-AUD-SSH-ROOT-PASSWORD", 20, "root can log in over SSH with a password"))
    if settings.get("passwordauthentication", "yes") == "yes" and listening:
        reasons.append(reason("OW-AUD-SSH-PASSWORDS", 10, "SSH accepts passwords (guessable; keys are not)"))
    if not reasons:
        return []
    advice = "in sshd_config: PermitRootLogin prohibit-password, PasswordAuthentication no (keys only)"
    return [_event("sshd_config", ["configuration"], host, reasons, "sshd configuration", advice)]


def _verdicts(findings: list[dict], fw: FirewallState, systemd: bool) -> list[str]:
    out: list[str] = []
    if fw.nft_readable and not fw.input.default_deny and not fw.input.deny_rules and fw.ufw != "active":
        out.append(
            "no firewall filters inbound traffic: enable one (ufw default deny incoming; ufw allow <the ports "
            "this host serves>; ufw enable)"
        )
    if fw.nft_readable and not fw.output.default_deny:
        out.append(
            "outbound traffic is not restricted: a beacon can reach any address. Allow only what the host "
            "needs (ufw default deny outgoing + ufw allow out <DNS, NTP, mirrors, APIs>) and keep outwatch "
            "watching"
        )
    advised = [e for e in findings if e["outwatch"]["audit"].get("advice") and score_of(e) > 0]
    by_action: dict[str, list[dict]] = {}
    for event in advised:
        by_action.setdefault(event["event"]["action"], []).append(event)
    for event in by_action.get("odd_process", []) + by_action.get("listening_socket", [])[:_MAX_VERDICT_LINES]:
        out.append(event["outwatch"]["audit"]["advice"])
    listeners = by_action.get("listening_socket", [])
    if len(listeners) > _MAX_VERDICT_LINES:
        out.append(f"... and {len(listeners) - _MAX_VERDICT_LINES} more exposed listeners (see above)")
    dirs = [e["message"].split()[0] for e in by_action.get("mount_exec", [])]
    if dirs:
        out.append(f"mount {', '.join(dirs)} with noexec,nosuid,nodev so dropped programs cannot run from there")
    files = [e["file"]["path"] for e in by_action.get("temp_executable", [])]
    if files:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        out.append(
            f"find out who put {len(files)} executable(s) in temp dirs ({shown}): outwatch hunt; then remove them"
        )
    out += [e["outwatch"]["audit"]["advice"] for e in by_action.get("sshd_config", [])]
    stale = [f"{e['process'].get('name', '?')}[{e['process']['pid']}]" for e in by_action.get("stale_process", [])]
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        out.append(f"restart {len(stale)} process(es) still running code an upgrade replaced ({shown})")
    if not systemd:
        out.append("systemd is not running here: unit-based containment (stop/disable a unit) is not available")
    return out
