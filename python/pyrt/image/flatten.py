"""The fallback for a kernel without overlayfs: an image's layers copied into one directory."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
from pathlib import Path

from pyrt.errors import ImageError
from pyrt.host import trees, userns
from pyrt.image import store
from pyrt.image.layers import hex_of


def flatten(config_digest: str, lower: tuple[str, ...]) -> Path:
    """One directory holding the stacked layers (topmost first in ``lower``), for a kernel
    without overlayfs. Whiteout markers are applied as deletions; the copy costs disk and
    time, hence the warning."""
    import warnings

    final = store.root() / "flat" / hex_of(config_digest, "image")
    if final.is_dir():
        return final
    warnings.warn(
        "overlayfs is not available: the image's layers are copied into one flattened "
        f"directory ({final}); this costs disk space and time",
        stacklevel=3,
    )
    tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir(), prefix="flat-"))

    def build(_fd: int = -1) -> None:
        for layer in reversed(lower):
            _apply_layer_tree(Path(layer), tmp)

    try:
        os.chmod(tmp, 0o755)
        if os.geteuid() == 0:
            build()
        else:
            # As root of a user namespace mapped as the containers are: the layers' owners
            # exist there (cp -a keeps them), and a rootless store's mode-0 xattr whiteouts
            # can be read past, as files of the caller's own.
            userns.in_mapped_namespace(build)
        store.place_tree(tmp, final)
    except BaseException:
        userns.remove_tree(tmp)
        raise
    return final


def _apply_layer_tree(layer: Path, dest: Path) -> None:
    """Copies one unpacked layer onto ``dest``: its whiteouts and opaque directories delete
    from what is there, then its files are copied over (``cp -a`` keeps owners, modes, times,
    links and xattrs). Both forms of marker count: root's (a 0:0 device, trusted.overlay.opaque)
    and a rootless store's (a file marked user.overlay.whiteout, user.overlay.opaque)."""
    for dirpath, dirnames, filenames in os.walk(layer):
        rel = Path(dirpath).relative_to(layer)
        if _opaque(dirpath) and (dest / rel).is_dir():
            for child in os.listdir(dest / rel):
                _rm(dest / rel / child)
        for name in dirnames + filenames:
            if _is_whiteout(os.path.join(dirpath, name)):
                _rm(dest / rel / name)
    r = subprocess.run(["cp", "-a", f"{layer}/.", str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"flattening {layer}: {r.stderr.strip()}")
    # The markers themselves came along: drop them.
    for dirpath, _dirnames, filenames in os.walk(dest):
        for attr in _OPAQUE:
            with contextlib.suppress(OSError):
                os.removexattr(dirpath, attr)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if _is_whiteout(full):
                os.unlink(full)


#: overlayfs' opaque-directory marks: host root's, and rootless ("userxattr") mounts'. The
#: rootless one is "y" for opaque, "x" for a directory that only holds xattr whiteouts.
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


def _opaque(path: str) -> bool:
    for attr in _OPAQUE:
        with contextlib.suppress(OSError):
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
    return False


def _is_whiteout(path: str) -> bool:
    st = os.lstat(path)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    try:
        os.getxattr(path, "user.overlay.whiteout", follow_symlinks=False)
    except OSError:
        return False
    return True


def _rm(p: Path) -> None:
    try:
        fd = os.open(p.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        trees.remove_at(fd, p.name)
    finally:
        os.close(fd)
