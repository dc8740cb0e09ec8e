"""A container's mount namespace is held by its caller from the start, and unmounted after the
container's end is reported, by pyrt's teardown thread (the core's ``spawn::teardown``): its
last exit drops a reference instead of unmounting the whole tree before the waiter is woken.
Held, it must still never outlive the caller's interest: gone once the container is reaped,
whether by remove(), by a run's end or by the owner's death."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from usertools import NEEDS_SETPRIV, as_user, public_dir, subid_user

import pyrt


def held_mount_namespaces() -> set[str]:
    """The mount namespaces this process has a descriptor of ("mnt:[inode]")."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("mnt:["):
                found.add(link)
    return found


def settles(cond: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``cond`` holds within ``seconds`` (the teardown thread closes on its own time)."""
    end = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "mapped"])
def test_a_started_containers_mount_namespace_is_held_until_it_is_reaped(
    image: pyrt.Image, rootless: bool
) -> None:
    c = pyrt.Container(image, ["sleep", "60"], rootless=rootless)
    c.start()
    try:
        assert c.pid is not None
        ns = os.readlink(f"/proc/{c.pid}/ns/mnt")
        assert ns != os.readlink("/proc/self/ns/mnt")
        assert ns in held_mount_namespaces()
        # Killed from outside and not reaped yet: its namespace is still held (and still
        # whole: an exec cannot join a dead container, but the namespace's file is ours).
        os.kill(c.pid, 9)
        assert c.wait(timeout=10) == -9
    finally:
        c.remove()
    assert settles(lambda: ns not in held_mount_namespaces()), held_mount_namespaces()


def test_runs_leave_no_namespace_held(image: pyrt.Image) -> None:
    before = held_mount_namespaces()
    ours = os.readlink("/proc/self/ns/mnt")
    for _ in range(20):
        r = pyrt.run(image, ["readlink", "/proc/self/ns/mnt"], text=True)
        assert r.stdout.startswith("mnt:[") and r.stdout.strip() != ours, r
    assert settles(lambda: held_mount_namespaces() <= before), held_mount_namespaces()


def test_a_failed_start_holds_nothing(image: pyrt.Image) -> None:
    before = held_mount_namespaces()
    with pytest.raises(pyrt.SpawnError):
        pyrt.run(image, ["/no/such/command"])
    assert settles(lambda: held_mount_namespaces() <= before), held_mount_namespaces()


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    yield from public_dir()


@NEEDS_SETPRIV
def test_a_rootless_callers_containers_are_held_and_let_go(public: Path, tmp_path: Path) -> None:
    ids = subid_user()
    if ids is None:
        pytest.skip("needs the user pyrt-ci with a /etc/subuid range (.ci/run creates it)")
    out = as_user(
        *ids,
        """
        import time
        def held():
            found = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("mnt:["):
                    found.add(link)
            return found
        img = pyrt.Image.load(PUBLIC / "rootfs")
        c = pyrt.Container(img, ["sleep", "60"])
        c.start()
        ns = os.readlink(f"/proc/{c.pid}/ns/mnt")
        out["held"] = ns in held()
        c.remove()
        for _ in range(1000):
            if ns not in held():
                break
            time.sleep(0.01)
        out["after"] = ns in held()
        """,
        public,
        tmp_path,
    )
    assert out["held"] is True and out["after"] is False, out
    assert out["leftover"] == [], out
