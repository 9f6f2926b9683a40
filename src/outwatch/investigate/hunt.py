"""outwatch hunt: persistence, dropped files and account activity in a time window, live or offline.

Offline (--root DIR) every path is read inside DIR (see fsroot) and nothing from DIR is run; the
window is judged by mtime only there, since a copied tree's ctimes are the copy's.
"""

from __future__ import annotations

import re
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from outwatch.errors import ExitCode, OutwatchError
from outwatch.investigate import authlog
from outwatch.investigate.common import TEMP_DIRS, reason, rfc3339_ns, score_of, under
from outwatch.investigate.fsroot import Entry, NotReadable, Tree
from outwatch.investigate.huntctx import HuntContext
from outwatch.investigate.journal import JournalUnavailable, journal
from outwatch.investigate.persistence import (
    check_accounts,
    check_boot_scripts,
    check_cron,
    check_preload,
    check_shell_files,
    check_ssh_keys,
    check_units,
)
from outwatch.proc.exeinfo import sha256_of

DROP_DIRS = (*TEMP_DIRS, "/var/www")
BIN_DIRS = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
AUTH_LOGS = ("/var/log/auth.log", "/var/log/secure")
MAX_WALK = 200_000
MAX_HASH_BYTES = 64 << 20
_WEB_SCRIPT = (".php", ".phtml", ".php5", ".php7", ".phar", ".jsp", ".jspx", ".asp", ".aspx", ".cgi", ".pl", ".py")
_WEBSHELL = re.compile(
    rb"(?:eval\s*\(\s*(?:base64_decode|gzinflate|str_rot13|\$_(?:GET|POST|REQUEST|COOKIE))|"
    rb"(?:system|shell_exec|passthru|exec|popen|proc_open|assert)\s*\(\s*\$_(?:GET|POST|REQUEST|COOKIE)|"
    rb"Runtime\.getRuntime\(\)\.exec)"
)
_SENSITIVE_ETC = (
    "/etc/pam.d",
    "/etc/security",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/apt/apt.conf.d",
    "/etc/update-motd.d",
    "/etc/systemd",
    "/etc/init.d",
    "/etc/network/if-up.d",
    "/etc/udev/rules.d",
    "/etc/xdg/autostart",
    "/etc/ld.so.conf.d",
    "/etc/profile.d",
    "/etc/cron.d",
)
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CHECK_ORDER = ("auth", "accounts", "ssh", "cron", "units", "boot", "preload", "shell", "dropped", "binaries", "etc")
CHECK_TITLES = {
    "auth": "logins, sudo and account changes (auth log / journal)",
    "accounts": "accounts and sudo rules",
    "ssh": "SSH authorized_keys",
    "cron": "cron and at",
    "units": "systemd units and timers",
    "boot": "rc.local and init scripts",
    "preload": "ld.so.preload and library paths",
    "shell": "shell start-up files",
    "dropped": "files in /tmp, /var/tmp, /dev/shm, /var/www",
    "binaries": "system binary directories",
    "etc": "other files changed under /etc",
}


@dataclass(slots=True)
class HuntResult:
    findings: list[dict]
    notes: list[str]
    examined: dict[str, int]
    since_ns: int
    root: Path | None
    auth_source: str = ""
    by_check: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.notes)


