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


class ProcessId(click.ParamType):
    """A pid on the command line: a positive number, with a message that says so."""

    name = "pid"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            pid = value
        else:
            try:
                pid = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a process id (a number, e.g. 1234)", param, ctx)
        if pid < 1:
            self.fail(f"{pid} is not a process id (process ids start at 1)", param, ctx)
        return pid


PID = ProcessId()
