"""ExactSize: a file archived while it changes keeps the size its header declares, so the
archive stays well-formed (tarfile itself refuses a short read)."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given
from hypothesis import strategies as st

from pyrt.rootfs.archives import ExactSize


@given(st.binary(max_size=5000), st.integers(0, 6000), st.integers(1, 700))
def test_reads_exactly_size_bytes_whatever_the_file_holds(
    data: bytes, size: int, chunk: int
) -> None:
    f = ExactSize(io.BytesIO(data), size)
    out = b""
    while block := f.read(chunk):
        out += block
    assert len(out) == size
    assert out == (data + b"\0" * size)[:size]


def test_a_file_that_shrank_is_archived_padded() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("f")
        ti.size = 10_000  # what stat said before the file shrank to 3 bytes
        tf.addfile(ti, ExactSize(io.BytesIO(b"abc"), ti.size))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        member = tf.extractfile("f")
        assert member is not None
        assert member.read() == b"abc" + b"\0" * 9_997
