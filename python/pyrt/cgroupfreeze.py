"""Freezing a container's processes through its cgroup (v1 ``freezer.state``, v2
``cgroup.freeze``), for consistent snapshots; the freeze is always lifted again."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

from .errors import PyrtError

#: How long the kernel may take to stop every task before the freeze is called failed.
FREEZE_TIMEOUT = 5.0


def _v1(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if os.path.exists(os.path.join(p, "freezer.state"))]


def _v2(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if os.path.exists(os.path.join(p, "cgroup.freeze"))]


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise PyrtError(f"{what}: the processes did not freeze within {FREEZE_TIMEOUT} s")
        time.sleep(0.001)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def freeze(paths: Sequence[str]) -> bool:
    """Freezes the cgroup among ``paths`` that has a freezer; False when none has one."""
    v1, v2 = _v1(paths), _v2(paths)
    if v1:
        state = os.path.join(v1[0], "freezer.state")
        _write(state, "FROZEN")
        _wait(lambda: _read(state).strip() == "FROZEN", v1[0])
        return True
    if v2:
        events = os.path.join(v2[0], "cgroup.events")
        _write(os.path.join(v2[0], "cgroup.freeze"), "1")
        _wait(lambda: "frozen 1" in _read(events), v2[0])
        return True
    return False


def thaw(paths: Sequence[str]) -> None:
    for p in _v1(paths):
        _write(os.path.join(p, "freezer.state"), "THAWED")
        return
    for p in _v2(paths):
        _write(os.path.join(p, "cgroup.freeze"), "0")
        return


@contextlib.contextmanager
def frozen(paths: Sequence[str]) -> Iterator[bool]:
    """Frozen for the block (yields whether a freezer was there to do it)."""
    done = freeze(paths)
    try:
        yield done
    finally:
        if done:
            thaw(paths)
