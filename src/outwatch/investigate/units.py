"""systemd unit files on disk: parsing, where they live, and which timer starts a service.

Read from disk, not asked of systemd: this works with no systemd running and on a mounted image.
"""

from __future__ import annotations

from pathlib import Path

SYSTEM_UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
USER_UNIT_DIRS = (
    "/etc/systemd/user",
    "/usr/local/lib/systemd/user",
    "/usr/lib/systemd/user",
    "/lib/systemd/user",
)
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost")
_MAX_UNIT_BYTES = 1 << 20


def parse_unit(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """section -> [(line number, key, value)], continuation lines joined; comments and junk skipped."""
    sections: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] | None = None
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            start = start or number
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        first, start = start or number, 0
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current.append((first, key.strip(), value.strip()))
    return sections


def exec_commands(sections: dict[str, list[tuple[int, str, str]]]) -> list[tuple[int, str, str]]:
    """(line, key, command) of every Exec*= line, with systemd's prefixes (@-:+!) removed."""
    out = []
    for number, key, value in sections.get("Service", []):
        if key in EXEC_KEYS and value:
            out.append((number, key, value.lstrip("@-:+!")))
    return out


def read_unit(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(_MAX_UNIT_BYTES)
    except OSError:
        return None


def timer_for(unit: str, root: Path = Path("/")) -> Path | None:
    """The .timer file that activates `unit`: Unit=<unit>, or the timer named like the service."""
    if not unit.endswith(".service"):
        return None
    same_name = unit.removesuffix(".service") + ".timer"
    for directory in SYSTEM_UNIT_DIRS:
        base = root / directory.lstrip("/")
        try:
            timers = sorted(base.glob("*.timer"))
        except OSError:
            continue
        for timer in timers:
            text = read_unit(timer)
            if text is None:
                continue
            target = next((v for _n, k, v in parse_unit(text).get("Timer", []) if k == "Unit"), None)
            if target == unit or (target is None and timer.name == same_name):
                return timer
    return None
