"""Compiling and attaching the BPF programs, and reading what they send.

Probe sets (shared/DESIGN.md): "cgroup" (sock_addr hooks on the cgroup v2 root, attached with BPF
links, can deny) and "kprobe" (kprobes on the connect and UDP send paths). Both use the same
tracepoints for process lineage and TCP progress, the same ring buffer and the same decoder.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel import bpfsys, headers, mounts
from outwatch.kernel.deny import DenyMap
from outwatch.kernel.records import (
    EV_NAMES,
    UDP_KEY,
    ConnectRecord,
    Header,
    Record,
    decode,
    decode_connect,
    ip_text,
)

PROBE_SETS = ("auto", "cgroup", "kprobe")
# 16 MiB: a burst is held here while userspace catches up. One TCP connect is one 128-byte entry, so
# this absorbs some 130,000 connects (seconds of a local flood) without a loss. The buffer is mapped
# twice into the process (it counts twice in RSS): more would cost memory for rare floods.
RINGBUF_PAGES = 4096
POLL_BATCH = 4096  # records handled per poll() at most
UDP_WINDOW_NS = 1_000_000_000  # mirrors OW_UDP_WINDOW_NS in bpf/outwatch.h
TCP_HOLD_NS = 1_000_000_000  # a TCP connect still waiting for its outcome after this is reported as unknown

_COMMON_SOURCES = ("maps.h", "connect.h", "process.c", "sockstate.c")
_CGROUP_PROGRAMS = (
    ("ow_connect4", bpfsys.CGROUP_INET4_CONNECT),
    ("ow_connect6", bpfsys.CGROUP_INET6_CONNECT),
    ("ow_sendmsg4", bpfsys.CGROUP_UDP4_SENDMSG),
    ("ow_sendmsg6", bpfsys.CGROUP_UDP6_SENDMSG),
)
KPROBE_PROGRAMS = (
    ("ow_kp_tcp_v4_connect", "tcp_v4_connect"),
    ("ow_kp_tcp_v6_connect", "tcp_v6_connect"),
    ("ow_kp_udp_sendmsg", "udp_sendmsg"),
    ("ow_kp_udpv6_sendmsg", "udpv6_sendmsg"),
)


_libc = ctypes.CDLL("libc.so.6")
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now; their contents stay as they were
_COMPILER_LIBS = ("libLLVM", "libclang")


def release_compiler_pages() -> None:
    """Hand back the resident pages of BCC's compiler libraries (LLVM, clang: some 85 MB) once the
    programs are loaded; nothing uses them again unless another program is compiled, which would
    simply read them back in. A kernel that refuses the advice (before 5.4) changes nothing."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].rpartition("/")[2].startswith(_COMPILER_LIBS):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            _libc.madvise(start, end - start, _MADV_PAGEOUT)


def bpf_dir() -> Path:
    """The BPF C sources: shipped in the package (a symlink to bpf/ in a checkout)."""
    return Path(str(resources.files("outwatch") / "bpf"))


def program_text(probe_set: str, ringbuf_pages: int = RINGBUF_PAGES) -> str:
    """The C given to BCC: its rewriter only handles map calls in the main text, so the files that
    use maps are concatenated rather than #included."""
    src = bpf_dir()
    parts = [f"#define OW_RINGBUF_PAGES {ringbuf_pages}\n#include \"outwatch.h\"\n"]
    for name in (*_COMMON_SOURCES, f"{probe_set}.c"):
        parts.append(f"/* ---- {name} ---- */\n" + (src / name).read_text())
    return "\n".join(parts)


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as exc:
        raise OutwatchError(
            "BCC's Python bindings are missing (module 'bcc')",
            "apt-get install python3-bpfcc, and run outwatch from a venv made with "
            "`/usr/bin/python3 -m venv --system-site-packages` (make install does both)",
            ExitCode.NO_BCC,
        ) from exc
    return bcc


def require_root() -> None:
    if os.geteuid() != 0:
        raise OutwatchError(
            "the live tracer needs root (it loads BPF programs)",
            "run it with sudo, or as root",
            ExitCode.NOT_ROOT,
        )


def kprobes_available() -> bool:
    return any((d / "kprobe_events").exists() for d in mounts.TRACEFS_DIRS)


