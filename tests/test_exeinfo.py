"""exe_facts and sha256_of on real processes: a plain copy, a deleted file, a memfd, a tricky name."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from conftest_investigate import SLEEP, memfd_process, sleep_copy

from outwatch.proc.exeinfo import digests_of, exe_facts, sha256_of


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_plain_then_deleted(tmp_path: Path) -> None:
    with sleep_copy(tmp_path) as (proc, exe):
        os.chmod(exe, 0o4711)
        facts = exe_facts(proc.pid)
        assert facts is not None
        st = os.stat(exe)
        assert (facts.path, facts.deleted, facts.memfd) == (str(exe), False, False)
        assert (facts.dev, facts.ino, facts.mtime_ns, facts.size) == (
            st.st_dev,
            st.st_ino,
            st.st_mtime_ns,
            st.st_size,
        )
        assert (facts.uid, facts.mode) == (st.st_uid, 0o4711)
        original = _sha256(exe)
        assert sha256_of(proc.pid) == sha256_of(str(exe)) == original

        exe.unlink()
        gone = exe_facts(proc.pid)
        assert gone is not None
        assert (gone.path, gone.deleted, gone.memfd, gone.ino) == (str(exe), True, False, st.st_ino)
        assert sha256_of(proc.pid) == original


def test_replaced_file_is_deleted(tmp_path: Path) -> None:
    """A package upgrade replaces the file under a running daemon: same path, different inode."""
    with sleep_copy(tmp_path) as (proc, exe):
        exe.unlink()
        exe.write_bytes(b"#!/bin/sh\n")
        facts = exe_facts(proc.pid)
        assert facts is not None and facts.deleted and facts.path == str(exe)


def test_memfd() -> None:
    with memfd_process("kworker") as proc:
        facts = exe_facts(proc.pid)
        assert facts is not None
        assert (facts.path, facts.deleted, facts.memfd) == ("/memfd:kworker", True, True)
        assert stat.S_IMODE(facts.mode) == facts.mode
        assert sha256_of(proc.pid) == _sha256(SLEEP)


def test_file_really_named_deleted(tmp_path: Path) -> None:
    with sleep_copy(tmp_path, name="tool (deleted)") as (proc, exe):
        facts = exe_facts(proc.pid)
        assert facts is not None
        assert (facts.path, facts.deleted) == (str(exe), False)


def test_vanished_and_kernel_thread() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert exe_facts(proc.pid) is None
    assert exe_facts(2) is None  # kthreadd has no executable


def test_digests_one_pass(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(os.urandom(3 << 20) + b"tail")
    data = f.read_bytes()
    assert digests_of(str(f), "sha256", "md5") == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
