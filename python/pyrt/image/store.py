"""The local image store: unpacked rootfs trees and layers under the store root, and an index of
named images. Writers take a file lock; trees are unpacked into a private temporary directory
and renamed into place, so concurrent loads from several processes are safe."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from pyrt.errors import ImageError
from pyrt.host import trees
from pyrt.host.places import ensure_dir, store_root


def root() -> Path:
    return ensure_dir(store_root(), 0o711)


def tmp_dir() -> Path:
    return ensure_dir(root() / "tmp", 0o700)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """The store's writer lock (an flock: released if the holder dies)."""
    fd = os.open(root() / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def loading(exclusive: bool = False) -> Iterator[None]:
    """Held shared by every load and pull from before it places layers until its image is
    tagged; taken exclusively by whatever deletes layers, so a layer just unpacked for an image
    not yet recorded is never collected under it. Take it before :func:`locked`."""
    fd = os.open(root() / "loading.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def collect_tmp() -> list[str]:
    """Removes what interrupted loads, pulls, commits and saves left in tmp/. The caller holds
    the loading lock exclusively, so none of them is under way."""
    from pyrt.host import userns

    gone = []
    base = tmp_dir()
    for name in sorted(os.listdir(base)):
        p = base / name
        if p.is_dir() and not p.is_symlink():
            userns.remove_tree(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        if not os.path.lexists(p):
            gone.append(name)
    return gone


def _index_path() -> Path:
    return root() / "images.json"


def read_index() -> dict[str, dict[str, Any]]:
    """The store's names and their images' records. ImageError naming the file when it is not
    one pyrt wrote (damaged, or edited by hand): carrying on would write it back without what
    could not be read."""
    path = _index_path()
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (ValueError, RecursionError) as e:  # (not JSON, not UTF-8, nested past reason)
        raise ImageError(f"the store's index {path} cannot be read: {e}; move it away to "
                         "start an empty index (the layers stay)") from None  # fmt: skip
    if not isinstance(data, dict):
        raise ImageError(f"the store's index {path} is not a table of names")
    for name, rec in data.items():
        if not _well_formed(rec):
            raise ImageError(f"the store's index {path}: the record of {name!r} is malformed")
    return data


def _well_formed(rec: object) -> bool:
    """A record as ``Image._record`` writes it: its kind, and its layers' directories."""
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
        return False
    lower = rec.get("lower", [])
    return (
        isinstance(lower, list)
        and all(isinstance(d, str) for d in lower)
        and all(isinstance(rec.get(k), (str, type(None))) for k in ("id", "source"))
        and isinstance(rec.get("config"), (dict, type(None)))
    )


def write_index(index: dict[str, dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=root(), prefix=".images.")
    with os.fdopen(fd, "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    os.replace(tmp, _index_path())


def tag(name: str, record: dict[str, Any]) -> None:
    with locked():
        index = read_index()
        index[name] = record
        write_index(index)


def untag(names: list[str]) -> None:
    with locked():
        index = read_index()
        for n in names:
            index.pop(n, None)
        write_index(index)


def lookup(name: str) -> Optional[dict[str, Any]]:
    return read_index().get(name)


def place_tree(tmp: Path, final: Path) -> Path:
    """Renames the unpacked ``tmp`` to ``final``; if another process won the race, keeps theirs."""
    ensure_dir(final.parent, 0o711)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        trees.rmtree(tmp)
    return final
