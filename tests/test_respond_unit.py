"""stop-unit: units resolved from real cgroup paths (processes of this test moved into cgroups laid out
as systemd lays them out), the "systemd is not running" refusal, and the systemctl argv.

There is no running systemd on the machines these tests run on, so the argv handed to systemctl is
checked by injecting the runner (the one mock here) and telling stop_unit that systemd is up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest_respond import Sandbox, require_root

from outwatch.errors import ExitCode, OutwatchError
from outwatch.kernel.mounts import cgroup2_mount
from outwatch.respond.unit import UnitRef, stop_unit, unit_of_pid, validate_unit

CONTAINER = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"


class Placed:
    """Sleeping children of this test, each moved into a cgroup under a private test slice."""

    def __init__(self) -> None:
        require_root()
        root = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        if root is None:
            pytest.fail("no cgroup v2 mounted")
        self.top = root / f"owtest-{id(self)}.slice"
        self.dirs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_in(self, relative: str) -> int:
        d = self.top / relative
        d.mkdir(parents=True, exist_ok=True)
        self.dirs += [p for p in [d, *d.parents] if p.is_relative_to(self.top) and p not in self.dirs]
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        self.procs.append(p)
        (d / "cgroup.procs").write_text(str(p.pid))
        return p.pid

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for d in sorted(self.dirs, key=lambda x: len(x.parts), reverse=True):
            d.rmdir()


@pytest.fixture
def placed() -> Iterator[Placed]:
    p = Placed()
    try:
        yield p
    finally:
        p.close()


def test_units_from_real_cgroup_paths(placed: Placed) -> None:
    system = placed.start_in("system-owtest.slice/owtest-web.service")
    user = placed.start_in("user-1000.slice/user@1000.service/app.slice/owtest-job.service")
    session = placed.start_in("user-1000.slice/session-7.scope")
    container = placed.start_in(f"docker-{CONTAINER}.scope")
    assert Path(f"/proc/{system}/cgroup").read_text().endswith("/system-owtest.slice/owtest-web.service\n")
    assert unit_of_pid(system) == UnitRef("owtest-web.service")
    assert unit_of_pid(user) == UnitRef("owtest-job.service", uid=1000)
    assert unit_of_pid(session) == UnitRef("session-7.scope")
    assert unit_of_pid(container) == UnitRef(f"docker-{CONTAINER}.scope")
    loose = placed.start_in("not-a-unit")
    with pytest.raises(OutwatchError) as err:
        unit_of_pid(loose)
    assert err.value.code == ExitCode.NOT_FOUND and "is not in a systemd unit" in err.value.message


class Recorder:
    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.argvs: list[list[str]] = []
        self.returncode, self.stderr = returncode, stderr

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.argvs.append(list(argv))
        return subprocess.CompletedProcess(list(argv), self.returncode, "", self.stderr)


def test_systemctl_argv() -> None:
    run = Recorder()
    unit = UnitRef("owtest-web.service")
    assert stop_unit(unit, disable=True, run=run, booted=lambda: True) == run.argvs == [
        ["systemctl", "stop", "--", "owtest-web.service"],
        ["systemctl", "disable", "--", "owtest-web.service"],
    ]
    run = Recorder()
    stop_unit(UnitRef("owtest-job.service", uid=0), disable=False, run=run, booted=lambda: True)
    assert run.argvs == [["systemctl", "--user", "--machine=root@.host", "stop", "--", "owtest-job.service"]]

    failing = Recorder(5, "Failed to stop owtest-web.service: Unit owtest-web.service not loaded.\n")
    with pytest.raises(OutwatchError) as err:
        stop_unit(unit, disable=True, run=failing, booted=lambda: True)
    assert "not loaded" in err.value.message and len(failing.argvs) == 1  # no disable after a failed stop


def test_refusals_run_nothing() -> None:
    run = Recorder()
    for unit, protected in ((UnitRef("ssh.service"), ()), (UnitRef("init.scope"), ()),
                            (UnitRef("myapp.service"), ("myapp.service",))):
        with pytest.raises(OutwatchError) as err:
            stop_unit(unit, disable=False, protected=protected, run=run, booted=lambda: True)
        assert err.value.code == ExitCode.REFUSED and "protected unit" in err.value.message
    assert run.argvs == []


@pytest.mark.parametrize("name", ["--now", "a b", "x;reboot", "", "user.slice", "multi-user.target", "-.mount"])
def test_bad_unit_names(name: str) -> None:
    with pytest.raises(ValueError, match="unit"):
        validate_unit(name)


def test_unit_name_forms() -> None:
    assert validate_unit("nginx") == "nginx.service"
    assert validate_unit("getty@tty1.service") == "getty@tty1.service"
    assert validate_unit("backup.timer") == "backup.timer"


def test_cli(placed: Placed, tmp_path: Path) -> None:
    """The real command line in a sandbox whose /run is private: no /run/systemd/system there."""
    pid = placed.start_in("system-owtest.slice/owtest-web.service")
    box = Sandbox(tmp_path)
    try:
        stop = box.cli("stop-unit", "nginx")  # systemctl is never reached: it is not even looked for
        assert stop.returncode == ExitCode.FAILURE
        assert "outwatch: systemd is not running on this machine (PID 1 is" in stop.stderr
        assert "fix: stop the process itself: outwatch kill PID" in stop.stderr

        dry = box.cli("stop-unit", "--pid", str(pid), "--disable", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines() == ["would run: systemctl stop -- owtest-web.service",
                                           "would run: systemctl disable -- owtest-web.service"]
        assert "these commands would fail here" in dry.stderr

        assert box.cli("stop-unit", "ssh", "--dry-run").returncode == ExitCode.REFUSED
        for args, message in ((["--", "--now"], "is not a systemd unit name"), ([], "give a UNIT or --pid"),
                              (["x", "--pid", "1"], "give a UNIT or --pid"), (["user.slice"], "not a unit of")):
            bad = box.cli("stop-unit", *args)
            assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr

        stages = [(r["outwatch"]["respond"]["stage"], r["outwatch"]["respond"].get("unit")) for r in box.audit()]
        assert stages == [("requested", "nginx.service"), ("failed", "nginx.service"),
                          ("requested", None), ("dry-run", "owtest-web.service"),
                          ("requested", "ssh.service"), ("refused", "ssh.service")]
        assert box.audit()[3]["outwatch"]["respond"]["argv"][0] == ["systemctl", "stop", "--", "owtest-web.service"]
    finally:
        box.close()
