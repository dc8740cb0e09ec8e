"""Deleting a whole tree, whatever its depth."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess


def rmtree(path: str | os.PathLike[str]) -> None:
    """``shutil.rmtree(path)``, errors ignored, for a tree of any depth. rmtree recurses once
    per level and stops at Python's recursion limit (~1000): a container that nests its
    directories deeper left its writable layer in the trash, and every later start, emptying
    the trash first, failed with a RecursionError. coreutils' ``rm``, which walks without
    recursing (and past PATH_MAX), finishes such a tree."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        quiet = subprocess.DEVNULL
        subprocess.run(["rm", "-rf", "--", os.fspath(path)], stdin=quiet, stdout=quiet,
                       stderr=quiet, check=False)  # fmt: skip


def remove_at(parent: int, name: str) -> None:
    """Removes whatever is at ``name`` in the directory open as ``parent``, not following a
    symlink: a directory with all it holds, at any depth (OSError when something stays)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    # The descriptor's magic link names the directory itself, not a path a swap could move.
    path = f"/proc/self/fd/{parent}/{name}"
    try:
        shutil.rmtree(path)
    except RecursionError:
        quiet = subprocess.DEVNULL
        # (The same descriptor number in rm, so the same path names the same directory.)
        subprocess.run(["rm", "-rf", "--", path], stdin=quiet, stdout=quiet, stderr=quiet,
                       pass_fds=(parent,), check=False)  # fmt: skip
        if os.path.lexists(path):
            raise OSError(39, "a directory too deep to remove whole", name) from None
