"""parse_cgroup on /proc/PID/cgroup texts as systemd, docker, kubernetes, podman and lxc write them."""

from __future__ import annotations

import os
import subprocess

import pytest

from outwatch.proc.cgroup import CgroupInfo, parse_cgroup, read_cgroup

ID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"

HYBRID_DEBIAN10 = """12:cpuset:/
11:memory:/system.slice/nginx.service
10:pids:/system.slice/nginx.service
9:devices:/system.slice/nginx.service
1:name=systemd:/system.slice/nginx.service
0::/system.slice/nginx.service
"""

DOCKER_CGROUPFS_V1 = f"""12:pids:/docker/{ID}
11:memory:/docker/{ID}
2:cpu,cpuacct:/docker/{ID}
1:name=systemd:/docker/{ID}
0::/
"""

# Memory controller path that is not a container id (32 hex), as on the micro-VM these tests run on.
THIS_VM = """9:name=systemd:/
4:memory:/process_api/bca1d9794f38fad3a88b970a5f23d77a
0::/
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "0::/system.slice/nginx.service\n",
            CgroupInfo("/system.slice/nginx.service", "nginx.service", None, None),
        ),
        (HYBRID_DEBIAN10, CgroupInfo("/system.slice/nginx.service", "nginx.service", None, None)),
        (
            "0::/system.slice/system-getty.slice/getty@tty1.service\n",
            CgroupInfo("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service", None, None),
        ),
        (
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            CgroupInfo("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", None, None),
        ),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n",
            CgroupInfo(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
                "user@1000.service",
                "foo.service",
                None,
            ),
        ),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
            CgroupInfo(
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                "user@1000.service",
                "init.scope",
                None,
            ),
        ),
        (
            f"0::/system.slice/docker-{ID}.scope\n",
            CgroupInfo(f"/system.slice/docker-{ID}.scope", f"docker-{ID}.scope", None, ID),
        ),
        (DOCKER_CGROUPFS_V1, CgroupInfo(f"/docker/{ID}", None, None, ID)),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7081_92a3_b4c5d6e7f809"
            f".slice/cri-containerd-{ID}.scope\n",
            CgroupInfo(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7081_92a3_b4c5d6e7f809"
                f".slice/cri-containerd-{ID}.scope",
                f"cri-containerd-{ID}.scope",
                None,
                ID,
            ),
        ),
        (
            f"11:memory:/kubepods/burstable/pod1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809/{ID}\n"
            f"1:name=systemd:/kubepods/burstable/pod1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809/{ID}\n",
            CgroupInfo(f"/kubepods/burstable/pod1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809/{ID}", None, None, ID),
        ),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n",
            CgroupInfo(
                f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
                "user@1000.service",
                f"libpod-{ID}.scope",
                ID,
            ),
        ),
        (
            f"0::/machine.slice/libpod-conmon-{ID}.scope\n",
            CgroupInfo(f"/machine.slice/libpod-conmon-{ID}.scope", f"libpod-conmon-{ID}.scope", None, None),
        ),
        ("0::/lxc.payload.web1\n", CgroupInfo("/lxc.payload.web1", None, None, "web1")),
        (
            "0::/lxc.payload.web1/system.slice/nginx.service\n",
            CgroupInfo("/lxc.payload.web1/system.slice/nginx.service", "nginx.service", None, "web1"),
        ),
        (THIS_VM, CgroupInfo("/", None, None, None)),
        ("", CgroupInfo(None, None, None, None)),
        ("garbage\x00\xff line\n", CgroupInfo(None, None, None, None)),
    ],
)
def test_parse_cgroup(text: str, expected: CgroupInfo) -> None:
    assert parse_cgroup(text) == expected


def test_read_cgroup_live_and_vanished() -> None:
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        assert read_cgroup(os.getpid()) == parse_cgroup(f.read())
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert read_cgroup(proc.pid) is None
