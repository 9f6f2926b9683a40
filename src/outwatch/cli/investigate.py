"""Investigation commands: snapshot, inspect, hunt, audit (parse, call, print)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import click

from outwatch.cli.common import PID
from outwatch.encode import encode
from outwatch.errors import OutwatchError
from outwatch.investigate import render

_JSON_HELP = "One ECS JSON object per finding per line (NDJSON) instead of the human view."


def _expected_failures(func: Callable) -> Callable:
    """An OutwatchError is one line and a fix on stderr and its exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OutwatchError as e:
            click.echo(f"outwatch: {e.message}", err=True)
            if e.hint:
                click.echo(f"  fix: {e.hint}", err=True)
            sys.exit(int(e.code))
        except BrokenPipeError:
            # The reader (head, less) went away: stop quietly, as other CLI tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)

    return wrapper


def _emit_json(findings: Iterable[dict]) -> None:
    out = sys.stdout.buffer
    for event in findings:
        out.write(encode(event))
    out.flush()


def _note(text: str) -> None:
    click.echo(f"outwatch: {text}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_expected_failures
def snapshot(as_json: bool) -> None:
    """Outbound TCP connections (established or pending) and connected UDP sockets now, with the process
    behind each, its parents and unit, scored like live events and sorted by score."""
    from outwatch.investigate.snapshot import take_snapshot

    snap = take_snapshot()
    if as_json:
        _emit_json(snap.findings)
    else:
        processes = {e["process"]["pid"] for e in snap.findings if "process" in e}
        click.echo(f"{len(snap.findings)} outbound connection(s) from {len(processes)} process(es)")
        for event in snap.findings:
            click.echo("\n".join(render.connection_lines(event)))
    if snap.unseen_sockets:
        why = "run as root to see them" if os.geteuid() else "orphaned or kernel-held, or their process just exited"
        _note(f"{snap.unseen_sockets} outbound socket(s) without a visible process ({why})")
    for note in snap.notes:
        _note(f"partial: {note}")


@click.command()
@click.argument("pid", type=PID)
@click.option(
    "--evidence",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also write an evidence bundle to this new or empty directory (executable copy, cmdline, "
    "environ, maps, fds, status, sha256 manifest). Read-only on the process.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_expected_failures
def inspect(pid: int, evidence: Path | None, as_json: bool) -> None:
    """Everything about one process: executable (deleted? memfd? package? hash), argv, cwd, user, age,
    environment that matters, ancestry, children, sockets, unit, cron/timer origin, odd libraries,
    temp files, and the journal around its start."""
    from outwatch.investigate.inspect import inspect_pid

    result = inspect_pid(pid)
    bundle = None
    if evidence is not None:
        from outwatch.investigate.evidence import write_bundle

        bundle = write_bundle(result, evidence)
    if as_json:
        _emit_json(result.findings)
    else:
        click.echo("\n".join(render.inspection_lines(result.record, result.connections)))
    if bundle is not None:
        _note(f"evidence written to {bundle.directory} ({len(bundle.files)} files, manifest MANIFEST.sha256)")
        for name, why in sorted(bundle.missing.items()):
            _note(f"partial evidence: {name} not collected: {why}")


@click.command()
@click.option(
    "--since",
    default="2d",
    show_default=True,
    help="Window: 30m, 12h, 2d, 1w, or a date (2026-12-01, 2026-12-01T10:00).",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    help="Check a mounted disk image or copied filesystem at this directory instead of this host "
    "(offline forensics: nothing from it is executed, symlinks stay inside it).",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_expected_failures
def hunt(since: str, root: Path | None, as_json: bool) -> None:
    """Persistence and dropped files: crontabs and at jobs, systemd units and timers, rc.local, init
    scripts, ld.so.preload, authorized_keys, shell start-up files, accounts and sudoers, files in temp
    and web dirs, changed system binaries and /etc, and logins, sudo and account changes in the logs."""
    from outwatch.investigate.hunt import hunt as run_hunt
    from outwatch.investigate.hunt import parse_since

    result = run_hunt(parse_since(since), root)
    if as_json:
        _emit_json(result.findings)
    else:
        click.echo("\n".join(render.hunt_lines(result)))
    for note in result.notes:
        _note(f"partial: {note}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_expected_failures
def audit(as_json: bool) -> None:
    """Exposure now: listening sockets and their processes, running services, firewall state (ufw,
    nftables; read only), executables in temp dirs, whether outbound traffic is restricted at all,
    and a short list of what to tighten."""
    from outwatch.investigate.audit import run_audit

    result = run_audit()
    if as_json:
        _emit_json(result.findings)
    else:
        click.echo("\n".join(render.audit_lines(result)))
    for note in result.notes:
        _note(f"partial: {note}" if "not running" not in note else note)
