"""Reading the systemd journal through journalctl (the format is not a stable file format to parse).

journalctl is this host's binary, also for a mounted image (`--directory`): nothing from the
image runs. Without journal files (no systemd running, as on some containers and micro-VMs)
journalctl prints "No journal files were found." and exits 0: that is reported as unavailable,
not as "no entries".
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class JournalUnavailable(Exception):
    pass


def journal(args: list[str], directory: Path | None = None) -> Iterator[str]:
    """Lines of `journalctl -o short-iso-precise ARGS`, streamed; raises JournalUnavailable."""
    # Not --quiet: it also hides "No journal files were found.", the one sign there is no journal.
    cmd = ["journalctl", "--no-pager", "--output=short-iso-precise", *args]
    if directory is not None:
        cmd.append(f"--directory={directory}")
    env = {**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
    except FileNotFoundError as e:
        raise JournalUnavailable("journalctl is not installed") from e
    with proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if not line.startswith("-- "):  # "-- No entries --", "-- Boot 1a2b... --" markers
                yield line.rstrip("\n")
        err = proc.stderr.read(4096).strip()
        rc = proc.wait()
    if rc != 0 or "No journal files were found" in err:
        raise JournalUnavailable(err.splitlines()[0] if err else f"journalctl exited with status {rc}")
