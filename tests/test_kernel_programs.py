"""The BPF programs themselves: both probe sets compile and pass the verifier, and the Python
decoder's layouts match the C structs BCC compiled."""

from __future__ import annotations

import ctypes
import subprocess

from conftest import require_root

from outwatch.kernel import headers, mounts
from outwatch.kernel.probes import KPROBE_PROGRAMS, KernelProbes, bpf_dir, import_bcc, program_text
from outwatch.kernel.records import CONNECT, EXEC_HEAD, UDP_KEY


def _compile(probe_set: str):
    require_root()
    headers.use_headers()
    mounts.ensure_tracefs()
    bcc = import_bcc()
    return bcc, bcc.BPF(text=program_text(probe_set, 64), cflags=[f"-I{bpf_dir()}", "-w"])


def test_kprobe_programs_pass_the_verifier() -> None:
    bcc, b = _compile("kprobe")
    try:
        for fn_name, _kernel_fn in KPROBE_PROGRAMS:
            assert b.load_func(fn_name, bcc.BPF.KPROBE).fd > 0
    finally:
        b.cleanup()


def test_record_layouts_match_the_c_structs() -> None:
    _bcc, b = _compile("cgroup")
    try:
        assert ctypes.sizeof(b["exec_args"].Leaf) == EXEC_HEAD.size + 8192
        assert ctypes.sizeof(b["udp_flows"].Key) == UDP_KEY.size
        exec_fields = dict(b["exec_args"].Leaf._fields_)
        assert "args" in exec_fields and "filename" in exec_fields
        assert ctypes.sizeof(b["tcp_by_sk"].Leaf) == CONNECT.size
    finally:
        b.cleanup()


def test_cgroup2_is_found_from_mountinfo() -> None:
    text = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert str(mounts.cgroup2_mount(text)) == "/sys/fs/cgroup/unified"
    assert mounts.cgroup2_mount("41 31 0:38 /sub /x rw - cgroup2 cgroup2 rw\n") is None
    assert str(mounts.cgroup2_mount("1 1 0:1 / /my\\040cg rw - cgroup2 none rw\n")) == "/my cg"


def test_ring_buffer_losses_are_counted() -> None:
    """A one-page ring buffer that nobody reads: exec records (argv up to 8 KiB) cannot all fit, and
    every failed reservation shows in the loss counters."""
    require_root()
    seen: list[object] = []
    with KernelProbes(include_loopback=True, ringbuf_pages=1) as probes:
        probes.start(seen.append)
        for _ in range(20):
            subprocess.run(["/bin/true", "x" * 2000, "y" * 2000], check=True)
        lost = probes.lost()
    assert lost["exec"] > 0
    assert set(lost) == {"connect", "exec", "exit", "tcperror"}


def _resident_kib(name_prefixes: tuple[str, ...]) -> tuple[int, int]:
    """(resident KiB, mapped KiB) of this process's mappings of files whose name starts with a prefix."""
    rss = size = 0
    ours = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split(maxsplit=5)
                ours = len(parts) == 6 and parts[5].strip().rpartition("/")[2].startswith(name_prefixes)
            elif ours and first == "Rss:":
                rss += int(line.split()[1])
            elif ours and first == "Size:":
                size += int(line.split()[1])
    return rss, size


def test_compiler_pages_are_handed_back_after_loading() -> None:
    """BCC's LLVM and clang libraries (some 85 MB resident after a compile) are not needed once the
    programs are loaded: start() hands their pages back, so an idle tracer does not carry them."""
    require_root()
    with KernelProbes(include_loopback=True, ringbuf_pages=64) as probes:
        probes.start(lambda record: None)
        rss, size = _resident_kib(("libLLVM", "libclang"))
    assert size > 50_000, "BCC's compiler libraries should be mapped in this process"
    assert rss < 20_000, f"{rss} KiB of compiler pages still resident after start()"
