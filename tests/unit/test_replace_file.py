"""state.json is replaced by an exchange of names (not a rename over it, which ext4 answers by
writing the new file out at once): readers see the old contents or the new, never none."""

from __future__ import annotations

import threading
from pathlib import Path

from pyrt.host.state import replace_file


def test_replace_file_with_and_without_an_old_file(tmp_path: Path) -> None:
    dest, new = tmp_path / "state.json", tmp_path / ".tmp"
    new.write_text("first")
    replace_file(new, dest)  # nothing to exchange with: a plain rename
    assert dest.read_text() == "first" and not new.exists()
    new.write_text("second")
    replace_file(new, dest)
    assert dest.read_text() == "second" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_reader_never_finds_the_file_missing_or_half(tmp_path: Path) -> None:
    dest, new = tmp_path / "state.json", tmp_path / ".tmp"
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
            new.write_text(str(i % 10) * 5000)
            replace_file(new, dest)
    finally:
        stop.set()
        t.join()
    assert not errors and sizes == {5000}, (errors[:3], sizes)
