"""Checks of single values at pyrt's doors: each returns the value in its one accepted form, or
raises ``TypeError`` for a wrong type and ``ValueError`` for a wrong value, naming the option and
the value (never an ``AttributeError`` from deep inside, never a panic in the core)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Optional, Union

from pyrt.errors import InvalidArgument, InvalidOption

#: An input to a process: bytes, text, or nothing.
Input = Union[bytes, str, None]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
_ENV_KEY_RE = re.compile(r"^[^=\0]+$")


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def text(value: object, what: str) -> str:
    """A str without NUL bytes (the kernel's strings end at the first one)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__} ({show(value)})")
    if "\0" in value:
        raise InvalidOption(f"{what} must not contain a NUL byte: {show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOption(f"{what} is not valid UTF-8: {show(value)}") from None
    return value


def optional_text(value: object, what: str) -> Optional[str]:
    return None if value is None else text(value, what)


def flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def optional_flag(value: object, what: str) -> Optional[bool]:
    """True, False, or None for the default."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{what} must be True, False or None, not {type(value).__name__}")
    return value


def host_path(value: object, what: str) -> str:
    """A path on the host: a str or an ``os.PathLike``."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{what} must be a path (str or os.PathLike), not {type(value).__name__} "
            f"({show(value)})"
        )
    p = os.fspath(value)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p:
        raise InvalidOption(f"{what} must not be empty")
    return text(p, what)


def container_path(value: object, what: str) -> str:
    """An absolute path inside a container: a str or an ``os.PathLike``."""
    p = host_path(value, what)
    if not p.startswith("/"):
        raise InvalidOption(f"{what} must be an absolute path inside the container: {p!r}")
    return p


def args(value: object, what: str, *, empty_ok: bool = False) -> list[str]:
    """A command: a list (or tuple) of str or path objects, never a single str."""
    # (A list or tuple of ASCII str without NUL, the usual command, passes without the checks
    # of abstract classes or an error's name made for each argument: every start and exec.)
    if type(value) is not list and type(value) is not tuple:
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{what} must be a list of arguments, not a {type(value).__name__}")
        if not isinstance(value, Sequence):
            raise TypeError(f"{what} must be a list of arguments, not {type(value).__name__}")
    out = []
    for i, a in enumerate(value):
        if type(a) is str and a.isascii() and "\0" not in a:
            out.append(a)
            continue
        if isinstance(a, os.PathLike):
            a = os.fspath(a)
            if isinstance(a, bytes):
                a = os.fsdecode(a)
        if isinstance(a, str) and "\0" in a:
            raise InvalidArgument(f"{what}[{i}] contains a NUL byte: {show(a)}")
        out.append(text(a, f"{what}[{i}]"))
    if not out and not empty_ok:
        raise InvalidOption(f"{what} must not be empty")
    return out


def names(value: object, what: str) -> list[str]:
    """A list of names (capabilities, aliases); a single str is refused, not split in letters."""
    return args(value, what, empty_ok=True)


def env(value: object, what: str = "env") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of str to str, not {type(value).__name__}")
    out = {}
    for k, v in value.items():
        key = text(k, f"{what} key")
        if not _ENV_KEY_RE.match(key):
            raise InvalidOption(f"{what}: {key!r} is not a variable name (empty, or has '=')")
        out[key] = text(v, f"{what}[{key!r}]")
    return out


def timeout(value: object, what: str = "timeout") -> Optional[float]:
    """Seconds, or None for no limit. A huge number or infinity also means no limit; NaN and
    negative numbers are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    try:
        f = float(value)
    except OverflowError:  # an int too large for a float: no limit
        return math.inf
    if math.isnan(f) or f < 0:
        raise InvalidOption(f"{what} must be a non-negative number of seconds, not {value!r}")
    return f


def whole(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a whole number, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidOption(f"{what}={value!r}: must be between {low} and {high}")
    return value


def input_data(value: object) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"input must be bytes or str, not {type(value).__name__}")


def user(value: object, what: str = "user") -> Optional[str]:
    """ "uid", "uid:gid", "name" or "name:group"; an int is taken as a uid."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**32 - 1:
            raise InvalidOption(f"{what}={value!r}: not a user id")
        return str(value)
    u = text(value, what)
    if not u.strip() or any(c.isspace() for c in u):
        raise InvalidOption(f"{what}={u!r}: expected 'uid', 'uid:gid', 'name' or 'name:group'")
    return u


def hostname(value: object) -> Optional[str]:
    if value is None:
        return None
    h = text(value, "hostname")
    if not _HOSTNAME_RE.match(h):
        raise InvalidOption(f"hostname={h!r}: letters, digits, '.' and '-', at most 64")
    return h


def name(value: object, what: str = "name") -> Optional[str]:
    if value is None:
        return None
    n = text(value, what)
    if not _NAME_RE.match(n):
        raise InvalidOption(f"{what}={n!r}: letters, digits, '_', '.' and '-', starting with one "
                         "of the first two, at most 128")  # fmt: skip
    return n
