"""Digests of blobs read whole (a layer's blob is checked before anything of it is unpacked).
Decompressing and digesting a layer while it is unpacked is the Rust core's (``unpack``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO, Optional

_CHUNK = 1 << 20

#: Called with the number of bytes just read from a blob (progress bars).
Progress = Callable[[int], None]


def file_digest(f: IO[bytes], progress: Optional[Progress] = None) -> tuple[str, int]:
    """The "sha256:..." digest of what ``f`` reads, and its length."""
    sha = hashlib.sha256()
    n = 0
    while chunk := f.read(_CHUNK):
        sha.update(chunk)
        n += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return "sha256:" + sha.hexdigest(), n
