"""Where pyrt keeps things, as the environment names them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pyrt
from pyrt.host import places


@pytest.mark.parametrize("var", ["PYRT_STATE", "PYRT_ROOT"])
def test_a_relative_place_is_refused_by_name(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative, it would move with the working directory, and other processes would look
    elsewhere."""
    monkeypatch.setenv(var, "relative/dir")
    where = places.state_root if var == "PYRT_STATE" else places.store_root
    with pytest.raises(pyrt.InvalidOption, match=f"{var}='relative/dir': must be an absolute"):
        where()
    monkeypatch.setenv(var, "/abs/dir")
    assert where() == Path("/abs/dir")


def test_a_relative_xdg_directory_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the XDG spec says: a relative path in its variables is invalid."""
    monkeypatch.delenv("PYRT_STATE", raising=False)
    monkeypatch.delenv("PYRT_ROOT", raising=False)
    monkeypatch.setattr(places, "is_root", lambda: False)
    monkeypatch.setattr(places, "_private_tmp_dir", lambda p: p)
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "run/user")
    monkeypatch.setenv("XDG_DATA_HOME", "data")
    assert places.state_root() == Path(f"/tmp/pyrt-{os.getuid()}")
    assert places.store_root() == Path("/home/someone/.local/share/pyrt")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    assert places.state_root() == Path("/run/user/1000/pyrt")
    assert places.store_root() == Path("/data/pyrt")
