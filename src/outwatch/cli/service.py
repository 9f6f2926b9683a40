"""`outwatch service install|uninstall`, `outwatch status`, `outwatch config check` (parse, call, print)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import orjson

from outwatch.cli.common import reports_errors


@click.group("service")
def service_cli() -> None:
    """Run outwatch as a systemd service (hardened unit, logs in /var/log/outwatch, logrotate)."""


@service_cli.command("install")
@click.option("--prefix", type=click.Path(path_type=Path, file_okay=False), default=Path("/"), show_default=True,
              help="Root under which etc/systemd/system and etc/logrotate.d are written (for packaging).")
@click.option("--unit-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for outwatch.service [default: PREFIX/etc/systemd/system].")
@reports_errors
def install_cmd(prefix: Path, unit_dir: Path | None) -> None:
    """Install outwatch.service (checked with systemd-analyze verify) and /etc/logrotate.d/outwatch."""
    from outwatch.service import install

    result = install(prefix, unit_dir)
    click.echo(f"installed {result.unit}{' (verified)' if result.verified else ''}")
    click.echo(f"installed {result.logrotate}")
    for note in result.notes:
        click.echo(f"  {note}")


@service_cli.command("uninstall")
@click.option("--prefix", type=click.Path(path_type=Path, file_okay=False), default=Path("/"), show_default=True,
              help="Root the files were installed under.")
@click.option("--unit-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Directory of outwatch.service [default: PREFIX/etc/systemd/system].")
@reports_errors
def uninstall_cmd(prefix: Path, unit_dir: Path | None) -> None:
    """Stop and disable the service, remove the unit and logrotate files (events and spool are kept)."""
    from outwatch.service import uninstall

    for line in uninstall(prefix, unit_dir):
        click.echo(line)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    return f"{hours}h {minutes}m {secs}s" if hours else f"{minutes}m {secs}s"


def _status_lines(reply: dict[str, Any]) -> list[str]:
    """The human view of the running tracer's "status" reply; keys it does not know are shown as they are."""
    r = dict(reply)
    r.pop("ok", None)
    pid = r.pop("pid", "?")
    rows: list[tuple[str, object]] = []
    since_ns = r.pop("since_ns", None)
    if isinstance(since_ns, int):
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since_ns / 1e9))
        rows.append(("since", f"{since} (up {_duration(time.time() - since_ns / 1e9)})"))
    rows.append(("probes", r.pop("probe_set", None) or "not attached"))
    rows.append(("rules", f"{r.pop('rules', '?')} loaded"))
    rows.append(("events", f"{r.pop('events_emitted', '?')} emitted, {r.pop('events_filtered', 0)} filtered out"))
    by_type = r.pop("lost_in_kernel_by_type", {}) or {}
    detail = ", ".join(f"{k} {v}" for k, v in by_type.items() if v)
    rows.append(("lost", f"{r.pop('lost_in_kernel', '?')} in the kernel{f' ({detail})' if detail else ''}, "
                         f"{r.pop('dropped_in_userspace', '?')} dropped by outputs"))
    seen = r.pop("records_seen", None)
    if isinstance(seen, dict):
        rows.append(("records", ", ".join(f"{k} {v}" for k, v in seen.items())))
    sinks = r.pop("sinks", None)
    for key, value in r.items():
        rows.append((key.replace("_", " "), orjson.dumps(value).decode() if isinstance(value, dict | list) else value))
    width = max(len(label) for label, _ in rows)
    lines = [f"outwatch watch is running (pid {pid})"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    if isinstance(sinks, dict) and isinstance(sinks.get("sinks"), list):
        lines.append("  outputs")
        url_width = max((len(str(s.get("url", ""))) for s in sinks["sinks"]), default=0)
        for s in sinks["sinks"]:
            state = "ok  " if s.get("connected") else "DOWN"
            line = (f"    {s.get('url')!s:<{url_width}}  {state}  delivered {s.get('delivered', 0)}  "
                    f"queued {s.get('queued', 0)}  spooled {_size(int(s.get('spooled_bytes', 0)))}  "
                    f"dropped {s.get('dropped', 0)}")
            if s.get("last_error"):
                line += f"  (last error: {s['last_error']})"
            lines.append(line)
    return lines


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="The running tracer's status as one JSON object.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), hidden=True)  # tests: a private socket
@reports_errors
def status_cli(as_json: bool, socket_path: Path | None) -> None:
    """Is `outwatch watch` running: since when, its probes, rules, events, losses and outputs."""
    from outwatch.control import DEFAULT_PATH, request

    reply = request("status", path=socket_path or DEFAULT_PATH)
    if as_json:
        reply.pop("ok", None)
        click.echo(orjson.dumps(reply).decode())
    else:
        click.echo("\n".join(_status_lines(reply)))


@click.group("config")
def config_cli() -> None:
    """The configuration file, /etc/outwatch/outwatch.toml."""


@config_cli.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@reports_errors
def check_cmd(file: Path | None) -> None:
    """Validate FILE (default /etc/outwatch/outwatch.toml): every error as file:line: what."""
    from outwatch.config import DEFAULT_PATH, load_config
    from outwatch.errors import ExitCode, OutwatchError

    config = load_config(file)
    if config is None:
        raise OutwatchError(f"no configuration file at {DEFAULT_PATH} (outwatch runs with its defaults)",
                            hint="give the file to check: outwatch config check FILE", code=ExitCode.NOT_FOUND)
    click.echo(f"{config.path}: ok")
    for section in (config.watch, config.rules):
        for name in section.__slots__:
            value = getattr(section, name)
            if value not in (None, [], {}):
                shown = [str(v) for v in value] if isinstance(value, list) else value
                click.echo(f"  {type(section).__name__.removesuffix('Config').lower()}.{name} = {shown}")
    if config.respond is not None:
        click.echo(f"  respond: {'valid policy' if config.respond_policy is not None else 'present (not validated)'}")
