"""Stopping (and optionally disabling) the systemd unit behind a process.

The unit comes from the process's cgroup. systemctl runs as an argv list, with "--" before the unit
so a name can never be read as an option. Refused: slices, targets and other units that are not a
process's own (.service, .scope, .timer, .socket, .path only), protected units, and the units of
outwatch and its ancestors (the admin's own login session or service).
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from outwatch.errors import ExitCode, OutwatchError
from outwatch.proc.cgroup import read_cgroup

from .process import lineage

STOPPABLE_SUFFIXES = (".service", ".scope", ".timer", ".socket", ".path")
DEFAULT_PROTECTED_UNITS = frozenset(
    {
        "outwatch.service",
        "ssh.service",
        "sshd.service",
        "ssh.socket",
        "dbus.service",
        "dbus.socket",
        "dbus-broker.service",
        "systemd-journald.service",
        "systemd-journald.socket",
        "systemd-logind.service",
        "systemd-udevd.service",
        "systemd-networkd.service",
        "systemd-resolved.service",
        "networking.service",
        "init.scope",
    }
)
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")
_USER_MANAGER = re.compile(r"^user@(\d+)\.service$")
SYSTEMD_RUN_DIR = Path("/run/systemd/system")

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


@dataclass(frozen=True, slots=True)
class UnitRef:
    """A unit of the system manager, or (uid set) of user uid's manager."""

    name: str
    uid: int | None = None

    def __str__(self) -> str:
        return self.name if self.uid is None else f"{self.name} (user {self.uid}'s manager)"


def validate_unit(name: str) -> str:
    """A unit name as systemctl takes it; a bare name means NAME.service, as for systemctl."""
    if not name or len(name) > 255 or name.startswith("-") or not _UNIT_NAME.match(name):
        raise ValueError(f"{name!r} is not a systemd unit name (e.g. nginx.service)")
    if "." not in name:
        name += ".service"
    if not name.endswith(STOPPABLE_SUFFIXES):
        raise ValueError(
            f"{name} is not a unit of processes: only {', '.join(STOPPABLE_SUFFIXES)} units can be stopped"
        )
    return name


def unit_of_pid(pid: int) -> UnitRef:
    info = read_cgroup(pid)
    if info is None:
        raise OutwatchError(f"no process {pid}", hint="it may have exited already", code=ExitCode.NOT_FOUND)
    if info.user_unit is not None and info.unit is not None:
        m = _USER_MANAGER.match(info.unit)
        if m:
            return UnitRef(info.user_unit, int(m.group(1)))
    if info.unit is None:
        raise OutwatchError(
            f"process {pid} is not in a systemd unit (cgroup {info.path or 'unknown'})",
            hint=f"stop the process itself: outwatch kill {pid}",
            code=ExitCode.NOT_FOUND,
        )
    return UnitRef(info.unit)


def own_units() -> set[UnitRef]:
    """The units of this process and its ancestors: stopping one would stop outwatch or its caller."""
    units = set()
    for pid in lineage(os.getpid()):
        try:
            units.add(unit_of_pid(pid))
        except OutwatchError:
            continue
    return units


def refusal(unit: UnitRef, protected: Iterable[str] = ()) -> str | None:
    if unit.name in DEFAULT_PROTECTED_UNITS or unit.name in set(protected):
        return "it is a protected unit"
    if unit in own_units():
        return "outwatch itself (or the shell that started it) runs in it"
    return None


def systemd_running() -> bool:
    """As sd_booted(3): systemd is the init system when /run/systemd/system exists."""
    return SYSTEMD_RUN_DIR.is_dir()


def not_running_error() -> OutwatchError:
    try:
        init = Path("/proc/1/comm").read_text().strip()
    except OSError:
        init = "unknown"
    return OutwatchError(
        f"systemd is not running on this machine (PID 1 is {init!r}), so there is no unit to stop",
        hint="stop the process itself: outwatch kill PID (--tree for its children)",
        code=ExitCode.FAILURE,
    )


def systemctl_argvs(unit: UnitRef, disable: bool) -> list[list[str]]:
    base = ["systemctl"]
    if unit.uid is not None:
        try:
            who = pwd.getpwuid(unit.uid).pw_name
        except KeyError:
            who = str(unit.uid)
        base += ["--user", f"--machine={who}@.host"]
    argvs = [[*base, "stop", "--", unit.name]]
    if disable:
        argvs.append([*base, "disable", "--", unit.name])
    return argvs


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def stop_unit(
    unit: UnitRef,
    *,
    disable: bool,
    protected: Iterable[str] = (),
    dry_run: bool = False,
    run: Runner = _run,
    booted: Callable[[], bool] = systemd_running,
) -> list[list[str]]:
    """Run (or with dry_run, only return) the systemctl commands; returns their argvs."""
    why = refusal(unit, protected)
    if why:
        raise OutwatchError(f"refusing to stop {unit}: {why}", code=ExitCode.REFUSED)
    argvs = systemctl_argvs(unit, disable)
    if dry_run:
        return argvs
    if not booted():
        raise not_running_error()
    for argv in argvs:
        try:
            proc = run(argv)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OutwatchError(f"could not run {' '.join(argv)}: {exc}") from None
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout or "").strip()
            raise OutwatchError(f"{' '.join(argv)} failed: {out or f'exit status {proc.returncode}'}")
    return argvs
