"""Deleting container directories and a reset's old layers (``pyrt.host.removal``): the shapes
pyrt makes go with a few rmdirs and unlinks; anything a container wrote is left to the full
walk, which deletes it too; nothing outside the directory is touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyrt.host.removal import remove_as_made, remove_tree

MARK = "incompat/volatile/dirty"


def make(root: Path, files: list[str], dirs: list[str]) -> Path:
    root.mkdir()
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    return root


SHAPES = {
    # A container directory as pyrt leaves it (its overlay's volatile mark included).
    "container": (
        ["state.json", "lock", "log", f"work/work/{MARK}"],
        ["rootfs", "upper", "work/work", "work/index"],
    ),
    "reset's old upper": ([], []),
    "reset's old work": ([f"work/{MARK}"], ["work"]),
    "reset's old work, unmarked": ([], ["work"]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_what_pyrt_made_goes_as_made(tmp_path: Path, shape: str) -> None:
    files, dirs = SHAPES[shape]
    d = make(tmp_path / "c", files, dirs)
    assert remove_as_made(d) is True
    assert not d.exists()
    assert remove_as_made(d) is True  # (gone already: nothing to do)


@pytest.mark.parametrize(
    "extra",
    ["upper/etc/passwd", "upper/tmp/deep/file", "work/work/other", "unknown", "upper/.wh.x"],
)
def test_what_a_container_wrote_is_left_to_the_full_walk(tmp_path: Path, extra: str) -> None:
    files, dirs = SHAPES["container"]
    d = make(tmp_path / "c", [*files, extra], dirs)
    assert remove_as_made(d) is False
    assert (d / extra).exists()  # what it does not know, it leaves
    remove_tree(d)
    assert not d.exists()


def test_a_link_where_pyrt_makes_a_directory_is_not_followed(tmp_path: Path) -> None:
    """Nothing outside the directory is touched: a link's target stays."""
    outside = make(tmp_path / "outside", ["keep", "work/state.json"], ["work/work", "index"])
    d = make(tmp_path / "c", ["state.json"], [])
    os.symlink(outside, d / "work")  # holding only names pyrt makes in a work directory
    os.symlink(outside / "keep", d / "upper")
    assert remove_as_made(d) is False
    remove_tree(d)
    assert not d.exists()
    kept = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    assert kept == ["index", "keep", "work", "work/state.json", "work/work"]
