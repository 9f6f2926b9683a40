"""Running as a systemd service: the sd_notify protocol, and installing the unit and logrotate files.

sd_notify is a datagram of NEWLINE-separated KEY=VALUE lines sent to $NOTIFY_SOCKET (a path, or an
abstract name written "@name"); no libsystemd needed. The variable is removed from the environment
once read, so the programs outwatch runs (ufw, systemctl) do not talk to systemd in its name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from outwatch.errors import ExitCode, OutwatchError

UNIT_NAME = "outwatch.service"
UNIT_DIR = Path("/etc/systemd/system")
LOGROTATE_PATH = Path("/etc/logrotate.d/outwatch")
CONFIG_PATH = Path("/etc/outwatch/outwatch.toml")
MARKER = "# outwatch:"  # how the files we install begin; uninstall removes only those


class Notifier:
    """sd_notify to the service manager; every method is a no-op when not run by systemd."""

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.pop("WATCHDOG_USEC", "")
        watchdog_pid = os.environ.pop("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and watchdog_pid in ("", str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._stopping = False
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # the manager went away: nothing useful to do about it
            self._sock.sendto("\n".join(assignments).encode(), self._address)

    def ready(self, status: str = "tracing") -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self._stopping = True
        self.notify("STOPPING=1")

    def tick(self) -> None:
        """Called from the tracer's main loop: WATCHDOG=1 at most every half $WATCHDOG_USEC, so a
        stuck loop (not just a live process) is what the watchdog catches."""
        if self._sock is None or self.watchdog_interval is None or self._stopping:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")


# -- service install / uninstall -------------------------------------------------------------------


def _contrib(name: str) -> str:
    return resources.files("outwatch").joinpath("contrib", name).read_text()


def outwatch_executable() -> Path:
    """The `outwatch` entry point of this installation (the venv's, when run from one)."""
    beside = Path(sys.executable).parent / "outwatch"
    found = beside if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("outwatch")
    if found is None:
        raise OutwatchError("cannot find the outwatch executable to put in the unit",
                            hint="install outwatch (make install) so that `outwatch` is on PATH")
    return Path(found).absolute()


def _unit_quote(path: Path) -> str:
    """A path as one word of ExecStart=: % is a specifier, spaces and quotes need quoting."""
    text = str(path).replace("%", "%%")
    if any(c in text for c in ' \t"\'\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render_unit(executable: Path) -> str:
    return _contrib("outwatch.service").replace("@EXECUTABLE@", _unit_quote(executable))


def render_logrotate() -> str:
    return _contrib("outwatch.logrotate")


def systemd_running() -> bool:
    """What sd_booted() checks: systemd is PID 1 and its runtime directory exists."""
    return Path("/run/systemd/system").is_dir()


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def verify_unit(path: Path) -> str | None:
    """`systemd-analyze verify` the unit: its complaints, "" when clean, None when the tool is missing."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return None
    done = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).strip() or ("" if done.returncode == 0 else f"exit {done.returncode}")


@dataclass(slots=True)
class InstallResult:
    unit: Path
    logrotate: Path
    verified: bool  # systemd-analyze verify ran and was clean
    notes: list[str]


def _systemctl(*args: str) -> str | None:
    """Run systemctl when systemd runs here; its error text, or None on success."""
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else (done.stderr.strip() or f"systemctl {' '.join(args)} failed")


def _write(path: Path, text: str) -> None:
    if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
        raise OutwatchError(f"{path} exists and was not installed by outwatch: leaving it alone",
                            hint="remove it or move it away, then run the install again", code=ExitCode.REFUSED)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.rename(path)


def install(prefix: Path = Path("/"), unit_dir: Path | None = None) -> InstallResult:
    """Write the unit (checked with systemd-analyze verify first) and the logrotate file under prefix."""
    if os.geteuid() != 0 and prefix == Path("/"):
        raise OutwatchError("installing the service needs root", hint="run it with sudo", code=ExitCode.NOT_ROOT)
    unit_path = (unit_dir or prefix / UNIT_DIR.relative_to("/")) / UNIT_NAME
    logrotate_path = prefix / LOGROTATE_PATH.relative_to("/")
    unit_text = render_unit(outwatch_executable())
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="outwatch-unit.") as tmp:
        staging = Path(tmp) / UNIT_NAME
        staging.write_text(unit_text)
        problems = verify_unit(staging)
    if problems:
        raise OutwatchError(f"systemd-analyze verify rejects the unit:\n{problems}")
    if problems is None:
        notes.append("systemd-analyze is not installed: the unit was not verified")
    _write(unit_path, unit_text)
    _write(logrotate_path, render_logrotate())
    config_path = prefix / CONFIG_PATH.relative_to("/")
    if not config_path.exists():
        _write(config_path, _contrib("outwatch.toml"))
        notes.append(f"wrote a starter configuration to {config_path} (events to /var/log/outwatch/)")
    if not systemd_running():
        notes.append(f"systemd is not running on this machine (PID 1 is {_pid1()}): the unit cannot be "
                     "started here")
    elif prefix == Path("/"):
        error = _systemctl("daemon-reload")
        if error:
            notes.append(f"systemctl daemon-reload: {error}")
        notes.append("start it now and at every boot: systemctl enable --now outwatch.service")
    return InstallResult(unit_path, logrotate_path, problems == "", notes)


def uninstall(prefix: Path = Path("/"), unit_dir: Path | None = None) -> list[str]:
    """Stop and disable the service (when systemd runs), remove the files we installed; what was done."""
    if os.geteuid() != 0 and prefix == Path("/"):
        raise OutwatchError("removing the service needs root", hint="run it with sudo", code=ExitCode.NOT_ROOT)
    unit_path = (unit_dir or prefix / UNIT_DIR.relative_to("/")) / UNIT_NAME
    logrotate_path = prefix / LOGROTATE_PATH.relative_to("/")
    done: list[str] = []
    live = prefix == Path("/") and systemd_running()
    if live and unit_path.exists():
        error = _systemctl("disable", "--now", UNIT_NAME)
        done.append(f"systemctl disable --now {UNIT_NAME}: {error or 'done'}")
    for path in (unit_path, logrotate_path):
        if not path.exists():
            done.append(f"{path}: not installed")
        elif not path.read_text(errors="replace").startswith(MARKER):
            done.append(f"{path}: not installed by outwatch, left alone")
        else:
            path.unlink()
            done.append(f"removed {path}")
    if live:
        error = _systemctl("daemon-reload")
        if error:
            done.append(f"systemctl daemon-reload: {error}")
    done.append("kept /etc/outwatch, /var/log/outwatch and /var/lib/outwatch (events, spool): remove them by hand")
    return done
