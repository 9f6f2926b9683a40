"""`outwatch rules list | check | test`: see, validate and try the scoring rules (no root needed)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import click
import orjson

from outwatch.cli.common import reports_errors
from outwatch.encode import encode
from outwatch.errors import ExitCode, OutwatchError
from outwatch.pretty import safe
from outwatch.rules import SEVERITIES, SYSTEM_DIR, RulesError, RuleSet, load_rules, severity_at_least
from outwatch.rules.loader import default_dir, default_files

_RULES_HELP = "Extra rules file (repeatable), loaded after the default pack and the rules directory."
_DIR_HELP = "Directory of site rule files (*.toml, loaded in name order)."


def _load(rule_files: tuple[Path, ...], rules_dir: Path) -> RuleSet:
    try:
        return load_rules(extra_files=rule_files, system_dir=rules_dir)
    except RulesError as exc:
        raise OutwatchError(f"invalid rules ({len(exc.errors)} errors):\n" + "\n".join(exc.errors),
                            exc.hint, exc.code) from None


def _source(path: Path) -> str:
    """Default-pack files as default/NAME, the others as given."""
    return f"default/{path.name}" if path.parent == default_dir() else str(path)


@click.group("rules")
def rules() -> None:
    """See, check and try the scoring rules (none of these needs root)."""


@rules.command("list")
@click.option("--rules", "rule_files", multiple=True, type=click.Path(path_type=Path), help=_RULES_HELP)
@click.option("--rules-dir", type=click.Path(path_type=Path), default=SYSTEM_DIR, show_default=True,
              help=_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per rule per line (NDJSON).")
@reports_errors
def list_rules(rule_files: tuple[Path, ...], rules_dir: Path, as_json: bool) -> None:
    """The rules in effect: id, score, description and the file each comes from."""
    ruleset = _load(rule_files, rules_dir)
    if as_json:
        out = sys.stdout.buffer
        for r in ruleset.rules:
            out.write(orjson.dumps({
                "id": r.id, "name": r.name, "score": r.score, "severity": r.severity, "description": r.description,
                "technique": list(r.technique), "tactic": list(r.tactic), "reference": r.reference,
                "source": str(r.source), "line": r.line,
            }) + b"\n")
        for rule_id, path in ruleset.disabled.items():
            out.write(orjson.dumps({"id": rule_id, "disabled": True, "source": str(path)}) + b"\n")
        return
    width = max((len(r.id) for r in ruleset.rules), default=2)
    for r in ruleset.rules:
        floor = f" (at least {r.severity})" if r.severity else ""
        click.echo(f"{r.id:<{width}}  {r.score:>4}  {safe(r.description)}{floor}  [{_source(r.source)}:{r.line}]")
    for rule_id, path in ruleset.disabled.items():
        click.echo(f"{rule_id:<{width}}     -  disabled  [{_source(path)}]")
    t = ruleset.thresholds
    click.echo(f"{len(ruleset.rules)} rules; severity from score: low {t.low}, medium {t.medium}, high {t.high}, "
               f"critical {t.critical}; alert at {t.alert} and above")


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rules-dir", type=click.Path(path_type=Path), default=SYSTEM_DIR, show_default=True,
              help=_DIR_HELP)
def check(files: tuple[Path, ...], rules_dir: Path) -> None:
    """Check rule FILES as `watch` would load them (default pack, rules directory, then FILES):
    prints `ok: N rules`, or every error as file:line: what is wrong (exit code 7)."""
    in_dir = _dir_files(rules_dir)
    extra = tuple(f for f in files if f.resolve() not in in_dir)
    try:
        ruleset = load_rules(extra_files=extra, system_dir=rules_dir)
    except RulesError as exc:
        for error in exc.errors:
            click.echo(error, err=True)
        click.echo(f"outwatch: {len(exc.errors)} error(s); `watch` would refuse to start with these rules", err=True)
        sys.exit(int(ExitCode.BAD_CONFIG))
    site = len(ruleset.sources) - len(default_files()) - len(extra)
    parts = ["default pack", *([f"{site} file(s) of {rules_dir}"] if site else []), *map(str, extra)]
    click.echo(f"ok: {len(ruleset.rules)} rules ({', '.join(parts)})")


def _dir_files(rules_dir: Path) -> set[Path]:
    try:
        return {p.resolve() for p in rules_dir.iterdir() if p.suffix == ".toml"}
    except OSError:
        return set()


@rules.command("test")
@click.argument("events_file", type=click.Path(path_type=Path, allow_dash=True))
@click.option("--rules", "rule_files", multiple=True, type=click.Path(path_type=Path), help=_RULES_HELP)
@click.option("--rules-dir", type=click.Path(path_type=Path), default=SYSTEM_DIR, show_default=True,
              help=_DIR_HELP)
@click.option("--min-severity", type=click.Choice(SEVERITIES),
              help="Show events at or above this severity [default: the alert threshold].")
@click.option("--json", "as_json", is_flag=True, help="Print the re-scored events (NDJSON) instead.")
@reports_errors
def replay(events_file: Path, rule_files: tuple[Path, ...], rules_dir: Path, min_severity: str | None,
                as_json: bool) -> None:
    """Re-score captured events (NDJSON, as `watch` writes them) with the rules and show what would
    fire: for tuning rules offline. Lines that are not events are reported and skipped."""
    ruleset = _load(rule_files, rules_dir)
    level = min_severity or ruleset.thresholds.alert
    counts: Counter[str] = Counter()
    name = "-" if str(events_file) == "-" else str(events_file)
    for number, event in _events(events_file, name, counts):
        ruleset.score(event)
        if "score" not in event.get("outwatch", {}):
            counts["skipped"] += 1
            continue
        counts["scored"] += 1
        if not severity_at_least(event, level):
            continue
        counts[event["outwatch"]["severity"]] += 1
        if as_json:
            sys.stdout.buffer.write(encode(event))
        else:
            click.echo(_describe(name, number, event))
    shown = sum(counts[s] for s in SEVERITIES)
    by_severity = ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s])
    summary = f"{counts['scored']} events scored, {shown} at {level} or above" + (f" ({by_severity})" if shown else "")
    if counts["skipped"]:
        summary += f", {counts['skipped']} skipped (metrics, no destination)"
    if counts["bad"]:
        summary += f", {counts['bad']} bad lines"
    click.echo(summary, err=as_json)


def _events(path: Path, name: str, counts: Counter[str]) -> Iterator[tuple[int, dict]]:
    try:
        stream = sys.stdin.buffer if name == "-" else path.open("rb")
    except OSError as exc:
        raise OutwatchError(f"cannot read {path}: {exc.strerror}", "give an NDJSON file of events",
                            ExitCode.NOT_FOUND if isinstance(exc, FileNotFoundError) else ExitCode.FAILURE) from None
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                counts["bad"] += 1
                click.echo(f"{name}:{number}: not JSON ({exc}), skipped", err=True)
                continue
            if not isinstance(event, dict):
                counts["bad"] += 1
                click.echo(f"{name}:{number}: not a JSON object, skipped", err=True)
                continue
            yield number, event


def _describe(name: str, number: int, event: dict) -> str:
    ow = event["outwatch"]
    proc = event.get("process") if isinstance(event.get("process"), dict) else {}
    dst = event["destination"]
    transport = (event.get("network") or {}).get("transport", "?") if isinstance(event.get("network"), dict) else "?"
    ip = str(dst.get("ip", "?"))
    where = f"[{ip}]:{dst.get('port', '?')}" if ":" in ip else f"{ip}:{dst.get('port', '?')}"
    who = f"{proc.get('name', '?')}[{proc.get('pid', '?')}] {proc.get('executable', '?')}"
    top = (event.get("rule") or {}).get("id", "-")
    head = f"{name}:{number}: {ow['severity']} {ow['score']} {top}"
    lines = [f"{head}  {safe(who, 120)} -> {safe(where)}/{safe(transport)}"]
    lines += [f"    {r['score']:+d} {r['rule']}: {safe(r['why'], 200)}" for r in ow["reasons"]]
    return "\n".join(lines)
