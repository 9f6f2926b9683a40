"""outwatch command line: click commands only (parse, call, print)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outwatch")
def main() -> None:
    """Catch the wrong process talking to the wrong destination, and contain it."""
