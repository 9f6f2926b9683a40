"""Hunt checks for the ways a foothold survives a reboot or a logout: cron and at, systemd units and
timers, rc.local and init scripts, /etc/ld.so.preload, SSH authorized_keys, shell start-up files,
and accounts (uid 0, sudoers). Each is read from files, so it works the same on a mounted image."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import stat

from outwatch.investigate.common import ODD_EXEC_DIRS, reason, under
from outwatch.investigate.fsroot import Entry
from outwatch.investigate.huntctx import HuntContext, command_reasons, home_dirs
from outwatch.investigate.units import SYSTEM_UNIT_DIRS, USER_UNIT_DIRS, exec_commands, parse_unit

_ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
_CRON_SCRIPT_DIRS = ("/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly", "/etc/cron.yearly")
_AT_DIRS = ("/var/spool/cron/atjobs", "/var/spool/at")
_UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path")
_USER_UNIT_HOME_DIRS = (".config/systemd/user", ".local/share/systemd/user")
_SHELL_FILES_ETC = ("/etc/profile", "/etc/bash.bashrc", "/etc/environment", "/etc/zsh/zshrc", "/etc/zsh/zprofile")
_SHELL_FILES_HOME = (".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc", ".zprofile")
_SHELL_HOOKS = re.compile(
    r"\b(?:LD_PRELOAD|LD_LIBRARY_PATH)=|\balias\s+(?:sudo|su|ssh|ps|netstat|ss|lsof|top)=|\bPROMPT_COMMAND=|\btrap\s+.*\bDEBUG\b"
)
_KEY = re.compile(r"(?:^|\s)((?:ssh|ecdsa|sk)-[\w@.-]+)\s+([A-Za-z0-9+/=]+)(?:\s+(.*))?$")
_DEFAULT_KEYS_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")
_ACCOUNT_FILES = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/sudoers")


def check_cron(ctx: HuntContext) -> None:
    for path in ("/etc/crontab", "/etc/anacrontab"):
        entry = ctx.tree.entry(path)
        if entry is not None:
            _crontab(ctx, entry, "anacron" if path.endswith("anacrontab") else "system")
    for entry in _files_in(ctx, "/etc/cron.d"):
        _crontab(ctx, entry, "system")
    for directory in ("/var/spool/cron/crontabs", "/var/spool/cron"):
        for entry in _files_in(ctx, directory):
            _crontab(ctx, entry, "user")
    for directory in _CRON_SCRIPT_DIRS:
        for entry in _files_in(ctx, directory):
            _script(ctx, entry, "cron", "cron_script", f"run by cron from {directory}")
    for directory in _AT_DIRS:
        for entry in _files_in(ctx, directory):
            if not entry.path.endswith("/.SEQ"):
                _script(
                    ctx,
                    entry,
                    "cron",
                    "at_job",
                    "a pending at job",
                    base=[reason("OW-HUNT-AT-JOB", 20, "a queued at job")],
                )


def _crontab(ctx: HuntContext, entry: Entry, kind: str) -> None:
    owned = ctx.owned(entry.path)
    file_reasons = ctx.recency(entry, 30, owned)
    if kind == "user":
        file_reasons.append(reason("OW-HUNT-USER-CRONTAB", 10, f"a user crontab ({entry.path.rpartition('/')[2]})"))
    elif owned is False:
        file_reasons.append(reason("OW-HUNT-UNPACKAGED", 10, "no package installed this file"))
    for number, line in enumerate(ctx.read_lines(entry, "cron"), 1):
        parsed = _cron_line(line, kind)
        if parsed is None:
            continue
        ctx.examined["cron"] += 1
        schedule, user, command = parsed
        user = user or entry.path.rpartition("/")[2]
        reasons = [*file_reasons, *command_reasons(command)]
        if schedule == "@reboot":
            reasons.append(reason("OW-HUNT-CRON-REBOOT", 10, "runs at every boot"))
        ctx.add(
            check="cron",
            action="cron_entry",
            category=["configuration"],
            reasons=reasons,
            entry=entry,
            message=f"{entry.path}:{number} [{user}] {schedule} {command}",
            details={"line": number, "schedule": schedule, "user": user, "command": command},
        )


def _cron_line(line: str, kind: str) -> tuple[str, str | None, str] | None:
    line = line.strip()
    if not line or line.startswith("#") or _ENV_LINE.match(line):
        return None
    if kind == "anacron":
        fields = line.split(None, 3)
        return (f"every {fields[0]} days", "root", fields[3]) if len(fields) == 4 else None
    system = kind == "system"
    if line.startswith("@"):
        fields = line.split(None, 2 if system else 1)
        if len(fields) < (3 if system else 2):
            return None
        return fields[0], fields[1] if system else None, fields[-1]
    fields = line.split(None, 6 if system else 5)
    if len(fields) < (7 if system else 6):
        return None
    return " ".join(fields[:5]), fields[5] if system else None, fields[-1]


def _script(ctx: HuntContext, entry: Entry, check: str, action: str, what: str, base: list[dict] | None = None) -> None:
    ctx.examined[check] += 1
    owned = ctx.owned(entry.path)
    reasons = [*(base or []), *ctx.recency(entry, 30, owned)]
    if owned is False and not base:
        reasons.append(reason("OW-HUNT-UNPACKAGED", 20, "no package installed this file"))
    # A package's own unchanged script is what the package shipped: its contents are not evidence.
    suspicious = _suspicious_lines(ctx, entry, check) if owned is not True or reasons else []
    if suspicious:
        reasons.extend(suspicious[0][1])
    if reasons:
        ctx.add(
            check=check,
            action=action,
            category=["configuration"],
            reasons=reasons,
            entry=entry,
            message=f"{entry.path}: {what}",
            details={"lines": [{"line": n, "text": t} for n, _, t in suspicious[:10]]},
        )


def _suspicious_lines(ctx: HuntContext, entry: Entry, check: str) -> list[tuple[int, list[dict], str]]:
    out = []
    for number, line in enumerate(ctx.read_lines(entry, check), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        found = command_reasons(text)
        if found:
            out.append((number, found, text[:300]))
    return out


def check_units(ctx: HuntContext) -> None:
    dirs = [*SYSTEM_UNIT_DIRS, *USER_UNIT_DIRS]
    dirs += [f"{home.rstrip('/')}/{sub}" for _user, home in home_dirs(ctx) for sub in _USER_UNIT_HOME_DIRS]
    seen = set()
    for directory in dirs:
        real = ctx.tree.resolve(directory)
        if real is None or real in seen:
            continue
        seen.add(real)
        for entry in ctx.tree.children(directory):
            mode = entry.st.st_mode
            if stat.S_ISDIR(mode) and entry.path.endswith((".wants", ".requires")):
                for link in ctx.tree.children(entry.path):
                    _wants_link(ctx, link)
            elif stat.S_ISDIR(mode) and entry.path.endswith(".d"):
                for dropin in ctx.tree.children(entry.path):
                    if dropin.path.endswith(".conf") and stat.S_ISREG(dropin.st.st_mode):
                        _unit_file(ctx, dropin, directory)
            elif entry.path.endswith(_UNIT_SUFFIXES):
                if stat.S_ISLNK(mode):
                    _wants_link(ctx, entry)
                elif stat.S_ISREG(mode):
                    _unit_file(ctx, entry, directory)


def _wants_link(ctx: HuntContext, link: Entry) -> None:
    """Enablement symlinks point into a unit directory; one pointing elsewhere loads a unit from there."""
    ctx.examined["units"] += 1
    try:
        target = link.real.readlink()
    except OSError:
        return
    text = str(target)
    if text == "/dev/null" or not text.startswith("/"):
        return
    if any(under(text, (d,)) for d in (*SYSTEM_UNIT_DIRS, *USER_UNIT_DIRS)) or "/systemd/user/" in text:
        return
    reasons = [reason("OW-HUNT-UNIT-LINK-ODD", 40, f"enabled from outside the unit directories ({text})")]
    if under(text, ODD_EXEC_DIRS):
        reasons.append(reason("OW-HUNT-UNIT-LINK-TEMP", 20, "the unit file lives in a temp or home directory"))
    ctx.add(
        check="units",
        action="unit_enabled",
        category=["configuration"],
        reasons=reasons,
        entry=link,
        message=f"{link.path} -> {text}",
        details={"target": text},
    )


def _unit_file(ctx: HuntContext, entry: Entry, directory: str) -> None:
    ctx.examined["units"] += 1
    text = ctx.read_text(entry, "units")
    if text is None:
        return
    sections = parse_unit(text)
    owned = ctx.owned(entry.path)
    reasons = ctx.recency(entry, 30, owned)
    if owned is False:
        vendor_dir = directory.startswith(("/usr/", "/lib/"))
        why = "in a vendor directory but no package installed it" if vendor_dir else "added by hand (no package)"
        reasons.append(reason("OW-HUNT-UNPACKAGED", 20 if vendor_dir else 10, why))
    commands = exec_commands(sections)
    for _number, _key, command in commands:
        for r in command_reasons(command):
            if r["rule"] not in {x["rule"] for x in reasons}:
                reasons.append(r)
    if not reasons:
        return
    details: dict = {"exec": [{"line": n, "key": k, "command": c} for n, k, c in commands]}
    timer = {k: v for _n, k, v in sections.get("Timer", [])}
    if timer:
        details["timer"] = timer
    wanted = [v for _n, k, v in sections.get("Install", []) if k == "WantedBy"]
    if wanted:
        details["wanted_by"] = wanted
    name = entry.path.rpartition("/")[2]
    shown = commands[0][2] if commands else ", ".join(f"{k}={v}" for k, v in timer.items())
    ctx.add(
        check="units",
        action="unit_file",
        category=["configuration"],
        reasons=reasons,
        entry=entry,
        message=f"{name}: {shown}",
        details=details,
    )


def check_boot_scripts(ctx: HuntContext) -> None:
    entry = ctx.tree.entry("/etc/rc.local")
    if entry is not None and stat.S_ISREG(entry.st.st_mode):
        ctx.examined["boot"] += 1
        commands = [
            (n, line.strip())
            for n, line in enumerate(ctx.read_lines(entry, "boot"), 1)
            if line.strip() and not line.strip().startswith("#") and line.strip() != "exit 0"
        ]
        if commands:
            runs = bool(entry.st.st_mode & 0o100)
            reasons = [
                reason(
                    "OW-HUNT-RCLOCAL",
                    20 if runs else 5,
                    "rc.local runs these at boot" if runs else "rc.local has commands (not executable now)",
                )
            ]
            reasons += ctx.recency(entry, 30)
            for _n, command in commands:
                reasons += [r for r in command_reasons(command) if r["rule"] not in {x["rule"] for x in reasons}]
            ctx.add(
                check="boot",
                action="rc_local",
                category=["configuration"],
                reasons=reasons,
                entry=entry,
                message=f"/etc/rc.local: {len(commands)} command line(s)",
                details={"lines": [{"line": n, "text": t[:300]} for n, t in commands[:20]]},
            )
    for entry in _files_in(ctx, "/etc/init.d"):
        _script(ctx, entry, "boot", "init_script", "SysV init script")


def check_preload(ctx: HuntContext) -> None:
    entry = ctx.tree.entry("/etc/ld.so.preload")
    if entry is not None:
        ctx.examined["preload"] += 1
        libs = [line.strip() for line in ctx.read_lines(entry, "preload") if line.strip() and not line.startswith("#")]
        if libs:
            reasons = [reason("OW-HUNT-LDSO-PRELOAD", 60, f"every program on the host loads {', '.join(libs[:5])}")]
            if any(under(lib, ODD_EXEC_DIRS) for lib in libs):
                reasons.append(reason("OW-HUNT-LDSO-PRELOAD-ODD", 20, "from a temp, home or web directory"))
            reasons += ctx.recency(entry, 30)
            ctx.add(
                check="preload",
                action="ld_so_preload",
                category=["configuration"],
                reasons=reasons,
                entry=entry,
                message=f"/etc/ld.so.preload: {' '.join(libs[:5])}",
                details={"libraries": libs[:50]},
            )
    for conf in _files_in(ctx, "/etc/ld.so.conf.d"):
        ctx.examined["preload"] += 1
        dirs = [line.strip() for line in ctx.read_lines(conf, "preload") if line.strip().startswith("/")]
        owned = ctx.owned(conf.path)
        reasons = ctx.recency(conf, 20, owned)
        if any(under(d, ODD_EXEC_DIRS) for d in dirs):
            reasons.append(reason("OW-HUNT-LDSO-DIR-ODD", 40, "adds a temp, home or web dir to the library path"))
        if reasons:
            ctx.add(
                check="preload",
                action="ld_so_conf",
                category=["configuration"],
                reasons=reasons,
                entry=conf,
                message=f"{conf.path}: {' '.join(dirs[:5])}",
                details={"directories": dirs[:50]},
            )


def check_ssh_keys(ctx: HuntContext) -> None:
    patterns = _authorized_keys_patterns(ctx)
    system_users = {a.name for a in ctx.accounts() if 0 < a.uid < 1000}
    seen = set()
    for user, home in home_dirs(ctx):
        for pattern in patterns:
            rel = pattern.replace("%h", home).replace("%u", user).replace("%%", "%")
            path = rel if rel.startswith("/") else f"{home.rstrip('/')}/{rel}"
            entry = ctx.tree.entry(path)
            if entry is None or entry.real in seen or not stat.S_ISREG(entry.st.st_mode):
                continue
            seen.add(entry.real)
            _keys_file(ctx, entry, user, user in system_users)


def _authorized_keys_patterns(ctx: HuntContext) -> list[str]:
    patterns: list[str] = []
    configs = [ctx.tree.entry("/etc/ssh/sshd_config")]
    configs += _files_in(ctx, "/etc/ssh/sshd_config.d")
    for entry in configs:
        if entry is None:
            continue
        for line in ctx.read_lines(entry, "ssh"):
            words = line.split()
            if len(words) > 1 and words[0].lower() == "authorizedkeysfile" and not patterns:
                patterns = [w for w in words[1:] if w.lower() != "none"]
    return list(dict.fromkeys([*patterns, *_DEFAULT_KEYS_FILES]))


def _keys_file(ctx: HuntContext, entry: Entry, user: str, system_user: bool) -> None:
    file_reasons = ctx.recency(entry, 40)
    if file_reasons:
        file_reasons[0]["why"] += ": a key was added or changed"
    if entry.path.endswith("authorized_keys2"):
        file_reasons.append(reason("OW-HUNT-KEYS2", 10, "authorized_keys2: deprecated, rarely checked"))
    if entry.st.st_mode & 0o022:
        file_reasons.append(reason("OW-HUNT-KEYS-WRITABLE", 20, "others can write this keys file"))
    if system_user:
        file_reasons.append(reason("OW-HUNT-KEYS-SERVICE", 30, f"service account {user} accepts SSH keys"))
    if user == "root":
        file_reasons.append(reason("OW-HUNT-KEYS-ROOT", 10, "grants root logins"))
    for number, line in enumerate(ctx.read_lines(entry, "ssh"), 1):
        m = _KEY.search(line)
        if line.strip().startswith("#") or not m:
            continue
        ctx.examined["ssh"] += 1
        key_type, blob, comment = m.group(1), m.group(2), (m.group(3) or "").strip()
        options = line[: m.start(1)].strip()
        reasons = list(file_reasons)
        if "command=" in options:
            reasons.append(reason("OW-HUNT-KEY-COMMAND", 5, "the key runs a forced command"))
        details = {"user": user, "line": number, "key_type": key_type, "fingerprint": _fingerprint(blob)}
        if comment:
            details["comment"] = comment
        if options:
            details["options"] = options
        ctx.add(
            check="ssh",
            action="ssh_authorized_key",
            category=["iam", "configuration"],
            reasons=reasons,
            entry=entry,
            message=f"{user}: {key_type} {details['fingerprint']} {comment}".rstrip(),
            details=details,
        )


def _fingerprint(blob: str) -> str:
    """As `ssh-keygen -l` prints it: SHA256:<base64 of the key blob's sha256, unpadded>."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "invalid key"
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def check_shell_files(ctx: HuntContext) -> None:
    files = [*_SHELL_FILES_ETC, *(e.path for e in _files_in(ctx, "/etc/profile.d"))]
    files += [f"{home.rstrip('/')}/{name}" for _user, home in home_dirs(ctx) for name in _SHELL_FILES_HOME]
    seen = set()
    for path in files:
        entry = ctx.tree.entry(path)
        if entry is None or entry.real in seen or not stat.S_ISREG(entry.st.st_mode):
            continue
        seen.add(entry.real)
        ctx.examined["shell"] += 1
        owned = ctx.owned(entry.path) if entry.path.startswith("/etc/") else None
        reasons = ctx.recency(entry, 30, owned)
        if owned is False and entry.path.startswith("/etc/profile.d/"):
            reasons.append(reason("OW-HUNT-UNPACKAGED", 10, "no package installed this file"))
        hits = []
        for number, line in enumerate(ctx.read_lines(entry, "shell"), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            found = command_reasons(text, odd_paths=False)
            if _SHELL_HOOKS.search(text):
                found.append(
                    reason("OW-HUNT-SHELL-HOOK", 30, "hooks every shell (preload, alias, prompt or DEBUG trap)")
                )
            if found:
                hits.append({"line": number, "text": text[:300]})
                reasons += [r for r in found if r["rule"] not in {x["rule"] for x in reasons}]
        if reasons:
            ctx.add(
                check="shell",
                action="shell_startup_file",
                category=["configuration"],
                reasons=reasons,
                entry=entry,
                message=f"{entry.path}: runs in every login or shell",
                details={"lines": hits[:20]},
            )


def check_accounts(ctx: HuntContext) -> None:
    for account in ctx.accounts():
        ctx.examined["accounts"] += 1
        if account.uid == 0 and account.name != "root":
            ctx.add(
                check="accounts",
                action="uid0_account",
                category=["iam"],
                type_=["user", "info"],
                reasons=[reason("OW-HUNT-UID0-ACCOUNT", 80, f"{account.name} has uid 0: a second root")],
                message=f"account {account.name} has uid 0 (shell {account.shell})",
                details={"user": account.name, "shell": account.shell, "home": account.home},
            )
    shadow = ctx.tree.entry("/etc/shadow")
    if shadow is not None:
        shells = {a.name: a.shell for a in ctx.accounts()}
        for line in ctx.read_lines(shadow, "accounts"):
            parts = line.split(":")
            if len(parts) > 1 and parts[1] == "" and not shells.get(parts[0], "").endswith(("nologin", "false")):
                ctx.add(
                    check="accounts",
                    action="empty_password",
                    category=["iam"],
                    type_=["user", "info"],
                    reasons=[reason("OW-HUNT-EMPTY-PASSWORD", 40, f"{parts[0]} can log in without a password")],
                    message=f"account {parts[0]} has an empty password",
                    details={"user": parts[0]},
                )
    for path in _ACCOUNT_FILES:
        entry = ctx.tree.entry(path)
        if entry is not None and ctx.recent(entry.st):
            ctx.add(
                check="accounts",
                action="account_file_changed",
                category=["iam", "configuration"],
                reasons=ctx.recency(entry, 30),
                entry=entry,
                message=f"{path} changed in the window",
            )
    for entry in [ctx.tree.entry("/etc/sudoers"), *_files_in(ctx, "/etc/sudoers.d")]:
        if entry is not None:
            _sudoers(ctx, entry)


def _sudoers(ctx: HuntContext, entry: Entry) -> None:
    ctx.examined["accounts"] += 1
    owned = ctx.owned(entry.path)
    reasons = [] if entry.path == "/etc/sudoers" else ctx.recency(entry, 30, owned)
    if owned is False:
        reasons.append(reason("OW-HUNT-UNPACKAGED", 10, "sudo rules added by hand"))
    grants = []
    for number, line in enumerate(ctx.read_lines(entry, "accounts"), 1):
        text = line.strip()
        if text and not text.startswith(("#", "Defaults")) and "NOPASSWD" in text:
            grants.append({"line": number, "text": text[:300]})
    if grants:
        reasons.append(reason("OW-HUNT-SUDO-NOPASSWD", 20, f"passwordless sudo: {grants[0]['text']}"))
    if reasons:
        ctx.add(
            check="accounts",
            action="sudoers",
            category=["iam", "configuration"],
            reasons=reasons,
            entry=entry,
            message=f"{entry.path}: sudo rules",
            details={"nopasswd": grants[:20]},
        )


def _files_in(ctx: HuntContext, directory: str) -> list[Entry]:
    """Regular files directly in a directory of the tree (symlinked entries are resolved in the tree)."""
    out = []
    for entry in ctx.tree.children(directory):
        if stat.S_ISLNK(entry.st.st_mode):
            resolved = ctx.tree.entry(entry.path)
            if resolved is not None and stat.S_ISREG(resolved.st.st_mode):
                out.append(resolved)
        elif stat.S_ISREG(entry.st.st_mode):
            out.append(entry)
    return out
