"""Load the rule files (TOML, stdlib tomllib), validate every key, compile the rules once.

Files load in this order: the default pack shipped in outwatch/rules/default/*.toml (sorted), then
/etc/outwatch/rules.d/*.toml (sorted), then each --rules FILE. A file may hold four top-level keys:

    [thresholds]            # minimum score of each severity, and the alert level
    low = 10
    medium = 40
    high = 70
    critical = 100
    alert = "medium"        # event.kind = "alert" at or above this severity

    [lists]                 # named lists, used as "@name" anywhere a value list is expected
    web_servers = ["nginx", "apache2", "httpd"]
    shells = ["@shells", "fish"]   # "@shells" inside its own definition extends the earlier one

    disable = ["OW-PORT-IRC"]      # switch off rules loaded by earlier files

    [[rule]]
    id = "LOCAL-BACKUP-OK"         # required; an id loaded before is overridden (see below)
    name = "Nightly backup to the NAS"
    description = "restic from the backup unit to the NAS"
    score = -30                    # required for a new rule; negative = allowlist
    severity = "high"              # optional floor: at least this severity when it matches
    technique = ["T1048"]          # ATT&CK technique / sub-technique ids (optional)
    tactic = ["TA0010"]            # ATT&CK tactic ids (optional)
    reference = "https://..."      # free text or URL, copied to ECS rule.reference (optional)
    why = "{process.executable} to {destination.ip}:{destination.port}"   # optional sentence
    [rule.when]                    # required for a new rule: every entry must hold
    "process.executable" = "/usr/bin/restic"        # a value: equals
    "destination.port" = [443, 8000]                # an array: in
    "destination.ip" = { cidr = ["192.0.2.0/24"] }  # a table: operators, all must hold
    "outwatch.process.unit" = { not = { in = ["@risky_units"] } }

Conditions (`when` and everything under it) are tables whose keys are field names (see FIELDS,
quote dotted names) or the groups `all = [tables]`, `any = [tables]` and `not = table`. Operators:
equals, in (value lists), prefix, glob (fnmatch, `*` also crosses `/`), regex (re.search),
cidr (networks; IPv4-mapped IPv6 counts as IPv4), range ([low, high] or [[low, high], ...],
inclusive), exists (true/false), not (a table of operators that must fail). A test on an absent
field is false, even under `not` (use exists = false to test absence). A field with several values
(process.args, outwatch.process.ancestors.*) passes an operator when any value passes it.

Override and disable: a [[rule]] whose id was loaded by an earlier file overrides it key by key:
the keys it gives replace the old ones (`when` as a whole), the others are kept, so
`id = "OW-EXE-TMP"` and `score = 10` re-scores a default rule. `disable = [ids]` removes rules.
Every error in every file is collected and reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import importlib.resources
import itertools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from outwatch.errors import ExitCode, OutwatchError
from outwatch.rules.conditions import Compiler, KeyPath, NamedList, Problems, did_you_mean, type_name
from outwatch.rules.engine import MATCHED, SEVERITIES, VOLATILE_FIELDS, Rule, RuleSet, Thresholds, why_template
from outwatch.rules.fields import FIELDS, parse_ip

SYSTEM_DIR = Path("/etc/outwatch/rules.d")
RESOLV_CONF = Path("/etc/resolv.conf")

_TOP_KEYS = ("rule", "lists", "thresholds", "disable")
_RULE_KEYS = ("id", "name", "description", "score", "severity", "technique", "tactic", "reference", "why", "when")
_THRESHOLD_KEYS = ("low", "medium", "high", "critical", "alert")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")
_TACTIC = re.compile(r"TA\d{4}")
_PLACEHOLDER = re.compile(r"\{([^{}\s]*)\}")
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class RulesError(OutwatchError):
    """Broken rule files: `errors` holds every problem as 'file:line: what is wrong'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(
            "\n".join(errors),
            hint="correct the rule files above; `outwatch rules check FILE...` re-checks them (no root needed)",
            code=ExitCode.BAD_CONFIG,
        )
        self.errors = errors


def default_files() -> list[Path]:
    pack = importlib.resources.files("outwatch.rules").joinpath("default")
    return sorted(Path(str(p)) for p in pack.iterdir() if p.name.endswith(".toml"))


def default_dir() -> Path:
    return Path(str(importlib.resources.files("outwatch.rules").joinpath("default")))


