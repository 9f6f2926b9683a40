"""The one place investigation findings about connections meet the live tracer's rule engine.

A socket seen by snapshot or inspect is built with the same ECS fields as a live connect event, so the
same rules (default pack + /etc/outwatch) score it and an analyst sees the same score for the same
connection whichever command showed it.
"""

from __future__ import annotations

from functools import cache


def score_connection(event: dict) -> None:
    """Set outwatch.score, severity, reasons and event.kind on a connection finding."""
    _ruleset().score(event)


@cache
def _ruleset():
    from outwatch.rules import load_rules

    return load_rules()
