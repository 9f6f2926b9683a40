"""The event fields a rule can test: their types, how each is read from an ECS event, computed fields.

Every field is read at most once per event: `Ctx` is a per-event cache that calls a field's getter
on first use. Getters normalize what they read (a port that is not an int, an argument that is not a
string...) to MISSING, so a captured event with odd types can never make a rule raise.
IP addresses are parsed once per event into (version, integer) pairs; IPv4-mapped IPv6 addresses
(::ffff:a.b.c.d) count as the IPv4 address.
"""

from __future__ import annotations

import enum
import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
"""What a getter returns for an absent field (or an empty list, or a value of the wrong type)."""

COMM_LEN = 15
"""The kernel keeps 15 characters of a process name (comm)."""


class Kind(enum.Enum):
    STR = "string"
    INT = "integer"
    NUM = "number"
    BOOL = "boolean"
    IP = "IP address"


@dataclass(slots=True, frozen=True)
class Field:
    name: str
    kind: Kind
    multi: bool
    doc: str
    get: Callable[[dict], object]
    """Value for the tests: scalar, tuple of values (multi fields), (version, int) for IPs, or MISSING."""
    show: Callable[[dict], object]
    """Value as the event holds it, for the `why` sentence."""
    bounds: tuple[int, int] | None = None
    inline: type | None = None
    """For a plain string/int/bool field: its type, so generated code can read it without a getter."""


def _check_str(v: object) -> object:
    return v if v.__class__ is str else MISSING


def _check_int(v: object) -> object:
    return v if v.__class__ is int else MISSING


def _check_num(v: object) -> object:
    return v if v.__class__ is int or v.__class__ is float else MISSING


def _check_bool(v: object) -> object:
    return v if v is True or v is False else MISSING


_V4_MAPPED = 0xFFFF << 32


def parse_ip(text: str) -> tuple[int, int] | None:
    """'192.0.2.1' -> (4, int); '2001:db8::1' -> (6, int); IPv4-mapped IPv6 -> (4, int); else None."""
    if ":" not in text:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except OSError:
            return None
    try:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]), "big")
    except OSError:
        return None
    if n >> 32 == 0xFFFF:
        return 4, n ^ _V4_MAPPED
    return 6, n


def _check_ip(v: object) -> object:
    if v.__class__ is not str:
        return MISSING
    parsed = parse_ip(v)
    return MISSING if parsed is None else parsed


_CHECKS: dict[Kind, Callable[[object], object]] = {
    Kind.STR: _check_str,
    Kind.INT: _check_int,
    Kind.NUM: _check_num,
    Kind.BOOL: _check_bool,
    Kind.IP: _check_ip,
}


def _raw(path: tuple[str, ...]) -> Callable[[dict], object]:
    """Read a nested value (dicts only), MISSING when any step is absent."""
    if len(path) == 2:
        a, b = path

        def get2(event: dict) -> object:
            d = event.get(a)
            return d.get(b, MISSING) if d.__class__ is dict else MISSING  # type: ignore[union-attr]

        return get2

    def get(event: dict) -> object:
        v: object = event
        for key in path:
            if v.__class__ is not dict:
                return MISSING
            v = v.get(key, MISSING)  # type: ignore[attr-defined]
        return v

    return get


def _scalar(path: str, kind: Kind) -> tuple[Callable[[dict], object], Callable[[dict], object]]:
    keys = tuple(path.split("."))
    raw = _raw(keys)
    if kind in _INLINE and len(keys) in (2, 3):
        return _scalar_fast(keys, _INLINE[kind]), raw
    check = _CHECKS[kind]

    def get(event: dict) -> object:
        v = raw(event)
        return MISSING if v is MISSING else check(v)

    return get, raw


_INLINE = {Kind.STR: str, Kind.INT: int, Kind.BOOL: bool}


def _scalar_fast(keys: tuple[str, ...], cls: type) -> Callable[[dict], object]:
    """The common case (a string or an int two or three levels down) without helper calls."""
    if len(keys) == 2:
        a, b = keys

        def get2(event: dict) -> object:
            d = event.get(a)
            if d.__class__ is dict:
                v = d.get(b)  # type: ignore[union-attr]
                if v.__class__ is cls:
                    return v
            return MISSING

        return get2
    a, b, c = keys

    def get3(event: dict) -> object:
        d = event.get(a)
        if d.__class__ is dict:
            d = d.get(b)  # type: ignore[union-attr]
            if d.__class__ is dict:
                v = d.get(c)  # type: ignore[union-attr]
                if v.__class__ is cls:
                    return v
        return MISSING

    return get3


_MEMO_MAX = 4096


