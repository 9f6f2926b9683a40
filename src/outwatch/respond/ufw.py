"""ufw blocks (--via ufw): `ufw prepend deny out to NET [port N] [proto P] comment outwatch`.

A ufw block outlives outwatch. `prepend` puts the deny above the admin's own rules, so an earlier
`allow out` cannot shadow it. ufw answers some refusals with exit status 0 ("Skipping inserting
existing rule", "Could not delete non-existent rule"), so every change is checked against `ufw show
added` (which lists the rules whether or not ufw is active) before and after. outwatch's rules are
the deny-out rules commented "outwatch"; outwatch never changes or deletes a rule it did not add.
When a block was made, by whom and why is kept in a small record file next to ufw's own.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel.deny import DenyRule, IPNetwork

from .audit import Record, timestamp
from .target import describe, target_fields, target_from_fields

COMMENT = "outwatch"
DEFAULT_RECORDS = Path("/var/lib/outwatch/blocks.json")
_TIMEOUT_S = 60
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "LANG": "C"}


@dataclass(frozen=True, slots=True)
class UfwRule:
    """One line of `ufw show added`, as far as outwatch cares."""

    action: str
    direction: str | None
    to: IPNetwork | None
    port: int | None
    proto: str | None
    comment: str | None
    simple: bool  # only action, direction, to, port, proto and comment: a rule outwatch could have written
    text: str

    def same_spec(self, target: DenyRule) -> bool:
        return (
            self.simple
            and self.direction == "out"
            and self.to == target.network
            and self.port == target.port
            and self.proto == target.proto
        )

    @property
    def ours(self) -> bool:
        return self.action == "deny" and self.comment == COMMENT and self.simple and self.direction == "out"


def parse_added(text: str) -> list[UfwRule]:
    """Rules from `ufw show added` output; lines that are not rules are skipped."""
    rules = []
    for line in text.splitlines():
        try:
            toks = shlex.split(line)
        except ValueError:
            continue
        if len(toks) < 2 or toks[0] != "ufw":
            continue
        rules.append(_parse_rule(toks[1:], line.strip()))
    return rules


def _parse_rule(toks: list[str], text: str) -> UfwRule:
    action, rest = toks[0], toks[1:]
    direction = None
    values: dict[str, str] = {}
    simple = True
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok in ("in", "out") and direction is None:
            direction = tok
            i += 1
        elif tok in ("to", "port", "proto", "comment") and i + 1 < len(rest):
            values[tok] = rest[i + 1]
            i += 2
        else:  # from, on IFACE, log, app, "22/tcp"...: a rule outwatch does not write
            simple = False
            i += 1
    to: IPNetwork | None = None
    if "to" in values:
        try:
            to = ipaddress.ip_network(values["to"], strict=False)
        except ValueError:
            simple = False
    port = int(values["port"]) if values.get("port", "").isdigit() else None
    if "port" in values and port is None:
        simple = False  # port ranges and lists
    return UfwRule(action, direction, to, port, values.get("proto"), values.get("comment"), simple, text)


def rule_argv(target: DenyRule) -> list[str]:
    """`deny out to NET [port N] [proto P]`: the part of the command that names the rule."""
    net = target.network
    host = net.prefixlen == net.max_prefixlen
    argv = ["deny", "out", "to", str(net.network_address) if host else str(net)]
    if target.port is not None:
        argv += ["port", str(target.port)]
    if target.proto is not None:
        argv += ["proto", target.proto]
    return argv


class Ufw:
    def __init__(self, records: Path = DEFAULT_RECORDS) -> None:
        exe = shutil.which("ufw", path=_ENV["PATH"])
        if exe is None:
            raise OutwatchError(
                "ufw is not installed",
                hint="apt-get install ufw, or block in the kernel with `outwatch watch` running (--via bpf)",
                code=ExitCode.NOT_FOUND,
            )
        self.exe = exe
        self.records = records

    def _run(self, args: list[str]) -> str:
        try:
            proc = subprocess.run(
                [self.exe, *args], capture_output=True, text=True, env=_ENV, timeout=_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OutwatchError(f"could not run ufw: {exc}", code=ExitCode.FAILURE) from None
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise OutwatchError(f"ufw {' '.join(args)} failed: {out or f'exit status {proc.returncode}'}")
        return out

    def active(self) -> bool:
        return self._run(["status"]).splitlines()[0:1] == ["Status: active"]

    def added(self) -> list[UfwRule]:
        return parse_added(self._run(["show", "added"]))

    def blocks(self) -> list[Record]:
        """outwatch's ufw rules, with when/who/why from the record file where known."""
        meta = self._load_records()
        out = []
        for rule in self.added():
            if not rule.ours or rule.to is None:
                continue
            target = DenyRule(rule.to, rule.port, rule.proto)
            out.append({**target_fields(target), "via": "ufw", **meta.get(target, {})})
        return out

    def block(self, target: DenyRule, *, reason: str, user: Record, dry_run: bool = False) -> Record:
        """Add the deny rule (details of the block returned); refuses to touch the admin's rules."""
        argv = ["prepend", *rule_argv(target), "comment", COMMENT]
        existing = [r for r in self.added() if r.same_spec(target)]
        if any(r.ours for r in existing):
            return {"argv": ["ufw", *argv], "already": True}
        if existing:
            raise OutwatchError(
                f"ufw already has a rule for {describe(target)}, not added by outwatch: {existing[0].text}",
                hint="outwatch does not change rules it did not add: delete or edit that rule yourself, "
                "or block in the kernel (--via bpf)",
                code=ExitCode.REFUSED,
            )
        if dry_run:
            return {"argv": ["ufw", *argv]}
        out = self._run(argv)
        if not any(r.ours and r.same_spec(target) for r in self.added()):
            raise OutwatchError(f"ufw did not add the rule for {describe(target)}: {out}")
        since = timestamp()
        self._save_record(target, {"since": since, "reason": reason, "requested_by": user.get("id")})
        return {"argv": ["ufw", *argv], "since": since}

    def unblock(self, target: DenyRule, *, dry_run: bool = False) -> Record:
        rules = [r for r in self.added() if r.same_spec(target)]
        if not any(r.ours for r in rules):
            hint = "see `outwatch blocks` for what outwatch blocked, with the exact port and protocol"
            if rules:
                hint = f"ufw has `{rules[0].text}`, which outwatch did not add: remove it with ufw yourself"
            raise OutwatchError(
                f"{describe(target)} is not blocked by outwatch in ufw", hint=hint, code=ExitCode.NOT_FOUND
            )
        argv = ["delete", *rule_argv(target)]
        if dry_run:
            return {"argv": ["ufw", *argv]}
        out = self._run(argv)
        if any(r.same_spec(target) for r in self.added()):
            raise OutwatchError(f"ufw did not delete the rule for {describe(target)}: {out}")
        meta = self._save_record(target, None)
        return {"argv": ["ufw", *argv], **meta}

    # --- the record file: {"blocks": [{target, port?, proto?, since, reason, requested_by}]} ---------

    def _load_records(self) -> dict[DenyRule, Record]:
        try:
            data = orjson.loads(self.records.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            raise OutwatchError(
                f"cannot read {self.records}: {exc}",
                hint="it only holds when/who/why of outwatch's ufw blocks: move it aside to start afresh",
            ) from None
        out: dict[DenyRule, Record] = {}
        for item in data.get("blocks", []) if isinstance(data, dict) else []:
            try:
                target = target_from_fields(item)
            except (ValueError, TypeError, AttributeError):
                continue
            out[target] = {k: item[k] for k in ("since", "reason", "requested_by") if item.get(k) is not None}
        return out

    def _save_record(self, target: DenyRule, meta: Record | None) -> Record:
        """Set (or with None, drop) the metadata of one block; returns what was there before.
        Entries of rules that are no longer in ufw are dropped as well."""
        records = self._load_records()
        previous = records.pop(target, {})
        if meta is not None:
            records[target] = meta
        live = {DenyRule(r.to, r.port, r.proto) for r in self.added() if r.ours and r.to is not None}
        items: list[dict[str, Any]] = [{**target_fields(t), **m} for t, m in records.items() if t in live]
        self.records.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.records.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"blocks": items}, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.records)
        return previous
