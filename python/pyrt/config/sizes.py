"""Sizes as users write them: an int of bytes, or "256m", "1g", "512k", "100" (bytes)."""

from __future__ import annotations

import re
from typing import Union

Size = Union[int, str]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Size, what: str = "size") -> int:
    """Bytes from an int or a string like "256m"; ValueError names ``what`` when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: a size cannot be negative: {value}")
        return value
    if isinstance(value, str):
        m = _RE.match(value)
        if m:
            # In whole numbers: a float would make 400 nines infinite (an OverflowError).
            whole, _, frac = m.group(1).partition(".")
            scale: int = 10 ** len(frac)
            return (int(whole) * scale + int(frac or 0)) * _UNITS[m.group(2).lower()] // scale
    raise ValueError(f"{what}: not a size: {value!r} (use bytes, or a number with k, m, g or t)")
