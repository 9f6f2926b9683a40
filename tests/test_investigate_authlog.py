"""Auth log lines in the formats Debian writes them: rsyslog RFC 3339, classic syslog, journalctl."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from outwatch.investigate.authlog import AuthEvent, classify, parse_line
from outwatch.investigate.hunt import hunt


def _ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1_000_000_000


@pytest.mark.parametrize(
    ("line", "ts", "program", "pid"),
    [
        (
            "2026-12-03T18:00:01.123456+00:00 web01 sshd[123]: Accepted publickey for a from 192.0.2.1 port 5 ssh2",
            "2026-12-03T18:00:01+00:00",
            "sshd",
            123,
        ),
        ("2026-12-03T19:00:01.123456+01:00 web01 sshd[123]: x", "2026-12-03T18:00:01+00:00", "sshd", 123),
        ("2026-12-03T18:00:01.123456+0000 web01 sudo[77]: x", "2026-12-03T18:00:01+00:00", "sudo", 77),
        (
            "Dec  3 18:00:01 web01 sudo:    alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/id",
            "2026-12-03T18:00:01+00:00",
            "sudo",
            None,
        ),
        (
            "Dec 13 08:00:01 web01 CRON[9]: pam_unix(cron:session): session opened",
            "2026-12-13T08:00:01+00:00",
            "CRON",
            9,
        ),
    ],
)
def test_parse_line_formats(line: str, ts: str, program: str, pid: int | None) -> None:
    parsed = parse_line(line, 2026, UTC)
    assert parsed is not None
    assert (parsed.ts_ns // 1_000_000_000 * 1_000_000_000, parsed.program, parsed.pid) == (_ns(ts), program, pid)
    assert parsed.host == "web01"


@pytest.mark.parametrize(
    "junk", ["", "\x00\x00\xff", "Foo 99 99:99:99 h x: y", "2026-13-45T00:00:00Z h p: m", "x" * 5000]
)
def test_parse_line_rejects_junk(junk: str) -> None:
    assert parse_line(junk, 2026, UTC) is None


def _line(prog: str, msg: str) -> str:
    return f"2026-12-03T18:00:01.000000+00:00 web01 {prog}: {msg}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            _line("sshd[1]", "Accepted publickey for alice from 192.0.2.5 port 40000 ssh2: ED25519 SHA256:abc"),
            AuthEvent("ssh_login", "success", user="alice", ip="192.0.2.5", port=40000, method="publickey"),
        ),
        (
            _line("sshd[1]", "Accepted keyboard-interactive/pam for root from 2001:db8::5 port 4 ssh2"),
            AuthEvent("ssh_login", "success", user="root", ip="2001:db8::5", port=4, method="keyboard-interactive/pam"),
        ),
        (
            _line("sshd[1]", "Failed password for invalid user oracle from 198.51.100.2 port 4242 ssh2"),
            AuthEvent("ssh_login_failed", "failure", user="oracle", ip="198.51.100.2", port=4242, method="password"),
        ),
        (
            _line("sshd[1]", "Invalid user test from 198.51.100.3 port 1"),
            AuthEvent("ssh_login_failed", "failure", user="test", ip="198.51.100.3", method="invalid user"),
        ),
        (
            _line(
                "sudo",
                "   bob : user NOT in sudoers ; TTY=pts/1 ; PWD=/home/bob ; USER=root ; COMMAND=/bin/sh -c a ; b",
            ),
            AuthEvent(
                "sudo_failed",
                "failure",
                user="bob",
                target="root",
                command="/bin/sh -c a ; b",
                detail="user NOT in sudoers",
            ),
        ),
        (
            _line("sudo", "alice : PWD=/srv ; USER=postgres ; COMMAND=/usr/bin/psql"),
            AuthEvent("sudo", "success", user="alice", target="postgres", command="/usr/bin/psql"),
        ),
        (_line("su[5]", "(to root) alice on pts/3"), AuthEvent("su", "success", user="alice", target="root")),
        (
            _line("su[5]", "FAILED SU (to root) eve on pts/4"),
            AuthEvent("su_failed", "failure", user="eve", target="root"),
        ),
        (
            _line("groupadd[5]", "group added to /etc/group: name=hackers, GID=1002"),
            AuthEvent(
                "group_created", "success", group="hackers", detail="group added to /etc/group: name=hackers, GID=1002"
            ),
        ),
        (
            _line("gpasswd[5]", "user eve added by root to group docker"),
            AuthEvent(
                "user_added_to_group",
                "success",
                target="eve",
                group="docker",
                detail="user eve added by root to group docker",
            ),
        ),
        (
            _line("chpasswd[5]", "pam_unix(chpasswd:chauthtok): password changed for root"),
            AuthEvent(
                "password_changed",
                "success",
                target="root",
                detail="pam_unix(chpasswd:chauthtok): password changed for root",
            ),
        ),
        (
            _line("userdel[5]", "delete user 'eve'"),
            AuthEvent("user_deleted", "success", target="eve", detail="delete user 'eve'"),
        ),
        (_line("sshd[1]", "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)"), None),
        (_line("systemd-logind[1]", "New session 4 of user alice."), None),
    ],
)
def test_classify(line: str, expected: AuthEvent | None) -> None:
    parsed = parse_line(line, 2026, UTC)
    assert parsed is not None
    assert classify(parsed) == expected


def test_classic_syslog_year_comes_from_the_file(tmp_path: Path) -> None:
    """A "Dec 31" line in a log last written on Jan 2 is from the year before."""
    log = tmp_path / "var/log/auth.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "Dec 31 23:00:00 h useradd[1]: new user: name=eve, UID=1001, GID=1001, home=/home/eve, shell=/bin/sh\n"
        "Jan  2 01:00:00 h useradd[2]: new user: name=zed, UID=1002, GID=1002, home=/home/zed, shell=/bin/sh\n"
    )
    written = datetime(2026, 1, 2, 12, 0, tzinfo=UTC).timestamp()
    os.utime(log, (written, written))
    (tmp_path / "etc").mkdir()
    result = hunt(0, tmp_path)
    created = {
        e["user"]["target"]["name"]: e["@timestamp"] for e in result.findings if e["event"]["action"] == "user_created"
    }
    assert created == {"eve": "2025-12-31T23:00:00.000000000Z", "zed": "2026-01-02T01:00:00.000000000Z"}
