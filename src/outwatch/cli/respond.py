"""Containment commands: block, unblock, blocks, kill, stop-unit (parse, call, print)."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from outwatch import control
from outwatch.cli.common import PID, reports_errors
from outwatch.config import load_config
from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel.deny import DenyRule
from outwatch.pretty import safe
from outwatch.respond.audit import AuditLog, Outcome, Record, Request, audited, requester
from outwatch.respond.blocks import destination_fields
from outwatch.respond.guards import check_block_allowed
from outwatch.respond.kill import Expectation, KillResult, kill_process
from outwatch.respond.policy import ResponsePolicy
from outwatch.respond.process import ProcessGuard
from outwatch.respond.target import (
    describe,
    parse_duration,
    parse_network,
    target_fields,
    target_from_fields,
)
from outwatch.respond.ufw import Ufw
from outwatch.respond.unit import (
    UnitRef,
    not_running_error,
    stop_unit,
    systemd_running,
    unit_of_pid,
    validate_unit,
)


class _Parsed(click.ParamType):
    """A click type from a parse function that raises ValueError with a user-facing message."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _non_negative(text: str) -> float:
    secs = parse_duration(text)
    if secs < 0:
        raise ValueError(f"{text!r} is negative")
    return secs


def _positive(text: str) -> float:
    secs = parse_duration(text)
    if secs <= 0:
        raise ValueError(f"{text!r} must be longer than 0")
    return secs


NETWORK = _Parsed("target", parse_network)
TTL = _Parsed("duration", _positive)
GRACE = _Parsed("duration", _non_negative)
UNIT = _Parsed("unit", validate_unit)
PORT = click.IntRange(1, 65535)
PROTO = click.Choice(["tcp", "udp"], case_sensitive=False)


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise OutwatchError(f"outwatch {command} needs root", "run it with sudo, or as root", ExitCode.NOT_ROOT)


def _note(message: str) -> None:
    click.echo(f"outwatch: {message}", err=True)


def _watch_blocks() -> list[Record] | None:
    """The running watch's kernel blocks, or None when no watch runs."""
    try:
        return list(control.request("blocks")["blocks"])
    except OutwatchError as exc:
        if exc.code == ExitCode.NOT_FOUND:
            return None
        raise


def _watch_pid() -> int | None:
    """The pid of the running watch (so that `kill` spares it), None when none runs."""
    try:
        pid = control.request("status").get("pid")
    except OutwatchError as exc:
        if exc.code == ExitCode.NOT_FOUND:
            return None
        raise
    return pid if isinstance(pid, int) else None


def _policy() -> ResponsePolicy:
    """The [respond] policy of /etc/outwatch/outwatch.toml: its protected lists apply to commands too."""
    cfg = load_config()
    policy = cfg.respond_policy if cfg else None
    return policy if isinstance(policy, ResponsePolicy) else ResponsePolicy()


def _finish(out: Outcome) -> Record:
    if out.error is not None:
        raise out.error
    return out.details


def _until(block: Record) -> str:
    return f"until {block['until']}" if block.get("until") else "until outwatch watch exits"


# --- block / unblock / blocks ----------------------------------------------------------------------


@click.command()
@click.argument("target", type=NETWORK)
@click.option("--port", type=PORT, help="Only this destination port.")
@click.option("--proto", type=PROTO, help="Only this protocol [default: both].")
@click.option("--via", type=click.Choice(["bpf", "ufw"]),
              help="bpf: in the running watch's kernel deny map; ufw: a firewall rule that outlives "
                   "outwatch [default: bpf when a watch runs, else ufw].")
@click.option("--ttl", type=TTL, metavar="DURATION", help="Lift the block after this long (bpf only), e.g. 1h.")
@click.option("--force", is_flag=True, help="Block even the default gateway, a DNS resolver or loopback.")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@click.option("--dry-run", is_flag=True, help="Say what would be done, do nothing.")
@reports_errors
def block(target: Any, port: int | None, proto: str | None, via: str | None, ttl: float | None,
          force: bool, reason: str, dry_run: bool) -> None:
    """Block outbound connections and UDP sends to TARGET (an IP or CIDR, v4 or v6)."""
    _need_root("block")
    rule = DenyRule(target, port, proto.lower() if proto else None)
    user = requester()
    if via == "ufw" and ttl is not None:
        raise OutwatchError("--ttl works only for kernel blocks: nothing would lift a ufw rule at its end",
                            "drop --ttl, or use --via bpf with outwatch watch running", ExitCode.USAGE)
    if via != "ufw":
        try:
            reply = control.request("block", **target_fields(rule), ttl=ttl, force=force, reason=reason,
                             user=user, dry_run=dry_run)
        except OutwatchError as exc:
            no_kernel = {ExitCode.NOT_FOUND: "no watch is running", ExitCode.KERNEL_UNSUPPORTED: exc.message}
            if exc.code not in no_kernel or via == "bpf" or ttl is not None:
                if exc.code == ExitCode.NOT_FOUND:
                    exc.hint = "start `outwatch watch` first, or use --via ufw (no --ttl)"
                raise
            _note(f"{no_kernel[exc.code]}, so blocking with ufw (the rule outlives outwatch; "
                  "`outwatch unblock` lifts it)")
        else:
            done = reply["block"]
            verb = "would block" if dry_run else "blocked"
            click.echo(f"{verb} {describe(rule)} in the kernel (bpf), {_until(done)}")
            return
    done = _finish(_ufw_block(rule, user=user, force=force, reason=reason, dry_run=dry_run))
    argv = " ".join(done["argv"])
    if dry_run:
        click.echo(f"would block {describe(rule)} with ufw: {argv}")
    elif done.get("already"):
        click.echo(f"{describe(rule)} is already blocked with ufw")
    else:
        click.echo(f"blocked {describe(rule)} with ufw: {argv}")


