"""Pure-Python pieces of the output path: Community ID, the line cap, the pretty printer."""

from __future__ import annotations

import orjson

from outwatch.community_id import community_id
from outwatch.encode import LINE_CAP, encode
from outwatch.pretty import format_event, safe


def test_community_id_matches_published_vectors() -> None:
    # corelight community-id-spec baseline, and the vectors of Zeek's community-id tests
    assert community_id("128.232.110.120", 34855, "66.35.250.204", 80, 6) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("66.35.250.204", 80, "128.232.110.120", 34855, 6) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("128.232.110.120", 34855, "66.35.250.204", 80, 6, seed=1) == \
        "1:3V71V58M3Ksw/yuFALMcW0LAHvc="
    assert community_id("1.2.3.4", 1122, "5.6.7.8", 3344, 6) == "1:wCb3OG7yAFWelaUydu0D+125CLM="
    assert community_id("1.2.3.4", 1122, "5.6.7.8", 3344, 17) == "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="


def _event(args: list[str]) -> dict:
    return {"@timestamp": "2026-12-03T18:45:00.123456789Z", "event": {"kind": "event", "outcome": "success"},
            "process": {"pid": 1, "name": "x", "executable": "/tmp/x", "args": args,
                        "command_line": " ".join(args), "user": {"name": "root"}},
            "destination": {"ip": "203.0.113.7", "port": 4444}, "network": {"transport": "tcp"},
            "outwatch": {"process": {"ancestors": [{"pid": 2, "args": args}]}}}


def test_small_event_is_one_line_unchanged() -> None:
    ev = _event(["/tmp/x", "-c", "1"])
    line = encode(ev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == ev


def test_huge_arguments_are_cut_under_the_cap_with_a_flag() -> None:
    ev = _event(["/tmp/x", "A" * 1_000_000, *["arg\n\x1b[31m"] * 5000])
    line = encode(ev)
    assert len(line) <= LINE_CAP and line.count(b"\n") == 1
    doc = orjson.loads(line)
    assert doc["outwatch"]["truncated"] is True
    assert doc["process"]["executable"] == "/tmp/x"
    assert doc["destination"] == {"ip": "203.0.113.7", "port": 4444}


def test_pretty_escapes_control_characters() -> None:
    ev = _event(["/tmp/x", "\x1b[2Jclear", "new\nline"])
    text = format_event(ev)
    assert "\x1b" not in text and "\n" not in text
    assert "\\x1b[2Jclear" in text and "-> 203.0.113.7:4444/tcp" in text
    assert safe("a" * 100, 10) == "a" * 9 + "…"


def test_pretty_says_what_happened_to_each_kind_of_connect() -> None:
    ev = _event(["/tmp/x"])
    assert format_event(ev).endswith("-> 203.0.113.7:4444/tcp success")
    ev["event"].update(outcome="failure", reason="ECONNREFUSED: Connection refused")
    assert format_event(ev).endswith("/tcp failure (ECONNREFUSED)")
    ev["event"].update(action="connection_denied", reason="blocked by outwatch (in-kernel deny map)")
    assert format_event(ev).endswith("/tcp DENIED")
    ev = _event(["/tmp/x"])
    ev["event"].update(action="datagram_sent", outcome="unknown")
    ev["network"]["transport"] = "udp"
    ev["outwatch"]["repeat"] = 40
    assert format_event(ev).endswith("/udp x40 sent")
