"""A container's mount namespace is held by a thread of its root caller's from the start, and
unmounted after the container's end is reported, by that thread's exit (the core's
``spawn::teardown``): its last exit drops a reference instead of unmounting the whole tree
before the waiter is woken. Held, it must still never outlive the caller's interest: gone once
the container is reaped, whether by remove(), by a run's end or by the owner's death; and it
costs the caller no descriptor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from usertools import NEEDS_SETPRIV, as_user, public_dir, subid_user

import pyrt
from helpers import settles


def held_mount_namespaces() -> set[str]:
    """The mount namespaces this process's threads are in, other than its own ("mnt:[inode]")."""
    ours = os.readlink("/proc/self/ns/mnt")
    found = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/self/task/{tid}/ns/mnt"))
    return found - {ours}


def descriptors() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def descriptor_targets() -> set[str]:
    """What this process's descriptors are ("mnt:[inode]" for a namespace's)."""
    found = set()
    for d in descriptors():
        with contextlib.suppress(OSError):  # (the listing's own, closed by now)
            found.add(os.readlink(f"/proc/self/fd/{d}"))
    return found


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "mapped"])
def test_a_started_containers_mount_namespace_is_held_until_it_is_reaped(
    image: pyrt.Image, rootless: bool
) -> None:
    # (What pyrt opens once per process, its helper's pipe among them, opened first.)
    pyrt.Container(image, ["sleep", "60"], rootless=rootless).start().remove()
    fds = len(descriptors())
    c = pyrt.Container(image, ["sleep", "60"], rootless=rootless)
    c.start()
    try:
        assert c.pid is not None
        ns = os.readlink(f"/proc/{c.pid}/ns/mnt")
        assert ns != os.readlink("/proc/self/ns/mnt")
        # Held from the start: by a descriptor at once, which the thread then joins in its
        # own time.
        assert ns in held_mount_namespaces() | descriptor_targets()
        assert settles(lambda: ns in held_mount_namespaces()), held_mount_namespaces()
        # Killed from outside: let go once reaped (by wait() here).
        os.kill(c.pid, 9)
        assert c.wait(timeout=10) == -9
    finally:
        c.remove()
    assert settles(lambda: ns not in held_mount_namespaces()), held_mount_namespaces()
    assert len(descriptors()) == fds


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "mapped"])
def test_removed_containers_kept_by_the_caller_hold_no_descriptor(
    image: pyrt.Image, rootless: bool
) -> None:
    """A caller that keeps its ended containers (a list of them, a test's records) keeps no
    descriptor of theirs: each process's pidfd and pipes are closed once it is reaped, not when
    the object goes (three each before: a few hundred kept ran a process out of its 1024)."""

    async def aio_one() -> pyrt.aio.Container:
        c = pyrt.aio.Container(image, ["sleep", "60"], rootless=rootless)
        await c.start()
        await c.exec(["true"])
        await c.remove()
        return c

    def kinds() -> Iterator[object]:
        # Started, exec'd through its server, removed; run to completion; ended by itself and
        # waited for; with an init and a reset in between; the asyncio front's.
        c = pyrt.Container(image, ["sleep", "60"], rootless=rootless).start()
        c.exec(["true"])
        c.exec(["true"])
        c.remove()
        yield c
        c = pyrt.Container(image, ["true"], rootless=rootless)
        c.run()
        yield c
        c = pyrt.Container(image, ["true"], rootless=rootless).start()
        assert c.wait(timeout=30) == 0
        c.remove()
        yield c
        c = pyrt.Container(image, ["sleep", "60"], init=True, rootless=rootless).start()
        c.reset().remove()
        yield c
        yield asyncio.run(aio_one())

    list(kinds())  # (what a process opens once, each kind's)
    gc.collect()
    fds = len(descriptors())
    kept = [c for _ in range(10) for c in kinds()]
    assert len(descriptors()) == fds, (len(kept), sorted(os.readlink(f"/proc/self/fd/{d}")
                                                         for d in descriptors()))  # fmt: skip


def test_remove_returns_with_nothing_of_the_container_open(image: pyrt.Image) -> None:
    """A started container's output goes through a pipe that a thread of ours copies into its
    log file; remove() returns only once that thread has closed both (it used to close them a
    moment later, and a caller counting descriptors right after remove() saw three more)."""
    pyrt.Container(image, ["sleep", "60"]).start().remove()
    fds = descriptors()
    for _ in range(20):
        c = pyrt.Container(image, ["sh", "-c", "echo out; echo err >&2; exec sleep 60"]).start()
        c.wait_for_log("err", timeout=30)
        c.remove()
        assert descriptors() == fds, sorted(os.readlink(f"/proc/self/fd/{d}")
                                            for d in descriptors())  # fmt: skip


def test_runs_leave_no_namespace_held(image: pyrt.Image) -> None:
    before = held_mount_namespaces()
    ours = os.readlink("/proc/self/ns/mnt")
    fds = descriptors()
    for _ in range(20):
        r = pyrt.run(image, ["readlink", "/proc/self/ns/mnt"], text=True)
        assert r.stdout.startswith("mnt:[") and r.stdout.strip() != ours, r
        # No descriptor of it is left to close after the run: none at all, right away.
        assert descriptors() == fds
    assert settles(lambda: held_mount_namespaces() <= before), held_mount_namespaces()


def test_a_failed_start_holds_nothing(image: pyrt.Image) -> None:
    before = held_mount_namespaces()
    fds = descriptors()
    with pytest.raises(pyrt.SpawnError):
        pyrt.run(image, ["/no/such/command"])
    assert descriptors() == fds
    assert settles(lambda: held_mount_namespaces() <= before), held_mount_namespaces()


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    yield from public_dir()


@NEEDS_SETPRIV
def test_a_rootless_caller_holds_nothing_and_leaves_nothing(public: Path, tmp_path: Path) -> None:
    """A caller without privilege cannot join a mount namespace: its containers' exits unmount
    as before, and neither a thread nor a descriptor of theirs is left."""
    ids = subid_user()
    if ids is None:
        pytest.skip("needs the user pyrt-ci with a /etc/subuid range (.ci/run creates it)")
    out = as_user(
        *ids,
        """
        def held():
            ours, found = os.readlink("/proc/self/ns/mnt"), set()
            for tid in os.listdir("/proc/self/task"):
                try:
                    found.add(os.readlink(f"/proc/self/task/{tid}/ns/mnt"))
                except OSError:
                    pass
            return found - {ours}
        img = pyrt.Image.load(PUBLIC / "rootfs")
        pyrt.Container(img, ["sleep", "60"]).start().remove()  # (what is opened once)
        pyrt.run(img, ["true"])
        fds = sorted(os.listdir("/proc/self/fd"))
        c = pyrt.Container(img, ["sleep", "60"])
        c.start()
        out["held"] = sorted(held())
        c.remove()
        r = pyrt.run(img, ["true"])
        out["code"] = r.returncode
        out["after"] = sorted(held())
        out["fds"] = sorted(os.listdir("/proc/self/fd")) == fds
        """,
        public,
        tmp_path,
    )
    assert out["held"] == [] and out["after"] == [] and out["code"] == 0, out
    assert out["fds"] is True and out["leftover"] == [], out
