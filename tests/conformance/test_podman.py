"""podman with pyrt-runc as its OCI runtime (`--runtime`), on an image loaded from an archive:
run, -d, exec, stop, rm. (This machine's root has no CAP_SYS_RESOURCE, so podman's default
rlimits, which raise hard limits, are lowered with --ulimit.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ocitools import TICK, _pyrt_runc, ticks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="podman as root")

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


@pytest.fixture(scope="module")
def podman_image(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    assert shutil.which("podman"), "podman is not installed (.ci/run installs it from Debian)"
    tar = tmp_path_factory.mktemp("podman") / "bb.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    subprocess.run(["podman", "import", "-q", str(tar), "localhost/pyrt-runc-test:latest"],
                   check=True, capture_output=True)  # fmt: skip
    return "localhost/pyrt-runc-test:latest"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        ["podman", "--runtime", _pyrt_runc(), *args], capture_output=True, text=True, timeout=60
    )
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {p.returncode}: {p.stderr}")
    return p


def test_podman_run_rm(podman_image: str) -> None:
    p = podman("run", "--rm", *ULIMITS, podman_image, "echo", "ok")
    assert p.stdout.strip() == "ok"
    assert (
        podman("run", "--rm", *ULIMITS, podman_image, "sh", "-c", "exit 7", check=False).returncode
        == 7
    )


def test_podman_detached_exec_stop_rm(podman_image: str) -> None:
    cid = podman("run", "-d", *ULIMITS, podman_image, "sleep", "60").stdout.strip().splitlines()[-1]
    try:
        assert podman("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
        out = podman("exec", cid, "sh", "-c", "echo in:$(cat /proc/1/cmdline | tr '\\0' ' ')")
        assert out.stdout.strip() == "in:sleep 60"
        podman("stop", "-t", "1", cid)
        assert podman("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "exited"
    finally:
        podman("rm", "-f", "-t", "0", cid, check=False)
    assert cid not in podman("ps", "-a", "-q", "--no-trunc").stdout


def test_podman_uidmap(podman_image: str) -> None:
    """`podman --uidmap`: a user namespace from the spec, its maps written before the root is
    prepared; the command is root inside and an id of the range outside."""
    p = podman("run", "--rm", *ULIMITS, "--uidmap", "0:200000:65536", "--gidmap",
               "0:200000:65536", podman_image, "sh", "-c",
               "id -u; cat /proc/self/uid_map; echo x > /tmp/f && stat -c %u /tmp/f")  # fmt: skip
    lines = p.stdout.split("\n")
    assert lines[0] == "0", p.stdout
    assert lines[1].split() == ["0", "200000", "65536"], p.stdout
    assert lines[2] == "0", p.stdout


def test_podman_uidmap_with_an_idmapped_volume(podman_image: str, tmp_path: Path) -> None:
    """`podman --uidmap ... -v SRC:DST:idmap`: the volume is idmapped with the container's
    mapping, so the host root's files are root's inside (not nobody's), and what the
    container's root writes there is the host root's."""
    src = tmp_path / "vol"
    src.mkdir()
    (src / "host-file").write_text("h")
    tmp_path.chmod(0o755)
    p = podman("run", "--rm", *ULIMITS, "--uidmap", "0:200000:65536", "--gidmap",
               "0:200000:65536", "-v", f"{src}:/vol:idmap", podman_image, "sh", "-c",
               "stat -c %u /vol/host-file; echo c > /vol/made")  # fmt: skip
    assert p.stdout.split() == ["0"], p.stdout + p.stderr
    assert (src / "made").stat().st_uid == 0


def test_podman_pause_unpause_and_update(podman_image: str) -> None:
    """`podman pause/unpause` (the freezer) and `podman update --memory` (the cgroup), checked
    from inside (a clock the container writes stops and goes on) and on the host."""
    cid = podman("run", "-d", *ULIMITS, podman_image, "sh", "-c", TICK).stdout.split()[-1]
    try:
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        assert ticks(pid)
        podman("pause", cid)
        assert podman("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "paused"
        assert not ticks(pid)
        podman("unpause", cid)
        assert podman("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
        assert ticks(pid)
        podman("update", "--memory", "64m", cid)
        with open(f"/proc/{pid}/cgroup") as f:
            mem = next(ln.split(":", 2)[2].strip() for ln in f if ":memory:" in ln)
        limit = Path(f"/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes").read_text()
        assert int(limit) == 64 << 20
    finally:
        podman("rm", "-f", "-t", "0", cid, check=False)
