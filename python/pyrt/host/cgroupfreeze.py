"""Freezing a container's processes through its cgroup (v1 ``freezer.state``, v2
``cgroup.freeze``), for consistent snapshots of another process's container (`pyrt commit`);
the freeze is always lifted again. The work is the core's (``cgroups``), which also pauses and
resumes this process's containers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from pyrt import _core
from pyrt.errors import PyrtError


def freeze(paths: Sequence[str]) -> bool:
    """Freezes the cgroup at ``paths``; False when it has no freezer."""
    try:
        return _core.cgroup_freeze(list(paths), True)
    except OSError as e:
        raise PyrtError(f"freezing the container's cgroup: {e}") from e


def thaw(paths: Sequence[str]) -> None:
    try:
        _core.cgroup_freeze(list(paths), False)
    except OSError as e:
        raise PyrtError(f"thawing the container's cgroup: {e}") from e


@contextlib.contextmanager
def frozen(paths: Sequence[str]) -> Iterator[bool]:
    """Frozen for the block (yields whether a freezer was there to do it)."""
    done = freeze(paths)
    try:
        yield done
    finally:
        if done:
            thaw(paths)
