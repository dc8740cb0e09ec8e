"""What the running kernel's version allows, where a feature cannot be probed cheaply."""

from __future__ import annotations

import functools
import os


@functools.cache
def at_least(major: int, minor: int) -> bool:
    """Whether the kernel is Linux ``major.minor`` or later (False when its release string
    does not say)."""
    try:
        got = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return got >= (major, minor)
