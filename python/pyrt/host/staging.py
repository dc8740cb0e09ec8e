"""Where a ``copy_out`` to a new host path is built: a directory beside the destination, so
that the copy appears there whole, by one rename, or not at all.

A copy cut short by an exception is deleted by the process itself; one cut short by the
process's death (a SIGKILL in the middle) is deleted by its reaper helper, which is told of
the directory while it exists. Without the staging, such a copy left a partial tree at the
destination, indistinguishable from a complete one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from pyrt.errors import PyrtError
from pyrt.host import reaper, trees

#: What a staging directory's name starts with; the helper deletes nothing else.
PREFIX = ".pyrt-copy-"


def key(path: str) -> str:
    """The reaper's id of the staging directory ``path`` (hex: a path may hold a newline)."""
    return reaper.STAGING + os.fsencode(path).hex()


def path_of(key: str) -> str | None:
    """The staging directory a reaper id names, or None when it names no such directory."""
    try:
        path = os.fsdecode(bytes.fromhex(key[len(reaper.STAGING) :]))
    except ValueError:
        return None
    ok = os.path.isabs(path) and os.path.basename(path).startswith(PREFIX)
    return path if ok else None


@contextlib.contextmanager
def staged(into: str) -> Iterator[str]:
    """A new directory in ``into``, deleted with what it holds on leaving, or by the helper
    when this process dies first."""
    try:
        d = tempfile.mkdtemp(prefix=PREFIX, dir=into)
    except OSError as e:
        raise PyrtError(f"copy_out: cannot write in {into}: {e.strerror}") from None
    reaper.watch(key(d))
    try:
        yield d
    finally:
        trees.rmtree(d)
        reaper.forget(key(d))
