"""Where events go (stdout, files, TCP/unix sockets, syslog): never blocking the tracer, never silently lost.

    sinks = open_sinks(["-", "syslog://siem:514"], spool_dir=...)
    sinks.emit(line)          # line: one JSON object + b"\\n"; a deque append per sink
    sinks.stats()             # {"sinks": [per sink], "delivered", "queued", "spooled_bytes", "dropped"}
    sinks.reopen()            # SIGHUP: reopen files, retry a sink that is down now
    sinks.close(timeout=5.0)  # flush, keep the rest in the spool, say on stderr what was lost

Each sink has its own bounded queue and thread (base.py); stdout and files write whole lines with
writev (local.py); network sinks reconnect, spool to disk and replay in order (network.py, spool.py).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from outwatch.errors import ExitCode, OutwatchError
from outwatch.sinks.base import Sink
from outwatch.sinks.local import LocalSink
from outwatch.sinks.network import NetworkSink
from outwatch.sinks.url import SinkSpec, parse_output

__all__ = ["SinkSet", "SinkSpec", "open_sinks", "parse_output"]

DEFAULT_SPOOL_DIR = Path("/var/lib/outwatch/spool")


class SinkSet:
    """The tracer's outputs. emit() is safe to call from several threads (deque.append is atomic)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = tuple(sinks)
        self._closed = False
        if len(self._sinks) == 1:
            self.emit = self._sinks[0].put  # type: ignore[method-assign]  # one call less per event

    def emit(self, line: bytes) -> None:
        for sink in self._sinks:
            sink.put(line)

    @property
    def urls(self) -> list[str]:
        return [sink.spec.url for sink in self._sinks]

    def stats(self) -> dict[str, object]:
        per_sink = [sink.stats() for sink in self._sinks]
        keys = ("delivered", "queued", "spooled_bytes", "dropped")
        totals = {key: sum(s[key] for s in per_sink) for key in keys}
        return {"sinks": per_sink, **totals}

    def all_gone(self) -> bool:
        """Every output is gone for good (`outwatch watch | head` once head has exited)."""
        return all(sink.gone for sink in self._sinks)

    def reopen(self) -> None:
        if not self._closed:
            for sink in self._sinks:
                sink.request_reopen()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be within timeout, keep the rest in the spool, report losses on stderr."""
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        flush_until = start + timeout * 0.8  # the rest of the time is for writing the spool
        for sink in self._sinks:
            sink.begin_close(flush_until)
        for sink in self._sinks:
            finished = sink.join(start + timeout - time.monotonic())
            _report(sink, finished)
            if finished:
                sink.release()


def _report(sink: Sink, finished: bool) -> None:
    url = sink.spec.url
    if not finished:
        print(f"outwatch: output {url}: still busy after the timeout; {sink.backlog} queued events lost",
              file=sys.stderr)
    if sink.lost():
        print(sink.loss_message(sink.lost()), file=sys.stderr)
    if isinstance(sink, NetworkSink) and sink.spooled_bytes:
        print(f"outwatch: output {url}: {sink.spooled_bytes} bytes of events kept in {sink.spool.directory}, "
              "sent at the next start", file=sys.stderr)


def open_sinks(
    urls: Sequence[str],
    spool_dir: Path = DEFAULT_SPOOL_DIR,
    spool_max_bytes: int = 256 << 20,
    queue_max: int = 65536,
) -> SinkSet:
    """Parse every URL first (a bad one is OutwatchError(USAGE)), then open and start each sink."""
    specs = [parse_output(url) for url in urls] or [parse_output("-")]
    seen: set[str] = set()
    for spec in specs:
        key = {"file": str(spec.path), "stdout": "stdout"}.get(spec.kind, spec.url)
        if key in seen:
            raise OutwatchError(f"output {spec.url!r} is given twice", code=ExitCode.USAGE)
        seen.add(key)
    sinks: list[Sink] = []
    try:
        for spec in specs:
            if spec.spooled:
                sinks.append(NetworkSink(spec, queue_max, spool_dir, spool_max_bytes))
            else:
                sinks.append(LocalSink(spec, queue_max))
    except BaseException:
        for sink in sinks:  # let each opened sink's thread release its file or spool at once
            with contextlib.suppress(Exception):
                sink.begin_close(0.0)
                sink.start()
                if sink.join(1.0):
                    sink.release()
        raise
    for sink in sinks:
        sink.start()
    return SinkSet(sinks)
