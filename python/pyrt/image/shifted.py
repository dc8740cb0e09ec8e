"""Layers with their owners moved into a root caller's sandbox range.

A root caller's ``rootless=True`` container maps its ids to an unprivileged range (uid 0
inside is, say, 0x70000000 outside). The store's layers belong to the image's own ids (0 is
host root), which would mean nobody inside. Each layer is therefore copied once with every
owner moved by the range's base, and the copy is kept beside the layer (``shifted-UID-GID``
in its directory, so it goes when the layer goes); a directory image loaded in place gets its
copy under the store's ``shifted/``, named after its path.

Copies rather than idmapped mounts: an idmapped lower layer must be made by host root in the
container's mount namespace before its overlay, which the core does not do yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pyrt.errors import ImageError
from pyrt.host import trees
from pyrt.image import store
from pyrt.image.layers import layers_dir


def shifted_lowers(lower: Sequence[str], uid_base: int, gid_base: int, count: int) -> list[str]:
    """``lower``, each directory replaced by its copy owned in the range (made when missing)."""
    return [_shifted(Path(p), uid_base, gid_base, count) for p in lower]


def _target(src: Path, uid_base: int, gid_base: int) -> Path:
    tag = f"shifted-{uid_base}-{gid_base}"
    layers = layers_dir()
    if src.parent.parent == layers:
        return src.parent / tag
    key = hashlib.sha256(os.fsencode(os.path.realpath(src))).hexdigest()[:32]
    return store.root() / "shifted" / f"{key}-{tag}"


def _shifted(src: Path, uid_base: int, gid_base: int, count: int) -> str:
    target = _target(src, uid_base, gid_base)
    if target.is_dir():
        return str(target)
    target.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        r = subprocess.run(["cp", "-a", "--reflink=auto", "--", str(src), str(tmp)],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise ImageError(f"copying layer {src} for a sandboxed container: {r.stderr.strip()}")
        _move_owners(tmp, uid_base, gid_base, count)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process made it first: theirs is the same.
    finally:
        if tmp.exists():
            trees.rmtree(tmp)
    return str(target)


def _move_owners(top: Path, uid_base: int, gid_base: int, count: int) -> None:
    """Every owner id below ``count`` moved by the bases; ids beyond the range are left (they
    mean nobody inside, as in rootless podman). chown clears set-id bits: they are put back."""

    def move(path: str) -> None:
        st = os.lstat(path)
        uid = st.st_uid + uid_base if st.st_uid < count else st.st_uid
        gid = st.st_gid + gid_base if st.st_gid < count else st.st_gid
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))

    move(str(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            move(os.path.join(dirpath, name))


def collect(in_use: set[str], grace: float = 60.0) -> list[str]:
    """Removes the store's copies of in-place directory images that no container has mounted
    (made again when needed), and what interrupted copies left; returns their names."""
    base = store.root() / "shifted"
    gone: list[str] = []
    if not base.is_dir():
        return gone
    now = time.time()
    for name in os.listdir(base):
        p = base / name
        if str(p) in in_use:
            continue
        with contextlib.suppress(FileNotFoundError):
            if ".tmp-" not in name and now - p.stat().st_mtime < grace:
                continue
        trees.rmtree(p)
        gone.append(f"shifted/{name}")
    return gone
