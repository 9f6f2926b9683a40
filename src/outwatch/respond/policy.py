"""The [respond] table of /etc/outwatch/outwatch.toml: what `watch --respond` does on its own.

    [respond]
    dry_run = false                        # log what would be done, do nothing
    protected_processes = ["myapp", "/opt/app/bin/app"]   # added to the built-in list
    protected_units = ["myapp.service"]                   # added to the built-in list

    [respond.block]                        # block the alert's destination in the kernel
    min_severity = "high"                  # info | low | medium | high | critical | off
    per_minute = 10                        # at most this many automatic blocks a minute
    ttl = "1h"                             # lifted after this long ("" = until watch exits)

    [respond.kill]                         # kill the alert's process (pidfd, identity checked)
    min_severity = "critical"
    per_minute = 5
    grace = "5s"                           # SIGTERM, then SIGKILL after this long

    [respond.stop_unit]                    # stop the systemd unit behind the process
    min_severity = "off"
    per_minute = 2
    disable = false                        # also `systemctl disable` it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from outwatch.rules.engine import SEVERITIES

from .target import parse_duration
from .unit import validate_unit

OFF = "off"


@dataclass(frozen=True, slots=True)
class ActionPolicy:
    min_severity: str | None  # None: never done automatically
    per_minute: int

    def applies(self, severity: object) -> bool:
        if self.min_severity is None or severity not in SEVERITIES:
            return False
        return SEVERITIES.index(str(severity)) >= SEVERITIES.index(self.min_severity)


@dataclass(frozen=True, slots=True)
class ResponsePolicy:
    block: ActionPolicy = ActionPolicy("high", 10)
    kill: ActionPolicy = ActionPolicy("critical", 5)
    stop_unit: ActionPolicy = ActionPolicy(None, 2)
    dry_run: bool = False
    block_ttl: float | None = 3600.0
    kill_grace: float = 5.0
    stop_disable: bool = False
    protected_processes: frozenset[str] = frozenset()
    protected_units: frozenset[str] = frozenset()


_DEFAULT = ResponsePolicy()
_TOP_KEYS = {"dry_run", "protected_processes", "protected_units", "block", "kill", "stop_unit"}
_ACTION_KEYS = {"block": {"ttl"}, "kill": {"grace"}, "stop_unit": {"disable"}}


def parse_policy(table: dict[str, Any]) -> ResponsePolicy:
    """The policy from the [respond] table; ValueError naming the key on bad input."""
    _known(table, _TOP_KEYS, "respond")
    actions = {name: _action(table, name) for name in _ACTION_KEYS}
    block_t = table.get("block", {})
    kill_t = table.get("kill", {})
    stop_t = table.get("stop_unit", {})
    ttl: float | None = _DEFAULT.block_ttl
    if "ttl" in block_t:
        raw = _typed(block_t["ttl"], str, "respond.block.ttl", 'a duration such as "1h", or ""')
        ttl = None if raw == "" else _duration(raw, "respond.block.ttl", positive=True)
    grace = _DEFAULT.kill_grace
    if "grace" in kill_t:
        grace = _duration(_typed(kill_t["grace"], str, "respond.kill.grace", 'a duration such as "5s"'),
                          "respond.kill.grace", positive=False)
    return ResponsePolicy(
        block=actions["block"],
        kill=actions["kill"],
        stop_unit=actions["stop_unit"],
        dry_run=_typed(table.get("dry_run", False), bool, "respond.dry_run", "true or false"),
        block_ttl=ttl,
        kill_grace=grace,
        stop_disable=_typed(stop_t.get("disable", False), bool, "respond.stop_unit.disable", "true or false"),
        protected_processes=_names(table, "protected_processes"),
        protected_units=frozenset(_unit(n) for n in _names(table, "protected_units")),
    )


def _action(table: dict[str, Any], name: str) -> ActionPolicy:
    default: ActionPolicy = getattr(_DEFAULT, name)
    sub = table.get(name, {})
    key = f"respond.{name}"
    if not isinstance(sub, dict):
        raise ValueError(f"{key} must be a table ([{key}])")
    _known(sub, {"min_severity", "per_minute"} | _ACTION_KEYS[name], key)
    sev = default.min_severity
    if "min_severity" in sub:
        raw = _typed(sub["min_severity"], str, f"{key}.min_severity", "a severity").lower()
        if raw != OFF and raw not in SEVERITIES:
            raise ValueError(f"{key}.min_severity: {raw!r} is not one of {', '.join((*SEVERITIES, OFF))}")
        sev = None if raw == OFF else raw
    per_minute = default.per_minute
    if "per_minute" in sub:
        per_minute = sub["per_minute"]
        if not isinstance(per_minute, int) or isinstance(per_minute, bool) or per_minute < 1:
            raise ValueError(f"{key}.per_minute: {per_minute!r} is not a whole number of actions (1 or more)")
    return ActionPolicy(sev, per_minute)


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(keys))})")


def _typed(value: Any, kind: type, key: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{key}: {value!r} is not {what}")
    return value


def _duration(text: str, key: str, *, positive: bool) -> float:
    try:
        secs = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if positive and secs <= 0:
        raise ValueError(f"{key}: {text!r} must be longer than 0")
    return secs


def _names(table: dict[str, Any], name: str) -> frozenset[str]:
    key = f"respond.{name}"
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{key}: must be a list of names, e.g. [\"myapp\"]")
    return frozenset(v.strip() for v in value)


def _unit(name: str) -> str:
    try:
        return validate_unit(name)
    except ValueError as exc:
        raise ValueError(f"respond.protected_units: {exc}") from None
