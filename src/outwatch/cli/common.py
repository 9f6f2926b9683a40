"""What every command shares: expected failures become one message, a fix, and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from outwatch.errors import OutwatchError

F = TypeVar("F", bound=Callable[..., Any])


def fail(exc: OutwatchError) -> NoReturn:
    click.echo(f"outwatch: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"  fix: {exc.hint}", err=True)
    sys.exit(int(exc.code))


def reports_errors(fn: F) -> F:
    """Turn OutwatchError (and Ctrl-C) into a clean exit instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OutwatchError as exc:
            fail(exc)
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(0)

    return wrapper  # type: ignore[return-value]
