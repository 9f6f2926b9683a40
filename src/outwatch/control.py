"""The running `outwatch watch`'s control socket: `outwatch status`, `block` and friends talk to it.

A unix stream socket, root only, checked three times: its directory is 0700 root, the socket is
0600, and the server asks the kernel who connected (SO_PEERCRED) and refuses any uid but 0.
One JSON request line per connection, one JSON reply line:

    {"op": "status"}                    -> {"ok": true, ...}
    {"op": "block", "target": "..."}    -> {"ok": false, "error": "...", "hint": "...", "code": 2}

Handlers get the request with "peer": {"pid", "uid", "gid"} set by the server from SO_PEERCRED
(whatever the client sent under that key is replaced), so an audit record can say who asked.
A handler that raises becomes an error reply; the server goes on.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from outwatch.errors import ExitCode, OutwatchError

DEFAULT_PATH = Path("/run/outwatch/control.sock")
MAX_REQUEST = 64 << 10
CLIENT_TIMEOUT = 5.0  # a client that sends nothing is dropped after this long

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    return data.split(b"\n", 1)[0]


class ControlServer:
    def __init__(self, handlers: Mapping[str, Handler], path: Path = DEFAULT_PATH) -> None:
        self.handlers = handlers
        self.path = path
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="outwatch-control", daemon=True)

    def start(self) -> None:
        self._prepare_directory()
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise OutwatchError(f"cannot create the control socket {self.path}: {exc.strerror}") from None
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._sock = sock
        self._thread.start()

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(directory)
        except OSError as exc:
            raise OutwatchError(f"cannot create {directory}: {exc.strerror}", code=ExitCode.NOT_ROOT,
                                hint="run outwatch watch as root") from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise OutwatchError(
                f"{directory} is not a directory owned by root: refusing to put the control socket there",
                hint=f"remove {directory} (outwatch creates it, mode 0700)", code=ExitCode.REFUSED,
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(directory, 0o700)

    def _remove_stale(self) -> None:
        """A socket file nobody answers on is left over from a crash; a live one means another watch."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OutwatchError(f"{self.path} exists and is not a socket", hint=f"remove {self.path}",
                                code=ExitCode.REFUSED)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise OutwatchError(
            f"another outwatch watch is running (its control socket {self.path} answers)",
            hint="stop it first (outwatch status shows its pid)", code=ExitCode.REFUSED,
        )

    def _serve(self) -> None:
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), name="outwatch-control-client",
                             daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CLIENT_TIMEOUT)
            reply = self._reply(conn)
            try:
                data = orjson.dumps(reply)
            except orjson.JSONEncodeError as exc:
                data = orjson.dumps({"ok": False, "error": f"the reply is not JSON: {exc}",
                                     "code": int(ExitCode.FAILURE)})
            with contextlib.suppress(OSError):  # the client went away
                conn.sendall(data + b"\n")

    def _reply(self, conn: socket.socket) -> dict[str, Any]:
        try:
            pid, uid, gid = _peer(conn)
        except OSError as exc:
            return {"ok": False, "error": f"cannot identify the client: {exc.strerror}", "code": int(ExitCode.FAILURE)}
        if uid != 0:
            return {"ok": False, "error": f"permission denied: the control socket is root only (you are uid {uid})",
                    "code": int(ExitCode.NOT_ROOT)}
        try:
            request = orjson.loads(_read_line(conn))
        except OSError as exc:
            return {"ok": False, "error": f"reading the request: {exc.strerror or exc}", "code": int(ExitCode.USAGE)}
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}", "code": int(ExitCode.USAGE)}
        op = request.get("op") if isinstance(request, dict) else None
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown op {op!r} (known: {known})", "code": int(ExitCode.USAGE)}
        request["peer"] = {"pid": pid, "uid": uid, "gid": gid}
        try:
            return {"ok": True, **handler(request)}
        except OutwatchError as exc:
            return {"ok": False, "error": exc.message, "hint": exc.hint, "code": int(exc.code)}
        except Exception as exc:  # a bug in one op must not take the server (or the tracer) down
            print(f"outwatch: control op {op!r} failed: {exc!r}", file=sys.stderr)
            return {"ok": False, "error": f"op {op!r} failed: {exc!r}", "code": int(ExitCode.FAILURE)}

    def close(self) -> None:
        if self._sock is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(5.0)
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):  # remove the socket only if it is still ours
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        os.close(self._stop_r)
        os.close(self._stop_w)


def request(op: str, path: Path = DEFAULT_PATH, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Ask the running `outwatch watch`; its reply (ok true) or OutwatchError (its error, or none running)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise OutwatchError(f"no running `outwatch watch` (no control socket at {path})",
                                hint="start it: outwatch watch (or systemctl start outwatch)",
                                code=ExitCode.NOT_FOUND) from None
        except PermissionError:
            raise OutwatchError(f"the control socket {path} is root only", hint="run this command with sudo",
                                code=ExitCode.NOT_ROOT) from None
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # the server may answer (a refusal) and close before reading the request
                sock.sendall(orjson.dumps({**args, "op": op}) + b"\n")
            line = _read_line(sock)
        except TimeoutError:
            raise OutwatchError(f"outwatch watch did not answer within {timeout:g} s (op {op!r})") from None
        except OSError as exc:
            raise OutwatchError(f"control socket {path}: {exc.strerror or exc}") from None
    try:
        reply = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise OutwatchError(f"bad reply from the control socket {path}: {line[:200]!r}") from None
    if not isinstance(reply, dict):
        raise OutwatchError(f"bad reply from the control socket {path}: {line[:200]!r}")
    if reply.get("ok") is not True:
        code = reply.get("code")
        raise OutwatchError(str(reply.get("error", "the request failed")), hint=str(reply.get("hint") or ""),
                            code=ExitCode(code) if code in iter(ExitCode) else ExitCode.FAILURE)
    return reply
