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

#: What a container directory holds as pyrt makes it, files, then directories ("" is the
#: directory itself), overlayfs's volatile mark (``view.VOLATILE_MARK``) among them. A reset's
#: old layer ("ID.layer.N": its upper and work directories) has this shape too; the mark is
#: also listed as in a work directory of its own (a reset's, as earlier versions trashed it).
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


_KNOWN_FILES = frozenset(_MADE_FILES)
_KNOWN_DIRS = frozenset(d for d in _MADE_DIRS if d)


def remove_as_made(path: Path) -> bool:
    """Deletes ``path`` if it holds only what pyrt puts in a container directory (nothing the
    container wrote in its writable layer): a few unlinks and rmdirs, against rmtree's
    open, stat, read and close of every directory, which was the helper's largest cost per
    removed container. False, with the known files gone, when anything else is left:
    ``remove_tree`` then finishes."""
    return _remove_known(os.fspath(path), "")


def _remove_known(path: str, rel: str) -> bool:
    """``remove_as_made`` of the directory ``path``, which is ``rel`` within a container
    directory (or a reset's old layer). Only what its listing holds is tried, with strings for
    paths: trying every name pyrt might have made, through pathlib, took the helper ~1 ms of
    CPU per reset, most of it in rmdirs of directories not yet empty (~50 us each on this
    VM's ext4, failed or not; a listing costs a fifth of that)."""
    try:
        with os.scandir(path) as listing:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
    except FileNotFoundError:
        return True
    except OSError:
        return False  # (not a directory, or no right to read it)
    for name, is_dir in entries:
        inner = f"{rel}/{name}" if rel else name
        entry = f"{path}/{name}"
        if inner in _KNOWN_FILES and not is_dir:
            try:
                os.unlink(entry)
            except FileNotFoundError:
                pass
            except OSError:
                return False
        # (A link where pyrt makes a directory is not pyrt's: never followed.)
        elif not (is_dir and inner in _KNOWN_DIRS and _remove_known(entry, inner)):
            return False
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
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
