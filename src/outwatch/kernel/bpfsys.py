"""The few bpf(2) and mount(2) calls BCC's Python bindings do not offer, through ctypes.

BCC attaches cgroup programs with the legacy BPF_PROG_ATTACH, which replaces another tool's program
and outlives our process. A BPF link (BPF_LINK_CREATE) coexists with other programs and is detached
by the kernel when its last fd closes, however the process dies (shared/KERNEL.md).
"""

from __future__ import annotations

import ctypes
import os
import platform

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
_BPF_LINK_CREATE = 28

# enum bpf_attach_type (uapi/linux/bpf.h)
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
CGROUP_UDP4_SENDMSG = 14
CGROUP_UDP6_SENDMSG = 15

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 48),
    ]


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach a program to a cgroup with a BPF link; returns the link fd (close it to detach)."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=0)
    return _bpf(_BPF_LINK_CREATE, attr)


def lookup_and_delete(map_fd: int, key: ctypes.Array | ctypes.Structure, value: ctypes.Array) -> bool:
    """Atomically read and remove one hash-map element; False when the key is gone."""
    attr = _MapElemAttr(
        map_fd=map_fd,
        key=ctypes.addressof(key),
        value=ctypes.addressof(value),
        flags=0,
    )
    try:
        _bpf(_BPF_MAP_LOOKUP_AND_DELETE_ELEM, attr)
    except FileNotFoundError:
        return False
    return True


_CLONE_NEWNS = 0x00020000
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def unshare_mounts() -> None:
    """Give this process a private mount namespace (before any thread starts)."""
    if _libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    if _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"make / private: {os.strerror(err)}")
