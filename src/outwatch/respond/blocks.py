"""Kernel blocks (--via bpf): the deny rules of the running watch, with their TTLs and metadata.

BlockManager is the only writer of the tracer's deny map. Every change recomputes the whole rule set
and hands it to the backend (set_rules replaces the in-kernel set), so the map always equals the
list `outwatch blocks` shows. Re-blocking a target merges into the existing block and keeps the later
expiry (a permanent block is never shortened by a later block with a TTL). Blocks live only while the
watch runs: close() lifts them, and records that it did.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel.deny import DenyRule

from .audit import AuditLog, Outcome, Record, Request, audited, ecs_user, timestamp
from .guards import check_block_allowed
from .target import describe, target_fields, target_from_fields

_RETRY_S = 5.0


class RuleBackend(Protocol):
    def set_rules(self, rules: Sequence[DenyRule]) -> None: ...


@dataclass(frozen=True, slots=True)
class Block:
    target: DenyRule
    since: float
    until: float | None  # None: until the watch exits
    reason: str
    user: Record  # ECS user who asked
    via: str = "bpf"

    def to_dict(self) -> Record:
        out: Record = {**target_fields(self.target), "via": self.via, "since": timestamp(self.since)}
        if self.until is not None:
            out["until"] = timestamp(self.until)
        if self.reason:
            out["reason"] = self.reason
        if "id" in self.user:
            out["requested_by"] = self.user["id"]
        return out


def later(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(a, b)


def destination_fields(target: DenyRule) -> Record:
    """ECS destination.* of a block, only when it names one address."""
    net = target.network
    if net.prefixlen != net.max_prefixlen:
        return {}
    dest: Record = {"ip": str(net.network_address)}
    if target.port is not None:
        dest["port"] = target.port
    return {"destination": dest}


class BlockManager:
    def __init__(
        self, backend: RuleBackend, audit: AuditLog, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._backend = backend
        self._audit = audit
        self._clock = clock
        self._blocks: dict[DenyRule, Block] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False

    # --- state -----------------------------------------------------------------------------------

    def list(self) -> list[Block]:
        with self._lock:
            return sorted(self._blocks.values(), key=lambda b: b.since)

    def covers(self, target: DenyRule) -> bool:
        """An existing block already denies everything target would: same or wider network, all
        ports or the same port, all protocols or the same one."""
        with self._lock:
            return any(
                target.network.version == b.target.network.version
                and target.network.subnet_of(b.target.network)  # type: ignore[arg-type]
                and b.target.port in (None, target.port)
                and b.target.proto in (None, target.proto)
                for b in self._blocks.values()
            )

    def _push(self, blocks: dict[DenyRule, Block]) -> None:
        """Install blocks in the kernel, then adopt them (the previous set stays on failure)."""
        try:
            self._backend.set_rules(list(blocks))
        except ValueError as exc:
            raise OutwatchError(str(exc), code=ExitCode.REFUSED) from None
        self._blocks = blocks
        self._changed.notify_all()

    # --- actions ---------------------------------------------------------------------------------

    def add(
        self,
        target: DenyRule,
        *,
        ttl: float | None,
        reason: str,
        user: Record,
        force: bool = False,
        dry_run: bool = False,
        automatic: bool = False,
        alert: Record | None = None,
    ) -> Outcome:
        req = Request(
            "block-destination",
            user,
            ecs=destination_fields(target),
            details={"via": "bpf", **target_fields(target), **({"ttl_s": ttl} if ttl is not None else {})},
            reason=reason,
            dry_run=dry_run,
            automatic=automatic,
            alert=alert,
        )

        def act() -> Record:
            check_block_allowed(target, force)
            now = self._clock()
            until = None if ttl is None else now + ttl
            with self._lock:
                old = self._blocks.get(target)
                block = (
                    replace(old, until=later(old.until, until))
                    if old
                    else Block(target, now, until, reason, user)
                )
                if not dry_run:
                    self._push({**self._blocks, target: block})
            return block.to_dict()

        return audited(self._audit, req, act)

    def remove(self, target: DenyRule, *, user: Record, reason: str = "", dry_run: bool = False) -> Outcome:
        req = Request(
            "unblock-destination",
            user,
            ecs=destination_fields(target),
            details={"via": "bpf", **target_fields(target)},
            reason=reason,
            dry_run=dry_run,
        )

        def act() -> Record:
            with self._lock:
                block = self._blocks.get(target)
                if block is None:
                    raise OutwatchError(
                        f"{describe(target)} is not blocked in the kernel",
                        hint="see `outwatch blocks` for what is blocked, with the exact port and protocol",
                        code=ExitCode.NOT_FOUND,
                    )
                if not dry_run:
                    self._push({t: b for t, b in self._blocks.items() if t != target})
            return block.to_dict()

        return audited(self._audit, req, act)

    def expire(self) -> list[Block]:
        """Lift the blocks whose TTL ran out; each lift is an audit record."""
        with self._lock:
            now = self._clock()
            gone = [b for b in self._blocks.values() if b.until is not None and b.until <= now]
            for block in gone:
                self.remove(block.target, user=block.user, reason="ttl expired")
        return gone

    # --- the expiry thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Run expiry in a daemon thread until close()."""
        self._thread = threading.Thread(target=self._run, name="outwatch-block-ttl", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while not self._closing:
                try:
                    self.expire()
                except OutwatchError:
                    # The lift could not be recorded (audit log unwritable): it did not happen; retry.
                    self._changed.wait(_RETRY_S)
                    continue
                deadlines = [b.until for b in self._blocks.values() if b.until is not None]
                wait = None if not deadlines else max(0.0, min(deadlines) - self._clock())
                self._changed.wait(wait)

    def close(self, user: Record) -> None:
        """Stop the expiry thread and lift every block (the deny map dies with the watch anyway;
        this records it). user: whom the lifting is attributed to (the watch's own user)."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        for block in self.list():
            self.remove(block.target, user=user, reason="outwatch watch stopped")

    # --- the control socket ----------------------------------------------------------------------

    def control_handlers(self) -> dict[str, Callable[[Mapping[str, Any]], Record]]:
        """Handlers for the ops "block", "unblock" and "blocks" of the watch's control socket.

        Requests: block {target, port?, proto?, ttl? (seconds), force?, reason?, user?, dry_run?},
        unblock {target, port?, proto?, reason?, user?, dry_run?}, blocks {}. user is the ECS user
        of the requester as the client computed it (the socket itself only admits root); without
        it, the peer uid the server adds. Replies: {"block": {...}}, {"unblock": {...}},
        {"blocks": [...]}. Refusals and failures raise OutwatchError."""
        return {"block": self._handle_block, "unblock": self._handle_unblock, "blocks": self._handle_blocks}

    def _handle_block(self, args: Mapping[str, Any]) -> Record:
        target = _request_target(args)
        ttl = args.get("ttl")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0):
            raise OutwatchError(f"ttl {ttl!r} is not a positive number of seconds", code=ExitCode.USAGE)
        out = self.add(
            target,
            ttl=None if ttl is None else float(ttl),
            reason=str(args.get("reason") or ""),
            user=_request_user(args),
            force=bool(args.get("force")),
            dry_run=bool(args.get("dry_run")),
        )
        if out.error is not None:
            raise out.error
        return {"block": out.details}

    def _handle_unblock(self, args: Mapping[str, Any]) -> Record:
        out = self.remove(
            _request_target(args),
            user=_request_user(args),
            reason=str(args.get("reason") or ""),
            dry_run=bool(args.get("dry_run")),
        )
        if out.error is not None:
            raise out.error
        return {"unblock": out.details}

    def _handle_blocks(self, args: Mapping[str, Any]) -> Record:
        return {"blocks": [b.to_dict() for b in self.list()]}


def _request_target(args: Mapping[str, Any]) -> DenyRule:
    try:
        return target_from_fields(dict(args))
    except ValueError as exc:
        raise OutwatchError(str(exc), code=ExitCode.USAGE) from None


def _request_user(args: Mapping[str, Any]) -> Record:
    """The requester as the client named it (its login user, see audit.requester), else the socket
    peer's uid as the kernel reported it to the control server."""
    user = args.get("user")
    if isinstance(user, dict) and isinstance(user.get("id"), str):
        return user
    peer = args.get("peer")
    uid = peer.get("uid") if isinstance(peer, dict) else None
    return ecs_user(uid if isinstance(uid, int) else os.geteuid())


def unavailable_handlers(why: str) -> dict[str, Callable[[Mapping[str, Any]], Record]]:
    """The block ops of a watch that cannot block in the kernel (e.g. the kprobe probe set): block
    and unblock say why, blocks lists nothing, so `outwatch blocks` still shows the ufw blocks."""

    def refuse(args: Mapping[str, Any]) -> Record:
        raise OutwatchError(why, hint="block with ufw instead: --via ufw", code=ExitCode.KERNEL_UNSUPPORTED)

    return {"block": refuse, "unblock": refuse, "blocks": lambda args: {"blocks": []}}
