"""outwatch command line: click commands only (parse, call, print)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outwatch")
def main() -> None:
    """Catch the wrong process talking to the wrong destination, and contain it."""


def _register() -> None:
    from outwatch.cli.investigate import audit, hunt, inspect, snapshot
    from outwatch.cli.respond import COMMANDS as RESPOND_COMMANDS
    from outwatch.cli.rules import rules
    from outwatch.cli.service import config_cli, service_cli, status_cli
    from outwatch.cli.watch import watch

    commands = (watch, status_cli, rules, snapshot, inspect, hunt, audit, *RESPOND_COMMANDS, service_cli, config_cli)
    for command in commands:
        main.add_command(command)


_register()
