"""Firewall state, read only: `ufw status verbose` and `nft -j list ruleset`, never a command that changes rules.

nftables is the one place every front end ends up on Debian 12 (ufw and iptables-nft write nft
rules), so the verdict on inbound and outbound filtering is computed from its ruleset: a base chain
on the input/output hook with policy drop is default-deny; drop or reject rules reachable from such a
chain (through jumps, as ufw's chains are) are a partial restriction.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

import orjson

_TIMEOUT_S = 15
_VERDICTS = ("drop", "reject")


@dataclass(slots=True)
class HookState:
    default_deny: bool = False
    deny_rules: int = 0  # drop/reject rules reachable from the hook's base chains
    base_chains: int = 0

    @property
    def label(self) -> str:
        if self.default_deny:
            return "default deny"
        if self.deny_rules:
            return f"open, with {self.deny_rules} drop/reject rule(s)"
        return "open (nothing filters it)" if not self.base_chains else "open (chains accept everything)"


@dataclass(slots=True)
class FirewallState:
    ufw: str | None = None  # "active", "inactive", or None when ufw is not installed
    ufw_defaults: str | None = None  # "deny (incoming), allow (outgoing), disabled (routed)"
    nft_readable: bool = False
    input: HookState = field(default_factory=HookState)
    output: HookState = field(default_factory=HookState)
    notes: list[str] = field(default_factory=list)


def read_firewall() -> FirewallState:
    state = FirewallState()
    if shutil.which("ufw"):
        out = _run(["ufw", "status", "verbose"], state, "ufw status")
        if out is not None:
            parse_ufw(out, state)
    else:
        state.notes.append("ufw is not installed")
    if shutil.which("nft"):
        out = _run(["nft", "-j", "list", "ruleset"], state, "nft list ruleset")
        if out is not None:
            parse_nft(out, state)
    else:
        state.notes.append("nft is not installed: nftables state unknown")
    return state


def parse_ufw(text: str, state: FirewallState) -> None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Status":
            state.ufw = value.strip()
        elif key.strip() == "Default":
            state.ufw_defaults = value.strip()


def parse_nft(text: str, state: FirewallState) -> None:
    try:
        items = orjson.loads(text).get("nftables", [])
    except (orjson.JSONDecodeError, AttributeError):
        state.notes.append("nft printed something that is not its JSON ruleset")
        return
    state.nft_readable = True
    chains: dict[tuple[str, str, str], dict] = {}
    rules: dict[tuple[str, str, str], list[list]] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r.get("expr", []))
    for hook, hs in (("input", state.input), ("output", state.output)):
        bases = [k for k, c in chains.items() if c.get("hook") == hook and c.get("type", "filter") == "filter"]
        hs.base_chains = len(bases)
        hs.default_deny = any(chains[k].get("policy") == "drop" for k in bases)
        hs.deny_rules = sum(_deny_rules(k, rules, set()) for k in bases)


def _deny_rules(chain: tuple[str, str, str], rules: dict, seen: set) -> int:
    if chain in seen:
        return 0
    seen.add(chain)
    count = 0
    for expr in rules.get(chain, []):
        for stmt in expr:
            if not isinstance(stmt, dict):
                continue
            if any(v in stmt for v in _VERDICTS):
                count += 1
            for jump in ("jump", "goto"):
                if jump in stmt and isinstance(stmt[jump], dict):
                    count += _deny_rules((chain[0], chain[1], stmt[jump].get("target", "")), rules, seen)
    return count


def _run(argv: list[str], state: FirewallState, what: str) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        state.notes.append(f"{what}: {e}")
        return None
    if proc.returncode != 0:
        first = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[0]
        state.notes.append(f"{what} failed: {first}")
        return None
    return proc.stdout
