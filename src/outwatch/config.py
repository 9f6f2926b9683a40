"""/etc/outwatch/outwatch.toml: defaults for `outwatch watch`, checked key by key with file:line errors.

    [watch]
    format = "ndjson"                  # pretty | ndjson
    probes = "auto"                    # auto | cgroup | kprobe
    include_loopback = false
    metrics_interval = 10              # seconds between metric records
    min_severity = "info"              # info | low | medium | high | critical
    outputs = ["/var/log/outwatch/events.ndjson", "syslog://siem.example:514"]
    spool_dir = "/var/lib/outwatch/spool"   # where network outputs keep events while their receiver is away
    spool_max_mb = 256                 # per output

    [rules]
    files = ["/etc/outwatch/local-rules.toml"]   # relative paths are relative to this file
    [rules.thresholds]                 # passed to the rules engine: minimum score of each severity
    high = 60
    alert = "medium"

    [respond]                          # the policy of `watch --respond` (see outwatch.respond.policy)

Every attribute is None (or empty) when the file does not set it: command-line flags override what
is set here, and `watch` falls back to its defaults for the rest. Because outwatch runs as root and
acts on this file (kill, block), a file that a non-root user may change is refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outwatch.errors import ExitCode, OutwatchError
from outwatch.rules.conditions import did_you_mean, type_name
from outwatch.rules.engine import SEVERITIES, Thresholds
from outwatch.sinks.url import parse_output

DEFAULT_PATH = Path("/etc/outwatch/outwatch.toml")


@dataclass(slots=True)
class WatchConfig:
    format: str | None = None
    probes: str | None = None
    include_loopback: bool | None = None
    metrics_interval: float | None = None
    min_severity: str | None = None
    outputs: list[str] | None = None
    spool_dir: Path | None = None
    spool_max_mb: int | None = None


@dataclass(slots=True)
class RulesConfig:
    files: list[Path] = field(default_factory=list)
    thresholds: dict[str, int | str] = field(default_factory=dict)


@dataclass(slots=True)
class Config:
    path: Path
    watch: WatchConfig = field(default_factory=WatchConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    respond: dict[str, Any] | None = None
    """The raw [respond] table (None when absent)."""
    respond_policy: object | None = None
    """outwatch.respond.policy.parse_policy(respond), when [respond] is present."""


# -- where is a key? tomllib gives no positions, so the text is scanned for headers and assignments --

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in re.findall(_KEY, dotted))


class _Lines:
    def __init__(self, text: str) -> None:
        self.text_lines = text.splitlines()
        self._at: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_string = False
        for number, line in enumerate(self.text_lines, 1):
            if in_string:
                in_string = line.count('"""') % 2 == 0 and line.count("'''") % 2 == 0
                continue
            if m := _HEADER.match(line):
                table = _parts(m.group(1))
                self._at.setdefault(table, number)
            elif m := _ASSIGN.match(line):
                self._at.setdefault(table + _parts(m.group(1)), number)
            in_string = line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1

    def of(self, *path: str) -> int:
        """The line of a key or table, else of the nearest enclosing table, else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._at:
                return self._at[path[:end]]
        return 1

    def of_value(self, key_line: int, value: str) -> int:
        """The line of a string inside a (multi-line) array that starts at key_line."""
        for number in range(key_line, len(self.text_lines) + 1):
            if value in self.text_lines[number - 1]:
                return number
        return key_line


class _Checker:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = _Lines(text)
        self.errors: list[str] = []

    def error(self, line: int, what: str) -> None:
        self.errors.append(f"{self.path}:{line}: {what}")

    def unknown(self, table: dict[str, Any], known: tuple[str, ...], *where: str) -> None:
        for key in table:
            if key not in known:
                name = ".".join((*where, key))
                self.error(self.lines.of(*where, key),
                           f"unknown key {name!r}{did_you_mean(key, known)}; known: {', '.join(known)}")

    def typed(self, table: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, *where: str) -> Any:
        """table[key] if it has the right type (bool is not a number), else None with an error."""
        value = table.get(key)
        if value is None:
            return None
        is_bool = isinstance(value, bool)
        if isinstance(value, kind) and (not is_bool or kind is bool):
            return value
        self.error(self.lines.of(*where, key), f"{'.'.join((*where, key))} must be {what}, not {type_name(value)}")
        return None

    def choice(self, table: dict[str, Any], key: str, choices: tuple[str, ...], *where: str) -> str | None:
        value = self.typed(table, key, str, "a string", *where)
        if value is not None and value not in choices:
            self.error(self.lines.of(*where, key),
                       f"{'.'.join((*where, key))} must be one of {', '.join(choices)}, not {value!r}")
            return None
        return value

    def strings(self, table: dict[str, Any], key: str, *where: str) -> list[str] | None:
        value = self.typed(table, key, list, "an array of strings", *where)
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            self.error(self.lines.of(*where, key), f"{'.'.join((*where, key))} must be an array of strings")
            return None
        return value


_WATCH_KEYS = tuple(f.name for f in dataclasses.fields(WatchConfig))
_RULES_KEYS = ("files", "thresholds")
_THRESHOLD_KEYS = tuple(f.name for f in dataclasses.fields(Thresholds))
_SECTIONS = ("watch", "rules", "respond")


def _watch(c: _Checker, table: dict[str, Any]) -> WatchConfig:
    c.unknown(table, _WATCH_KEYS, "watch")
    w = WatchConfig(
        format=c.choice(table, "format", ("pretty", "ndjson"), "watch"),
        probes=c.choice(table, "probes", ("auto", "cgroup", "kprobe"), "watch"),
        include_loopback=c.typed(table, "include_loopback", bool, "true or false", "watch"),
        min_severity=c.choice(table, "min_severity", SEVERITIES, "watch"),
    )
    interval = c.typed(table, "metrics_interval", (int, float), "a number of seconds", "watch")
    if interval is not None and interval < 0.5:
        c.error(c.lines.of("watch", "metrics_interval"), "watch.metrics_interval must be at least 0.5 seconds")
    elif interval is not None:
        w.metrics_interval = float(interval)
    outputs = c.strings(table, "outputs", "watch")
    if outputs is not None:
        key_line = c.lines.of("watch", "outputs")
        for url in outputs:
            try:
                parse_output(url)
            except OutwatchError as exc:
                c.error(c.lines.of_value(key_line, url) if url else key_line, f"watch.outputs: {exc.message}")
        w.outputs = outputs
    spool_dir = c.typed(table, "spool_dir", str, "a path", "watch")
    if spool_dir is not None and not spool_dir.startswith("/"):
        c.error(c.lines.of("watch", "spool_dir"), f"watch.spool_dir must be an absolute path, not {spool_dir!r}")
    elif spool_dir is not None:
        w.spool_dir = Path(spool_dir)
    spool_max = c.typed(table, "spool_max_mb", int, "an integer (MiB)", "watch")
    if spool_max is not None and spool_max < 1:
        c.error(c.lines.of("watch", "spool_max_mb"), "watch.spool_max_mb must be at least 1")
    elif spool_max is not None:
        w.spool_max_mb = spool_max
    return w


def _rules(c: _Checker, table: dict[str, Any]) -> RulesConfig:
    c.unknown(table, _RULES_KEYS, "rules")
    rules = RulesConfig()
    key_line = c.lines.of("rules", "files")
    for name in c.strings(table, "files", "rules") or []:
        path = (c.path.parent / name).absolute() if not name.startswith("/") else Path(name)
        if not path.is_file():
            c.error(c.lines.of_value(key_line, name), f"rules.files: no such file {str(path)!r}")
        rules.files.append(path)
    thresholds = c.typed(table, "thresholds", dict, "a table ([rules.thresholds])", "rules")
    for key, value in (thresholds or {}).items():
        line = c.lines.of("rules", "thresholds", key)
        if key not in _THRESHOLD_KEYS:
            c.error(line, f"unknown threshold {key!r}{did_you_mean(key, _THRESHOLD_KEYS)}; "
                          f"known: {', '.join(_THRESHOLD_KEYS)}")
        elif key == "alert" and value not in SEVERITIES:
            c.error(line, f"rules.thresholds.alert must be one of {', '.join(SEVERITIES)}, not {value!r}")
        elif key != "alert" and type(value) is not int:
            c.error(line, f"rules.thresholds.{key} must be an integer score, not {type_name(value)}")
        else:
            rules.thresholds[key] = value
    return rules


def _respond_policy(c: _Checker, table: dict[str, Any]) -> object | None:
    """Validate [respond] with the containment module's own parser (when it is installed)."""
    try:
        policy = importlib.import_module("outwatch.respond.policy")
    except ImportError:
        return None
    try:
        return policy.parse_policy(table)
    except ValueError as exc:
        message = str(exc)
        m = re.match(rf"({_DOTTED})", message)  # the parser names the key first: respond.block.ttl: ...
        where = _parts(m.group(1)) if m and m.group(1).startswith("respond") else ("respond",)
        c.error(c.lines.of(*where), message if message.startswith("respond") else f"[respond]: {message}")
        return None


