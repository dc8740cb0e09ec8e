"""Deleting a container directory, or a reset's old upper or work directory: entry by entry
when it is as pyrt made it, with rmtree's walk only when the container wrote something. Used
by a removal (`ContainerDir.remove`), the helper's trash (`reaping`) and stale collection."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pyrt.host import userns
from pyrt.rootfs import disklayer
from pyrt.rootfs.view import clear_volatile_mark

#: What a container directory holds as pyrt makes it, files first, then directories deepest
#: first ("" is the directory itself), overlayfs's volatile mark (``view.VOLATILE_MARK``) among
#: them. A reset's old upper or work directory, handed to the trash on its own, has one of
#: these shapes too: the mark is listed as in a container's directory and as in a work one.
_MADE_FILES = (
    "state.json",
    ".state.json.tmp",  # (a state write cut short: `_core.write_replacing`'s temporary)
    "lock",
    "log",
    "cgroups",
    "removed",
    "work/work/incompat/volatile/dirty",
    "work/incompat/volatile/dirty",
)
_MADE_DIRS = (
    "rootfs",
    "upper",
    "work/work/incompat/volatile",
    "work/work/incompat",
    "work/incompat/volatile",
    "work/incompat",
    "work/work",
    "work/index",
    "work",
    "",
)


def remove_as_made(path: Path) -> bool:
    """Deletes ``path`` if it holds only what pyrt puts in a container directory (nothing the
    container wrote in its writable layer): a few unlinks and rmdirs, against rmtree's
    open, stat, read and close of every directory, which was the helper's largest cost per
    removed container. False, with the known files gone, when anything else is left:
    ``remove_tree`` then finishes."""
    for f in _MADE_FILES:
        try:
            os.unlink(path / f)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    for d in _MADE_DIRS:
        try:
            os.rmdir(path / d)
        except FileNotFoundError:
            pass
        except OSError:  # not empty (or a mount point): something beyond what pyrt made
            return False
    return True


def remove_tree(path: Path) -> None:
    """A container directory, whatever is left in it. overlayfs leaves its work/work directory
    with mode 000: root walks through that, a rootless owner must open it up first. A
    size-bounded layer is unmounted first (rmtree would empty it and leave the mount)."""
    with contextlib.suppress(OSError):
        disklayer.unmount(path)
    if remove_as_made(path):
        return
    with contextlib.suppress(OSError):
        os.chmod(path / "work" / "work", 0o700)
    for work in (path / "work", path):  # a container's directory, or a reset's work directory
        with contextlib.suppress(OSError):
            clear_volatile_mark(str(work))
    userns.remove_tree(path)
