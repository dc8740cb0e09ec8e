"""state.json is replaced whole by the core (`_core.write_replacing`: a temporary file beside
it, exchanged with the old one, which ext4 does not answer by writing the new file out at once):
readers see the old contents or the new, never none and never half."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pyrt import _core


def test_replace_with_and_without_an_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "state.json"
    _core.write_replacing(str(dest), "first")  # nothing to exchange with: a plain rename
    assert dest.read_text() == "first"
    _core.write_replacing(str(dest), "second")
    assert dest.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_missing_directory_is_an_oserror_naming_the_path(tmp_path: Path) -> None:
    dest = tmp_path / "gone" / "state.json"
    with pytest.raises(FileNotFoundError, match=r"gone/state\.json"):
        _core.write_replacing(str(dest), "x")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_never_finds_the_file_missing_or_half(tmp_path: Path) -> None:
    dest = tmp_path / "state.json"
    dest.write_text("0" * 5000)
    stop = threading.Event()
    sizes: set[int] = set()
    errors: list[OSError] = []

    def read() -> None:
        while not stop.is_set():
            try:
                sizes.add(len(dest.read_text()))
            except OSError as e:
                errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(1, 300):
            _core.write_replacing(str(dest), str(i % 10) * 5000)
    finally:
        stop.set()
        t.join()
    assert not errors and sizes == {5000}, (errors[:3], sizes)


def test_a_path_that_is_not_utf8_is_written(tmp_path: Path) -> None:
    # A state root may be named by any bytes (PYRT_STATE); Python hands such a name over with
    # surrogates, and the core takes it as a path, not as text it would refuse.
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xffte")
    os.mkdir(odd)
    _core.write_replacing(os.path.join(odd, "state.json"), "x")
    _core.write_replacing(Path(odd) / "state.json", "y")
    assert os.listdir(os.fsencode(odd)) == [b"state.json"]
    assert (Path(odd) / "state.json").read_text() == "y"