def read_resolvers(resolv_conf: Path) -> list[str]:
    """The nameserver addresses of resolv.conf; glibc's default (the local host) if there are none."""
    found: list[str] = []
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and parse_ip(words[1]) is not None:
            found.append(words[1].partition("%")[0])
    return found or ["127.0.0.1", "::1"]


def load_rules(
    extra_files: Sequence[Path] = (),
    system_dir: Path | None = SYSTEM_DIR,
    resolv_conf: Path = RESOLV_CONF,
    thresholds: Mapping[str, int | str] | None = None,
) -> RuleSet:
    """The default pack, then system_dir/*.toml (sorted, dot files skipped; a missing directory is skipped), then
    extra_files, in that order. Raises RulesError (an OutwatchError, code BAD_CONFIG) listing every
    error as 'file:line: what is wrong'. The built-in list @resolvers holds resolv_conf's nameservers.
    `thresholds` (the [rules.thresholds] of outwatch.toml) override the files' [thresholds], key by key."""
    files = default_files()
    loader = _Loader(resolv_conf)
    if system_dir is not None:
        try:
            files += sorted(p for p in system_dir.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
        except FileNotFoundError:
            pass
        except OSError as exc:
            loader.errors.append(f"{system_dir}: cannot read the directory: {exc.strerror}")
    files += [Path(f) for f in extra_files]
    for path in files:
        loader.load_file(path)
    if thresholds:
        loader.set_thresholds(thresholds, "[rules.thresholds] of the configuration")
    return loader.finish()


class _File:
    """A loaded file's text, to find the line of a key (tomllib gives no positions for values)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.rule_headers = [i for i, line in enumerate(self.lines) if re.match(r"\s*\[\[\s*rule\s*\]\]", line)]

    def at(self, line: int, message: str) -> str:
        return f"{self.path}:{line}: {message}"

    def _search(self, pattern: re.Pattern[str], start: int, end: int) -> int | None:
        for i in range(start, min(end, len(self.lines))):
            if pattern.search(self.lines[i]):
                return i
        return None

    @staticmethod
    def _key_pattern(key: str) -> re.Pattern[str]:
        k = re.escape(key)
        return re.compile(rf"(?:^|[\s{{,.\[])(?:\"{k}\"|'{k}'|{k})\s*(?:=|\.|\])")

    def rule_line(self, index: int, rule_id: object, path: KeyPath = ()) -> int:
        """1-based line of rule number `index` (or of a key path inside it)."""
        if index < len(self.rule_headers):
            start = self.rule_headers[index]
            end = self.rule_headers[index + 1] if index + 1 < len(self.rule_headers) else len(self.lines)
        else:
            found = None
            if isinstance(rule_id, str):
                found = self._search(re.compile(rf"\bid\s*=\s*[\"']{re.escape(rule_id)}[\"']"), 0, len(self.lines))
            start, end = (found or 0), len(self.lines)
        if isinstance(rule_id, str) and not path:
            hit = self._search(re.compile(rf"\bid\s*=\s*[\"']{re.escape(rule_id)}[\"']"), start, end)
            return (hit if hit is not None else start) + 1
        current = start
        keys = list(path)
        for pos, key in enumerate(keys):
            if isinstance(key, int):
                if pos > 0 and keys[pos - 1] in ("any", "all"):
                    current = self._nth_item(current, end, key)
                continue
            hit = self._search(self._key_pattern(key), current, end)
            if hit is not None:
                current = hit
        return current + 1

    def _nth_item(self, start: int, end: int, n: int) -> int:
        """Line of the n-th table of an any/all array: `[[...]]` headers or lines starting an inline table."""
        seen = -1
        for i in range(start, min(end, len(self.lines))):
            text = self.lines[i].strip()
            if (i == start and re.search(r"=\s*\[\s*\{", text)) or (i > start and text.startswith(("{", "[["))):
                seen += 1
                if seen == n:
                    return i
        return start

    def top_line(self, key: str, sub: str | None = None) -> int:
        """1-based line of a top-level key, or of `sub` inside the [key] table."""
        header = self._search(re.compile(rf"^\s*\[{{1,2}}\s*{re.escape(key)}\s*\]"), 0, len(self.lines))
        if header is None:
            header = self._search(re.compile(rf"^\s*{re.escape(key)}\s*[=.]"), 0, len(self.lines))
        if header is None:
            return 1
        if sub is None:
            return header + 1
        hit = self._search(self._key_pattern(sub), header, len(self.lines))
        return (hit if hit is not None else header) + 1

    def quoted_line(self, after: int, text: str) -> int:
        hit = self._search(re.compile(rf"[\"']{re.escape(text)}[\"']"), after - 1, len(self.lines))
        return hit + 1 if hit is not None else after


@dataclass(slots=True)
class _Origin:
    file: _File
    index: int
    rule_id: str

    def where(self, path: KeyPath = ()) -> str:
        return f"{self.file.path}:{self.file.rule_line(self.index, self.rule_id, path)}"


@dataclass(slots=True)
class _RawRule:
    keys: dict[str, tuple[object, _Origin]] = field(default_factory=dict)
    origin: _Origin | None = None


def _reads_volatile(expr: str, rule: Rule) -> bool:
    """Whether a rule reads, in its test or its `why`, a field that changes between two connects of
    one process image (it is then evaluated on every event, never remembered)."""
    return any(f"ctx[{name!r}]" in expr for name in VOLATILE_FIELDS) or any(
        key in VOLATILE_FIELDS for _, key in rule.why)


def _format_path(path: KeyPath) -> str:
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        else:
            part = f'"{key}"' if "." in key else key
            out += f".{part}" if out else part
    return out


class _Loader:
    def __init__(self, resolv_conf: Path) -> None:
        self.errors: list[str] = []
        self.rules: dict[str, _RawRule] = {}
        self.disabled: dict[str, Path] = {}
        self.lists: dict[str, NamedList] = {
            "resolvers": NamedList("resolvers", tuple(read_resolvers(resolv_conf)), str(resolv_conf)),
        }
        self.thresholds: dict[str, object] = {}
        self.thresholds_at = ""
        """file:line of the last threshold set, where an inconsistent set of thresholds is reported."""
        self.sources: list[Path] = []
        self.broken: list[tuple[str, dict, _Origin]] = []
        self.order: dict[str, int] = {}
        """Every file loaded, in load order: errors are reported sorted by file, then line."""

    # -- one file ------------------------------------------------------------------------------

    def load_file(self, path: Path) -> None:
        self.order.setdefault(str(path), len(self.order))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.errors.append(f"{path}: cannot read: {exc.strerror or exc}")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            self.errors.append(f"{path}:{line}: not UTF-8 text")
            return
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            m = _TOML_AT.search(message)
            if m:
                message = f"TOML syntax: {message[: m.start()]} (column {m.group(2)})"
                self.errors.append(f"{path}:{m.group(1)}: {message}")
            else:
                last = max(1, len(text.splitlines()))
                self.errors.append(f"{path}:{last}: TOML syntax: {message.replace(' (at end of document)', '')}"
                                   " at the end of the file")
            return
        self.sources.append(path)
        f = _File(path, text)
        for key in data:
            if key not in _TOP_KEYS:
                self.errors.append(f.at(f.top_line(key), f"unknown top-level key {key!r}{did_you_mean(key, _TOP_KEYS)}"
                                                         f"; a file holds {', '.join(_TOP_KEYS)}"))
        if "lists" in data:
            self._lists(f, data["lists"])
        if "thresholds" in data:
            self._thresholds(f, data["thresholds"])
        rules = data.get("rule", [])
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            self.errors.append(f.at(f.top_line("rule"), "rule must be an array of tables: write [[rule]]"))
            rules = []
        defined = {r.get("id") for r in rules if isinstance(r.get("id"), str)}
        if "disable" in data:
            self._disable(f, data["disable"], defined)
        seen: set[str] = set()
        for index, table in enumerate(rules):
            self._rule(f, index, table, seen)

    def _lists(self, f: _File, table: object) -> None:
        if not isinstance(table, dict):
            self.errors.append(f.at(f.top_line("lists"), "lists must be a table: write [lists]"))
            return
        for name, values in table.items():
            line = f.top_line("lists", name)
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                self.errors.append(f.at(line, f"list name {name!r}: use letters, digits, _ and -"))
                continue
            if not isinstance(values, list):
                self.errors.append(f.at(line, f"list {name} must be an array, not {type_name(values)}"))
                continue
            expanded: list[object] = []
            ok = True
            for v in values:
                if isinstance(v, str) and v.startswith("@"):
                    ref = self.lists.get(v[1:])
                    if ref is None:
                        self.errors.append(f.at(line, f"list {name}: unknown list {v!r}"
                                                      f"{did_you_mean(v[1:], list(self.lists))}"))
                        ok = False
                        break
                    expanded.extend(ref.values)
                elif isinstance(v, str | int | float | list) and not isinstance(v, bool):
                    expanded.append(v)
                else:
                    self.errors.append(f.at(line, f"list {name}: {v!r} is {type_name(v)}; lists hold strings, "
                                                  "numbers or [low, high] ranges"))
                    ok = False
                    break
            if ok:
                self.lists[name] = NamedList(name, tuple(expanded), f"{f.path}:{line}")

    def _thresholds(self, f: _File, table: object) -> None:
        if not isinstance(table, dict):
            self.errors.append(f.at(f.top_line("thresholds"), "thresholds must be a table: write [thresholds]"))
            return
        for key, value in table.items():
            self.set_thresholds({key: value}, f"{f.path}:{f.top_line('thresholds', key)}")

    def set_thresholds(self, table: Mapping[str, object], where: str) -> None:
        for key, value in table.items():
            if key not in _THRESHOLD_KEYS:
                self.errors.append(f"{where}: unknown threshold {key!r}{did_you_mean(key, _THRESHOLD_KEYS)}; "
                                   f"use {', '.join(_THRESHOLD_KEYS)}")
            elif key == "alert" and value not in SEVERITIES:
                self.errors.append(f"{where}: alert must be one of {', '.join(SEVERITIES)}, not {value!r}")
            elif key != "alert" and type(value) is not int:
                self.errors.append(f"{where}: threshold {key} must be an integer score, not {type_name(value)}")
            else:
                self.thresholds[key] = value
                self.thresholds_at = where

    def _disable(self, f: _File, ids: object, defined: set) -> None:
        line = f.top_line("disable")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            self.errors.append(f.at(line, 'disable must be an array of rule ids, e.g. disable = ["OW-PORT-IRC"]'))
            return
        for rule_id in ids:
            at = f.quoted_line(line, rule_id)
            if rule_id in defined:
                self.errors.append(f.at(at, f"rule {rule_id} is both defined and disabled in this file"))
            elif rule_id in self.rules:
                del self.rules[rule_id]
                self.disabled[rule_id] = f.path
            elif rule_id not in self.disabled:
                self.errors.append(f.at(at, f"disable: no rule {rule_id!r} was loaded before this file"
                                            f"{did_you_mean(rule_id, list(self.rules))}"))

    def _rule(self, f: _File, index: int, table: dict, seen: set[str]) -> None:
        rule_id = table.get("id")
        if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
            problem = "a rule needs an id" if rule_id is None else f"bad rule id {rule_id!r}"
            self.errors.append(f.at(f.rule_line(index, None), f"{problem}: letters, digits, _ . : - "
                                                              "(e.g. id = \"LOCAL-NAS-BACKUP\")"))
            return
        origin = _Origin(f, index, rule_id)
        if rule_id in seen:
            self.errors.append(f"{origin.where()}: duplicate rule id {rule_id} in this file")
            self._keep_broken(rule_id, table, origin)
            return
        seen.add(rule_id)
        ok = True
        for key, value in table.items():
            if key not in _RULE_KEYS:
                self.errors.append(f"{origin.where((key,))}: rule {rule_id}: unknown key {key!r}"
                                   f"{did_you_mean(key, _RULE_KEYS)}")
                ok = False
                continue
            problem = self._check_key(key, value)
            if problem:
                self.errors.append(f"{origin.where((key,))}: rule {rule_id}: {problem}")
                ok = False
        existing = self.rules.get(rule_id)
        if existing is None:
            missing = [k for k in ("score", "when") if k not in table]
            if missing:
                self.errors.append(f"{origin.where()}: rule {rule_id}: a new rule needs {' and '.join(missing)}")
                ok = False
        if not ok:
            self._keep_broken(rule_id, table, origin)
            return
        raw = existing or _RawRule()
        for key, value in table.items():
            if key in ("technique", "tactic") and isinstance(value, str):
                value = [value]
            raw.keys[key] = (value, origin)
        raw.origin = origin
        self.rules[rule_id] = raw
        self.disabled.pop(rule_id, None)

    def _keep_broken(self, rule_id: str, table: dict, origin: _Origin) -> None:
        """A rule refused for another reason still has its conditions checked, so that one run reports
        every error."""
        when = table.get("when")
        if isinstance(when, dict):
            self.broken.append((rule_id, when, origin))

    @staticmethod
    def _check_key(key: str, value: object) -> str:
        if key in ("name", "description", "reference", "id"):
            return "" if isinstance(value, str) else f"{key} must be a string, not {type_name(value)}"
        if key == "score":
            return "" if type(value) is int else f"score must be an integer (may be negative), not {type_name(value)}"
        if key == "severity":
            return "" if value in SEVERITIES else f"severity must be one of {', '.join(SEVERITIES)}, not {value!r}"
        if key in ("technique", "tactic"):
            items = [value] if isinstance(value, str) else value
            pattern, example = (_TECHNIQUE, "T1059.004") if key == "technique" else (_TACTIC, "TA0011")
            if not isinstance(items, list) or not all(isinstance(i, str) and pattern.fullmatch(i) for i in items):
                return f"{key} must be ATT&CK ids like {example!r}, got {value!r}"
            return ""
        if key == "why":
            if not isinstance(value, str):
                return f"why must be a string, not {type_name(value)}"
            for name in _PLACEHOLDER.findall(value):
                if name not in FIELDS and name != MATCHED:
                    return f"why: unknown field {{{name}}}{did_you_mean(name, [*FIELDS, MATCHED])}"
            return ""
        if key == "when" and not isinstance(value, dict):
            return f"when must be a table of conditions, not {type_name(value)}"
        return ""

    # -- all files loaded ----------------------------------------------------------------------

    def finish(self) -> RuleSet:
        problems = Problems()
        compiler = Compiler(self.lists, problems)
        rules: list[Rule] = []
        exprs: list[str] = []
        for rule_id, when, origin in self.broken:
            problems.items.clear()
            compiler.condition(when, ("when",))
            for where, message in problems.items:
                self.errors.append(f"{origin.where(where)}: rule {rule_id}: {_format_path(where)}: {message}")
        for rule_id, raw in self.rules.items():
            when, when_origin = raw.keys["when"]
            problems.items.clear()
            compiled = compiler.condition(when, ("when",))
            for where, message in problems.items:
                self.errors.append(f"{when_origin.where(where)}: rule {rule_id}: {_format_path(where)}: {message}")
            if compiled is None:
                continue
            assert raw.origin is not None
            values = {k: v for k, (v, _) in raw.keys.items()}
            rules.append(
                Rule(
                    id=rule_id,
                    name=values.get("name", rule_id),
                    description=values.get("description", ""),
                    score=values["score"],
                    severity=values.get("severity"),
                    technique=tuple(values.get("technique", ())),
                    tactic=tuple(values.get("tactic", ())),
                    reference=values.get("reference", ""),
                    why=why_template(values["why"]) if "why" in values else (),
                    source=raw.origin.file.path,
                    line=raw.origin.file.rule_line(raw.origin.index, rule_id),
                    explain=compiled.explain,
                )
            )
            exprs.append(compiled.expr)
        thresholds = self._final_thresholds()
        if self.errors:
            raise RulesError(sorted(self.errors, key=self._error_position))
        pairs = list(zip(exprs, rules, strict=True))
        stable = compiler.matcher([p for p in pairs if not _reads_volatile(*p)])
        volatile = compiler.matcher([p for p in pairs if _reads_volatile(*p)])
        return RuleSet(rules, stable, volatile, thresholds, dict(self.disabled), self.sources)

    def _error_position(self, error: str) -> tuple[int, int]:
        """(load order of the file, line) of a 'path:line: message' or 'path: message' error."""
        for path, order in sorted(self.order.items(), key=lambda item: -len(item[0])):
            if error.startswith(f"{path}:"):
                line = re.match(r"(\d+):", error[len(path) + 1:])
                return order, int(line.group(1)) if line else 0
        return len(self.order), 0

    def _final_thresholds(self) -> Thresholds:
        defaults = Thresholds()
        values = {k: self.thresholds.get(k, getattr(defaults, k)) for k in _THRESHOLD_KEYS}
        levels = ["low", "medium", "high", "critical"]
        scores = [values[k] for k in levels]
        if any(a >= b for a, b in itertools.pairwise(scores)):
            shown = ", ".join(f"{k}={values[k]}" for k in levels)
            self.errors.append(f"{self.thresholds_at}: thresholds must increase from low to critical, got {shown}")
            return defaults
        return Thresholds(**values)  # type: ignore[arg-type]
