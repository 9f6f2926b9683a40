"""The in-kernel deny map (bpf blocks): destinations whose connect()/sendto() fail with EPERM.

The maps are longest-prefix-match tries, which return only the most specific prefix that matches.
So each prefix's entry carries its own rules plus those of every shorter prefix that covers it, and
the whole set is rewritten on every change (a few entries at most).
"""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_RULES_PER_PREFIX = 8
_PROTO_NUMBERS = {None: 0, "tcp": 6, "udp": 17}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class DenyRule:
    network: IPNetwork
    port: int | None = None
    proto: str | None = None  # "tcp", "udp" or None for both


class DenyMap:
    """Writes DenyRules into the deny4/deny6 maps of a loaded BCC program."""

    def __init__(self, deny4: Any, deny6: Any) -> None:
        self._maps = {4: deny4, 6: deny6}
        self._rules: tuple[DenyRule, ...] = ()

    @property
    def rules(self) -> tuple[DenyRule, ...]:
        return self._rules

    def set_rules(self, rules: Sequence[DenyRule]) -> None:
        """Replace the whole in-kernel rule set (ValueError, and no change, when it cannot be stored)."""
        entries = _entries(rules)
        values = {net: _value(self._maps[net.version], rs) for net, rs in entries.items()}
        for version, table in self._maps.items():
            wanted = {net: v for net, v in values.items() if net.version == version}
            for key in list(table.keys()):
                net = ipaddress.ip_network((bytes(key.addr), key.prefixlen))
                if net not in wanted:
                    del table[key]
            for net, value in wanted.items():
                table[_key(table, net)] = value
        self._rules = tuple(rules)


def _entries(rules: Sequence[DenyRule]) -> dict[IPNetwork, list[DenyRule]]:
    """Each distinct prefix with the rules that apply to it (its own and its covering prefixes')."""
    entries: dict[IPNetwork, list[DenyRule]] = {}
    for rule in rules:
        entries.setdefault(rule.network, [])
    for net in entries:
        entries[net] = [r for r in rules if r.network.version == net.version and net.subnet_of(r.network)]
    return entries


def _key(table: Any, net: IPNetwork) -> Any:
    key = table.Key()
    key.prefixlen = net.prefixlen
    raw = net.network_address.packed
    ctypes.memmove(ctypes.addressof(key.addr), raw, len(raw))
    return key


def _value(table: Any, rules: list[DenyRule]) -> Any:
    val = table.Leaf()
    if any(r.port is None and r.proto is None for r in rules):
        val.all = 1
        return val
    if len(rules) > MAX_RULES_PER_PREFIX:
        raise ValueError(
            f"at most {MAX_RULES_PER_PREFIX} port/protocol blocks cover one destination "
            f"({rules[0].network}): block the whole address instead"
        )
    val.n = len(rules)
    for i, r in enumerate(rules):
        val.rules[i].port = r.port or 0
        val.rules[i].protocol = _PROTO_NUMBERS[r.proto]
    return val
