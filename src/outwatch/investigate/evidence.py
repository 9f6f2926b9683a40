"""An evidence bundle of one process: what dies with it, copied before anyone kills it.

Only /proc is read (no ptrace, no signals). The executable is copied through /proc/PID/exe, so a
deleted or memfd binary is preserved. Files are written read-only (the copied executable is not
executable) and listed with their sha256 in MANIFEST.sha256, checkable with `sha256sum -c`.
"""

from __future__ import annotations

import getpass
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

from outwatch import __version__
from outwatch.errors import ExitCode, OutwatchError
from outwatch.investigate.common import now_ns, os_reason, rfc3339, rfc3339_ns
from outwatch.investigate.inspect import Inspection

_CHUNK = 1 << 20
# /proc/PID file -> bundle file name
_PROC_FILES = (
    ("cmdline", "cmdline"),
    ("environ", "environ"),
    ("maps", "maps"),
    ("status", "status"),
    ("cgroup", "cgroup"),
    ("mountinfo", "mountinfo"),
)
MANIFEST = "MANIFEST.sha256"


@dataclass(slots=True)
class Bundle:
    directory: Path
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    missing: dict[str, str] = field(default_factory=dict)  # name -> why not collected

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def write_bundle(inspection: Inspection, directory: Path) -> Bundle:
    pid = inspection.view.pid
    _prepare(directory)
    bundle = Bundle(directory)
    _copy(bundle, f"/proc/{pid}/exe", "exe")
    expected = inspection.record["process"].get("hash", {}).get("sha256")
    if expected and bundle.files.get("exe") not in (None, expected):
        bundle.missing["exe"] = "the executable changed while it was copied (sha256 differs from inspection)"
    for proc_name, name in _PROC_FILES:
        _copy(bundle, f"/proc/{pid}/{proc_name}", name)
    _write(bundle, "fds.txt", _fd_list(pid, bundle).encode())
    _write(bundle, "inspect.ndjson", b"".join(orjson.dumps(e) + b"\n" for e in inspection.findings))
    if not _same_process(pid, inspection.view.create_time):
        bundle.missing["process"] = "the process exited or its pid was reused during collection"
    _write(bundle, "COLLECTION.txt", _collection_note(inspection, bundle).encode())
    manifest = "".join(f"{digest}  {name}\n" for name, digest in sorted(bundle.files.items()))
    with _open_new(directory / MANIFEST) as f:
        _checked_write(f, manifest.encode(), directory)
    return bundle


def _prepare(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise OutwatchError(
            f"{directory} exists and is not a directory", "give a new or empty directory", ExitCode.USAGE
        )
    if directory.is_dir() and any(directory.iterdir()):
        raise OutwatchError(
            f"refusing to write evidence into {directory}: it is not empty",
            "give a new or empty directory; existing evidence is never overwritten",
            ExitCode.REFUSED,
        )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise OutwatchError(f"cannot create {directory}: {e.strerror}", "choose a writable location") from e


def _copy(bundle: Bundle, source: str, name: str) -> None:
    """Stream a /proc file into the bundle. A failed read is a gap in the evidence (noted); a failed
    write is a failure of the bundle (raised)."""
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        bundle.missing[name] = os_reason(e)
        return
    digest = hashlib.sha256()
    with src, _open_new(bundle.directory / name) as dst:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except OSError as e:
                bundle.missing[name] = f"read cut short: {os_reason(e)}"
                break
            if not chunk:
                break
            digest.update(chunk)
            _checked_write(dst, chunk, bundle.directory)
    bundle.files[name] = digest.hexdigest()


def _write(bundle: Bundle, name: str, data: bytes) -> None:
    with _open_new(bundle.directory / name) as f:
        _checked_write(f, data, bundle.directory)
    bundle.files[name] = hashlib.sha256(data).hexdigest()


def _checked_write(f, data: bytes, directory: Path) -> None:
    try:
        f.write(data)
    except OSError as e:
        raise OutwatchError(
            f"cannot write evidence to {directory}: {e.strerror}", "free some space or choose another disk"
        ) from e


def _open_new(path: Path):
    """Create a new read-only file; never follow or overwrite something already there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    except OSError as e:
        raise OutwatchError(f"cannot write evidence file {path}: {e.strerror}", "give a writable directory") from e
    return os.fdopen(fd, "wb", buffering=0)  # unbuffered: a full disk fails in write(), not at close


def _fd_list(pid: int, bundle: Bundle) -> str:
    base = f"/proc/{pid}/fd"
    try:
        names = sorted(os.listdir(base), key=int)
    except OSError as e:
        bundle.missing["fds.txt"] = os_reason(e)
        return ""
    lines = []
    for name in names:
        try:
            lines.append(f"{name} -> {os.readlink(f'{base}/{name}')}")
        except OSError as e:
            lines.append(f"{name} -> ? ({os_reason(e)})")
    return "\n".join(lines) + "\n"


def _same_process(pid: int, create_time: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == create_time
    except psutil.Error:
        return False


def _collection_note(inspection: Inspection, bundle: Bundle) -> str:
    process = inspection.record["process"]
    lines = [
        f"collected by outwatch {__version__} as {getpass.getuser()} (uid {os.geteuid()})",
        f"collected at {rfc3339_ns(now_ns())}",
        f"host {inspection.record['host'].get('name', '?')}",
        f"pid {inspection.view.pid} started {rfc3339(inspection.view.create_time)}",
        f"executable {process.get('executable', '?')}",
        "read-only collection from /proc: the process was not stopped, traced or signalled",
        "exe is a copy of /proc/PID/exe (the running image, also when deleted or memfd), stored mode 0400",
    ]
    lines += [f"NOT COLLECTED {name}: {why}" for name, why in sorted(bundle.missing.items())]
    return "\n".join(lines) + "\n"
