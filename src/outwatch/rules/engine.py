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
VOLATILE_FIELDS = frozenset({"source.ip", "source.port", "network.packets", "outwatch.process.age_ms"})
"""Fields that change from one connect of a process image to the next, even to the same destination.
Rules that read one are evaluated on every event; the others are remembered (see RuleSet.score)."""
REMEMBERED = 4096  # (image, destination...) results kept, all forgotten when full: each holds its image's
# process objects alive (a few KB), so this bounds that memory to some 10-20 MB
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
        stable: Callable[[Ctx], list[Rule]],
        volatile: Callable[[Ctx], list[Rule]],
        thresholds: Thresholds,
        disabled: dict[str, Path],
        sources: list[Path],
    ) -> None:
        self.rules = rules
        self._stable, self._volatile = stable, volatile
        """Generated functions (conditions.py) returning the rules that hold for an event: of those
        that read no VOLATILE_FIELDS, and of those that do."""
        self._order = {id(rule): i for i, rule in enumerate(rules)}
        self._remembered: dict[tuple, _Known] = {}
        self.thresholds = thresholds
        self.disabled = disabled
        """Rule ids switched off, and the file that did it."""
        self.sources = sources
        """Every file loaded, in order."""

    def score(self, event: dict, image: object = None) -> None:
        """Score one ECS event in place (see the module docstring); metric events and events without a
        destination are left alone. Stale results of an earlier scoring (rule, threat) are replaced.

        `image` (the tracer's per-image process object, which the event's process fields were copied
        from) lets the rules that read no VOLATILE_FIELDS be remembered per image, destination,
        transport, outcome, name and hash: a process connecting again to the same place costs one
        dictionary lookup plus the volatile rules."""
        meta = event.get("event")
        if isinstance(meta, dict) and meta.get("kind") == "metric":
            return
        if not isinstance(event.get("destination"), dict):
            return
        ctx = Ctx(event)
        if image is None:
            fired = [(rule, "") for rule in (*self._stable(ctx), *self._volatile(ctx))]
            _apply(event, self._result(ctx, fired))
            return
        known = self._known(event, image, ctx)
        volatile = self._volatile(ctx)
        if volatile:
            _apply(event, self._result(ctx, [*known.fired, *((rule, "") for rule in volatile)]))
            return
        if known.result is None:
            known.result = self._result(ctx, list(known.fired))
        _apply(event, known.result)

    def _result(self, ctx: Ctx, fired: list[tuple[Rule, str]]) -> _Result:
        """Score, severity, reasons, rule.* and threat.* of the rules that held (each with its
        sentence, or "" to make it now)."""
        total = 0
        for rule, _ in fired:
            total += rule.score
        thresholds = self.thresholds
        severity = thresholds.severity(total)
        if total > 0:
            for rule, _ in fired:
                if rule.severity is not None and rule.score > 0 and _RANK[rule.severity] > _RANK[severity]:
                    severity = rule.severity
        order = self._order
        fired.sort(key=lambda f: (-f[0].score, order[id(f[0])]))
        reasons = [{"rule": r.id, "score": r.score, "why": why or r.reason(ctx)} for r, why in fired]
        positive = [r for r, _ in fired if r.score > 0]
        rule_field = threat = None
        if positive:
            top = positive[0]
            rule_field = {"id": top.id, "name": top.name}
            if top.description:
                rule_field["description"] = top.description
            if top.reference:
                rule_field["reference"] = top.reference
            threat = _threat(positive) or None
        kind = "alert" if _RANK[severity] >= _RANK[thresholds.alert] else "event"
        return _Result(total, severity, reasons, rule_field, threat, kind)

    def _known(self, event: dict, image: object, ctx: Ctx) -> _Known:
        """The rules without volatile fields that hold for this image and destination, worked out on
        the first connect (the event's process and outwatch.process fields are the image's)."""
        process, destination = event.get("process") or {}, event["destination"]
        hashes = process.get("hash")
        meta = event.get("event") or {}
        key = (id(image), process.get("name"), hashes.get("sha256") if isinstance(hashes, dict) else None,
               destination.get("ip"), destination.get("port"), (event.get("network") or {}).get("transport"),
               meta.get("action"), meta.get("outcome"), (event.get("outwatch") or {}).get("probe"))
        known = self._remembered.get(key)
        if known is not None:
            return known
        known = _Known(image, [(rule, rule.reason(ctx)) for rule in self._stable(ctx)])
        if len(self._remembered) >= REMEMBERED:
            self._remembered.clear()
        self._remembered[key] = known
        return known


@dataclass(slots=True, frozen=True)
class _Result:
    """One scoring, as written into the event by _apply."""

    score: int
    severity: str
    reasons: list[dict]
    rule: dict | None
    threat: dict | None
    kind: str


def _apply(event: dict, result: _Result) -> None:
    """Write a scoring into an event (a remembered one is shared: the event gets its own reasons list)."""
    ow = event.get("outwatch")
    if not isinstance(ow, dict):
        ow = event["outwatch"] = {}
    ow["score"], ow["severity"], ow["reasons"] = result.score, result.severity, list(result.reasons)
    event.pop("rule", None)
    event.pop("threat", None)
    if result.rule is not None:
        event["rule"] = result.rule
    if result.threat is not None:
        event["threat"] = result.threat
    meta = event.get("event")
    if not isinstance(meta, dict):
        meta = event["event"] = {}
    meta["kind"] = result.kind


@dataclass(slots=True)
class _Known:
    """What RuleSet.score remembers for one (image, destination...) key."""

    image: object  # held, so that the id(image) in the key cannot be reused by another object meanwhile
    fired: list[tuple[Rule, str]]  # stable rules that held, with their sentence
    result: _Result | None = None  # the whole scoring when no volatile rule holds (the usual case)


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
