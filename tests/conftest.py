"""Fixtures shared by every test: images, and the leak check around the whole session."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyrt
from helpers import make_busybox_rootfs, make_tarball, snapshot

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root (real namespaces as root)")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def image(rootfs: Path) -> pyrt.Image:
    return pyrt.Image.load(rootfs)


@pytest.fixture(scope="session")
def rootfs_tarball(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tarball(rootfs, tmp_path_factory.mktemp("tar") / "busybox.tar.gz")


#: The host's device nodes that every container is handed or bound (as stdio, or into its
#: /dev): a runtime that chowns, chmods or replaces one changes it for the whole machine.
HOST_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


def _nodes() -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for p in HOST_NODES:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_rdev, st.st_uid, st.st_gid)
    return out


@pytest.fixture(autouse=True)
def host_nodes_unchanged() -> Iterator[None]:
    """Each test leaves the host's /dev/null and its kind as they were (a copy_out once turned
    /dev/null into a regular file; crun, a peer, chowns a container's stdio, /dev/null too, to
    its mapped root). What a test changed is put back, and the test fails naming it."""
    before = _nodes()
    yield
    after = _nodes()
    changed = [p for p in before if after.get(p) != before[p]]
    for p in changed:
        mode, rdev, uid, gid = before[p]
        with contextlib.suppress(OSError):
            if after.get(p, (0,))[0] != mode:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                os.mknod(p, mode, rdev)
            os.chown(p, uid, gid)
            os.chmod(p, stat.S_IMODE(mode))
    assert not changed, {p: (before[p], after.get(p)) for p in changed}


@pytest.fixture(scope="session", autouse=True)
def no_leaks() -> Iterator[None]:
    """After the whole session: no mount, container process, cgroup, state directory or
    entry of the trash of pyrt's may remain. Fails the session (as a teardown error)
    otherwise."""
    before = snapshot()
    yield
    # Processes of killed containers are reaped by the kernel a moment after their init, a
    # network namespace (with the links in it) is cleaned up a moment after its last user,
    # and a helper empties the trash a moment after it is handed a directory.
    deadline = time.monotonic() + 5
    while True:
        after = snapshot()
        new_procs = set(after["processes"]) - set(before["processes"])  # type: ignore[arg-type]
        new_links = set(after["port links"]) - set(before["port links"])  # type: ignore[arg-type]
        new_trash = set(after["trash"]) - set(before["trash"])  # type: ignore[arg-type]
        if not (new_procs or new_links or new_trash) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    leaks = {
        "mounts": [m for m in after["mounts"] if m not in before["mounts"]],  # type: ignore[union-attr]
        "cgroups": [c for c in after["cgroups"] if c not in before["cgroups"]],  # type: ignore[union-attr]
        "processes": sorted(new_procs),
        "state": [s for s in after["state"] if s not in before["state"]],  # type: ignore[union-attr]
        "trash": sorted(new_trash),
        "netns": [n for n in after["netns"] if n not in before["netns"]],  # type: ignore[union-attr]
        "port links": sorted(new_links),
    }
    leaks = {k: v for k, v in leaks.items() if v}
    assert not leaks, f"pyrt left things behind after the test session: {leaks}"


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
