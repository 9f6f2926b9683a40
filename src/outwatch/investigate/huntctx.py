"""What every hunt check shares: the tree, the window, the findings list, and the common reasons."""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from outwatch.investigate.authlog import NETWORK_OR_DROPPER
from outwatch.investigate.common import (
    ODD_EXEC_DIRS,
    TEMP_DIRS,
    apply_reasons,
    host_fields,
    new_event,
    reason,
    rfc3339_ns,
    under,
)
from outwatch.investigate.dpkg import owned_paths
from outwatch.investigate.fsroot import Entry, NotReadable, Tree

_HIDING_PLACES = (*TEMP_DIRS, "/var/www", "/dev")
_PATH_TOKEN = re.compile(r"(?<![\w.$~])/[^\s;|&'\"<>()`]+")


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    home: str
    shell: str


@dataclass(slots=True)
class HuntContext:
    tree: Tree
    since_ns: int
    findings: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    examined: Counter = field(default_factory=Counter)  # check -> items looked at
    reported: set[str] = field(default_factory=set)  # file paths already in a finding
    _owned: set[str] | None = None
    _owned_loaded: bool = False
    _accounts: list[Account] | None = None
    _host: dict | None = None

    @property
    def host(self) -> dict:
        if self._host is None:
            self._host = host_fields(self.tree.root if self.tree.offline else None)
        return self._host

    def owned(self, path: str) -> bool | None:
        """Whether a Debian package installed `path`; None when there is no dpkg database to ask."""
        if not self._owned_loaded:
            self._owned = owned_paths(self.tree.root)
            self._owned_loaded = True
            if self._owned is None:
                self.notes.append("no dpkg database: cannot tell package files from added ones")
        return None if self._owned is None else path in self._owned

    def accounts(self) -> list[Account]:
        """Accounts of the tree's /etc/passwd (the image's, with --root)."""
        if self._accounts is None:
            self._accounts = []
            entry = self.tree.entry("/etc/passwd")
            if entry is not None:
                for line in self.read_lines(entry, "accounts"):
                    parts = line.split(":")
                    if len(parts) >= 7 and parts[2].isdigit():
                        self._accounts.append(Account(parts[0], int(parts[2]), parts[5], parts[6]))
        return self._accounts

    def user_name(self, uid: int) -> str | None:
        name = next((a.name for a in self.accounts() if a.uid == uid), None)
        if name is None and not self.tree.offline:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                return None
        return name

    def read_text(self, entry: Entry, check: str, limit: int = 1 << 20) -> str | None:
        try:
            return self.tree.read_text(entry.real, limit)
        except NotReadable as e:
            self.notes.append(f"{check}: {entry.path}: {e}")
            return None

    def read_lines(self, entry: Entry, check: str) -> list[str]:
        text = self.read_text(entry, check)
        return [] if text is None else text.splitlines()

    def recent(self, st: os.stat_result) -> bool:
        return st.st_mtime_ns >= self.since_ns

    def recency(self, entry: Entry, points: int, owned: bool | None = None) -> list[dict]:
        """Reasons for a file written in the window. On the live system an inode change in the window
        under an old mtime counts too (times kept by cp -p/tar, or backdated with touch), except for
        package files, whose ctime an install or upgrade sets."""
        st = entry.st
        if st.st_mtime_ns >= self.since_ns:
            return [reason("OW-HUNT-RECENT", points, f"modified {rfc3339_ns(st.st_mtime_ns)}, in the window")]
        if not self.tree.offline and st.st_ctime_ns >= self.since_ns and not owned:
            return [
                reason(
                    "OW-HUNT-CTIME",
                    points // 2,
                    f"inode changed {rfc3339_ns(st.st_ctime_ns)} though mtime says "
                    f"{rfc3339_ns(st.st_mtime_ns)} (times preserved on copy, or backdated)",
                )
            ]
        return []

    def file_fields(self, entry: Entry) -> dict:
        st = entry.st
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
        parent, _, name = entry.path.rpartition("/")
        out: dict = {
            "path": entry.path,
            "name": name,
            "directory": parent or "/",
            "type": kind,
            "size": st.st_size,
            "mtime": rfc3339_ns(st.st_mtime_ns),
            "ctime": rfc3339_ns(st.st_ctime_ns),
            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "uid": str(st.st_uid),
            "gid": str(st.st_gid),
        }
        owner = self.user_name(st.st_uid)
        if owner:
            out["owner"] = owner
        return out

    def add(
        self,
        *,
        check: str,
        action: str,
        category: list[str],
        reasons: list[dict],
        message: str,
        entry: Entry | None = None,
        details: dict | None = None,
        type_: list[str] | None = None,
        timestamp_ns: int | None = None,
    ) -> dict:
        event = new_event(
            dataset="hunt",
            action=action,
            category=category,
            type_=type_ or ["info"],
            host=self.host,
            timestamp_ns=timestamp_ns,
        )
        event["message"] = message
        if entry is not None:
            event["file"] = self.file_fields(entry)
            self.reported.add(entry.path)
        event["outwatch"] = {"hunt": {"check": check, **(details or {})}}
        if self.tree.offline:
            event["outwatch"]["hunt"]["root"] = str(self.tree.root)
        apply_reasons(event, reasons)
        self.findings.append(event)
        return event


def command_reasons(command: str, odd_paths: bool = True) -> list[dict]:
    """Why a command line run by cron, a unit, rc.local or a shell rc file deserves a look. With
    `odd_paths` off (shell rc files, where ~/.local/bin in PATH is normal) only temp dirs count."""
    out = []
    m = NETWORK_OR_DROPPER.search(command)
    if m:
        out.append(reason("OW-HUNT-CMD-NET", 40, f"downloads, connects out or decodes a payload ({m.group().strip()})"))
    paths = _PATH_TOKEN.findall(command)
    temp = next((p for p in paths if under(p, TEMP_DIRS)), None)
    odd = next((p for p in paths if under(p, ODD_EXEC_DIRS)), None) if odd_paths else None
    if temp:
        out.append(reason("OW-HUNT-CMD-TEMP", 40, f"uses {temp}, under a world-writable temp dir"))
    elif odd:
        out.append(reason("OW-HUNT-CMD-ODD-PATH", 25, f"uses {odd}, outside system directories"))
    hidden = next((p for p in paths if "/." in p.replace("/./", "/") and under(p, _HIDING_PLACES)), None)
    if hidden:
        out.append(reason("OW-HUNT-CMD-HIDDEN", 20, f"a hidden path ({hidden})"))
    return out


def home_dirs(ctx: HuntContext) -> list[tuple[str, str]]:
    """(user, home) of every account whose home exists in the tree, and of every dir in /home."""
    seen: set[Path] = set()
    out = []
    for account in ctx.accounts() or [Account("root", 0, "/root", "")]:
        if account.home in ("", "/", "/nonexistent", "/dev/null"):
            continue
        real = ctx.tree.resolve(account.home)
        if real is None or real in seen or not real.is_dir():
            continue
        seen.add(real)
        out.append((account.name, account.home))
    for entry in ctx.tree.children("/home"):
        if stat.S_ISDIR(entry.st.st_mode) and entry.real not in seen:
            out.append((ctx.user_name(entry.st.st_uid) or str(entry.st.st_uid), entry.path))
    return out
