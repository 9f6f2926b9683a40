"""`outwatch watch`: wires configuration, rules, sinks, probes, control socket and responder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from outwatch.cli.common import PID, reports_errors
from outwatch.config import load_config
from outwatch.control import ControlServer
from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel.probes import require_root
from outwatch.respond.audit import AuditLog, ecs_user
from outwatch.respond.blocks import BlockManager, unavailable_handlers
from outwatch.respond.policy import ResponsePolicy
from outwatch.respond.responder import Responder, ResponderWorker
from outwatch.rules import load_rules
from outwatch.service import Notifier
from outwatch.sinks import open_sinks
from outwatch.tracer import SEVERITIES, Filters, Tracer, WatchOptions

SINK_QUEUE_LINES = 16384  # per output, ~40 MB of typical lines; a burst waits in the kernel's buffer


def _log(message: str) -> None:
    click.echo(f"outwatch: {message}", err=True)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["pretty", "ndjson"]),
              help="Output format [default: pretty on a terminal, ndjson otherwise].")
@click.option("--output", "outputs", multiple=True, metavar="URL",
              help="Where events go (repeatable): -, FILE, tcp://H:P, unix:///path, syslog://H:P, "
                   "syslog+udp://H:P [default: stdout].")
@click.option("--probes", type=click.Choice(["auto", "cgroup", "kprobe"]), help="Probe set [default: auto].")
@click.option("--include-loopback", is_flag=True, default=None, help="Also report connections to 127/8 and ::1.")
@click.option("--pid", "pids", multiple=True, type=PID, help="Only this process (repeatable).")
@click.option("--uid", "uids", multiple=True, type=click.IntRange(min=0), help="Only this user id (repeatable).")
@click.option("--exe", "exes", multiple=True, metavar="GLOB", help="Only executables matching GLOB (repeatable).")
@click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535),
              help="Only this destination port (repeatable).")
@click.option("--min-severity", type=click.Choice(SEVERITIES), help="Only events at or above this severity.")
@click.option("--rules", "rule_files", multiple=True, type=click.Path(path_type=Path),
              help="Extra rules file (repeatable), on top of the default pack and /etc/outwatch/rules.d.")
@click.option("--metrics-interval", type=click.FloatRange(min=0.5), help="Seconds between metric records [10].")
@click.option("--respond", is_flag=True, help="Contain alerts automatically per the [respond] policy.")
@click.option("--dry-run", is_flag=True, help="With --respond: log what would be done, do nothing.")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Configuration file [default: /etc/outwatch/outwatch.toml if present].")
@reports_errors
def watch(fmt: str | None, outputs: tuple[str, ...], probes: str | None, include_loopback: bool | None,
          pids: tuple[int, ...], uids: tuple[int, ...], exes: tuple[str, ...], ports: tuple[int, ...],
          min_severity: str | None, rule_files: tuple[Path, ...], metrics_interval: float | None,
          respond: bool, dry_run: bool, config_path: Path | None) -> None:
    """Trace every outbound connection and UDP send, live, with the process behind it."""
    require_root()
    cfg = load_config(config_path)
    w = cfg.watch if cfg else None
    fmt = fmt or (w.format if w else None) or ("pretty" if sys.stdout.isatty() else "ndjson")
    rules_files = [*(cfg.rules.files if cfg else ()), *rule_files]

    def load() -> object:
        return load_rules(extra_files=rules_files, thresholds=cfg.rules.thresholds if cfg else None)

    ruleset = load()
    opts = WatchOptions(
        probes=probes or (w.probes if w else None) or "auto",
        include_loopback=bool(include_loopback if include_loopback is not None
                              else (w.include_loopback if w else False)),
        pretty=fmt == "pretty",
        filters=Filters(frozenset(pids), frozenset(uids), exes, frozenset(ports)),
        min_severity=min_severity or (w.min_severity if w else None),
        metrics_interval=metrics_interval or (w.metrics_interval if w and w.metrics_interval else 10.0),
    )
    sinks = open_sinks(
        list(outputs or (w.outputs if w and w.outputs else ["-"])),
        queue_max=SINK_QUEUE_LINES,
        **({"spool_dir": w.spool_dir} if w and w.spool_dir else {}),
        **({"spool_max_bytes": w.spool_max_mb << 20} if w and w.spool_max_mb else {}),
    )
    if dry_run and not respond:
        raise OutwatchError("--dry-run goes with --respond", "add --respond", ExitCode.USAGE)
    policy = (cfg.respond_policy if cfg and cfg.respond_policy else None) or ResponsePolicy()
    tracer = Tracer(opts, sinks, scorer=ruleset, load_scorer=load, log=_log)
    audit = AuditLog(on_record=tracer.submit)
    notifier = Notifier()
    control = blocks = worker = None
    try:
        _log(tracer.start())
        handlers = {"status": lambda _req: _status(tracer)}
        if tracer.probes.deny is not None:
            blocks = BlockManager(tracer.probes.deny, audit)
            blocks.start()
            handlers.update(blocks.control_handlers())
            if respond:
                worker = ResponderWorker(Responder(policy, blocks, audit, dry_run))
                tracer.on_alert = worker.submit
        else:
            handlers.update(unavailable_handlers("the kprobe probe set cannot deny a connect"))
            if respond:
                raise OutwatchError("--respond needs the cgroup probe set (it blocks in the kernel)",
                                    "run with --probes cgroup", ExitCode.KERNEL_UNSUPPORTED)
        control = _start_control(ControlServer(handlers))
        tracer.install_signals()
        notifier.ready()
        tracer.run(until=sinks.all_gone, tick=notifier.tick)
        if sinks.all_gone():
            _log("the reader of standard output has gone (closed pipe): stopping")
    finally:
        notifier.stopping()
        if worker is not None:
            worker.close()
        if blocks is not None:
            blocks.close(ecs_user(os.geteuid()))
            tracer.drain()
        if control is not None:
            control.close()
        sinks.close()


def _start_control(server: ControlServer) -> ControlServer | None:
    """The control socket (status, blocks); a second watch, or a socket that cannot be made, runs
    without one rather than not tracing at all."""
    try:
        server.start()
    except OutwatchError as exc:
        _log(f"{exc.message}; this watch runs without a control socket (no status, no blocks from other terminals)")
        return None
    return server


def _status(tracer: Tracer) -> dict:
    return {
        "pid": os.getpid(),
        "since_ns": tracer.started_wall_ns,
        "probe_set": tracer.probes.choice.probe_set if tracer.probes.choice else None,
        "rules": len(getattr(tracer.scorer, "rules", []) or []),
        **tracer.stats(),
    }
