"""`watch --respond` end to end: a real alert from a real process, contained by the real tracer."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from conftest import NetnsPair
from conftest_respond import RESPOND_CLI, Sandbox

POLICY = """
[respond.block]
min_severity = "high"
ttl = "10m"
[respond.kill]
min_severity = "off"
"""


def _events(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _wait(path: Path, pred, what: str, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in _events(path) if pred(e)]
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"no {what} in the event stream")


@pytest.mark.parametrize("dry_run", [False, True])
def test_respond_blocks_the_destination_of_a_high_alert(tmp_path: Path, netns_pair: NetnsPair, connect_once: Path,
                                                        copy_of, dry_run: bool) -> None:
    netns_pair.listen(4444)
    implant = copy_of(connect_once, "implant")
    config = tmp_path / "outwatch.toml"
    config.write_text(POLICY)
    config.chmod(0o600)
    events = tmp_path / "events.ndjson"
    box = Sandbox(tmp_path)
    argv = [*RESPOND_CLI, "watch", "--respond", "--config", str(config), "--format", "ndjson", "--output", str(events)]
    watch = box.popen([*argv, "--dry-run"] if dry_run else argv)
    try:
        deadline = time.monotonic() + 60
        while box.cli("status").returncode != 0:
            assert watch.poll() is None and time.monotonic() < deadline, "outwatch watch did not start"
            time.sleep(0.2)
        first = netns_pair.run(str(implant), netns_pair.HOST_IP, "4444", capture_output=True, timeout=10)
        assert first.returncode == 0
        (alert,) = _wait(events, lambda e: e["event"]["kind"] == "alert"
                         and e["process"]["executable"] == str(implant), "alert")[:1]
        assert alert["outwatch"]["severity"] in ("high", "critical")
        stage = "dry-run" if dry_run else "done"
        (record,) = _wait(events, lambda e: e["event"].get("dataset") == "outwatch.respond"
                          and e["outwatch"]["respond"]["stage"] == stage, f"{stage} audit record")[:1]
        assert record["event"]["action"] == "block-destination"
        assert record["outwatch"]["respond"]["automatic"] is True
        assert record["destination"]["ip"] == netns_pair.HOST_IP
        assert alert["rule"]["id"] in record["outwatch"]["respond"]["rule_ids"]

        second = netns_pair.run(str(implant), netns_pair.HOST_IP, "4444", capture_output=True, timeout=10)
        if dry_run:
            assert second.returncode == 0
        else:
            assert second.returncode == 1  # connect() failed with EPERM: the block landed before a packet
            _wait(events, lambda e: e["event"].get("action") == "connection_denied"
                  and e["destination"]["ip"] == netns_pair.HOST_IP, "denial event")
    finally:
        watch.terminate()
        watch.wait(timeout=30)
        box.close()
    third = netns_pair.run(str(implant), netns_pair.HOST_IP, "4444", capture_output=True, timeout=10)
    assert third.returncode == 0, "a block outlived the watch"
