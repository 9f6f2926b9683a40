"""Where outwatch's time goes under the TCP v4 flood: py-spy samples of the tracer in full mode.

py-spy (PyPI) samples the live process from outside, so the tracer runs unmodified. Only the thread
holding the GIL is sampled (--gil): Python work, not threads waiting in poll(). Without py-spy the
section is skipped with a note.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sessions import OutwatchSession
from tools import ROOT, run_gen

RATE_HZ = 250
FLOOD_S = 2.0
TOP = 15
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
# frames on (nearly) every stack: the entry point and the loop, which say nothing about the cost
_ENTRY = re.compile(r"\((click|cli)/|^<module> |^Tracer\.run |\(threading\.py\)|^Thread\.|^_bootstrap")


@dataclass(slots=True)
class Profile:
    samples: int
    connects: int
    rate: float
    self_top: list[tuple[str, float]]  # (function (file), share of samples with it on top)
    inclusive_top: list[tuple[str, float]]  # (function (file), share of samples with it anywhere), no entry frames


def py_spy() -> str | None:
    local = ROOT / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def frame_name(frame: str) -> str:
    """'decode (/x/outwatch/kernel/records.py:120)' -> 'decode (kernel/records.py)'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    parts = Path(m.group("path")).parts
    return f"{m.group('func')} ({'/'.join(parts[-2:])})"


def aggregate(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """Collapsed stacks ('f1;f2;f3 N' per line) -> (samples, leaf counts, inclusive counts)."""
    total = 0
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf[frames[-1]] += n
        for name in set(frames):
            if not _ENTRY.search(name):
                inclusive[name] += n
    return total, leaf, inclusive


def run(workdir: Path, bins: dict[str, Path], notes: list[str]) -> Profile | None:
    spy = py_spy()
    if spy is None:
        notes.append("profile skipped: py-spy is not installed (`.venv/bin/pip install py-spy`)")
        return None
    out = workdir / "profile.txt"
    s = OutwatchSession(workdir, "profile")
    proc: subprocess.Popen | None = None
    try:
        s.start()
        proc = subprocess.Popen([spy, "record", "--pid", str(s.pid), "--rate", str(RATE_HZ), "--format", "raw",
                                 "--output", str(out), "--nonblocking", "--gil"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        gen = run_gen(bins["connect_gen"], "tcp4", FLOOD_S)
        s.settle()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        s.stop()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        s.close()
        with contextlib.suppress(OSError):
            s.output.unlink()
    if not out.exists():
        notes.append("profile skipped: py-spy wrote no output")
        return None
    total, leaf, inclusive = aggregate(out.read_text(errors="replace"))
    if not total:
        notes.append("profile skipped: py-spy took no samples")
        return None
    return Profile(total, gen.attempts, gen.rate,
                   [(name, n / total) for name, n in leaf.most_common(TOP)],
                   [(name, n / total) for name, n in inclusive.most_common(TOP)])
