"""The conformance suite's fixtures: each test runs against every runtime, with a bundle of a
busybox root."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ocitools import BASE_CONFIG, Runtime, _crun_wrapper, _pyrt_runc, write_config

RUNTIMES = ["pyrt-runc", "crun", "runc"]


@pytest.fixture(params=RUNTIMES)
def rt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    name = request.param
    if name == "pyrt-runc":
        binary = _pyrt_runc()
    else:
        assert shutil.which(name), f"{name} is not installed (.ci/run installs it from Debian)"
        binary = _crun_wrapper(tmp_path) if name == "crun" else name
    r = Runtime(name, binary, tmp_path / "state")
    yield r
    for cid in r.ids:
        r("delete", "--force", cid, check=False)


@pytest.fixture
def bundle(rootfs: Path, tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    write_config(b, BASE_CONFIG)
    return b
