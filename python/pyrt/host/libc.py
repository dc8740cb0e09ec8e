"""The C library's calls Python's ``os`` lacks (mount, umount2), through ctypes, which is
imported at the first call: importing it costs every interpreter that imports pyrt ~3 ms."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes


@functools.cache
def libc() -> ctypes.CDLL:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def last_errno() -> int:
    """The errno of the last call made through ``libc()`` in this thread."""
    import ctypes

    return ctypes.get_errno()