def parse_since(text: str, now: float | None = None) -> int:
    """'2d', '12h', '30m', '1w', '90s', or a date/time ('2026-12-01', '2026-12-01T10:00', local if no zone)."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip().lower())
    if m:
        return int((now - int(m[1]) * _UNITS[m[2]]) * 1_000_000_000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise OutwatchError(
            f"cannot read --since {text!r}",
            "give a duration like 30m, 12h, 2d, 1w, or a date like 2026-12-01 or 2026-12-01T10:00",
            ExitCode.USAGE,
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return int(when.timestamp() * 1_000_000_000)


def hunt(since_ns: int, root: Path | None = None) -> HuntResult:
    if root is not None:
        if not root.exists():
            raise OutwatchError(
                f"--root {root} does not exist", "give the directory an image is mounted on", ExitCode.USAGE
            )
        if not root.is_dir():
            raise OutwatchError(
                f"--root {root} is not a directory",
                "mount the image first (mount -o ro,noexec,nodev,loop IMAGE /mnt/evidence) and give the mount point",
                ExitCode.USAGE,
            )
        if root.resolve() != Path("/") and not any(root.iterdir()):
            raise OutwatchError(f"--root {root} is empty", "is the image mounted there?", ExitCode.USAGE)
    tree = Tree(root.resolve() if root is not None and root.resolve() != Path("/") else None)
    ctx = HuntContext(tree, since_ns)
    if tree.offline and tree.resolve("/etc") is None:
        ctx.notes.append(f"{root} has no etc/: is it the root of the image's filesystem?")
    auth_source = check_auth(ctx)
    for check in (
        check_accounts,
        check_ssh_keys,
        check_cron,
        check_units,
        check_boot_scripts,
        check_preload,
        check_shell_files,
        check_dropped,
        check_binaries,
        check_etc,
    ):
        check(ctx)
    if tree.denied:
        ctx.notes.append("permission denied (run as root to check them): " + ", ".join(dict.fromkeys(tree.denied)))
    ctx.findings.sort(key=lambda e: -score_of(e))
    by_check: dict[str, list[dict]] = {c: [] for c in CHECK_ORDER}
    for event in ctx.findings:
        by_check[event["outwatch"]["hunt"]["check"]].append(event)
    return HuntResult(
        ctx.findings,
        ctx.notes,
        dict(ctx.examined),
        since_ns,
        tree.root if tree.offline else None,
        auth_source,
        by_check,
    )


def check_dropped(ctx: HuntContext) -> None:
    for top in DROP_DIRS:
        entries, notes = ctx.tree.walk(top, MAX_WALK)
        for entry in entries:
            if stat.S_ISREG(entry.st.st_mode):
                ctx.examined["dropped"] += 1
                _dropped_file(ctx, entry, top)
        ctx.notes.extend(f"dropped: {n}" for n in notes)


def _dropped_file(ctx: HuntContext, entry: Entry, top: str) -> None:
    st = entry.st
    executable = bool(st.st_mode & 0o111)
    setid = bool(st.st_mode & (stat.S_ISUID | stat.S_ISGID))
    recent = ctx.recency(entry, 15)
    web = top == "/var/www"
    if not (executable or setid or recent or top != "/var/www"):
        return
    head = _head(ctx, entry, 4 if not (web and recent) else 64 << 10)
    elf = head.startswith(b"\x7fELF")
    if not (executable or setid or recent or elf):
        return
    reasons = list(recent)
    if elf:
        reasons.append(reason("OW-HUNT-DROP-ELF", 40, f"a compiled program (ELF) in {top}"))
    elif executable:
        reasons.append(reason("OW-HUNT-DROP-EXEC", 20, f"an executable file in {top}"))
    if setid:
        reasons.append(reason("OW-HUNT-DROP-SETID", 40, "setuid/setgid bit set"))
    name = entry.path.rpartition("/")[2]
    if name.startswith(".") or "/." in entry.path[len(top) :]:
        reasons.append(reason("OW-HUNT-DROP-HIDDEN", 15, "hidden name or hidden directory"))
    if top == "/dev/shm" and (elf or executable):
        reasons.append(reason("OW-HUNT-DROP-SHM", 10, "in shared memory (gone at reboot, a favourite for payloads)"))
    if web and recent and name.lower().endswith(_WEB_SCRIPT):
        reasons.append(reason("OW-HUNT-WEB-SCRIPT", 20, "a server-side script written in the window"))
        m = _WEBSHELL.search(head)
        if m:
            reasons.append(
                reason(
                    "OW-HUNT-WEBSHELL", 40, f"runs code from the request ({m.group().decode(errors='replace')[:60]})"
                )
            )
    details: dict = {}
    if (elf or executable) and st.st_size <= MAX_HASH_BYTES:
        try:
            details["sha256"] = sha256_of(str(entry.real))
        except OSError as e:
            ctx.notes.append(f"dropped: {entry.path}: {e.strerror}")
    event = ctx.add(
        check="dropped",
        action="file_found",
        category=["file"],
        reasons=reasons,
        entry=entry,
        message=f"{entry.path} ({'ELF' if elf else 'executable' if executable else 'file'}, {st.st_size} bytes)",
        details=details,
    )
    if "sha256" in details:
        event["file"]["hash"] = {"sha256": details.pop("sha256")}


def _head(ctx: HuntContext, entry: Entry, size: int) -> bytes:
    try:
        return ctx.tree.read_bytes(entry.real, size)
    except NotReadable:
        return b""


def check_binaries(ctx: HuntContext) -> None:
    """System binaries changed in the window, and files in /usr/bin and /usr/sbin no package installed."""
    seen = set()
    for directory in BIN_DIRS:
        real = ctx.tree.resolve(directory)
        if real is None or real in seen:
            continue
        seen.add(real)
        local = directory.startswith("/usr/local/")
        for entry in ctx.tree.children(directory):
            if not stat.S_ISREG(entry.st.st_mode):
                continue
            ctx.examined["binaries"] += 1
            owned = None if local else ctx.owned(entry.path)
            reasons = ctx.recency(entry, 20, owned)
            if owned is False:
                reasons.append(
                    reason("OW-HUNT-BIN-UNPACKAGED", 20, "in a system binary directory, but no package installed it")
                )
            if reasons:
                ctx.add(
                    check="binaries",
                    action="binary_found",
                    category=["file"],
                    reasons=reasons,
                    entry=entry,
                    message=f"{entry.path} ({entry.st.st_size} bytes)",
                )


def check_etc(ctx: HuntContext) -> None:
    entries, notes = ctx.tree.walk("/etc", MAX_WALK)
    for entry in entries:
        if not stat.S_ISREG(entry.st.st_mode) or entry.path in ctx.reported:
            continue
        ctx.examined["etc"] += 1
        if not ctx.recent(entry.st):
            continue
        reasons = ctx.recency(entry, 10)
        if under(entry.path, _SENSITIVE_ETC):
            reasons.append(reason("OW-HUNT-ETC-SENSITIVE", 15, "controls logins, privileges, boot or package hooks"))
        ctx.add(
            check="etc",
            action="config_changed",
            category=["configuration"],
            reasons=reasons,
            entry=entry,
            message=f"{entry.path} changed",
        )
    ctx.notes.extend(f"etc: {n}" for n in notes)


def check_auth(ctx: HuntContext) -> str:
    """Auth log lines in the window, folded; from auth.log files if there are any, else the journal."""
    folded: dict[tuple, authlog.Folded] = {}
    failures_from: dict[str, int] = {}
    files = _auth_files(ctx)
    tz = _log_zone(ctx)
    if files:
        # A log last written before the window holds no line in it.
        recent = [e for e in files if e.st.st_mtime_ns >= ctx.since_ns]
        source = ", ".join(e.path for e in recent) or f"{files[-1].path} (nothing written in the window)"
        for entry in recent:
            mtime = datetime.fromtimestamp(entry.st.st_mtime, UTC)
            try:
                for text in ctx.tree.lines(entry.real):
                    _auth_line(ctx, text, mtime, tz, entry.path, folded, failures_from)
            except NotReadable as e:
                ctx.notes.append(f"auth: {entry.path}: {e}")
    else:
        directory = ctx.tree.resolve("/var/log/journal") if ctx.tree.offline else None
        if ctx.tree.offline and directory is None:
            ctx.notes.append("auth: no auth.log and no /var/log/journal in the image")
            return "none"
        source = "journal" + (f" in {directory}" if directory else "")
        args = [f"--since=@{ctx.since_ns // 1_000_000_000}", "SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10"]
        now = datetime.now(UTC)
        try:
            for text in journal(args, directory):
                _auth_line(ctx, text, now, tz, "journal", folded, failures_from)
        except JournalUnavailable as e:
            ctx.notes.append(f"auth: no auth.log and the journal is unavailable ({e})")
            return "none"
    for item in folded.values():
        reasons = [reason(*r) for r in authlog.score(item, failures_from)]
        _auth_finding(ctx, item, reasons)
    return source


def _auth_files(ctx: HuntContext) -> list[Entry]:
    """auth.log and its rotations (auth.log.1, auth.log.2.gz, auth.log-20261201, ...), oldest first."""
    out = []
    for path in AUTH_LOGS:
        directory, _, base = path.rpartition("/")
        rotated = [
            e
            for e in ctx.tree.children(directory)
            if re.fullmatch(re.escape(base) + r"(?:\.\d+(?:\.gz)?|-\d{8}(?:\.gz)?)?", e.path.rpartition("/")[2])
        ]
        for entry in rotated:
            resolved = ctx.tree.entry(entry.path)
            if resolved is not None and stat.S_ISREG(resolved.st.st_mode):
                out.append(resolved)
    return sorted(out, key=lambda e: e.st.st_mtime_ns)


def _log_zone(ctx: HuntContext) -> tzinfo | None:
    """Classic syslog times are local: this host's zone live, the image's /etc/timezone offline."""
    if not ctx.tree.offline:
        return None
    entry = ctx.tree.entry("/etc/timezone")
    name = (ctx.read_text(entry, "auth", 256) or "").strip() if entry is not None else ""
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        ctx.notes.append(f"auth: unknown time zone {name!r} in the image: classic syslog times read as UTC")
        return UTC


def _auth_line(
    ctx: HuntContext,
    text: str,
    written: datetime,
    tz: tzinfo | None,
    source: str,
    folded: dict[tuple, authlog.Folded],
    failures_from: dict[str, int],
) -> None:
    line = authlog.parse_line(text, written.year, tz)
    if line is None:
        return
    if line.ts_ns > int(written.timestamp() * 1e9) + 86400 * 1_000_000_000:
        # "Dec 31" read in a file last written in January belongs to the year before.
        line = authlog.parse_line(text, written.year - 1, tz)
        if line is None:
            return
    if line.ts_ns < ctx.since_ns:
        return
    ctx.examined["auth"] += 1
    event = authlog.classify(line)
    if event is None:
        return
    if event.action == "ssh_login_failed" and event.ip:
        failures_from[event.ip] = failures_from.get(event.ip, 0) + 1
    key = authlog.fold_key(event)
    item = folded.get(key)
    if item is None:
        if len(folded) >= 10_000:
            return
        item = folded[key] = authlog.Folded(event, line, text[:2000], source, first_ns=line.ts_ns)
    item.count += 1
    item.first_ns = min(item.first_ns, line.ts_ns)
    item.last_ns = max(item.last_ns, line.ts_ns)
    if event.user and len(item.users) < 50:
        item.users.add(event.user)


_AUTH_CATEGORY = {
    "ssh_login": (["authentication"], ["start"]),
    "ssh_login_failed": (["authentication"], ["start"]),
    "sudo": (["authentication", "process"], ["start"]),
    "sudo_failed": (["authentication", "process"], ["start"]),
    "su": (["authentication"], ["start"]),
    "su_failed": (["authentication"], ["start"]),
    "user_created": (["iam"], ["user", "creation"]),
    "group_created": (["iam"], ["group", "creation"]),
    "user_added_to_group": (["iam"], ["group", "change"]),
    "password_changed": (["iam"], ["user", "change"]),
    "user_modified": (["iam"], ["user", "change"]),
    "user_deleted": (["iam"], ["user", "deletion"]),
}


def _auth_finding(ctx: HuntContext, item: authlog.Folded, reasons: list[dict]) -> None:
    e = item.event
    category, type_ = _AUTH_CATEGORY[e.action]
    details: dict = {"count": item.count, "source": item.source}
    if e.command:
        details["command"] = e.command
    if e.group:
        details["group"] = e.group
    if e.method:
        details["method"] = e.method
    if e.action == "ssh_login_failed":
        details["users"] = sorted(item.users)
    event = ctx.add(
        check="auth",
        action=e.action,
        category=category,
        type_=type_,
        reasons=reasons,
        message=item.raw,
        details=details,
        timestamp_ns=item.last_ns,
    )
    event["event"]["outcome"] = e.outcome
    event["event"]["start"] = rfc3339_ns(item.first_ns)
    event["event"]["end"] = rfc3339_ns(item.last_ns)
    event["log"] = {"file": {"path": item.source}} if item.source != "journal" else {"logger": "journal"}
    event["process"] = {"name": item.line.program, **({"pid": item.line.pid} if item.line.pid else {})}
    related: dict = {}
    if e.user and e.action != "ssh_login_failed":
        event["user"] = {"name": e.user}
    if e.target:
        event.setdefault("user", {})["target"] = {"name": e.target}
    if e.ip:
        event["source"] = {"ip": e.ip, **({"port": e.port} if e.port and item.count == 1 else {})}
        related["ip"] = [e.ip]
    users = sorted({u for u in (e.user, e.target) if u} | (item.users if e.action == "ssh_login_failed" else set()))
    if users:
        related["user"] = users
    if related:
        event["related"] = related
