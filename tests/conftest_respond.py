"""Fixtures of the containment tests: a sandbox of private namespaces the real CLI runs in.

The sandbox is a holder process in its own mount namespace where /var/log, /var/lib and /run are
private temporary directories: the CLI writes its audit log and block records there and sees no
control socket of a watch running outside. With ufw=True it works on private copies of ufw's files;
given a network namespace (netns=, e.g. NetnsPair's client side), commands run in it, so ufw changes
that namespace's netfilter tables, never the machine's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

RESPOND_CLI = [sys.executable, "-m", "outwatch.cli"]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the containment tests need root (namespaces, ufw, signals): run them as root")


class Sandbox:
    def __init__(self, tmp: Path, *, netns: str | None = None, ufw: bool = False) -> None:
        require_root()
        self.tmp = tmp
        self.netns = netns
        self.varlog, self.varlib, self.run_dir = tmp / "var-log", tmp / "var-lib", tmp / "run"
        for d in (self.varlog, self.varlib, self.run_dir):
            d.mkdir()
        # The holder: a process in a new mount namespace, waited for until it has exec'd sleep.
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        deadline = time.monotonic() + 10
        while _comm(self.holder.pid) != "sleep":
            if self.holder.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail("could not create a mount namespace with unshare")
            time.sleep(0.01)
        try:
            binds = [(self.varlog, "/var/log"), (self.varlib, "/var/lib"), (self.run_dir, "/run")]
            if ufw:
                for src in ("/etc/ufw", "/lib/ufw", "/etc/default/ufw"):
                    copy = tmp / src.strip("/").replace("/", "-")
                    (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, copy)
                    binds.append((copy, src))
            for src, dst in binds:
                self.sh(["mount", "--bind", str(src), dst])
        except BaseException:
            self.close()
            raise

    def enter(self) -> list[str]:
        net = [f"--net=/run/netns/{self.netns}"] if self.netns else []
        return ["nsenter", "-t", str(self.holder.pid), "-m", *net, "--"]

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), *argv], capture_output=True, text=True, timeout=timeout)

    def popen(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.enter(), *argv], stdout=subprocess.PIPE, text=True)

    def sh(self, argv: list[str]) -> str:
        proc = self.run(argv)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed in the sandbox: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real outwatch command line, run as root inside the sandbox."""
        return self.run([*RESPOND_CLI, *args])

    def audit(self) -> list[dict]:
        path = self.varlog / "outwatch" / "audit.ndjson"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
