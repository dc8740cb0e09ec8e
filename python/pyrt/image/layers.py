"""Layers in the local store: each one verified, unpacked once into its own directory, and shared
read-only by every image and container that has it.

A layer lives in ``layers/<hex of its chain id>/`` (``root/`` is the tree, an overlayfs lower
directory; ``meta.json`` says where it came from). Layers are named by their chain id (the
diff_ids of the layer and all below it), which does not depend on compression: the same image
pulled or loaded in another form finds its layers already there, and does not read the blobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

from pyrt.errors import ImageError
from pyrt.host import userns
from pyrt.host.places import ensure_dir
from pyrt.image import store
from pyrt.image import unpack as limits
from pyrt.image.inflate import Progress, file_digest
from pyrt.image.unpack import WHITEOUTS_OVERLAY, UnpackStats, unpack

_CHUNK = 1 << 20


def hex_of(digest: str, what: str) -> str:
    """The hex part of a "sha256:..." digest, checked (it becomes a file name)."""
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ImageError(f"{what}: unsupported or malformed digest {digest!r}")
    return hexd


def layers_dir() -> Path:
    return ensure_dir(store.root() / "layers", 0o711)


def layer_root(diff_id: str) -> Path:
    return layers_dir() / hex_of(diff_id, "layer") / "root"


def check_size(got: int, size: Optional[int], digest: Optional[str], what: str) -> None:
    """A blob's length against its descriptor's size (the image spec says they must match: a
    size that lies is where truncation and smuggling attacks begin)."""
    if size is not None and got != size:
        raise ImageError(
            f"{what}: blob {digest} is {got} bytes, but its descriptor says {size}; refusing it"
        )


def chain_id(parent: Optional[str], diff_id: str) -> str:
    """The OCI image spec's ChainID: a layer together with everything below it."""
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


@dataclass
class Layer:
    chain_id: str
    root: Path
    stats: Optional[UnpackStats] = None


