"""Compile a rule's `when` table, once, at load, into Python code.

Every event goes through every rule, so the rules are not interpreted: each condition becomes one
Python expression over `ctx` (the per-event field cache), and the whole rule set becomes one
generated function (`Compiler.matcher`) with one `if` per rule. Only generated identifiers,
validated field names and integers the compiler computed (the bounds of small CIDR sets) go into
the source text; every value taken from a rule file (strings, sets, compiled patterns, bounds) is
passed in the namespace as a constant, never pasted into code.

Alongside the expression each condition gets an `explain(ctx) -> [(field, value)]` closure, called
only for a rule that fired, to name the values that matched (for the `why` sentence).

Problems are collected, never raised, so one load reports every error; each names the key path
where it was found so the loader can point at a line.
"""

from __future__ import annotations

import bisect
import difflib
import fnmatch
import functools
import ipaddress
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from outwatch.rules.fields import FIELDS, MISSING, Ctx, Field, Kind

Test = Callable[[Ctx], bool]
Explain = Callable[[Ctx], list[tuple[str, object]]]
KeyPath = tuple[str | int, ...]

GROUPS = ("all", "any", "not")
OPERATORS = ("equals", "in", "prefix", "glob", "regex", "cidr", "range", "exists", "not")
_ALLOWED: dict[Kind, frozenset[str]] = {
    Kind.STR: frozenset({"equals", "in", "prefix", "glob", "regex"}),
    Kind.INT: frozenset({"equals", "in", "range"}),
    Kind.NUM: frozenset({"equals", "in", "range"}),
    Kind.BOOL: frozenset({"equals"}),
    Kind.IP: frozenset({"equals", "in", "cidr"}),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "a table"}
_MEMO_SIZE = 1024
"""Regex answers remembered per test (an LRU of strings, or of argument tuples): command lines and
ancestor chains repeat from event to event (same daemon, same parent shell)."""


def type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(slots=True)
class Problems:
    """Errors found while compiling: (key path below the rule, message)."""

    items: list[tuple[KeyPath, str]] = field(default_factory=list)

    def add(self, where: KeyPath, message: str) -> None:
        self.items.append((where, message))


@dataclass(slots=True, frozen=True)
class NamedList:
    name: str
    values: tuple[object, ...]
    origin: str
    """file:line where it was (last) defined, for error messages."""


@dataclass(slots=True, frozen=True)
class Condition:
    expr: str
    """A Python expression over `ctx`, evaluated in the compiler's namespace."""
    explain: Explain


