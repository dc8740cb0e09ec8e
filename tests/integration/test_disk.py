"""disk=: a bound on the writable layer, checked from inside (a write past it fails with
ENOSPC, df shows the size) and on the host (the bounding mount goes with the container)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyrt
from helpers import pyrt_mounts
from pyrt.host.state import containers_root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="disk= needs root")

FILL = "dd if=/dev/zero of=/big bs=1M count=65; echo rc=$?; ls -l /big"


def layer_mounts(cid: str) -> list[str]:
    return [m for m in pyrt_mounts() if cid in m and "/layer " in m]


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless-range"])
def test_the_65th_mib_of_a_64m_layer_fails_with_enospc(image: pyrt.Image, rootless: bool) -> None:
    c = pyrt.Container(image, ["sh", "-c", FILL], disk="64m", rootless=rootless)
    r = c.run(text=True)
    try:
        assert "No space left on device" in r.stderr, r.stderr
        assert "rc=1" in r.stdout
        size = int(r.stdout.split("\n")[1].split()[4])
        assert 63 << 20 <= size <= 64 << 20, r.stdout
    finally:
        c.remove()
    assert not layer_mounts(c.id)


def test_within_the_bound_writes_succeed_and_df_shows_it(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "60"], disk="32m") as c:
        assert layer_mounts(c.id), "the bound is a mount under the container's directory"
        r = c.exec(["sh", "-c", "dd if=/dev/zero of=/f bs=1M count=16 2>&1 && df -k /"])
        assert r.returncode == 0, r.stdout
        assert r.stdout.decode().split("\n")[-2].split()[1] == str(32 << 10)
    assert not layer_mounts(c.id)
    assert not (containers_root() / c.id).exists()


def test_files_in_commit_and_reset_of_a_bounded_layer(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "cat /in && echo made > /made"], disk="8m")
    try:
        c.write_file("/in", "before start\n")
        c.start()
        assert c.wait(timeout=30) == 0
        assert c.logs() == b"before start\n"
        assert c.read_file("/made") == b"made\n"
        img = c.commit()
        assert pyrt.run(img, ["cat", "/made"]).stdout == b"made\n"
        c.reset()  # runs the command again, on a fresh layer
        assert c.wait(timeout=30) == 1  # (no /in to cat)
        with pytest.raises(FileNotFoundError):
            c.read_file("/in")
        assert layer_mounts(c.id), "reset keeps the bound"
    finally:
        c.remove()
    assert not layer_mounts(c.id)


@pytest.mark.parametrize(
    "value, error",
    [
        ("lots", ValueError),
        (0, pyrt.InvalidOption),
        (1000, pyrt.InvalidOption),
        (1 << 70, pyrt.InvalidOption),
        (-5, ValueError),
        ([1], TypeError),
        (2.5, TypeError),
        (True, TypeError),
    ],
)
def test_impossible_bounds_are_refused_by_name(
    image: pyrt.Image, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="disk"):
        pyrt.Container(image, ["true"], disk=value)


def test_the_host_image_has_no_layer_to_bound() -> None:
    with pytest.raises(pyrt.InvalidOption, match=r"disk=.*host image"):
        pyrt.Container(pyrt.Image.host(), ["true"], disk="1g")


def test_without_overlayfs_it_is_refused(rootfs: Path) -> None:
    code = (
        "import sys, pyrt\n"
        "img = pyrt.Image.load(sys.argv[1])\n"
        "try:\n"
        "    pyrt.Container(img, ['true'], disk='1g')\n"
        "except pyrt.InvalidOption as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, PYRT_NO_OVERLAY="1")
    r = subprocess.run([sys.executable, "-c", code, str(rootfs)], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert "disk=" in r.stdout and "overlayfs" in r.stdout, r.stdout + r.stderr


def test_cli_disk(rootfs: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pyrt.cli", "run", "--disk", "8m", str(rootfs), "sh", "-c",
         "dd if=/dev/zero of=/f bs=1M count=9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "pyrt.cli", "run", "--disk", "huge", str(rootfs),
                        "true"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "disk" in r.stderr and "Traceback" not in r.stderr


def test_the_layers_pages_count_against_memory(image: pyrt.Image) -> None:
    """(SECURITY.md: a tmpfs layer is memory; a container cannot use it to exceed memory=.)"""
    r = pyrt.run(image, ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=48; echo rc=$?"],
                 disk="64m", memory="32m")  # fmt: skip
    assert r.oom_killed and b"rc=137" in r.stdout, r
