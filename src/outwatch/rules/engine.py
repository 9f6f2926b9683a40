"""Scoring: run the compiled rules on an ECS event and write the score, severity and reasons into it.

The score is the plain sum of the points of every rule that matched (allowlist rules add negative
points), so `outwatch.reasons` always adds up to `outwatch.score`. The severity comes from the
thresholds; a matched rule with a `severity` floor raises it to at least that level, unless the
total is zero or below (an allowlist that cancels the points also cancels the floors).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from outwatch.rules.conditions import Explain
from outwatch.rules.fields import FIELDS, MISSING, Ctx

SEVERITIES = ("info", "low", "medium", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_WHY_LEN = 200
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.@]+)\}")
MATCHED = "matched"
"""The `why` placeholder for whatever values the conditions matched (useful with `any` groups)."""


def severity_at_least(event_or_severity: dict | str, level: str) -> bool:
    """True when the event's outwatch.severity (or the given severity) is at or above `level`.

    An event that was not scored counts as "info". Raises ValueError for an unknown level.
    """
    if level not in _RANK:
        raise ValueError(f"unknown severity {level!r}: use one of {', '.join(SEVERITIES)}")
    if isinstance(event_or_severity, dict):
        ow = event_or_severity.get("outwatch")
        severity = ow.get("severity", "info") if isinstance(ow, dict) else "info"
    else:
        severity = event_or_severity
    return _RANK.get(severity, 0) >= _RANK[level]


@dataclass(slots=True, frozen=True)
class Thresholds:
    """Minimum score of each severity; `alert` is the lowest severity that makes event.kind "alert"."""

    low: int = 10
    medium: int = 40
    high: int = 70
    critical: int = 100
    alert: str = "medium"

    def severity(self, score: int) -> str:
        if score >= self.critical:
            return "critical"
        if score >= self.high:
            return "high"
        if score >= self.medium:
            return "medium"
        if score >= self.low:
            return "low"
        return "info"


def why_template(why: str) -> tuple[tuple[str, str | None], ...]:
    """A `why` sentence split once into (text before, placeholder or None) pairs."""
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(why):
        parts.append((why[pos : m.start()], m.group(1)))
        pos = m.end()
    parts.append((why[pos:], None))
    return tuple(parts)


@dataclass(slots=True, frozen=True)
class Rule:
    id: str
    name: str
    description: str
    score: int
    severity: str | None
    technique: tuple[str, ...]
    tactic: tuple[str, ...]
    reference: str
    why: tuple[tuple[str, str | None], ...]
    """The `why` sentence as made by why_template; empty: say the name and the matched values."""
    source: Path
    line: int
    explain: Explain

    def reason(self, ctx: Ctx) -> str:
        """The sentence of `outwatch.reasons`: the `why` template, or the name and the matched values."""
        matched = dict(self.explain(ctx))
        if not self.why:
            shown = "; ".join(f"{k}={_short(v)}" for k, v in matched.items())
            return f"{self.name} ({shown})" if shown else self.name
        out: list[str] = []
        for text, key in self.why:
            out.append(text)
            if key is None:
                continue
            if key == MATCHED:
                out.append(_short("; ".join(str(v) for v in matched.values())))
            elif key in matched:
                out.append(_short(matched[key]))
            else:
                value = FIELDS[key].show(ctx.event)
                if isinstance(value, list):
                    value = " ".join(map(str, value))
                out.append("?" if value is MISSING else _short(value))
        return "".join(out)


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= _WHY_LEN else text[: _WHY_LEN - 1] + "…"


class RuleSet:
    """The compiled rules in effect, and the thresholds. Build it with `load_rules`."""

    def __init__(
        self,
        rules: list[Rule],
        match: Callable[[Ctx], list[Rule]],
        thresholds: Thresholds,
        disabled: dict[str, Path],
        sources: list[Path],
    ) -> None:
        self.rules = rules
        self._match = match
        """The generated function returning the rules that hold for an event (see conditions.py)."""
        self.thresholds = thresholds
        self.disabled = disabled
        """Rule ids switched off, and the file that did it."""
        self.sources = sources
        """Every file loaded, in order."""

    def score(self, event: dict) -> None:
        """Score one ECS event in place (see the module docstring); metric events and events without a
        destination are left alone. Stale results of an earlier scoring (rule, threat) are replaced."""
        meta = event.get("event")
        if isinstance(meta, dict) and meta.get("kind") == "metric":
            return
        if not isinstance(event.get("destination"), dict):
            return
        ctx = Ctx(event)
        fired = self._match(ctx)
        total = 0
        for rule in fired:
            total += rule.score
        thresholds = self.thresholds
        severity = thresholds.severity(total)
        if total > 0:
            for rule in fired:
                if rule.severity is not None and rule.score > 0 and _RANK[rule.severity] > _RANK[severity]:
                    severity = rule.severity
        fired.sort(key=lambda r: -r.score)
        ow = event.get("outwatch")
        if not isinstance(ow, dict):
            ow = event["outwatch"] = {}
        ow["score"] = total
        ow["severity"] = severity
        ow["reasons"] = [{"rule": r.id, "score": r.score, "why": r.reason(ctx)} for r in fired]
        event.pop("rule", None)
        event.pop("threat", None)
        positive = [r for r in fired if r.score > 0]
        if positive:
            top = positive[0]
            rule_field = {"id": top.id, "name": top.name}
            if top.description:
                rule_field["description"] = top.description
            if top.reference:
                rule_field["reference"] = top.reference
            event["rule"] = rule_field
            threat = _threat(positive)
            if threat:
                event["threat"] = threat
        if not isinstance(meta, dict):
            meta = event["event"] = {}
        meta["kind"] = "alert" if _RANK[severity] >= _RANK[thresholds.alert] else "event"


def _threat(rules: list[Rule]) -> dict:
    """ECS threat.*: techniques, sub-techniques (T1059.004 -> technique T1059 + subtechnique) and tactics."""
    techniques: dict[str, None] = {}
    subs: dict[str, None] = {}
    tactics: dict[str, None] = {}
    for rule in rules:
        for t in rule.technique:
            techniques[t.partition(".")[0]] = None
            if "." in t:
                subs[t] = None
        for t in rule.tactic:
            tactics[t] = None
    if not techniques and not tactics:
        return {}
    threat: dict = {"framework": "MITRE ATT&CK"}
    if techniques:
        threat["technique"] = {"id": list(techniques)}
        if subs:
            threat["technique"]["subtechnique"] = {"id": list(subs)}
    if tactics:
        threat["tactic"] = {"id": list(tactics)}
    return threat
