"""The layer decompressor: gzip members and zstd frames back to back, chunk boundaries that
fall between them, and streams that end early."""

from __future__ import annotations

import gzip
import io

import pytest

from pyrt.image.inflate import Inflater

zstandard = pytest.importorskip("zstandard")


def inflate(blob: bytes) -> bytes:
    inf = Inflater(io.BytesIO(blob), "test", None)
    try:
        out = b""
        while chunk := inf.read(7777):
            out += chunk
        return out
    finally:
        inf.close()


@pytest.mark.parametrize("kind", ["gzip", "zstd", "plain"])
def test_several_members_or_frames(kind: str) -> None:
    parts = [b"a" * (1 << 20), b"b" * 3000, b"c" * (3 << 20)]
    if kind == "gzip":
        blob = b"".join(gzip.compress(p) for p in parts)
    elif kind == "zstd":
        z = zstandard.ZstdCompressor()
        blob = b"".join(z.compress(p) for p in parts)
    else:
        blob = b"".join(parts)
    assert inflate(blob) == b"".join(parts)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_stream_is_an_error(kind: str) -> None:
    data = bytes(range(256)) * 4000
    blob = gzip.compress(data) if kind == "gzip" else zstandard.ZstdCompressor().compress(data)
    with pytest.raises(EOFError, match="ends early"):
        inflate(blob[: len(blob) // 2])