def _ufw_block(rule: DenyRule, *, user: Record, force: bool, reason: str, dry_run: bool) -> Outcome:
    req = Request("block-destination", user, ecs=destination_fields(rule),
                  details={"via": "ufw", **target_fields(rule)}, reason=reason, dry_run=dry_run)

    def act() -> Record:
        ufw = Ufw()
        check_block_allowed(rule, force)
        if not ufw.active():
            raise OutwatchError(
                "ufw is inactive, so a ufw rule would block nothing",
                "start `outwatch watch` and block in the kernel, or enable ufw (`ufw allow OpenSSH` first: "
                "an enabled ufw also denies incoming connections)",
            )
        return ufw.block(rule, reason=reason, user=user, dry_run=dry_run)

    return audited(AuditLog(), req, act)


@click.command()
@click.argument("target", type=NETWORK)
@click.option("--port", type=PORT, help="The port the block was made for.")
@click.option("--proto", type=PROTO, help="The protocol the block was made for.")
@click.option("--via", type=click.Choice(["bpf", "ufw"]), help="Where to lift it [default: wherever it is].")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@click.option("--dry-run", is_flag=True, help="Say what would be done, do nothing.")
@reports_errors
def unblock(target: Any, port: int | None, proto: str | None, via: str | None, reason: str,
            dry_run: bool) -> None:
    """Lift a block made by `outwatch block` (same TARGET, --port and --proto)."""
    _need_root("unblock")
    rule = DenyRule(target, port, proto.lower() if proto else None)
    user = requester()
    vias = [via] if via else _where_blocked(rule)
    if not vias:
        raise OutwatchError(f"{describe(rule)} is not blocked, neither in the kernel nor in ufw",
                            "see `outwatch blocks` for what is blocked, with the exact port and protocol",
                            ExitCode.NOT_FOUND)
    verb = "would unblock" if dry_run else "unblocked"
    for where in vias:
        if where == "bpf":
            control.request("unblock", **target_fields(rule), user=user, reason=reason, dry_run=dry_run)
            click.echo(f"{verb} {describe(rule)} in the kernel (bpf)")
        else:
            req = Request("unblock-destination", user, ecs=destination_fields(rule),
                          details={"via": "ufw", **target_fields(rule)}, reason=reason, dry_run=dry_run)
            done = _finish(audited(AuditLog(), req, lambda: Ufw().unblock(rule, dry_run=dry_run)))
            click.echo(f"{verb} {describe(rule)} in ufw: {' '.join(done['argv'])}")


def _where_blocked(rule: DenyRule) -> list[str]:
    vias = []
    kernel = _watch_blocks()
    if kernel and rule in {target_from_fields(b) for b in kernel}:
        vias.append("bpf")
    try:
        ufw = Ufw()
    except OutwatchError:
        return vias
    if rule in {target_from_fields(b) for b in ufw.blocks()}:
        vias.append("ufw")
    return vias


def _who(uid: object) -> str:
    """The user name of the uid that asked for a block (the uid itself when it has no name)."""
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(int(uid)).pw_name  # type: ignore[call-overload]
    except (KeyError, ValueError, TypeError):
        return str(uid)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per block (NDJSON).")
