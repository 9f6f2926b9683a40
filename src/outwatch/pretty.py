"""The human view of an event: one line an admin reads at a glance.

Everything a process controls (name, args, paths) is escaped: control characters, ANSI escapes and
invalid bytes never reach the terminal raw. Long args are shortened.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ARGS_WIDTH = 60
_SEVERITY_MARK = {"critical": "!!!", "high": "!! ", "medium": "!  "}


def safe(value: object, width: int | None = None) -> str:
    text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def safe_tail(value: object, width: int) -> str:
    """Like safe(), but a long value keeps its end (a path's file name matters most)."""
    text = safe(value)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _dest(ip: str, port: object) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def format_event(ev: dict) -> str:
    kind = ev.get("event", {}).get("kind")
    if kind == "metric":
        m = ev.get("outwatch", {}).get("metrics", {})
        return "metrics: " + " ".join(f"{k}={v}" for k, v in sorted(m.items()) if not isinstance(v, dict))
    ts = ev.get("@timestamp", "")[11:23]
    proc = ev.get("process", {})
    user = proc.get("user", {}).get("name") or proc.get("user", {}).get("id", "?")
    args = " ".join(proc.get("args", [])[1:])
    net = ev.get("network", {})
    dst = ev.get("destination", {})
    event = ev.get("event", {})
    ow = ev.get("outwatch", {})
    outcome = event.get("outcome", "")
    if event.get("action") == "connection_denied":
        outcome = "DENIED"
    elif event.get("action") == "datagram_sent":
        outcome = "sent"  # a datagram has no outcome to show (ECS says unknown)
    elif event.get("reason"):
        outcome += f" ({event['reason'].split(':')[0]})"
    repeat = f" x{ow['repeat']}" if ow.get("repeat", 1) > 1 else ""
    severity = ow.get("severity")
    mark = _SEVERITY_MARK.get(severity or "", "   ")
    score = ""
    if severity and severity != "info":
        score = f" [{severity} {ow.get('score')} {ev.get('rule', {}).get('id', '')}]"
    return (
        f"{mark}{ts} {proc.get('pid', '?'):>7} {safe(user, 10):<10} "
        f"{safe_tail(proc.get('executable') or proc.get('name', '?'), 40)} {safe(args, _ARGS_WIDTH)}"
        f" -> {_dest(dst.get('ip', '?'), dst.get('port', '?'))}/{net.get('transport', '?')}"
        f"{repeat} {outcome}{score}"
    )
