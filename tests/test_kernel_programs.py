"""The BPF programs themselves: both probe sets compile and pass the verifier, and the Python
decoder's layouts match the C structs BCC compiled."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

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


_PTRACE_TRACEME, _PTRACE_CONT, _PTRACE_DETACH, _PTRACE_SETOPTIONS = 0, 7, 17, 0x4200
_PTRACE_O_TRACEEXEC, _PTRACE_EVENT_EXEC = 0x10, 4


def test_an_exec_under_way_is_flagged_in_the_fork_map() -> None:
    """/proc/PID/exe changes before the exec's record is made, so userspace must know when an exec is
    under way. A child stopped by ptrace inside execve (at PTRACE_EVENT_EXEC, before the syscall
    returns) shows exec_busy; once it runs the new image, the flag is clear."""
    require_root()
    libc = ctypes.CDLL(None, use_errno=True)
    with KernelProbes(include_loopback=True, ringbuf_pages=64) as probes:
        probes.start(lambda record: None)
        pid = os.fork()
        if pid == 0:
            try:
                libc.ptrace(_PTRACE_TRACEME, 0, None, None)
                os.kill(os.getpid(), signal.SIGSTOP)
                os.execv("/usr/bin/sleep", ["sleep", "30"])
            finally:
                os._exit(127)
        try:
            _, status = os.waitpid(pid, 0)
            assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP
            assert libc.ptrace(_PTRACE_SETOPTIONS, pid, None, ctypes.c_void_p(_PTRACE_O_TRACEEXEC)) == 0
            before = probes.fork_entry(pid)
            assert libc.ptrace(_PTRACE_CONT, pid, None, None) == 0
            _, status = os.waitpid(pid, 0)
            assert os.WIFSTOPPED(status) and status >> 16 == _PTRACE_EVENT_EXEC, hex(status)
            during = probes.fork_entry(pid)
            assert libc.ptrace(_PTRACE_DETACH, pid, None, None) == 0
            deadline = time.monotonic() + 5
            while (after := probes.fork_entry(pid)) is not None and after[3] and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert before is not None and not before[3]
    assert during is not None and during[3], "exec_busy should be set while execve has not returned"
    assert during[2] > before[2], "the exec's time is recorded at sched_process_exec"
    assert after is not None and not after[3], "exec_busy should clear when execve returns"
