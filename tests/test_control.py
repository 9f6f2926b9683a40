"""The control socket: root only (directory, socket mode, SO_PEERCRED), one JSON line each way, robust."""

from __future__ import annotations

import ctypes
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from outwatch.control import ControlServer, request
from outwatch.errors import ExitCode, OutwatchError

NOBODY = 65534


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the control socket tests need root (the socket is root only)")


def boom(_request: dict) -> dict:
    raise RuntimeError("a bug in a handler")


def refuse(_request: dict) -> dict:
    raise OutwatchError("not that one", hint="pick another", code=ExitCode.REFUSED)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    require_root()
    handlers: dict[str, Callable[[dict], dict]] = {
        "status": lambda req: {"pid": os.getpid(), "asked_by": req["peer"]},
        "boom": boom,
        "refuse": refuse,
        "echo": lambda req: {"got": req.get("value")},
        "unserializable": lambda req: {"x": object()},
    }
    srv = ControlServer(handlers, path=tmp_path / "run" / "control.sock")
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def as_nobody(fn: Callable[[], Any], dac_override: bool = False) -> Any:
    """Run fn in a forked child as uid/gid 65534; with dac_override the child keeps only that capability
    (so it can reach the 0700 directory and the 0600 socket, and SO_PEERCRED alone must stop it)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if dac_override:
                libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set across setuid
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            if dac_override:

                class Header(ctypes.Structure):
                    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

                class Data(ctypes.Structure):
                    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                                ("inheritable", ctypes.c_uint32)]

                header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
                data[0].effective = data[0].permitted = 1 << 1  # CAP_DAC_OVERRIDE only
                if libc.capset(ctypes.byref(header), data) != 0:
                    raise OSError(ctypes.get_errno(), "capset")
            result = {"value": fn()}
        except OutwatchError as exc:
            result = {"error": exc.message, "code": int(exc.code)}
        except BaseException as exc:
            result = {"crash": repr(exc)}
        os.write(write_end, orjson.dumps(result))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return orjson.loads(data)


def test_request_and_reply(server: ControlServer) -> None:
    reply = request("status", path=server.path)
    assert reply["ok"] is True and reply["pid"] == os.getpid()
    assert reply["asked_by"]["uid"] == 0 and reply["asked_by"]["pid"] == os.getpid()  # from SO_PEERCRED
    assert request("echo", path=server.path, value=[1, "two"])["got"] == [1, "two"]
    spoofed = request("status", path=server.path, peer={"uid": 1000, "pid": 1})
    assert spoofed["asked_by"]["pid"] == os.getpid()  # the client cannot choose who it is


def test_permissions(server: ControlServer) -> None:
    directory = os.stat(server.path.parent)
    sock = os.stat(server.path)
    assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == 0
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600 and sock.st_uid == 0


def test_handler_errors_are_replies_and_the_server_goes_on(server: ControlServer, capfd: Any) -> None:
    with pytest.raises(OutwatchError, match="op 'boom' failed: RuntimeError") as info:
        request("boom", path=server.path)
    assert info.value.code == ExitCode.FAILURE
    assert "a bug in a handler" in capfd.readouterr().err  # logged by the server too
    with pytest.raises(OutwatchError, match="not that one") as info:
        request("refuse", path=server.path)
    assert info.value.code == ExitCode.REFUSED and info.value.hint == "pick another"
    with pytest.raises(OutwatchError, match="unknown op 'nope'") as info:
        request("nope", path=server.path)
    assert info.value.code == ExitCode.USAGE
    with pytest.raises(OutwatchError, match="reply is not JSON"):
        request("unserializable", path=server.path)
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(server.path))
    raw.sendall(b"this is not json\n")
    assert orjson.loads(raw.recv(4096))["error"].startswith("bad request")
    raw.close()
    assert request("status", path=server.path)["ok"] is True


def test_non_root_clients_are_refused(server: ControlServer) -> None:
    path = server.path
    # an ordinary user does not even reach the socket: the directory is 0700 root
    plain = as_nobody(lambda: request("status", path=path))
    assert plain["code"] == ExitCode.NOT_ROOT, plain
    assert "root only" in plain["error"]
    # a non-root process that can get past file permissions is still refused, by SO_PEERCRED
    capable = as_nobody(lambda: request("status", path=path), dac_override=True)
    assert capable["code"] == ExitCode.NOT_ROOT, capable
    assert f"you are uid {NOBODY}" in capable["error"]


def test_one_server_per_socket_and_stale_sockets(tmp_path: Path) -> None:
    require_root()
    path = tmp_path / "run" / "control.sock"
    path.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a crashed watch's socket: the file exists, nobody listens
    stale.close()
    first = ControlServer({"status": lambda _r: {}}, path=path)
    first.start()
    try:
        second = ControlServer({"status": lambda _r: {}}, path=path)
        with pytest.raises(OutwatchError, match="another outwatch watch is running") as info:
            second.start()
        assert info.value.code == ExitCode.REFUSED
        assert request("status", path=path)["ok"] is True
    finally:
        first.close()
    assert not path.exists()
    with pytest.raises(OutwatchError, match="no running `outwatch watch`") as info:
        request("status", path=path)
    assert info.value.code == ExitCode.NOT_FOUND
