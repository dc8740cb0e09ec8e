"""containerd (Debian's 1.6) with pyrt-runc as the runtime binary of its runc shim
(`ctr run --runc-binary`): run, a detached task, exec, ps, kill, delete. The daemon is the
test's own, on a socket and directories of its own, stopped at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from critools import oci_archive
from ocitools import TICK, _pyrt_runc, ticks

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd as root")


@pytest.fixture(scope="module")
def ctr(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str]]:
    """The ctr command line for the test's daemon, and the name of an imported image."""
    assert shutil.which("containerd"), "containerd is not installed (.ci/run installs it)"
    d = tmp_path_factory.mktemp("containerd")
    sock = d / "c.sock"
    with open(d / "log", "w") as log:
        daemon = subprocess.Popen(
            ["containerd", "--root", str(d / "root"), "--state", str(d / "state"),
             "--address", str(sock)],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    base = ["ctr", "--address", str(sock)]
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([*base, "version"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, (d / "log").read_text()[-2000:]
            time.sleep(0.1)
        archive = oci_archive(d, rootfs, "bb", "--config.cmd", "sh")
        subprocess.run([*base, "images", "import", "--base-name", "localhost/bb", str(archive)],
                       check=True, capture_output=True)  # fmt: skip
        names = subprocess.run([*base, "images", "ls", "-q"], capture_output=True, text=True)
        assert names.stdout.split(), names
        yield base, names.stdout.split()[0]
    finally:
        daemon.terminate()
        daemon.wait(20)
        subprocess.run(["umount", "-R", str(d / "root")], capture_output=True)
        # Overlay snapshots and shim state live under d; pytest removes it.


def _run(
    ctr: tuple[list[str], str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*ctr[0], *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"ctr {' '.join(args)}: {p.returncode}: {p.stderr}")
    return p


def test_ctr_run(ctr: tuple[list[str], str]) -> None:
    image = ctr[1]
    p = _run(ctr, "run", "--rm", "--runc-binary", _pyrt_runc(), image, "pyrt-ctr-1",
             "sh", "-c", "echo ok-from-ctr; exit 5", check=False)  # fmt: skip
    assert p.stdout.strip() == "ok-from-ctr", p.stderr
    assert p.returncode == 5


def test_ctr_detached_exec_ps_kill_delete(ctr: tuple[list[str], str]) -> None:
    image = ctr[1]
    _run(ctr, "run", "-d", "--runc-binary", _pyrt_runc(), image, "pyrt-ctr-2", "sleep", "60")
    try:
        assert "RUNNING" in _run(ctr, "task", "ls").stdout
        out = _run(ctr, "task", "exec", "--exec-id", "e1", "pyrt-ctr-2", "sh", "-c", "echo in")
        assert out.stdout.strip() == "in"
        pids = _run(ctr, "task", "ps", "pyrt-ctr-2").stdout.split()
        assert len(pids) >= 2
        _run(ctr, "task", "kill", "-s", "SIGKILL", "pyrt-ctr-2")
        deadline = time.monotonic() + 10
        while "STOPPED" not in _run(ctr, "task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _run(ctr, "task", "delete", "pyrt-ctr-2")
    finally:
        _run(ctr, "task", "delete", "--force", "pyrt-ctr-2", check=False)
        _run(ctr, "container", "rm", "pyrt-ctr-2", check=False)
    assert "pyrt-ctr-2" not in _run(ctr, "container", "ls", "-q").stdout


def test_ctr_task_pause_resume(ctr: tuple[list[str], str]) -> None:
    """`ctr task pause/resume` through the shim: PAUSED in containerd's view, and a counter
    the container writes stops and goes on (read from the host through its root)."""
    image = ctr[1]
    _run(ctr, "run", "-d", "--runc-binary", _pyrt_runc(), image, "pyrt-ctr-3", "sh", "-c", TICK)
    try:
        pid = int(_run(ctr, "task", "ls").stdout.split("pyrt-ctr-3")[1].split()[0])
        assert ticks(pid)
        _run(ctr, "task", "pause", "pyrt-ctr-3")
        assert "PAUSED" in _run(ctr, "task", "ls").stdout
        assert not ticks(pid)
        _run(ctr, "task", "resume", "pyrt-ctr-3")
        assert "RUNNING" in _run(ctr, "task", "ls").stdout
        assert ticks(pid)
    finally:
        _run(ctr, "task", "kill", "-s", "SIGKILL", "pyrt-ctr-3", check=False)
        time.sleep(0.2)
        _run(ctr, "task", "delete", "--force", "pyrt-ctr-3", check=False)
        _run(ctr, "container", "rm", "pyrt-ctr-3", check=False)
