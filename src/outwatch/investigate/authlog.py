"""Logins, sudo, su and account changes from auth.log lines or the journal, in the formats they are written.

Three timestamp formats reach us: classic syslog ("Dec  3 18:00:01", no year, local time: the year is
taken from the file's mtime, the zone from the host or image), RFC 3339 as Debian 12's rsyslog
writes ("2026-12-03T18:00:01.123456+00:00") and journalctl's short-iso-precise ("...+0000").
Repeated events (the same sudo command every minute, a password spray) are folded into one record
with a count and first/last times, so a huge log gives a short list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

_ISO = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) (?P<host>\S+) (?P<rest>.*)$")
_BSD = re.compile(r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d) (?P<host>\S+) (?P<rest>.*)$")
_TAG = re.compile(r"^(?P<prog>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<msg>.*)$")
_MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}

_ACCEPTED = re.compile(r"^Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<ip>\S+) port (?P<port>\d+)")
_FAILED = re.compile(r"^Failed (?P<method>\S+) for (?:invalid user )?(?P<user>\S*) from (?P<ip>\S+) port (?P<port>\d+)")
_INVALID = re.compile(r"^Invalid user (?P<user>\S*) from (?P<ip>\S+)")
_SU = re.compile(r"^(?P<failed>FAILED SU )?\(to (?P<target>[^)]+)\) (?P<user>\S+) on (?P<tty>\S+)")
_NEW_USER = re.compile(
    r"^new user: name=(?P<user>[^,]+), UID=(?P<uid>\d+), GID=(?P<gid>\d+), home=(?P<home>[^,]*)"
    r"(?:, shell=(?P<shell>[^,]*))?"
)
_NEW_GROUP = re.compile(r"^(?:new group: name=|group added to /etc/group: name=)(?P<group>[^,]+), GID=(?P<gid>\d+)")
_ADD_TO_GROUP = re.compile(r"^add '(?P<user>[^']+)' to (?:shadow )?group '(?P<group>[^']+)'")
_GPASSWD_ADD = re.compile(r"^user (?P<user>\S+) added by (?P<by>\S+) to group (?P<group>\S+)")
_PASSWORD = re.compile(r"^pam_unix\((?P<svc>[\w-]+):chauthtok\): password changed for (?P<user>\S+)")
_CHANGE_USER = re.compile(r"^change user '(?P<user>[^']+)' (?P<what>.*)")
_DELETE_USER = re.compile(r"^delete user '(?P<user>[^']+)'")

PRIVILEGED_GROUPS = frozenset(
    {"root", "sudo", "wheel", "adm", "admin", "docker", "lxd", "disk", "shadow", "systemd-journal"}
)
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "fish", "su", "sudo"})
# Command fragments a responder wants to see when run through sudo, cron, a unit or an rc file.
NETWORK_OR_DROPPER = re.compile(
    r"(?:\b(?:curl|wget|nc|ncat|netcat|socat|telnet|tftp|scp|rsync)\b|/dev/(?:tcp|udp)/|\bbase64\s+(?:-d|--decode)"
    r"|\b(?:python\d?|perl|ruby|php)\s+-[ce]\b|\bbash\s+-i\b|\|\s*(?:ba|da|z)?sh\b|\bmkfifo\b|\bchmod\s+\+?[0-7]*[xs])"
)
PERSISTENCE_COMMAND = re.compile(
    r"\b(?:useradd|adduser|usermod|passwd|chpasswd|visudo|crontab|authorized_keys|ld\.so\.preload)\b"
    r"|\bsystemctl\s+(?:enable|daemon-reload)|\bchmod\s+[ugo]*\+s|\bchmod\s+[24]7[0-7][0-7]"
)


@dataclass(frozen=True, slots=True)
class LogLine:
    ts_ns: int
    host: str
    program: str
    pid: int | None
    message: str


@dataclass(frozen=True, slots=True)
class AuthEvent:
    action: str  # ssh_login, ssh_login_failed, sudo, sudo_failed, su, su_failed, user_created, ...
    outcome: str  # success | failure
    user: str | None = None  # who acted / logged in
    target: str | None = None  # the account acted upon (sudo USER=, su to, created user)
    ip: str | None = None
    port: int | None = None
    method: str | None = None
    command: str | None = None
    group: str | None = None
    uid: int | None = None
    detail: str | None = None


@dataclass(slots=True)
class Folded:
    """One kind of event, repeated: the first example line, how often, when first and last."""

    event: AuthEvent
    line: LogLine
    raw: str
    source: str
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    users: set[str] = field(default_factory=set)


def parse_line(text: str, year: int, tz: tzinfo | None) -> LogLine | None:
    """A syslog line in any of the three formats; `year`/`tz` complete classic syslog timestamps."""
    m = _ISO.match(text)
    if m:
        try:
            ts = datetime.fromisoformat(m["ts"])
        except ValueError:
            return None
    else:
        m = _BSD.match(text)
        if not m or m["mon"] not in _MONTHS:
            return None
        try:
            ts = datetime.strptime(f"{year} {_MONTHS[m['mon']]} {m['day']} {m['time']}", "%Y %m %d %H:%M:%S")
        except ValueError:
            return None
        ts = ts.replace(tzinfo=tz) if tz is not None else ts.astimezone()
    tag = _TAG.match(m["rest"])
    if not tag:
        return None
    pid = int(tag["pid"]) if tag["pid"] else None
    return LogLine(int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000, m["host"], tag["prog"], pid, tag["msg"])


def classify(line: LogLine) -> AuthEvent | None:
    msg = line.message
    prog = line.program
    if prog.startswith("sshd"):
        if m := _ACCEPTED.match(msg):
            return AuthEvent(
                "ssh_login", "success", user=m["user"], ip=m["ip"], port=int(m["port"]), method=m["method"]
            )
        if m := _FAILED.match(msg):
            return AuthEvent(
                "ssh_login_failed", "failure", user=m["user"], ip=m["ip"], port=int(m["port"]), method=m["method"]
            )
        if m := _INVALID.match(msg):
            return AuthEvent("ssh_login_failed", "failure", user=m["user"], ip=m["ip"], method="invalid user")
        return None
    if prog == "sudo":
        return _sudo(msg)
    if prog == "su" and (m := _SU.match(msg)):
        failed = bool(m["failed"])
        return AuthEvent(
            "su_failed" if failed else "su", "failure" if failed else "success", user=m["user"], target=m["target"]
        )
    if m := _NEW_USER.match(msg):
        return AuthEvent("user_created", "success", target=m["user"], uid=int(m["uid"]), detail=msg)
    if m := _NEW_GROUP.match(msg):
        return AuthEvent("group_created", "success", group=m["group"], detail=msg)
    if (m := _ADD_TO_GROUP.match(msg)) or (m := _GPASSWD_ADD.match(msg)):
        return AuthEvent("user_added_to_group", "success", target=m["user"], group=m["group"], detail=msg)
    if m := _PASSWORD.match(msg):
        return AuthEvent("password_changed", "success", target=m["user"], detail=msg)
    if m := _CHANGE_USER.match(msg):
        return AuthEvent("user_modified", "success", target=m["user"], detail=msg)
    if m := _DELETE_USER.match(msg):
        return AuthEvent("user_deleted", "success", target=m["user"], detail=msg)
    return None


def _sudo(msg: str) -> AuthEvent | None:
    """`alice : [3 incorrect password attempts ; ]TTY=pts/0 ; PWD=/x ; USER=root ; COMMAND=/bin/sh -c a ; b`"""
    user, sep, rest = msg.strip().partition(" : ")
    if not sep or "COMMAND=" not in rest:
        return None
    head, _, command = rest.partition("COMMAND=")
    items = [i.strip() for i in head.split(" ; ") if i.strip()]
    fields = dict(i.split("=", 1) for i in items if "=" in i)
    problems = [i for i in items if "=" not in i]
    if problems:
        return AuthEvent(
            "sudo_failed", "failure", user=user, target=fields.get("USER"), command=command, detail=problems[0]
        )
    return AuthEvent("sudo", "success", user=user, target=fields.get("USER"), command=command)


def fold_key(event: AuthEvent) -> tuple:
    """Repeats fold together: failures per source address, the rest per who/what/from where."""
    if event.action == "ssh_login_failed":
        return (event.action, event.ip)
    return (event.action, event.user, event.target, event.ip, event.method, event.command, event.group, event.detail)


def score(folded: Folded, failures_from: dict[str, int]) -> list[tuple[str, int, str]]:
    """(rule, points, why) for a folded auth record."""
    e = folded.event
    out: list[tuple[str, int, str]] = []
    if e.action == "ssh_login":
        out.append(("OW-HUNT-SSH-LOGIN", 10, f"SSH login as {e.user} from {e.ip} ({e.method})"))
        if e.user == "root":
            out.append(("OW-HUNT-SSH-ROOT", 20, "direct root login over SSH"))
        if e.method in ("password", "keyboard-interactive/pam"):
            out.append(("OW-HUNT-SSH-PASSWORD", 10, "password login (guessable, unlike a key)"))
        failed = failures_from.get(e.ip or "", 0)
        if failed >= 5:
            out.append(("OW-HUNT-SSH-AFTER-FAILURES", 40, f"after {failed} failed logins from the same address"))
    elif e.action == "ssh_login_failed":
        points = 20 if folded.count >= 100 else 10 if folded.count >= 10 else 5
        users = ", ".join(sorted(folded.users)[:5]) + (" ..." if len(folded.users) > 5 else "")
        out.append(("OW-HUNT-SSH-FAILURES", points, f"{folded.count} failed SSH logins from {e.ip} ({users})"))
    elif e.action in ("sudo", "sudo_failed"):
        command = e.command or ""
        out.append(("OW-HUNT-SUDO", 5, f"{e.user} ran as {e.target}: {command}"))
        if e.action == "sudo_failed":
            out.append(("OW-HUNT-SUDO-FAILED", 20, f"sudo refused: {e.detail}"))
        if command.split(" ", 1)[0].rpartition("/")[2] in SHELLS:
            out.append(("OW-HUNT-SUDO-SHELL", 20, "a root shell through sudo"))
        if NETWORK_OR_DROPPER.search(command):
            out.append(("OW-HUNT-SUDO-NET", 30, "downloads, connects out or decodes a payload"))
        if PERSISTENCE_COMMAND.search(command):
            out.append(("OW-HUNT-SUDO-ACCOUNTS", 20, "changes accounts, keys, cron, units or setuid bits"))
    elif e.action in ("su", "su_failed"):
        out.append(("OW-HUNT-SU", 10 if e.action == "su" else 15, f"{e.user} su to {e.target} ({e.outcome})"))
    elif e.action == "user_created":
        out.append(("OW-HUNT-USER-CREATED", 40, f"account {e.target} created (uid {e.uid})"))
        if e.uid == 0:
            out.append(("OW-HUNT-UID0", 50, "the new account has uid 0: a second root"))
    elif e.action == "group_created":
        out.append(("OW-HUNT-GROUP-CREATED", 10, f"group {e.group} created"))
    elif e.action == "user_added_to_group":
        privileged = e.group in PRIVILEGED_GROUPS
        out.append(
            (
                "OW-HUNT-GROUP-ADD",
                40 if privileged else 10,
                f"{e.target} added to {'privileged ' if privileged else ''}group {e.group}",
            )
        )
    elif e.action == "password_changed":
        out.append(("OW-HUNT-PASSWORD", 20 if e.target != "root" else 30, f"password of {e.target} changed"))
    elif e.action == "user_modified":
        out.append(("OW-HUNT-USER-MODIFIED", 10, f"account {e.target} modified: {e.detail}"))
    elif e.action == "user_deleted":
        out.append(("OW-HUNT-USER-DELETED", 10, f"account {e.target} deleted"))
    return out