@dataclass(slots=True)
class Choice:
    probe_set: str
    reason: str


class KernelProbes:
    """The loaded programs: ring buffer, loss counters, deny map, UDP repeat sweep.

    Use as a context manager; closing releases every fd, which detaches everything. A SIGKILL does
    the same (BPF links and perf-event tracepoints die with their fds).
    """

    def __init__(self, probes: str = "auto", include_loopback: bool = False,
                 ringbuf_pages: int = RINGBUF_PAGES) -> None:
        if probes not in PROBE_SETS:
            raise OutwatchError(f"unknown probe set {probes!r}", "use auto, cgroup or kprobe", ExitCode.USAGE)
        self._want = probes
        self._include_loopback = include_loopback
        self._ringbuf_pages = ringbuf_pages
        self._bpf: Any = None
        self._links: list[int] = []
        self._cgroup_fd: int | None = None
        self.choice: Choice | None = None
        self.headers_note = ""
        self.deny: DenyMap | None = None
        self._sink: Callable[[Record], None] | None = None
        self._batch: list[bytes] = []

    def __enter__(self) -> KernelProbes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, on_record: Callable[[Record], None]) -> Choice:
        require_root()
        bcc = import_bcc()
        self.headers_note = headers.use_headers().note
        mounts.ensure_tracefs()
        choice = self._choose()
        self._bpf = self._compile(bcc, choice.probe_set)
        settings = self._bpf["config"]
        leaf = settings[ctypes.c_int(0)]
        leaf.self_pid = os.getpid()
        leaf.include_loopback = int(self._include_loopback)
        settings[ctypes.c_int(0)] = leaf
        self._sink = on_record
        self._bpf["events"].open_ring_buffer(self._on_raw)
        if choice.probe_set == "cgroup":
            self._attach_cgroup(bcc)
            self.deny = DenyMap(self._bpf["deny4"], self._bpf["deny6"])
        else:
            self._attach_kprobes()
        release_compiler_pages()
        self.choice = choice
        return choice

    def _choose(self) -> Choice:
        if self._want == "kprobe":
            return Choice("kprobe", "asked for with --probes kprobe")
        try:
            root, how = mounts.ensure_cgroup2()
        except OSError as exc:
            if self._want == "cgroup":
                raise OutwatchError(
                    f"no usable cgroup v2: {exc}", "use --probes kprobe", ExitCode.KERNEL_UNSUPPORTED
                ) from exc
            if not kprobes_available():
                raise OutwatchError(
                    f"no usable cgroup v2 ({exc}) and no kprobes in this kernel",
                    "mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup) or use a kernel with CONFIG_KPROBES",
                    ExitCode.KERNEL_UNSUPPORTED,
                ) from exc
            return Choice("kprobe", f"auto: no usable cgroup v2 ({exc}), using kprobes")
        self._cgroup_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        if self._want == "cgroup":
            return Choice("cgroup", f"asked for with --probes cgroup ({how})")
        return Choice("cgroup", f"auto: {how}, hooks attached with BPF links (can block)")

    def _compile(self, bcc: Any, probe_set: str) -> Any:
        try:
            loaded = bcc.BPF(text=program_text(probe_set, self._ringbuf_pages), cflags=[f"-I{bpf_dir()}", "-w"])
        except Exception as exc:
            raise OutwatchError(
                f"this kernel refused outwatch's BPF programs: {str(exc).splitlines()[0]}",
                "outwatch needs Linux >= 5.8 with BPF ring buffers, tracepoints and BTF; "
                "see the verifier output above",
                ExitCode.KERNEL_UNSUPPORTED,
            ) from exc
        _libc.malloc_trim(0)  # give back the heap the compiler used (tens of MB of resident memory)
        return loaded

    def _attach_cgroup(self, bcc: Any) -> None:
        assert self._cgroup_fd is not None
        for name, attach_type in _CGROUP_PROGRAMS:
            fn = self._bpf.load_func(name, bcc.BPF.CGROUP_SOCK_ADDR, attach_type=attach_type)
            try:
                self._links.append(bpfsys.link_create(fn.fd, self._cgroup_fd, attach_type))
            except OSError as exc:
                self.close()
                raise OutwatchError(
                    f"could not attach {name} to the cgroup v2 root with a BPF link: {exc.strerror}",
                    "outwatch needs Linux >= 5.7 (BPF links for cgroups); try --probes kprobe",
                    ExitCode.KERNEL_UNSUPPORTED,
                ) from exc

    def _attach_kprobes(self) -> None:
        for fn_name, kernel_fn in KPROBE_PROGRAMS:
            try:
                self._bpf.attach_kprobe(event=kernel_fn, fn_name=fn_name)
            except Exception as exc:
                self.close()
                raise OutwatchError(
                    f"could not attach a kprobe on {kernel_fn}: {str(exc).splitlines()[0]}",
                    "this kernel has no usable kprobes (CONFIG_KPROBES); use --probes cgroup",
                    ExitCode.KERNEL_UNSUPPORTED,
                ) from exc

    def _on_raw(self, _ctx: int, data: int, size: int) -> int:
        """Only copies: records are handled after the poll, in plain Python, where the interpreter's
        switch interval lets the output threads run (work done inside a ctypes callback per record
        starves them). A negative return makes libbpf stop after this record: the rest stays in the
        ring buffer, and a long burst still leaves the caller time for its timers and signals."""
        self._batch.append(ctypes.string_at(data, size))
        return -1 if len(self._batch) >= POLL_BATCH else 0

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records, then hand up to POLL_BATCH of them to the callback
        given to start(). Returns how many."""
        self._bpf.ring_buffer_poll(timeout_ms)
        batch, self._batch = self._batch, []
        sink = self._sink
        for data in batch:
            record = decode(data)
            if record is not None and sink is not None:
                sink(record)
        return len(batch)

    def fork_entry(self, pid: int) -> tuple[int, int, int, bool] | None:
        """(parent pid, fork time, last exec time, exec in progress) from the kernel's fork map."""
        if self._bpf is None:
            return None
        leaf = self._bpf["forks"].get(ctypes.c_uint32(pid))
        return (leaf.ppid, leaf.start_ns, leaf.exec_ns, bool(leaf.exec_busy)) if leaf is not None else None

    def lost(self) -> dict[str, int]:
        """Ring buffer reservations that failed since start, by record type (summed over CPUs)."""
        table = self._bpf["lost"]
        out: dict[str, int] = {}
        for idx, name in EV_NAMES.items():
            out[name] = sum(table[ctypes.c_int(idx)])
        return out

    def sweep_udp(self, now_ns: int | None = None) -> list[ConnectRecord]:
        """Repeats counted in the kernel for UDP flows idle past the window, as records to report."""
        now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_ns is None else now_ns
        table = self._bpf["udp_flows"]
        out: list[ConnectRecord] = []
        for key, val in list(table.items()):
            if not val.repeats or now_ns - val.window_start_ns < UDP_WINDOW_NS:
                continue
            taken = table.Leaf()
            if not bpfsys.lookup_and_delete(table.map_fd, key, taken) or not taken.repeats:
                continue
            pid, family, dport, daddr, verdict = UDP_KEY.unpack(bytes(key))
            repeats = taken.repeats
            header = Header(now_ns, pid, pid, 0, 0, -1, 0, -1, -1, b"")
            out.append(ConnectRecord(header, family, ip_text(family, daddr), dport, 17, 2,
                                     verdict == 1, self.choice.probe_set if self.choice else "cgroup",
                                     repeats))
        return out

    def sweep_tcp(self, now_ns: int | None = None) -> list[ConnectRecord]:
        """TCP connects still waiting for an outcome after TCP_HOLD_NS (a SYN to a silent host, a
        connect that failed before SYN_SENT): taken out of the kernel and reported, outcome unknown."""
        now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_ns is None else now_ns
        out: list[ConnectRecord] = []
        for name in ("tcp_by_tid", "tcp_by_sk"):
            table = self._bpf[name]
            for key, val in list(table.items()):
                if now_ns - val.h.ts_ns < TCP_HOLD_NS:
                    continue
                taken = table.Leaf()
                if bpfsys.lookup_and_delete(table.map_fd, key, taken):
                    out.append(decode_connect(bytes(taken)))
        return out

    def close(self) -> None:
        for fd in self._links:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links.clear()
        if self._cgroup_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._cgroup_fd)
            self._cgroup_fd = None
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None
