"""Pairing a failed TCP connect with the error that closed it.

The kernel sends a TCP connect once its outcome is known (bpf/sockstate.c). A failure's reason
(ECONNREFUSED, ETIMEDOUT...) comes in a record of its own right after, matched on (daddr, sport,
dport); a failure waits for it at most ERROR_WAIT_NS.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from outwatch.kernel.records import ConnectRecord, TcpErrorRecord
from outwatch.proc.table import Proc

ERROR_WAIT_NS = 20_000_000
MAX_WAITING = 65536


@dataclass(slots=True)
class Failed:
    rec: ConnectRecord
    proc: Proc  # the process image at connect time
    since_ns: int


Ready = tuple[ConnectRecord, Proc, int]  # the connect, its process, the errno (0 when none came)


class FailedConnects:
    def __init__(self) -> None:
        self._waiting: OrderedDict[tuple[str, int, int], Failed] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, rec: ConnectRecord, proc: Proc, now_ns: int) -> list[Ready]:
        """A failed connect waits for its error; when too many wait, the oldest goes now."""
        self._waiting[(rec.daddr, rec.sport, rec.dport)] = Failed(rec, proc, now_ns)
        if len(self._waiting) > MAX_WAITING:
            _, oldest = self._waiting.popitem(last=False)
            return [(oldest.rec, oldest.proc, 0)]
        return []

    def on_error(self, err: TcpErrorRecord) -> list[Ready]:
        failed = self._waiting.pop((err.daddr, err.sport, err.dport), None)
        return [(failed.rec, failed.proc, err.error)] if failed else []

    def flush(self, now_ns: int) -> list[Ready]:
        """Failures whose error did not come within ERROR_WAIT_NS."""
        out: list[Ready] = []
        while self._waiting:
            key, failed = next(iter(self._waiting.items()))
            if now_ns - failed.since_ns < ERROR_WAIT_NS:
                break
            del self._waiting[key]
            out.append((failed.rec, failed.proc, 0))
        return out

    def drain(self) -> list[Ready]:
        return self.flush(1 << 62)