def _per_list(compute: Callable[[list], object]) -> Callable[[list], object]:
    """compute(lst), remembered per list object. The tracer hands every event of a process image the
    same args and ancestors lists, so their values are worked out once per image, not per connect.
    The memo holds each list it remembers, so an id cannot be reused while it is in there."""
    memo: dict[int, tuple[list, object]] = {}

    def get(lst: list) -> object:
        hit = memo.get(id(lst))
        if hit is not None and hit[0] is lst:
            return hit[1]
        value = compute(lst)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[id(lst)] = (lst, value)
        return value

    return get


def _strings(path: str) -> tuple[Callable[[dict], object], Callable[[dict], object]]:
    """A list of strings (process.args): the string elements as a tuple."""
    raw = _raw(tuple(path.split(".")))
    strings = _per_list(lambda v: tuple(x for x in v if x.__class__ is str) or MISSING)

    def get(event: dict) -> object:
        v = raw(event)
        return strings(v) if v.__class__ is list else MISSING  # type: ignore[arg-type]

    return get, get


def _ancestors(sub: str, kind: Kind) -> tuple[Callable[[dict], object], Callable[[dict], object]]:
    """One key of every entry of outwatch.process.ancestors (parent first); `args` are flattened."""
    ancestors = _raw(("outwatch", "process", "ancestors"))
    inner = _raw(tuple(sub.split(".")))
    check = _CHECKS[kind]
    flatten = sub == "args"

    def collect(chain: list) -> object:
        values: list[object] = []
        for entry in chain:
            v = inner(entry)
            if flatten:
                if v.__class__ is list:
                    values.extend(x for x in v if x.__class__ is str)  # type: ignore[attr-defined]
            elif v is not MISSING and (v := check(v)) is not MISSING:
                values.append(v)
        return tuple(values) or MISSING

    per_chain = _per_list(collect)

    def get(event: dict) -> object:
        chain = ancestors(event)
        return per_chain(chain) if chain.__class__ is list else MISSING  # type: ignore[arg-type]

    return get, get


def _basename(path: str) -> str:
    return path.removesuffix(" (deleted)").rpartition("/")[2]


def _exe_name(event: dict) -> object:
    exe = _EXE(event)
    return _basename(exe) if exe.__class__ is str else MISSING  # type: ignore[arg-type]


def _name_mismatch(event: dict) -> object:
    """process.name is none of: the executable's basename, argv[0]'s, argv[1]'s (a script run by an
    interpreter), each also cut to the kernel's 15 characters. MISSING without name and executable."""
    name, exe = _NAME(event), _EXE(event)
    if name.__class__ is not str or exe.__class__ is not str:
        return MISSING
    base = exe.rpartition("/")[2]  # type: ignore[attr-defined]
    if name == base or name == base[:COMM_LEN]:
        return False
    args = _ARGS(event)
    return _mismatch(name, exe, () if args is MISSING else args[:2])  # type: ignore[arg-type,index]


@functools.lru_cache(maxsize=_MEMO_MAX)
def _mismatch(name: str, exe: str, first_args: tuple[str, ...]) -> bool:
    """The slow half of _name_mismatch, remembered: the same image asks again on every connect."""
    candidates = [_basename(exe), *(_basename(a) for a in first_args)]
    return not any(name == c or name == c[:COMM_LEN] for c in candidates)


def _script(event: dict) -> object:
    """The first argument after argv[0] that is not an option: the script an interpreter runs
    (python3 -u /tmp/x.py, sh /dev/shm/x, bash -c CMD gives CMD, python3 -m pip gives pip)."""
    args = _ARGS(event)
    if args is MISSING:
        return MISSING
    for arg in args[1:]:  # type: ignore[index]
        if not arg.startswith("-"):
            return arg
    return MISSING


def _parse_time(v: object) -> datetime | None:
    if v.__class__ is not str:
        return None
    try:
        return datetime.fromisoformat(v)  # type: ignore[arg-type]
    except ValueError:
        return None


def _exe_age_at_start(event: dict) -> object:
    """Seconds from the executable's last modification to the process start (negative: changed after)."""
    start, mtime = _START(event), _MTIME(event)
    if start.__class__ is not str or mtime.__class__ is not str:
        return MISSING
    return _age(start, mtime)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=_MEMO_MAX)
def _age(start_text: str, mtime_text: str) -> object:
    start = _parse_time(start_text)
    mtime = _parse_time(mtime_text)
    if start is None or mtime is None or (start.tzinfo is None) != (mtime.tzinfo is None):
        return MISSING
    return (start - mtime).total_seconds()


_EXE = _raw(("process", "executable"))
_NAME = _raw(("process", "name"))
_ARGS = _strings("process.args")[0]
_START = _raw(("process", "start"))
_MTIME = _raw(("outwatch", "process", "exe_mtime"))

PORT = (0, 65535)

