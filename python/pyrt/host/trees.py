"""Deleting a whole tree, whatever its depth."""

from __future__ import annotations

import os
import shutil
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
