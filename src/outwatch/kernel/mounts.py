"""Finding (or making) the filesystems the probes need: cgroup v2 and tracefs."""

from __future__ import annotations

import os
from pathlib import Path

from outwatch.kernel import bpfsys

PRIVATE_CGROUP2 = Path("/run/outwatch/cgroup2")
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return (
        field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
    )


def cgroup2_mount(mountinfo: str) -> Path | None:
    """The first cgroup2 mount point listed in a mountinfo text (its root must be the hierarchy root)."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        fstype = right.split(" ", 1)[0]
        if fstype == "cgroup2" and len(fields) >= 5 and fields[3] == "/":
            return Path(_unescape(fields[4]))
    return None


def ensure_cgroup2() -> tuple[Path, str]:
    """A cgroup2 root to attach to, and how it was found."""
    found = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    if found:
        return found, f"cgroup v2 mounted at {found}"
    bpfsys.unshare_mounts()
    PRIVATE_CGROUP2.mkdir(parents=True, exist_ok=True)
    bpfsys.mount("cgroup2", str(PRIVATE_CGROUP2), "cgroup2")
    return PRIVATE_CGROUP2, f"no cgroup v2 mounted: mounted one privately at {PRIVATE_CGROUP2}"


def ensure_tracefs() -> Path:
    """tracefs, which BCC reads tracepoint formats from; mounted at /sys/kernel/tracing if absent."""
    for d in TRACEFS_DIRS:
        if (d / "events").is_dir():
            return d
    target = TRACEFS_DIRS[0]
    os.makedirs(target, exist_ok=True)
    bpfsys.mount("tracefs", str(target), "tracefs")
    return target
