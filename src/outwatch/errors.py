"""Expected failures: one clear message, a hint on how to fix it, and a distinct exit code."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_ROOT = 3
    NO_BCC = 4
    NO_HEADERS = 5
    KERNEL_UNSUPPORTED = 6
    BAD_CONFIG = 7
    NOT_FOUND = 8
    REFUSED = 9


class OutwatchError(Exception):
    """An expected failure the CLI reports as one line plus a fix, never as a traceback."""

    def __init__(self, message: str, hint: str = "", code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code