class CidrSet:
    """Networks as sorted, merged integer intervals per IP version: membership is one bisect."""

    __slots__ = ("_his", "_los")

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._los: dict[int, list[int]] = {4: [], 6: []}
        self._his: dict[int, list[int]] = {4: [], 6: []}
        for version in (4, 6):
            spans = sorted(
                (int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == version
            )
            merged: list[list[int]] = []
            for lo, hi in spans:
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            self._los[version] = [lo for lo, _ in merged]
            self._his[version] = [hi for _, hi in merged]

    def intervals(self) -> list[tuple[int, int, int]]:
        """(version, first, last) of every merged interval."""
        return [(v, lo, hi) for v in (4, 6) for lo, hi in zip(self._los[v], self._his[v], strict=True)]

    def __contains__(self, ip: tuple[int, int]) -> bool:
        version, n = ip
        i = bisect.bisect_right(self._los[version], n) - 1
        return i >= 0 and n <= self._his[version][i]


def _in_spans(spans: list[tuple[float, float]]) -> Callable[[float], bool]:
    return lambda v: any(lo <= v <= hi for lo, hi in spans)


class Compiler:
    """Compiles `when` tables against the final named lists; one namespace for the whole rule set."""

    def __init__(self, lists: dict[str, NamedList], problems: Problems) -> None:
        self.lists = lists
        self.problems = problems
        self.ns: dict[str, object] = {"MISSING": MISSING}
        self._multi: dict[str, str] = {}
        """Per-value template -> a faster test of a whole tuple of values, where an operator has one."""

    # -- code ----------------------------------------------------------------------------------

    def const(self, value: object) -> str:
        """Put a value in the namespace; returns the generated name the code refers to it by."""
        name = f"_k{len(self.ns)}"
        self.ns[name] = value
        return name

    def function(self, expr: str) -> Test:
        return eval(f"lambda ctx: {expr}", self.ns)

    def matcher(self, rules: Sequence[tuple[str, object]]) -> Callable[[Ctx], list]:
        """One function for the whole rule set: the objects of the rules whose expression holds.

        Plain string/int/bool fields the rules use are read once at the top into local variables
        (each parent table looked up once); the others (lists, IP addresses, computed fields) stay
        lazy, in local variables filled on first use, so they cost nothing unless a rule gets that
        far."""
        body = [f"    if {expr}:\n        fired.append({self.const(rule)})" for expr, rule in rules]
        code = "\n".join(body)
        head = ["def _match(ctx):", "    fired = []", "    _t0 = ctx.event"]
        tables = {(): "_t0"}
        self.ns["_EMPTY"] = {}
        self.ns["_UNSET"] = _UNSET
        for fld in FIELDS.values():
            access = f"ctx[{fld.name!r}]"
            if access not in code:
                continue
            if fld.inline is None:
                local = f"_l{len(head)}"
                head.append(f"    {local} = _UNSET")
                code = code.replace(access, f"({local} if {local} is not _UNSET else ({local} := "
                                            f"{self.const(fld.get)}(_t0)))")
                continue
            *parents, key = fld.name.split(".")
            for depth in range(1, len(parents) + 1):
                path = tuple(parents[:depth])
                if path not in tables:
                    name = tables[path] = f"_t{len(tables)}"
                    head.append(f"    {name} = {tables[path[:-1]]}.get({path[-1]!r})")
                    head.append(f"    if {name}.__class__ is not dict: {name} = _EMPTY")
            local = f"_f{len(head)}"
            head.append(f"    {local} = {tables[tuple(parents)]}.get({key!r})")
            head.append(f"    if {local}.__class__ is not {fld.inline.__name__}: {local} = MISSING")
            code = code.replace(access, local)
        source = "\n".join([*head, code, "    return fired"])
        exec(compile(source, "<outwatch rules>", "exec"), self.ns)
        return self.ns["_match"]  # type: ignore[return-value]

    # -- condition tables (groups) -------------------------------------------------------------

    def condition(self, table: object, where: KeyPath) -> Condition | None:
        """A condition table: `field = test`, `all = [...]`, `any = [...]`, `not = {...}`, all must hold."""
        if not isinstance(table, dict):
            self.problems.add(where, f"a condition must be a table, not {type_name(table)}")
            return None
        if not table:
            self.problems.add(where, "empty condition table: it would match every event")
            return None
        parts = [self._entry(key, value, (*where, key)) for key, value in self._flatten(table)]
        if any(p is None for p in parts):
            return None
        return _all([p for p in parts if p is not None])

    @staticmethod
    def _flatten(table: dict) -> list[tuple[str, object]]:
        """Unquoted dotted keys (process.executable = ...) arrive as nested tables: join them back."""
        out: list[tuple[str, object]] = []

        def walk(prefix: str, sub: dict) -> None:
            for key, value in sub.items():
                name = f"{prefix}{key}"
                if (prefix == "" and key in GROUPS) or name in FIELDS:
                    out.append((name, value))
                elif isinstance(value, dict) and any(f.startswith(f"{name}.") for f in FIELDS):
                    walk(f"{name}.", value)
                else:
                    out.append((name, value))

        walk("", table)
        return out

    def _entry(self, key: str, value: object, where: KeyPath) -> Condition | None:
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                self.problems.add(where, f"{key} must be a non-empty array of condition tables")
                return None
            subs = [self.condition(v, (*where, i)) for i, v in enumerate(value)]
            if any(s is None for s in subs):
                return None
            conditions = [s for s in subs if s is not None]
            return _all(conditions) if key == "all" else self._any(conditions)
        if key == "not":
            sub = self.condition(value, where)
            if sub is None:
                return None
            return Condition(f"(not {sub.expr})", lambda ctx: [])
        fld = FIELDS.get(key)
        if fld is None:
            self.problems.add(where, f"unknown field {key!r}{did_you_mean(key, [*FIELDS, *GROUPS])}")
            return None
        return self._field_test(fld, value, where)

    def _any(self, conditions: list[Condition]) -> Condition:
        if len(conditions) == 1:
            return conditions[0]
        pairs = [(self.function(c.expr), c.explain) for c in conditions]

        def explain(ctx: Ctx) -> list[tuple[str, object]]:
            for test, why in pairs:
                if test(ctx):
                    return why(ctx)
            return []

        return Condition("(" + " or ".join(c.expr for c in conditions) + ")", explain)

    # -- field tests ---------------------------------------------------------------------------

    def _field_test(self, fld: Field, spec: object, where: KeyPath) -> Condition | None:
        if not isinstance(spec, dict):
            if isinstance(spec, list) or (isinstance(spec, str) and spec.startswith("@")):
                spec = {"in": spec}
            else:
                spec = {"equals": spec}
        if not spec:
            self.problems.add(where, "a field test is a value, an array, or a table of operators")
            return None
        key = repr(fld.name)
        name = fld.name
        if "exists" in spec:
            want = spec["exists"]
            if not isinstance(want, bool):
                self.problems.add((*where, "exists"), f"exists takes true or false, not {type_name(want)}")
                return None
            if len(spec) > 1:
                self.problems.add(where, "exists cannot be combined with other operators in one test")
                return None
            if want:
                return Condition(f"(ctx[{key}] is not MISSING)", lambda ctx: [(name, fld.show(ctx.event))])
            return Condition(f"(ctx[{key}] is MISSING)", lambda ctx: [(name, "absent")])
        compiled = self._operators(fld, spec, where)
        if compiled is None:
            return None
        whole, positives = compiled
        expr = f"((_v := ctx[{key}]) is not MISSING and {whole.replace('{v}', '_v')})"
        if not fld.multi:
            show = fld.show
            return Condition(expr, lambda ctx: [(name, show(ctx.event))])
        first = None
        if positives:
            first = eval("lambda _x: " + " and ".join(p.replace("{x}", "_x") for p in positives), self.ns)

        def explain(ctx: Ctx) -> list[tuple[str, object]]:
            values = ctx[name]
            if first is not None:
                for x in values:  # type: ignore[attr-defined]
                    if first(x):
                        return [(name, x)]
            return [(name, " ".join(map(str, values)))]  # type: ignore[call-overload]

        return Condition(expr, explain)

    def _operators(self, fld: Field, spec: dict, where: KeyPath) -> tuple[str, list[str]] | None:
        """A test table -> (expression over the present value `{v}`, per-value templates over `{x}` of
        the positive operators). Operators are and-ed; on a multi-valued field each positive operator
        passes when any value passes it."""
        wholes: list[str] = []
        positives: list[str] = []
        ok = True
        for op, arg in spec.items():
            at = (*where, op)
            if op == "not":
                if not isinstance(arg, dict) or not arg:
                    self.problems.add(at, "not takes a table of operators, e.g. not = { in = [...] }")
                    ok = False
                elif "exists" in arg:
                    self.problems.add(at, "use exists = false rather than not = { exists = true }")
                    ok = False
                elif (inner := self._operators(fld, arg, at)) is None:
                    ok = False
                else:
                    wholes.append(f"(not {inner[0]})")
                continue
            if op not in OPERATORS:
                self.problems.add(at, f"unknown operator {op!r}{did_you_mean(op, OPERATORS)}")
                ok = False
                continue
            if op == "exists":
                self.problems.add(at, "exists cannot be combined with other operators in one test")
                ok = False
                continue
            if op not in _ALLOWED[fld.kind]:
                allowed = ", ".join(sorted(_ALLOWED[fld.kind]))
                self.problems.add(at, f"{op} does not apply to {fld.name} ({fld.kind.value}); use {allowed}")
                ok = False
                continue
            template = getattr(self, f"_op_{op}")(fld, arg, at)
            if template is None:
                ok = False
                continue
            positives.append(template)
            wholes.append(self._lift(template) if fld.multi else template.replace("{x}", "{v}"))
        if not ok:
            return None
        return "(" + " and ".join(wholes) + ")", positives

    def _lift(self, template: str) -> str:
        """A per-value test over the tuple of a multi-valued field: does any value pass? Operators
        register a form that loops in C (set.isdisjoint, any(map(...))); others get a generator."""
        if template in self._multi:
            return self._multi[template]
        return f"any({template.replace('{x}', '_x')} for _x in {{v}})"

    # -- argument helpers ----------------------------------------------------------------------

    def _values(self, arg: object, at: KeyPath) -> list[tuple[object, str]] | None:
        """An argument as a list of (value, where it came from); '@name' strings splice named lists.

        A literal empty array is an error; a named list that is empty is not (it may have been
        emptied on purpose by a later file): the test then never passes."""
        if isinstance(arg, list) and not arg:
            self.problems.add(at, "empty array: the test could never pass")
            return None
        items = arg if isinstance(arg, list) else [arg]
        out: list[tuple[object, str]] = []
        for item in items:
            if isinstance(item, str) and item.startswith("@"):
                named = self.lists.get(item[1:])
                if named is None:
                    self.problems.add(at, f"unknown list {item!r}{did_you_mean(item[1:], list(self.lists))}")
                    return None
                out.extend((v, f"list {item} ({named.origin})") for v in named.values)
            else:
                out.append((item, ""))
        return out

    def _typed(self, fld: Field, arg: object, at: KeyPath) -> tuple[list[tuple[object, str]], list[tuple]] | None:
        """(value, origin) of the field's type (for equals / in), and [low, high] ranges for numeric fields."""
        values = self._values(arg, at)
        if values is None:
            return None
        out: list[tuple[object, str]] = []
        spans: list[tuple] = []
        numeric = fld.kind in (Kind.INT, Kind.NUM)
        for v, origin in values:
            place = f" in {origin}" if origin else ""
            if numeric and isinstance(v, list):
                span = self._span(fld, v, at, place)
                if span is None:
                    return None
                spans.append(span)
                continue
            if not _type_ok(fld.kind, v):
                self.problems.add(at, f"{fld.name} is {_kind_article(fld.kind)}: {v!r}{place} is {type_name(v)}"
                                      f"{_hint(fld.kind, v)}")
                return None
            if fld.bounds and not fld.bounds[0] <= v <= fld.bounds[1]:  # type: ignore[operator]
                self.problems.add(at, f"{v} is out of range for {fld.name} ({fld.bounds[0]}-{fld.bounds[1]})")
                return None
            out.append((v, place))
        return out, spans

    def _span(self, fld: Field, item: object, at: KeyPath, place: str) -> tuple | None:
        if not (isinstance(item, list) and len(item) == 2 and all(_is_number(x) for x in item)):
            self.problems.add(at, f"bad range {item!r}{place}: write [low, high]")
            return None
        lo, hi = item
        if lo > hi:
            self.problems.add(at, f"bad range [{lo}, {hi}]{place}: low is above high")
            return None
        if fld.bounds and not (fld.bounds[0] <= lo and hi <= fld.bounds[1]):
            self.problems.add(at, f"bad port range [{lo}, {hi}]{place}: ports are {fld.bounds[0]}-{fld.bounds[1]}")
            return None
        return lo, hi

    def _strings(self, arg: object, at: KeyPath, what: str) -> list[str] | None:
        values = self._values(arg, at)
        if values is None:
            return None
        out: list[str] = []
        for v, origin in values:
            if not isinstance(v, str):
                place = f" in {origin}" if origin else ""
                self.problems.add(at, f"{what} takes strings: {v!r}{place} is {type_name(v)}")
                return None
            out.append(v)
        return out

    # -- operators: each returns an expression template over one value `{x}` -------------------

    def _op_equals(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        if isinstance(arg, list) or (isinstance(arg, str) and arg.startswith("@")):
            self.problems.add(at, "equals takes one value; use in = [...] for several")
            return None
        return self._op_in(fld, arg, at)

    def _op_in(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        typed = self._typed(fld, arg, at)
        if typed is None:
            return None
        values, spans = typed
        if fld.kind is Kind.IP:
            return self._ip_set(values, at)
        if fld.kind is Kind.BOOL:
            return "({x} is True)" if values[0][0] else "({x} is False)"
        members = self.const(frozenset(v for v, _ in values))
        member = f"({{x}} in {members})"
        self._multi[member] = f"(not {members}.isdisjoint({{v}}))"
        if spans:
            return f"({member} or {self.const(_in_spans(spans))}({{x}}))"
        return member

    def _ip_set(self, values: list[tuple[object, str]], at: KeyPath) -> str | None:
        networks = []
        for v, place in values:
            try:
                networks.append(ipaddress.ip_network(ipaddress.ip_address(v)))  # type: ignore[arg-type]
            except ValueError:
                hint = " (a network: use cidr)" if "/" in str(v) else ""
                self.problems.add(at, f"bad IP address {v!r}{place}{hint}")
                return None
        return self._cidr_test(CidrSet(_unmap(networks)))

    def _cidr_test(self, cidrs: CidrSet) -> str:
        """Up to 4 intervals: inline comparisons; more: one bisect in CidrSet."""
        spans = cidrs.intervals()
        if len(spans) > 4:
            return f"({{x}} in {self.const(cidrs)})"
        if not spans:
            return "False"
        tests = []
        for version, lo, hi in spans:
            bounds = f"{{x}}[1] == {lo}" if lo == hi else f"{lo} <= {{x}}[1] <= {hi}"
            tests.append(f"({{x}}[0] == {version} and {bounds})")
        return "(" + " or ".join(tests) + ")"

    def _op_cidr(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        texts = self._strings(arg, at, "cidr")
        if texts is None:
            return None
        networks = []
        for text in texts:
            try:
                networks.append(ipaddress.ip_network(text))
            except ValueError as exc:
                hint = ""
                if "host bits set" in str(exc):
                    hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
                self.problems.add(at, f"bad CIDR {text!r}: {exc}{hint}")
                return None
        return self._cidr_test(CidrSet(_unmap(networks)))

    def _op_prefix(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        prefixes = self._strings(arg, at, "prefix")
        if prefixes is None:
            return None
        template = f"{{x}}.startswith({self.const(tuple(prefixes))})"
        self._multi[template] = f"any(map({self.const(operator.methodcaller('startswith', tuple(prefixes)))}, {{v}}))"
        return template

    def _op_glob(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        patterns = self._strings(arg, at, "glob")
        if patterns is None:
            return None
        if not patterns:
            return "False"
        literal = frozenset(p for p in patterns if not _WILDCARD.search(p))
        wild = [p for p in patterns if p not in literal]
        tests, multi = [], []
        if literal:
            name = self.const(literal)
            tests.append(f"{{x}} in {name}")
            multi.append(f"not {name}.isdisjoint({{v}})")
        if wild:
            match = re.compile("|".join(fnmatch.translate(p) for p in wild)).match
            one = functools.lru_cache(maxsize=_MEMO_SIZE)(lambda text: match(text) is not None)
            every = functools.lru_cache(maxsize=_MEMO_SIZE)(lambda values: any(map(one, values)))
            tests.append(f"{self.const(one)}({{x}})")
            multi.append(f"{self.const(every)}({{v}})")
        template = "(" + " or ".join(tests) + ")"
        self._multi[template] = "(" + " or ".join(multi) + ")"
        return template

    def _op_regex(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        patterns = self._strings(arg, at, "regex")
        if patterns is None:
            return None
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                self.problems.add(at, f"bad regex {p!r}: {exc}")
                return None
        if not patterns:
            return "False"
        search = _combine(patterns).search
        one = functools.lru_cache(maxsize=_MEMO_SIZE)(lambda text: search(text) is not None)
        template = f"{self.const(one)}({{x}})"
        every = functools.lru_cache(maxsize=_MEMO_SIZE)(lambda values: any(map(one, values)))
        self._multi[template] = f"{self.const(every)}({{v}})"
        return template

    def _op_range(self, fld: Field, arg: object, at: KeyPath) -> str | None:
        if isinstance(arg, list) and len(arg) == 2 and all(_is_number(x) for x in arg):
            items: list[tuple[object, str]] = [(arg, "")]
        else:
            got = self._values(arg, at)
            if got is None:
                return None
            items = got
        spans = []
        for item, origin in items:
            span = self._span(fld, item, at, f" in {origin}" if origin else "")
            if span is None:
                return None
            spans.append(span)
        if not spans:
            return "False"
        if len(spans) == 1:
            lo, hi = spans[0]
            return f"({self.const(lo)} <= {{x}} <= {self.const(hi)})"
        return f"{self.const(_in_spans(spans))}({{x}})"


_UNSET = object()
"""A lazy field's local variable before its first use in the generated matcher."""


def _all(conditions: list[Condition]) -> Condition:
    if len(conditions) == 1:
        return conditions[0]
    explains = [c.explain for c in conditions]

    def explain(ctx: Ctx) -> list[tuple[str, object]]:
        return [item for e in explains for item in e(ctx)]

    return Condition("(" + " and ".join(c.expr for c in conditions) + ")", explain)


_WILDCARD = re.compile(r"[*?\[]")
_LEADING_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")


def _combine(patterns: list[str]) -> re.Pattern[str] | _Alternatives:
    """One regex for several: each becomes an alternative, its leading (?flags) scoped to it.

    One search over a string beats a search per pattern. Patterns with back-references would change
    meaning once regrouped: those stay apart, tried one after the other."""
    if len(patterns) == 1:
        return re.compile(patterns[0])
    if any(_BACKREF.search(p) for p in patterns):
        return _Alternatives([re.compile(p) for p in patterns])
    parts = []
    for p in patterns:
        m = _LEADING_FLAGS.match(p)
        parts.append(f"(?{m.group(1)}:{p[m.end():]})" if m else f"(?:{p})")
    try:
        return re.compile("|".join(parts))
    except re.error:
        return _Alternatives([re.compile(p) for p in patterns])


class _Alternatives:
    """Several compiled patterns searched in turn (when they cannot be merged into one)."""

    __slots__ = ("_patterns",)

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        self._patterns = patterns

    def search(self, text: str) -> re.Match[str] | None:
        for p in self._patterns:
            m = p.search(text)
            if m is not None:
                return m
        return None


def _type_ok(kind: Kind, v: object) -> bool:
    if kind in (Kind.STR, Kind.IP):
        return isinstance(v, str)
    if kind is Kind.INT:
        return type(v) is int
    if kind is Kind.NUM:
        return type(v) in (int, float)
    return isinstance(v, bool)


def _is_number(x: object) -> bool:
    return type(x) in (int, float)


def _unmap(networks: list) -> list:
    """::ffff:a.b.c.d/n (IPv4-mapped) as the IPv4 network, to match how event addresses are read."""
    out = []
    for n in networks:
        if n.version == 6 and n.network_address.ipv4_mapped is not None and n.prefixlen >= 96:
            n = ipaddress.ip_network(f"{n.network_address.ipv4_mapped}/{n.prefixlen - 96}")
        out.append(n)
    return out


def _kind_article(kind: Kind) -> str:
    return {Kind.INT: "an integer", Kind.IP: "an IP address (a string)", Kind.BOOL: "a boolean (true/false)",
            Kind.NUM: "a number", Kind.STR: "a string"}[kind]


def _hint(kind: Kind, v: object) -> str:
    if kind is Kind.STR and type(v) is int:
        return f'; write "{v}"'
    if kind in (Kind.INT, Kind.NUM) and isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return f"; write {v.strip()} without quotes"
    return ""