def _check_owner(path: Path, st: os.stat_result) -> None:
    if os.geteuid() != 0:
        return
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OutwatchError(
            f"{path}: may be changed by a user other than root (owner uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}); outwatch runs as root and acts on this file",
            hint=f"chown root: {path} && chmod go-w {path}",
            code=ExitCode.BAD_CONFIG,
        )


def load_config(path: Path | None = None) -> Config | None:
    """The configuration at path (default /etc/outwatch/outwatch.toml).

    None when no path was given and the default file does not exist; a path given but missing, a
    syntax error, an unknown key or a wrong type is OutwatchError(BAD_CONFIG) listing every error
    as file:line: what.
    """
    explicit = path is not None
    path = path if path is not None else DEFAULT_PATH
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        if not explicit:
            return None
        raise OutwatchError(f"no configuration file at {path}", code=ExitCode.BAD_CONFIG) from None
    except OSError as exc:
        raise OutwatchError(f"cannot read {path}: {exc.strerror}", code=ExitCode.BAD_CONFIG) from None
    _check_owner(path, st)
    try:
        text = data.decode()
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise OutwatchError(f"{path}: not UTF-8 text ({exc.reason})", code=ExitCode.BAD_CONFIG) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = m.group(1) if m else "1"
        what = str(exc)[: m.start()].strip() if m else str(exc)
        raise OutwatchError(f"{path}:{line}: TOML syntax: {what}", code=ExitCode.BAD_CONFIG) from None
    c = _Checker(path, text)
    config = Config(path=path)
    for name, table in doc.items():
        if name not in _SECTIONS:
            c.error(c.lines.of(name), f"unknown section [{name}]{did_you_mean(name, _SECTIONS)}; "
                                      f"known: {', '.join(_SECTIONS)}")
        elif not isinstance(table, dict):
            c.error(c.lines.of(name), f"{name} must be a table: write [{name}]")
        elif name == "watch":
            config.watch = _watch(c, table)
        elif name == "rules":
            config.rules = _rules(c, table)
        else:
            config.respond = table
            config.respond_policy = _respond_policy(c, table)
    if c.errors:
        count = f"{len(c.errors)} error{'s' if len(c.errors) > 1 else ''}"
        raise OutwatchError(f"{path}: {count}:\n  " + "\n  ".join(c.errors),
                            hint="fix the lines above; `outwatch config check` re-checks the file",
                            code=ExitCode.BAD_CONFIG)
    return config
