"""Kernel headers for BCC's compiler, with a fallback for kernels that have no headers package.

BCC compiles the BPF C at start-up against `/lib/modules/$(uname -r)/build`. A custom kernel (as on
the micro-VMs this project is tested on) has none; Debian's `linux-headers-amd64` is fine for code
that only uses stable ABI (UAPI structs, tracepoint fields, helpers), which is all `bpf/` uses. Debian
splits those headers into a generated tree and a `-common` tree; BCC wants one, so we build a
symlink farm of the two and point `BCC_KERNEL_SOURCE` at it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from outwatch.errors import ExitCode, OutwatchError

FARM_ROOT = Path("/var/cache/outwatch/kernel-headers")
SRC_ROOT = Path("/usr/src")


@dataclass(frozen=True, slots=True)
class Headers:
    path: Path
    fallback: bool
    note: str


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def _debian_header_pairs(src_root: Path) -> list[tuple[Path, Path]]:
    """(generated, common) pairs of Debian header trees, newest first."""
    pairs = []
    for gen in src_root.glob("linux-headers-*-amd64"):
        common = gen.with_name(gen.name.removesuffix("-amd64") + "-common")
        if (gen / "include").is_dir() and (common / "include").is_dir():
            pairs.append((gen, common))
    for gen in src_root.glob("linux-headers-*-arm64"):
        common = gen.with_name(gen.name.removesuffix("-arm64") + "-common")
        if (gen / "include").is_dir() and (common / "include").is_dir():
            pairs.append((gen, common))
    return sorted(pairs, key=lambda p: _version_key(p[0].name), reverse=True)


def _build_farm(gen: Path, common: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for tree in (common, gen):
        subprocess.run(["cp", "-as", "--remove-destination", f"{tree}/.", str(tmp)], check=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def find_headers(release: str | None = None, src_root: Path = SRC_ROOT, farm_root: Path = FARM_ROOT) -> Headers:
    """Headers BCC can use for this kernel, building the fallback farm if needed."""
    release = release or os.uname().release
    env_dir = os.environ.get("BCC_KERNEL_SOURCE")
    if env_dir and Path(env_dir, "include").is_dir():
        return Headers(Path(env_dir), False, f"using BCC_KERNEL_SOURCE={env_dir}")
    build = Path("/lib/modules", release, "build")
    if (build / "include").is_dir():
        return Headers(build, False, f"using kernel headers from {build}")
    pairs = _debian_header_pairs(src_root)
    if not pairs:
        raise OutwatchError(
            f"no kernel headers for {release}, and no Debian headers package to fall back on",
            "run `make install` (it installs linux-headers-amd64), or "
            f"`apt-get install linux-headers-{release}` if your distribution has it",
            ExitCode.NO_HEADERS,
        )
    gen, common = pairs[0]
    farm = farm_root / gen.name
    if not (farm / "include" / "generated").is_dir() or not (farm / "include" / "linux").is_dir():
        try:
            _build_farm(gen, common, farm)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise OutwatchError(
                f"could not prepare fallback kernel headers in {farm}: {exc}",
                "run as root, or set BCC_KERNEL_SOURCE to a kernel header tree",
                ExitCode.NO_HEADERS,
            ) from exc
    version = gen.name.removeprefix("linux-headers-")
    return Headers(
        farm,
        True,
        f"no headers for kernel {release}: using Debian's {version} headers (stable-ABI BPF code only)",
    )


def use_headers(release: str | None = None) -> Headers:
    """Point BCC at usable headers (sets BCC_KERNEL_SOURCE when falling back)."""
    headers = find_headers(release)
    if headers.fallback:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    return headers


def main() -> int:
    """`python -m outwatch.kernel.headers --setup`: prepare headers once, at `make install`."""
    try:
        headers = use_headers()
    except OutwatchError as exc:
        print(f"outwatch: {exc.message}\n  fix: {exc.hint}", file=sys.stderr)
        return int(exc.code)
    if headers.fallback and "--quiet" not in sys.argv:
        print(f"outwatch: {headers.note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
