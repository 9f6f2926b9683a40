"""/etc/outwatch/outwatch.toml: typed values, every error as file:line, `outwatch config check`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import outwatch.config
from outwatch.cli.service import config_cli
from outwatch.config import load_config
from outwatch.errors import ExitCode, OutwatchError

GOOD = """\
# a full configuration
[watch]
format = "ndjson"
probes = "cgroup"
include_loopback = true
metrics_interval = 5
min_severity = "medium"
outputs = [
    "/var/log/outwatch/events.ndjson",
    "syslog://127.0.0.1:514",
]
spool_dir = "/var/lib/outwatch/spool"
spool_max_mb = 64

[rules]
files = ["local.toml"]

[rules.thresholds]
high = 60
alert = "high"

[respond]
dry_run = true

[respond.block]
min_severity = "critical"
ttl = "30m"
"""


def write(tmp_path: Path, text: str, name: str = "outwatch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(OutwatchError) as info:
        load_config(path)
    assert info.value.code == ExitCode.BAD_CONFIG
    return [line.strip() for line in info.value.message.splitlines()[1:]]


def test_a_full_file_gives_typed_values(tmp_path: Path) -> None:
    (tmp_path / "local.toml").write_text("")
    config = load_config(write(tmp_path, GOOD))
    assert config is not None
    w = config.watch
    assert (w.format, w.probes, w.include_loopback, w.min_severity) == ("ndjson", "cgroup", True, "medium")
    assert w.metrics_interval == 5.0 and isinstance(w.metrics_interval, float)
    assert w.outputs == ["/var/log/outwatch/events.ndjson", "syslog://127.0.0.1:514"]
    assert w.spool_dir == Path("/var/lib/outwatch/spool") and w.spool_max_mb == 64
    assert config.rules.files == [tmp_path / "local.toml"]  # relative to the config file
    assert config.rules.thresholds == {"high": 60, "alert": "high"}
    assert config.respond == {"dry_run": True, "block": {"min_severity": "critical", "ttl": "30m"}}
    policy = config.respond_policy  # parsed by the containment module's own parser
    assert policy.dry_run is True and policy.block.min_severity == "critical" and policy.block_ttl == 1800


def test_unset_values_are_none(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[watch]\nformat = \"pretty\"\n"))
    assert config is not None
    assert config.watch.format == "pretty"
    assert config.watch.outputs is None and config.watch.include_loopback is None
    assert config.rules.files == [] and config.respond is None


def test_every_error_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
[watch]
format = "json"
include_loopback = "yes"
outputs = [
    "-",
    "tcp://siem.example",
]
metrics_intervall = 5
spool_max_mb = 0

[rules]
files = ["missing.toml"]
[rules.thresholds]
hihg = 3

[respond.block]
ttl = 5

[extra]
""")
    errors = errors_of(path)
    expected = [
        (2, "watch.format must be one of pretty, ndjson, not 'json'"),
        (3, "watch.include_loopback must be true or false, not a string"),
        (6, "watch.outputs: bad output 'tcp://siem.example': no port"),
        (8, "unknown key 'watch.metrics_intervall' (did you mean 'metrics_interval'?)"),
        (9, "watch.spool_max_mb must be at least 1"),
        (12, "rules.files: no such file"),
        (14, "unknown threshold 'hihg'"),
        (17, "respond.block.ttl: 5 is not"),
        (19, "unknown section [extra]"),
    ]
    assert len(errors) == len(expected), errors
    for (line, what), error in zip(expected, sorted(errors, key=lambda e: int(e.split(":")[1])), strict=True):
        assert error.startswith(f"{path}:{line}: "), error
        assert what in error, error


def test_syntax_error_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[watch]\nformat = "ndjson\n')
    with pytest.raises(OutwatchError, match=rf"^{path}:2: TOML syntax"):
        load_config(path)
    with pytest.raises(OutwatchError, match="no configuration file") as info:
        load_config(tmp_path / "absent.toml")  # given explicitly: an error
    assert info.value.code == ExitCode.BAD_CONFIG
    monkeypatch.setattr(outwatch.config, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert load_config() is None  # the default file is optional


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (the check applies when outwatch runs as root)")
    path = write(tmp_path, "[watch]\n")
    path.chmod(0o666)
    with pytest.raises(OutwatchError, match="may be changed by a user other than root") as info:
        load_config(path)
    assert "chmod go-w" in info.value.hint
    os.chown(path, 65534, 0)
    path.chmod(0o644)
    with pytest.raises(OutwatchError, match="owner uid 65534"):
        load_config(path)


def test_config_check_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "local.toml").write_text("")
    runner = CliRunner()
    good = runner.invoke(config_cli, ["check", str(write(tmp_path, GOOD))])
    assert good.exit_code == 0, good.output
    assert f"{tmp_path}/outwatch.toml: ok" in good.output
    assert "watch.outputs = ['/var/log/outwatch/events.ndjson', 'syslog://127.0.0.1:514']" in good.output

    bad = runner.invoke(config_cli, ["check", str(write(tmp_path, "[watch]\nprobes = 3\n", "bad.toml"))])
    assert bad.exit_code == ExitCode.BAD_CONFIG
    assert f"{tmp_path}/bad.toml:2: watch.probes must be a string, not an integer" in bad.output
    assert "Traceback" not in bad.output

    monkeypatch.setattr(outwatch.config, "DEFAULT_PATH", tmp_path / "absent.toml")
    none = runner.invoke(config_cli, ["check"])
    assert none.exit_code == ExitCode.NOT_FOUND
    assert "no configuration file" in none.output
