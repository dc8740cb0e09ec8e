"""The build context reader on its own: sources and wildcards, symlinks resolved inside the
context, .dockerignore, and what can never be read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyrt.imagebuild.context import Context, ContextError
from pyrt.imagebuild.ignore import Ignore, parse


def make(tmp_path: Path, ignore: str = "") -> Context:
    c = tmp_path / "ctx"
    for name, text in {"a.txt": "a", "b.txt": "b", "sub/c.txt": "c", "sub/deep/d.txt": "d",
                       "skip.log": "s"}.items():  # fmt: skip
        (c / name).parent.mkdir(parents=True, exist_ok=True)
        (c / name).write_text(text)
    (tmp_path / "secret").write_text("outside")
    os.symlink("sub/c.txt", c / "rel-in")
    os.symlink("/sub/deep", c / "abs-in")  # absolute: the context's top, not the host's
    os.symlink("../secret", c / "rel-out")
    os.symlink(str(tmp_path / "secret"), c / "abs-out")
    os.symlink("loop2", c / "loop1")
    os.symlink("loop1", c / "loop2")
    return Context(str(c), Ignore(parse(ignore)))


def test_sources_and_wildcards(tmp_path: Path) -> None:
    ctx = make(tmp_path, "*.log\n")
    try:
        assert ctx.sources("a.txt") == ["a.txt"]
        assert ctx.sources("/a.txt") == ["a.txt"]  # absolute means the context's top
        assert ctx.sources("*.txt") == ["a.txt", "b.txt"]
        assert ctx.sources("sub/*/d.txt") == ["sub/deep/d.txt"]
        assert ctx.sources(".") == [""]
        with pytest.raises(ContextError, match="no file in the build context matches"):
            ctx.sources("*.log")  # left out by .dockerignore
        with pytest.raises(ContextError, match="not found"):
            ctx.sources("skip.log")
        with pytest.raises(ContextError, match="outside the build context"):
            ctx.sources("../secret")
        with pytest.raises(ContextError, match="outside the build context"):
            ctx.sources("sub/../../secret")
    finally:
        ctx.close()


def test_symlinks_resolve_inside_the_context(tmp_path: Path) -> None:
    ctx = make(tmp_path)
    try:
        assert ctx.resolve("rel-in") == "sub/c.txt"
        assert ctx.resolve("abs-in/d.txt") == "sub/deep/d.txt"
        with pytest.raises(ContextError, match="leads outside"):
            ctx.resolve("rel-out")
        # An absolute link to the host's file names the context's own path, which is absent.
        assert ctx.resolve("abs-out") is None
        with pytest.raises(ContextError, match="too many levels"):
            ctx.resolve("loop1")
    finally:
        ctx.close()


def test_entries_copy_links_as_links_and_never_read_outside(tmp_path: Path) -> None:
    ctx = make(tmp_path, "**/*.log\n")
    try:
        entries = {e.arc: e for e in ctx.entries("", "")}
        assert entries["rel-out"].link == "../secret"  # the link itself, not its target
        assert entries["abs-out"].link == str(tmp_path / "secret")
        assert "skip.log" not in entries and "sub/deep/d.txt" in entries
        digest = ctx.digest(list(entries.values()))
        # The digest covers content: a changed file changes it, a touched one does not.
        os.utime(tmp_path / "ctx" / "a.txt", (1, 1))
        assert ctx.digest(list(ctx.entries("", ""))) == digest
        (tmp_path / "ctx" / "a.txt").write_text("A")
        assert ctx.digest(list(ctx.entries("", ""))) != digest
    finally:
        ctx.close()


def test_special_files_are_refused(tmp_path: Path) -> None:
    ctx = make(tmp_path)
    os.mkfifo(tmp_path / "ctx" / "pipe")
    try:
        with pytest.raises(ContextError, match="pipe: a FIFO"):
            list(ctx.entries("", ""))
    finally:
        ctx.close()
