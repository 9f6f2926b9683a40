"""Facts about a process's executable, read through /proc/PID/exe.

/proc/PID/exe is a handle on the inode the process runs, not on a path: stat() and open() through it
work after the file was deleted or replaced, and for memfd executables that never had a path. The
link text says " (deleted)" when the name no longer leads to that inode.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

_DELETED = " (deleted)"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ExeFacts:
    path: str  # as the process's mount namespace names it, without the " (deleted)" suffix
    deleted: bool  # the path no longer leads to this file (also true for every memfd)
    memfd: bool  # run from memory: memfd_create + execveat/fexecve, link text "/memfd:NAME (deleted)"
    dev: int
    ino: int
    mtime_ns: int
    uid: int  # owner of the executable file
    mode: int  # permission bits only (stat.S_IMODE), e.g. 0o4755
    size: int


def exe_facts(pid: int) -> ExeFacts | None:
    """The executable of a live pid, or None for kernel threads, vanished or unreadable pids."""
    link = f"/proc/{pid}/exe"
    try:
        target = os.readlink(link)
        st = os.stat(link)
    except OSError:
        return None
    memfd = target.startswith("/memfd:")
    deleted = False
    if target.endswith(_DELETED):
        # A file can really be called "x (deleted)": then that name still leads to this inode.
        deleted = memfd or not _same_inode(f"/proc/{pid}/root{target}", st)
        if deleted:
            target = target[: -len(_DELETED)]
    return ExeFacts(
        path=target,
        deleted=deleted,
        memfd=memfd,
        dev=st.st_dev,
        ino=st.st_ino,
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size,
    )


def sha256_of(pid_or_path: int | str) -> str:
    """Hex sha256 of a pid's executable (via /proc/PID/exe) or of a file. Raises OSError."""
    return digests_of(pid_or_path, "sha256")["sha256"]


def digests_of(pid_or_path: int | str, *algorithms: str) -> dict[str, str]:
    """Hex digests of a pid's executable or a file in one streaming pass. Raises OSError."""
    path = f"/proc/{pid_or_path}/exe" if isinstance(pid_or_path, int) else pid_or_path
    hashes = [hashlib.new(name) for name in algorithms]
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashes:
                h.update(chunk)
    return {name: h.hexdigest() for name, h in zip(algorithms, hashes, strict=True)}


def _same_inode(path: str, st: os.stat_result) -> bool:
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
