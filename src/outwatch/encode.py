"""One event -> one NDJSON line under LINE_CAP bytes, whatever a process put in its name or args.

orjson escapes quotes, control characters and newlines; invalid UTF-8 never reaches it (kernel bytes
are decoded with backslashreplace). What is too long is cut, and `outwatch.truncated` lists it.
"""

from __future__ import annotations

import orjson

LINE_CAP = 16 * 1024
_ARG_CAP = 512
_FIELD_CAP = 1024


def _cut(value: str, cap: int) -> str:
    return value if len(value) <= cap else value[:cap] + "…"


def _shrink_process(proc: dict, arg_cap: int, max_args: int) -> None:
    args = proc.get("args")
    if args:
        kept = [_cut(a, arg_cap) for a in args[:max_args]]
        if len(args) > max_args:
            kept.append(f"…({len(args) - max_args} more)")
        proc["args"] = kept
        proc["command_line"] = _cut(" ".join(kept), _FIELD_CAP)
    for key in ("executable", "working_directory", "name"):
        if isinstance(proc.get(key), str):
            proc[key] = _cut(proc[key], _FIELD_CAP)


def _shrunk(event: dict, arg_cap: int, max_args: int) -> dict:
    out = dict(event)
    process = dict(out.get("process", {}))
    _shrink_process(process, arg_cap, max_args)
    if "parent" in process:
        process["parent"] = dict(process["parent"])
        _shrink_process(process["parent"], arg_cap // 4, max_args // 4)
    out["process"] = process
    ow = dict(out.get("outwatch", {}))
    owp = dict(ow.get("process", {}))
    if "ancestors" in owp:
        ancestors = [dict(a) for a in owp["ancestors"]]
        for a in ancestors:
            _shrink_process(a, arg_cap // 8, max_args // 8)
        owp["ancestors"] = ancestors
    ow["process"] = owp
    ow["truncated"] = True
    out["outwatch"] = ow
    return out


def encode(event: dict) -> bytes:
    """The NDJSON line (with its newline), at most LINE_CAP bytes."""
    line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    if len(line) <= LINE_CAP:
        return line
    for arg_cap, max_args in ((_ARG_CAP, 64), (128, 16), (32, 8)):
        line = orjson.dumps(_shrunk(event, arg_cap, max_args))
        if len(line) < LINE_CAP:
            return line + b"\n"
    bare = {k: event[k] for k in ("@timestamp", "ecs", "event", "host", "destination", "network") if k in event}
    process = event.get("process", {})
    bare["process"] = {k: _cut(str(process[k]), 256) if isinstance(process[k], str) else process[k]
                       for k in ("pid", "entity_id", "name", "executable") if k in process}
    bare["outwatch"] = {"truncated": True}
    return orjson.dumps(bare) + b"\n"