def ensure_layer(
    opener: Callable[[], IO[bytes]],
    blob_digest: Optional[str],
    diff_id: str,
    parent: Optional[str],
    lowers: tuple[str, ...],
    what: str,
    *,
    verified: bool = False,
    progress: Optional[Progress] = None,
    blob_size: Optional[int] = None,
) -> Layer:
    """The layer in ``opener()``'s blob on top of ``parent`` (a chain id; ``lowers`` are its
    directories, topmost first), unpacked into the store unless it is there already.

    A layer is stored by its chain id, not its diff_id alone, because a directory that the layer
    only implies (it holds entries, but has no entry of its own) takes its owner, mode and
    times from the layers below, as it would in a flattened unpack.

    ``blob_digest`` (when given) is checked before anything is unpacked, unless ``verified``
    says the caller checked it while downloading; the uncompressed stream must then hash to
    ``diff_id``, else the unpacked tree is thrown away."""
    hex_of(diff_id, what)
    cid = chain_id(parent, diff_id)
    if layer_root(cid).is_dir():
        return Layer(cid, layer_root(cid))
    if blob_digest is not None and not verified:
        with opener() as f:
            got, size = file_digest(f, progress)
        check_size(size, blob_size, blob_digest, what)
        if got != blob_digest:
            raise ImageError(
                f"{what}: blob content does not match its digest {blob_digest} (got {got}); "
                "refusing the layer"
            )
    tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir(), prefix="layer-"))
    try:
        (tmp / "root").mkdir(mode=0o755)
        with opener() as raw:
            # The blob's own digest was checked already (above, or on download).
            report = progress if verified or blob_digest is None else None
            stats = unpack_stream(raw, tmp / "root", what, WHITEOUTS_OVERLAY, lowers, report)
        if stats.diff_id != diff_id:
            raise ImageError(
                f"{what}: uncompressed layer does not match the config's diff_id {diff_id} "
                f"(got {stats.diff_id}); refusing the layer"
            )
        meta = {
            "chain_id": cid,
            "diff_id": stats.diff_id,
            "parent": parent,
            "blob": blob_digest,
            "entries": stats.entries,
            "bytes": stats.bytes,
            "skipped_devices": stats.skipped_devices,
            "unpacked": time.time(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.chmod(tmp, 0o755)
        final = layers_dir() / hex_of(cid, what)
        store.place_tree(tmp, final)
    except BaseException:
        userns.remove_tree(tmp)
        raise
    if stats.skipped_devices:
        import warnings

        shown = ", ".join(stats.skipped_devices[:5])
        more = len(stats.skipped_devices) - 5
        warnings.warn(
            f"{what}: device nodes skipped (creating them needs root): {shown}"
            + (f" and {more} more" if more > 0 else ""),
            stacklevel=3,
        )
    return Layer(cid, final / "root", stats)


def unpack_stream(
    stream: IO[bytes],
    dest: Path,
    what: str,
    whiteouts: str,
    lowers: tuple[str, ...] = (),
    progress: Optional[Progress] = None,
) -> UnpackStats:
    """Unpacks a blob (gzip, zstd or a plain tar) into ``dest``: here, or for a rootless caller
    with a subordinate range, in the mapped user namespace (so that the image's owners are
    kept). ``progress`` is called with the count of blob bytes read."""
    if userns.has_range():
        return _unpack_in_userns(stream, dest, what, whiteouts, lowers, progress)
    return _unpack_here(stream, dest, what, whiteouts, lowers, progress)


def _unpack_here(
    stream: IO[bytes],
    dest: Path,
    what: str,
    whiteouts: str,
    lowers: tuple[str, ...],
    progress: Optional[Progress] = None,
) -> UnpackStats:
    return unpack(stream, str(dest), what=what, whiteouts=whiteouts, lowers=lowers,
                  max_entries=limits.entries_cap(), max_bytes=limits.bytes_cap(),
                  progress=progress)  # fmt: skip


def _unpack_in_userns(
    stream: IO[bytes],
    dest: Path,
    what: str,
    whiteouts: str,
    lowers: tuple[str, ...],
    progress: Optional[Progress],
) -> UnpackStats:
    """Rootless with a subordinate range: the unpacker runs as root of the mapped user namespace
    (the containers' mapping), where the image's owners exist, reading the blob we feed it."""

    def work(data_fd: int) -> dict[str, Any]:
        with os.fdopen(data_fd, "rb", buffering=0) as data:
            return dataclasses.asdict(_unpack_here(data, dest, what, whiteouts, lowers))

    def feed(data_fd: int) -> None:
        with open(data_fd, "wb", closefd=False) as out:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))

    return UnpackStats(**userns.in_mapped_namespace(work, feed))


def mounted_lowers() -> set[str]:
    """Every overlay lower directory mounted in any mount namespace on the machine (that we can
    see): a layer in use by a running container is never collected."""
    seen: set[int] = set()
    out: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if " - overlay " not in line:
                continue
            for opt in line.rsplit(" ", 1)[-1].split(","):
                if opt.startswith("lowerdir="):
                    out.update(opt[len("lowerdir=") :].split(":"))
    return out


def collect(
    referenced: set[str], only: Optional[set[str]] = None, grace: float = 60.0
) -> list[str]:
    """Deletes layers (of ``only``, else all) that no stored image refers to, no container has
    mounted, and that were not placed in the last ``grace`` seconds. The caller holds the
    store's exclusive loading lock, so no load is between placing a layer and using it."""
    removed: list[str] = []
    in_use = mounted_lowers() | referenced
    now = time.time()
    base = layers_dir()
    for name in os.listdir(base):
        d = base / name
        # A layer is in use through its root or a copy of it beside it (shifted.py).
        if any(u.startswith(f"{d}/") for u in in_use) or (
            only is not None and str(d / "root") not in only
        ):
            continue
        try:
            if now - (d / "meta.json").stat().st_mtime < grace:
                continue
        except FileNotFoundError:
            pass
        userns.remove_tree(d)
        removed.append(name)
    return removed