@reports_errors
def blocks(as_json: bool) -> None:
    """What is blocked, how (bpf or ufw), since when and until when."""
    _need_root("blocks")
    rows: list[Record] = []
    kernel = _watch_blocks()
    if kernel is None:
        _note("no watch is running: there are no kernel (bpf) blocks")
    else:
        rows += kernel
    try:
        ufw = Ufw()
    except OutwatchError as exc:
        _note(f"{exc.message}: no ufw blocks")
    else:
        ufw_rows = ufw.blocks()
        enforced = ufw.active()
        if ufw_rows and not enforced:
            _note("ufw is inactive: the ufw blocks below are not enforced")
        rows += [{**b, "enforced": enforced} for b in ufw_rows]
    if as_json:
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        return
    if not rows:
        click.echo("nothing is blocked")
        return
    header = ("TARGET", "PORT", "PROTO", "VIA", "SINCE", "UNTIL", "BY", "REASON")
    table = [header] + [
        (
            r["target"],
            str(r.get("port", "any")),
            r.get("proto", "any"),
            r["via"] + ("" if r.get("enforced", True) else " (inactive)"),
            _short(r.get("since")),
            _short(r.get("until")) if r.get("until") else ("watch exits" if r["via"] == "bpf" else "unblock"),
            _who(r.get("requested_by")),
            safe(r.get("reason", ""), 40),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


def _short(ts: str | None) -> str:
    """'2026-12-03T18:45:00.123456789Z' -> '2026-12-03 18:45:00Z'."""
    return "?" if not ts else ts[:19].replace("T", " ") + "Z"


# --- kill ---------------------------------------------------------------------------------------------


@click.command("kill")
@click.argument("pid", type=PID)
@click.option("--grace", type=GRACE, default="5s", show_default=True, metavar="DURATION",
              help="How long SIGTERM has before SIGKILL.")
@click.option("--tree", is_flag=True, help="Also kill its descendants.")
@click.option("--entity-id", help="Only if it is still this process (process.entity_id of an event).")
@click.option("--expect-exe", metavar="PATH", help="Only if its executable is PATH.")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@click.option("--dry-run", is_flag=True, help="Say what would be done, do nothing.")
@reports_errors
def kill(pid: int, grace: float, tree: bool, entity_id: str | None, expect_exe: str | None, reason: str,
         dry_run: bool) -> None:
    """Terminate process PID: checked by pidfd, SIGTERM, then SIGKILL after the grace period."""
    _need_root("kill")
    guard = ProcessGuard(_policy().protected_processes, watch_pid=_watch_pid())
    expect = Expectation(exe=expect_exe, entity_id=entity_id)
    ecs: Record = {"process": {"pid": pid, **({"entity_id": entity_id} if entity_id else {})}}
    req = Request("kill-process", requester(), ecs=ecs,
                  details={"via": "pidfd", "grace_s": grace, "tree": tree}, reason=reason, dry_run=dry_run)

    def act() -> Record:
        results = kill_process(pid, grace=grace, guard=guard, expect=expect, tree=tree, dry_run=dry_run)
        return {"processes": [r.to_dict() for r in results]}

    out = audited(AuditLog(), req, act)
    _finish(out)
    results = [KillResult(p["pid"], p["name"], p.get("executable"), p.get("signal"), p["exited"],
                          p.get("note", "")) for p in out.details["processes"]]
    for r in results:
        click.echo(_kill_line(r, grace))
    if any(not r.exited and not r.note for r in results):
        raise OutwatchError("some processes are still alive after SIGKILL (stuck in the kernel?)",
                            "look at them with `outwatch inspect PID`")


def _kill_line(r: KillResult, grace: float) -> str:
    who = f"{r.pid} ({safe(r.name)}{', ' + safe(r.exe) if r.exe else ''})"
    if r.note == "dry run":
        return f"{who}: would get SIGTERM, and SIGKILL if still alive after {grace:g}s (dry run)"
    if r.note:
        return f"{who}: {r.note}"
    if not r.exited:
        return f"{who}: still alive after {r.signal}"
    if r.signal == "SIGKILL":
        return f"{who}: killed (SIGKILL: SIGTERM was not enough within {grace:g}s)"
    return f"{who}: terminated (SIGTERM)"


# --- stop-unit -----------------------------------------------------------------------------------------


@click.command("stop-unit")
@click.argument("unit", type=UNIT, required=False)
@click.option("--pid", type=PID, help="The unit behind this process (from its cgroup).")
@click.option("--disable", is_flag=True, help="Also `systemctl disable` it, so it does not come back.")
@click.option("--reason", default="", help="Why (kept in the audit record).")
@click.option("--dry-run", is_flag=True, help="Print the systemctl commands, run nothing.")
@reports_errors
def stop_unit_cmd(unit: str | None, pid: int | None, disable: bool, reason: str, dry_run: bool) -> None:
    """Stop the systemd unit UNIT, or the one behind --pid, with systemctl (and --disable it)."""
    if (unit is None) == (pid is None):
        raise OutwatchError("give a UNIT or --pid PID (one of them)", "e.g. outwatch stop-unit nginx.service",
                            ExitCode.USAGE)
    _need_root("stop-unit")
    protected = _policy().protected_units
    asked: Record = {"unit": unit} if unit is not None else {}
    req = Request("stop-unit", requester(), ecs={"process": {"pid": pid}} if pid is not None else {},
                  details={"via": "systemctl", **asked, "disable": disable}, reason=reason, dry_run=dry_run)

    def act() -> Record:
        if not dry_run and not systemd_running():
            raise not_running_error()  # before resolving --pid: the more useful thing to hear
        ref = UnitRef(unit) if unit is not None else unit_of_pid(pid or 0)
        return {"unit": ref.name, "argv": stop_unit(ref, disable=disable, protected=protected, dry_run=dry_run)}

    done = _finish(audited(AuditLog(), req, act))
    for argv in done["argv"]:
        click.echo(("would run: " if dry_run else "ran: ") + " ".join(argv))
    if dry_run and not systemd_running():
        _note("systemd is not running on this machine: these commands would fail here")


COMMANDS = [block, unblock, blocks, kill, stop_unit_cmd]
