"""Which Debian package owns a file, and does the file still match the package's checksum (debsums-like).

Read from dpkg's database directly rather than `dpkg-query -S`: it works on a mounted image (hunt
--root), never runs anything, and handles merged /usr, where the kernel names /usr/bin/sleep but
coreutils lists /bin/sleep (`dpkg-query -S /usr/bin/sleep` finds nothing on Debian 12).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Debian 12 merged /usr: each of these top-level dirs is a symlink into /usr.
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True, slots=True)
class PackageFile:
    package: str  # e.g. "coreutils" or "libc6:amd64"
    listed_path: str  # the path as the package lists it
    md5: str | None  # recorded checksum (none for conffiles and some packages)


def aliases(path: str) -> list[str]:
    """The path and its merged-/usr twin: /usr/bin/x <-> /bin/x."""
    out = [path]
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1] == "usr" and parts[2].split("/")[0] in _MERGED:
        out.append("/" + path[len("/usr/") :])
    elif len(parts) >= 2 and parts[1] in _MERGED:
        out.append("/usr" + path)
    return out


def owner_of(path: str, root: Path = Path("/")) -> PackageFile | None:
    """The package listing `path` (or its merged-/usr twin) in root's dpkg database, if any."""
    info = root / "var/lib/dpkg/info"
    needles = [(p, f"\n{p}\n".encode()) for p in aliases(path)]
    try:
        entries = list(os.scandir(info))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.endswith(".list"):
            continue
        try:
            data = b"\n" + Path(entry.path).read_bytes()
        except OSError:
            continue
        for listed, needle in needles:
            if needle in data:
                package = entry.name[: -len(".list")]
                return PackageFile(package, listed, _md5_of(info / f"{package}.md5sums", listed))
    return None


def owned_paths(root: Path = Path("/")) -> set[str] | None:
    """Every path any package lists (for hunt: a unit or cron file no package installed was added by hand)."""
    info = root / "var/lib/dpkg/info"
    try:
        entries = [e for e in os.scandir(info) if e.name.endswith(".list")]
    except OSError:
        return None
    paths: set[str] = set()
    for entry in entries:
        try:
            text = Path(entry.path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            paths.update(aliases(line))
    # dpkg-divert moves a package's file aside (/usr/bin/x -> /usr/bin/x.distrib): three lines per
    # diversion, from, to, and the diverting package.
    try:
        lines = (root / "var/lib/dpkg/diversions").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for i in range(0, len(lines) - 2, 3):
        paths.update(aliases(lines[i + 1]))
    return paths


def _md5_of(md5sums: Path, listed: str) -> str | None:
    want = listed.lstrip("/")
    try:
        with open(md5sums, encoding="utf-8", errors="replace") as f:
            for line in f:
                digest, _, name = line.rstrip("\n").partition("  ")
                if name == want:
                    return digest
    except OSError:
        return None
    return None