_SCALARS: list[tuple[str, Kind, str]] = [
    ("event.action", Kind.STR, "what happened, e.g. connection_attempted"),
    ("event.outcome", Kind.STR, "success / failure"),
    ("host.name", Kind.STR, "this host's name"),
    ("process.pid", Kind.INT, "process id"),
    ("process.name", Kind.STR, "process name (comm, at most 15 characters, settable by the process)"),
    ("process.executable", Kind.STR, "absolute path of the executable"),
    ("process.args_count", Kind.INT, "number of arguments"),
    ("process.command_line", Kind.STR, "the arguments joined by spaces"),
    ("process.working_directory", Kind.STR, "current directory"),
    ("process.hash.sha256", Kind.STR, "SHA-256 of the executable"),
    ("process.user.id", Kind.STR, "uid of the process, a string (\"0\" is root)"),
    ("process.user.name", Kind.STR, "user name of the process"),
    ("process.parent.pid", Kind.INT, "parent's pid"),
    ("process.parent.name", Kind.STR, "parent's name"),
    ("process.parent.executable", Kind.STR, "parent's executable"),
    ("user.id", Kind.STR, "uid, a string (\"0\" is root)"),
    ("user.name", Kind.STR, "user name"),
    ("source.ip", Kind.IP, "local address"),
    ("source.port", Kind.INT, "local port"),
    ("destination.ip", Kind.IP, "remote address"),
    ("destination.port", Kind.INT, "remote port"),
    ("network.transport", Kind.STR, "tcp / udp"),
    ("network.type", Kind.STR, "ipv4 / ipv6"),
    ("network.direction", Kind.STR, "egress"),
    ("network.packets", Kind.INT, "UDP sends folded into this event"),
    ("outwatch.process.exe_deleted", Kind.BOOL, "the executable was deleted after it started"),
    ("outwatch.process.exe_memfd", Kind.BOOL, "the executable is an in-memory file (memfd_create)"),
    ("outwatch.process.exe_uid", Kind.INT, "owner uid of the executable file"),
    ("outwatch.process.exe_mode", Kind.INT, "mode bits of the executable file"),
    ("outwatch.process.unit", Kind.STR, "systemd unit, e.g. nginx.service"),
    ("outwatch.process.container_id", Kind.STR, "container id"),
    ("outwatch.process.age_ms", Kind.INT, "milliseconds from the process start to this connect"),
    ("outwatch.probe", Kind.STR, "cgroup / kprobe"),
]

_LISTS: list[tuple[str, str]] = [
    ("process.args", "each argument, argv[0] first"),
    ("process.parent.args", "each argument of the parent"),
]

_ANCESTOR_KEYS: list[tuple[str, Kind, str]] = [
    ("pid", Kind.INT, "pid of any ancestor"),
    ("name", Kind.STR, "name of any ancestor (parent first, up to pid 1)"),
    ("executable", Kind.STR, "executable of any ancestor"),
    ("args", Kind.STR, "any argument of any ancestor"),
    ("user.id", Kind.STR, "uid of any ancestor"),
    ("user.name", Kind.STR, "user name of any ancestor"),
]


def _build() -> dict[str, Field]:
    fields: dict[str, Field] = {}
    for name, kind, doc in _SCALARS:
        get, show = _scalar(name, kind)
        bounds = PORT if name.endswith(".port") else None
        fields[name] = Field(name, kind, False, doc, get, show, bounds, _INLINE.get(kind))
    for name, doc in _LISTS:
        get, show = _strings(name)
        fields[name] = Field(name, Kind.STR, True, doc, get, show)
    for sub, kind, doc in _ANCESTOR_KEYS:
        name = f"outwatch.process.ancestors.{sub}"
        get, show = _ancestors(sub, kind)
        fields[name] = Field(name, kind, True, doc, get, show)
    computed: list[tuple[str, Kind, str, Callable[[dict], object]]] = [
        ("computed.exe_name", Kind.STR, "basename of process.executable", _exe_name),
        ("computed.script", Kind.STR, "first argument after argv[0] that is not an option: an interpreter's script",
         _script),
        (
            "computed.name_mismatch",
            Kind.BOOL,
            "process.name is not the basename of the executable, argv[0] or argv[1] (15-character cut allowed)",
            _name_mismatch,
        ),
        (
            "computed.exe_age_at_start_s",
            Kind.NUM,
            "seconds from the executable's last change (exe_mtime) to process.start",
            _exe_age_at_start,
        ),
    ]
    for name, kind, doc, get in computed:
        fields[name] = Field(name, kind, False, doc, get, get)
    return fields


FIELDS: dict[str, Field] = _build()


class Ctx(dict):
    """Per-event cache of field values: `ctx[name]` reads the field on first use only."""

    __slots__ = ("event",)

    def __init__(self, event: dict) -> None:
        self.event = event

    def __missing__(self, name: str) -> object:
        value = FIELDS[name].get(self.event)
        self[name] = value
        return value
