"""The layer unpacker, as a security boundary, over archives built from hostile pieces: entries
that climb (``..``), are absolute, or go through symlinks and hard links planted by earlier
entries toward a directory outside; whiteouts of every spelling; device nodes; arbitrary modes;
and plain garbage. Whatever the archive, unpacking returns or raises ``ImageError`` (never
anything else), and nothing outside the destination appears or changes.

(The unpacker is Python today; when it moves into the Rust core these properties move with it.)
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrt.errors import ImageError
from pyrt.image import unpack

#: Stands for the absolute path of a directory outside the destination: entries and link
#: targets aim at it.
OUT = "@OUT"

pieces = st.sampled_from(
    ["a", "b", "..", ".", "", "etc", ".wh.a", ".wh..wh..opq", ".wh.", ".wh...", "x\\y", OUT]
)
names = st.lists(pieces, min_size=1, max_size=5).map("/".join) | st.sampled_from(
    ["/", "//a", "../../a", f"{OUT}/a", f"/{OUT}/a", "a/" + "../" * 8 + "a"]
)
kinds = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
     tarfile.CHRTYPE, tarfile.BLKTYPE]
)  # fmt: skip
entries = st.lists(
    st.tuples(names, kinds, names, st.binary(max_size=64), st.integers(0, 0o7777)),
    max_size=12,
)
modes = st.sampled_from([unpack.WHITEOUTS_KEEP, unpack.WHITEOUTS_APPLY, unpack.WHITEOUTS_OVERLAY])

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def archive(items: list[tuple[str, bytes, str, bytes, int]], out: str) -> bytes:
    """A tar of ``items`` (name, type, link target, data, mode), ``@OUT`` being ``out``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, link, data, mode in items:
            info = tarfile.TarInfo(name.replace(OUT, out))
            info.type = kind
            info.mode = mode
            info.linkname = link.replace(OUT, out)
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tree(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` but ``skip``, with what would show a write through it."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p == skip:
                continue
            st_ = p.lstat()
            seen[str(p)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return seen


def unpack_into_sandbox(make: Callable[[str], bytes], whiteouts: str) -> None:
    """Unpacks ``make(outside)`` into a destination next to a directory ``outside``; asserts
    that only ``ImageError`` is raised and nothing but the destination changed."""
    with tempfile.TemporaryDirectory() as sandbox:
        box = Path(sandbox)
        outside = box / "outside"
        outside.mkdir()
        (outside / "a").write_text("host file")
        (outside / "b").mkdir()
        dest = box / "dest"
        dest.mkdir()
        data = make(str(outside))
        before = tree(box, dest)
        with contextlib.suppress(ImageError):  # refusing is allowed; anything else is not
            unpack.unpack(io.BytesIO(data), str(dest), what="hostile", whiteouts=whiteouts)
        assert tree(box, dest) == before, "a write outside the destination"
        assert (outside / "a").read_text() == "host file"


@SETTINGS
@given(items=entries, whiteouts=modes)
def test_hostile_archives_stay_inside_or_are_refused(
    items: list[tuple[str, bytes, str, bytes, int]], whiteouts: str
) -> None:
    unpack_into_sandbox(lambda out: archive(items, out), whiteouts)


@SETTINGS
@given(data=st.binary(max_size=2048), cut=st.integers(0, 4096))
def test_garbage_and_truncated_archives_raise_image_error(data: bytes, cut: int) -> None:
    good = archive([("a/b", tarfile.REGTYPE, "", b"x" * 700, 0o644)], "")
    for blob in (data, good[:cut], good[:cut] + data):
        unpack_into_sandbox(lambda _out, b=blob: b, unpack.WHITEOUTS_APPLY)
