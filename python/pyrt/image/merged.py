"""What a path is in an image's merged root, read from its layer directories (topmost first,
in overlayfs' format: a 0:0 character device hides what is below, an opaque directory hides
the directories below it). Symlinks are followed inside the root. Used to decide whether a
COPY destination is an existing directory and whether WORKDIR must make its directory."""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Optional

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


def _lookup(lowers: tuple[str, ...], parts: list[str]) -> Optional[tuple[os.stat_result, str]]:
    for lower in lowers:
        p = os.path.join(lower, *parts)
        try:
            st = os.lstat(p)
        except OSError:
            if _hidden_below(lower, parts):
                return None
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # a whiteout
        return st, p
    return None


def _hidden_below(lower: str, parts: list[str]) -> bool:
    """Whether a directory of ``parts`` in this layer is opaque (the layers below are not
    seen through it)."""
    for i in range(len(parts) - 1, 0, -1):
        p = os.path.join(lower, *parts[:i])
        for attr in _OPAQUE:
            with contextlib.suppress(OSError):
                if os.getxattr(p, attr, follow_symlinks=False) == b"y":
                    return True
    return False


def kind(lowers: tuple[str, ...], path: str) -> Optional[str]:
    """ "dir", "file" (anything else) or None when ``path`` does not exist in the root."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        found = _lookup(lowers, [*done, part])
        if found is None:
            return None
        st, real = found
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(real)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(part)
    if not done:
        return "dir"
    found = _lookup(lowers, done)
    if found is None:
        return None
    return "dir" if stat.S_ISDIR(found[0].st_mode) else "file"
