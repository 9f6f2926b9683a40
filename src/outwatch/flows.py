"""Pairing a TCP connect with how it ended.

The cgroup hook (or kprobe) reports the connect before the kernel acts on it; the TCP state records
then say whether it was established or closed, and the error that closed it. A connect is held
until its outcome is known (microseconds on a LAN), at most HOLD_NS, then reported as "unknown".
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from outwatch.event import Outcome
from outwatch.kernel.records import TCP_ESTABLISHED, TCP_SYN_SENT, ConnectRecord, TcpStateRecord
from outwatch.proc.table import Proc

HOLD_NS = 2_000_000_000
ERROR_WAIT_NS = 20_000_000  # after a close, how long the error report that follows may take
MAX_PENDING = 65536


@dataclass(slots=True)
class Pending:
    rec: ConnectRecord
    proc: Proc  # the process image at connect time (a later exec must not change the attribution)
    since_ns: int
    state: TcpStateRecord | None = None
    closed_ns: int = 0


Ready = tuple[ConnectRecord, Proc, Outcome]


class PendingConnects:
    def __init__(self) -> None:
        self._by_tid: dict[int, deque[Pending]] = {}
        self._by_sock: dict[int, Pending] = {}
        self._closed: OrderedDict[tuple[str, int, int], Pending] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, rec: ConnectRecord, proc: Proc) -> list[Ready]:
        """A TCP connect to follow; when too many are pending the oldest is reported now."""
        self._by_tid.setdefault(rec.h.tid, deque()).append(Pending(rec, proc, rec.h.ts_ns))
        self._count += 1
        if self._count > MAX_PENDING:
            return self.flush(rec.h.ts_ns + HOLD_NS + 1)
        return []

    def on_state(self, st: TcpStateRecord) -> list[Ready]:
        if st.error_report:
            p = self._closed.pop((st.daddr, st.sport, st.dport), None)
            return [self._done(p, "failure", st.error)] if p else []
        if st.newstate == TCP_SYN_SENT:
            queue = self._by_tid.get(st.h.tid)
            if not queue:
                return []
            for i, p in enumerate(queue):
                if p.rec.dport == st.dport and p.rec.daddr == st.daddr:
                    del queue[i]
                    if not queue:
                        del self._by_tid[st.h.tid]
                    self._by_sock[st.skaddr] = p
                    break
            return []
        p = self._by_sock.pop(st.skaddr, None)
        if p is None:
            return []
        p.state = st
        if st.newstate == TCP_ESTABLISHED:
            return [self._done(p, "success")]
        p.closed_ns = st.h.ts_ns
        self._closed[(st.daddr, st.sport, st.dport)] = p
        return []

    def _done(self, p: Pending, outcome: str, error: int = 0) -> Ready:
        self._count -= 1
        return p.rec, p.proc, Outcome(outcome, p.state, error)

    def flush(self, now_ns: int) -> list[Ready]:
        """Closes with no error report after ERROR_WAIT_NS, and connects older than HOLD_NS."""
        out: list[Ready] = []
        while self._closed:
            key, p = next(iter(self._closed.items()))
            if now_ns - p.closed_ns < ERROR_WAIT_NS:
                break
            del self._closed[key]
            out.append(self._done(p, "failure"))
        for tid in list(self._by_tid):
            queue = self._by_tid[tid]
            while queue and now_ns - queue[0].since_ns >= HOLD_NS:
                out.append(self._done(queue.popleft(), "unknown"))
            if not queue:
                del self._by_tid[tid]
        for sk in [sk for sk, p in self._by_sock.items() if now_ns - p.since_ns >= HOLD_NS]:
            out.append(self._done(self._by_sock.pop(sk), "unknown"))
        return out

    def drain(self) -> list[Ready]:
        """Everything still pending, as unknown (at exit)."""
        return self.flush(1 << 62)
