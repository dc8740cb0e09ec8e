"""What a container run to completion (``run()``) keeps on the host: nothing. Its writable layer
is a tmpfs in its own mount namespace, bounded by what the state directory has free, and it
has no directory, so a start makes and deletes no file of pyrt's."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from usertools import NEEDS_SETPRIV, as_user, public_dir, subid_user

import pyrt
from helpers import pyrt_mounts, small_tmpfs
from pyrt.host.state import containers_root

CHANGES = "echo data > /file; rm /etc/passwd; mkdir /made; stat -c '%a %u' / /made"


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "mapped"])
def test_a_run_keeps_nothing_on_the_host(image: pyrt.Image, rootless: bool) -> None:
    """While it runs, the container writes and deletes files as in any layer (its root and
    what it makes are its root's, 0755), its files can be read through its root, and the host
    has no directory and no mount of it; commit and reset say why they cannot. After, nothing."""
    before = set(os.listdir(containers_root()))
    mounts = pyrt_mounts()
    r, w = os.pipe()
    c = pyrt.Container(image, ["sh", "-c", f"{CHANGES}; echo up; sleep 60"], rootless=rootless)
    done: list[pyrt.Result] = []
    t = threading.Thread(target=lambda: done.append(c.run(stdout=w, text=True)))
    t.start()
    try:
        with os.fdopen(r) as out:
            seen = [out.readline() for _ in range(3)]
            assert seen == ["755 0\n", "755 0\n", "up\n"], seen
            assert set(os.listdir(containers_root())) == before
            assert pyrt_mounts() == mounts
            assert c.read_file("/file") == b"data\n"
            with pytest.raises(pyrt.PathNotFound):
                c.read_file("/etc/passwd")
            with pytest.raises(pyrt.PyrtError, match=r"run\(\)"):
                c.commit()
            with pytest.raises(pyrt.PyrtError, match=r"run\(\)"):
                c.reset()
    finally:
        with contextlib.suppress(pyrt.PyrtError):
            c.kill()
        os.close(w)
        t.join(timeout=60)
    assert done and done[0].returncode == -9, done
    assert set(os.listdir(containers_root())) == before
    assert pyrt_mounts() == mounts


FULL = """
import json, sys, pyrt
img = pyrt.Image.load(sys.argv[1])
r = pyrt.run(img, ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=64 2>&1; "
                   "df -k / | tail -1"], text=True)
print(json.dumps([r.returncode, r.stdout]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_run_writes_no_more_than_the_state_directory_holds(rootfs: Path, tmp_path: Path) -> None:
    """The layer takes no more than the state directory's file system has free (there, the
    layer would have filled it): a write past it fails with ENOSPC inside, and nothing is
    left."""
    with small_tmpfs(tmp_path / "state", "size=8m") as state:
        env = dict(os.environ, PYRT_STATE=str(state))
        p = subprocess.run([sys.executable, "-c", FULL, str(rootfs)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        _, out = json.loads(p.stdout)
        assert "No space left on device" in out, out
        size = int(out.split()[-5])  # df's 1K-blocks
        assert 0 < size <= 8 * 1024, out
        assert not (state / "containers").exists() or not os.listdir(state / "containers")


def test_files_written_before_a_run_are_there(image: pyrt.Image) -> None:
    """A container given files before run() has a directory (they live there): the run sees
    them, and its directory goes with it."""
    before = set(os.listdir(containers_root()))
    c = pyrt.Container(image, ["cat", "/cfg"])
    c.write_file("/cfg", "given\n")
    assert c.run().stdout == b"given\n"
    assert set(os.listdir(containers_root())) == before


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    yield from public_dir()


@NEEDS_SETPRIV
def test_a_rootless_run_keeps_nothing(public: Path, tmp_path: Path) -> None:
    """The same for a user without privilege (pyrt-ci, with a subordinate range: the stored
    image is its container's root's, so it can delete the image's files): the layer is made
    in the container's user namespace, its root's, and keeps overlayfs's deletions."""
    ids = subid_user()
    if ids is None:
        pytest.skip("needs the user pyrt-ci with a /etc/subuid range (.ci/run creates it)")
    out = as_user(
        *ids,
        f"""
        img = pyrt.Image.load(PUBLIC / "rootfs.tar.gz", tag="bb:scratch")
        try:
            r = pyrt.run(img, ["sh", "-c", {CHANGES!r} + "; cat /file; ls /etc/passwd"],
                         text=True)
            out["run"] = [r.returncode, r.stdout, r.stderr]
        finally:
            img.remove()
        """,
        public,
        tmp_path,
    )
    code, stdout, stderr = out["run"]
    assert stdout == "755 0\n755 0\ndata\n" and "No such file" in stderr, out
    assert code == 1 and out["leftover"] == [], out
