"""The reaper ids of copy_out's staging directories: any path survives the line protocol, and
the helper is never led to delete anything but a staging directory."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from pyrt.host import reaper, staging


@given(st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b and b"/" not in b))
def test_any_staging_path_makes_the_round_trip(tail: bytes) -> None:
    path = os.fsdecode(b"/some/dir\n/" + staging.PREFIX.encode() + tail)
    key = staging.key(path)
    assert key.isascii() and "\n" not in key
    assert staging.path_of(key) == path


def test_nothing_but_a_staging_directory_is_named() -> None:
    for path in ("/etc", "/home/user/out", "relative/.pyrt-copy-x", "/a/.pyrt-copy-x/../../etc"):
        assert staging.path_of(staging.key(path)) is None, path
    assert staging.path_of(reaper.STAGING + "not hex") is None
    assert staging.path_of(reaper.STAGING + "2f6574") is None  # "/et"
