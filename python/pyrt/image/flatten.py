"""The fallback for a kernel without overlayfs: an image's layers copied into one directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ImageError
from . import store
from .layers import hex_of


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
    try:
        os.chmod(tmp, 0o755)
        for layer in reversed(lower):
            _apply_layer_tree(Path(layer), tmp)
        store.place_tree(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _apply_layer_tree(layer: Path, dest: Path) -> None:
    """Copies one unpacked layer onto ``dest``: its whiteout devices and opaque directories
    delete from what is there, then its files are copied over (``cp -a`` keeps owners, modes,
    times, links and xattrs)."""
    for dirpath, dirnames, filenames in os.walk(layer):
        rel = Path(dirpath).relative_to(layer)
        with contextlib.suppress(OSError):
            if os.getxattr(dirpath, "trusted.overlay.opaque") == b"y" and (dest / rel).is_dir():
                for child in os.listdir(dest / rel):
                    _rm(dest / rel / child)
        for name in dirnames + filenames:
            if _is_whiteout(os.lstat(os.path.join(dirpath, name))):
                _rm(dest / rel / name)
    r = subprocess.run(["cp", "-a", f"{layer}/.", str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"flattening {layer}: {r.stderr.strip()}")
    # The markers themselves came along: drop them.
    for dirpath, _dirnames, filenames in os.walk(dest):
        with contextlib.suppress(OSError):
            os.removexattr(dirpath, "trusted.overlay.opaque")
        for name in filenames:
            full = os.path.join(dirpath, name)
            if _is_whiteout(os.lstat(full)):
                os.unlink(full)


def _is_whiteout(st: os.stat_result) -> bool:
    return (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
