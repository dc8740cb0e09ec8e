"""Snapshots: a container's writable layer becomes an image layer (``commit``), and an image is
written out as an OCI layout, an OCI archive or a docker archive (``save``).

The writable layer is overlayfs' upper directory. Its deletion markers become the OCI image
spec's: a 0:0 character device is a whiteout (``.wh.NAME``), a directory marked opaque
(``trusted.overlay.opaque`` or, in a user namespace, ``user.overlay.opaque``) gets a
``.wh..wh..opq`` entry. The layer is kept as an uncompressed tar blob beside its unpacked tree,
so that a saved or pushed image has exactly the diff_ids its id was computed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

from pyrt.errors import ImageError, PyrtError, os_message
from pyrt.host import trees
from pyrt.host.places import ensure_dir
from pyrt.image import layers, store
from pyrt.image.config import ImageConfig
from pyrt.image.oci import host_platform
from pyrt.rootfs import archives, copies, files

if TYPE_CHECKING:
    # Images call this module (save), so it takes their class from the image it is given.
    from pyrt.image import Image

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"
_CHUNK = 1 << 20
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


@contextlib.contextmanager
def written(what: str) -> Iterator[None]:
    """An OSError of writing the store or a destination (a full disk, a read-only one) as the
    ImageError it is, naming what was being written and the file."""
    try:
        yield
    except OSError as e:
        if isinstance(e, PyrtError):
            raise
        raise ImageError(f"{what}: {os_message(e)}") from e


def blobs_dir() -> Path:
    return ensure_dir(store.root() / "blobs" / "sha256", 0o711)


class _Hashing:
    """A writable file that digests what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


# --- a layer from a directory ----------------------------------------------------------------


def write_layer(
    top: str,
    out: IO[bytes],
    remap: Optional[archives.IdMap] = None,
    skip: frozenset[str] = frozenset(),
) -> None:
    """A tar of the overlay-format directory ``top`` (an upper directory or a stored layer) with
    its markers as OCI whiteouts. Sockets cannot be in a layer and are left out, and so are the
    paths in ``skip`` (relative) when they are an empty file or directory: the mount points a
    container's bind mounts made, which are not its changes."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            links: dict[tuple[int, int], str] = {}
            for name in sorted(os.listdir(fd)):
                _add_layer_entry(tf, fd, name, name, links, remap, skip)
    finally:
        os.close(fd)


def _empty(dirfd: int, name: str, st: os.stat_result) -> bool:
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dirfd)  # fmt: skip
        try:
            return not os.listdir(fd)
        finally:
            os.close(fd)
    return False


def _opaque(fd: int) -> bool:
    for attr in _OPAQUE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(fd, attr) == b"y":
                return True
    return False


def _add_layer_entry(
    tf: tarfile.TarFile,
    dirfd: int,
    name: str,
    arc: str,
    links: dict[tuple[int, int], str],
    remap: Optional[archives.IdMap],
    skip: frozenset[str] = frozenset(),
    depth: int = 0,
) -> None:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if arc in skip and _empty(dirfd, name, st):
        return
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        head, _, base = arc.rpartition("/")
        wh = tarfile.TarInfo(f"{head}/.wh.{base}" if head else f".wh.{base}")
        wh.mtime = int(st.st_mtime)
        tf.addfile(wh)
        return
    if stat.S_ISDIR(st.st_mode):
        archives.check_depth(depth, arc)
        ti = archives.tar_info(arc, st, remap)
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dirfd)
        try:
            if _opaque(fd):
                opq = tarfile.TarInfo(f"{arc}/.wh..wh..opq")
                opq.mtime = int(st.st_mtime)
                tf.addfile(opq)
            for child in sorted(os.listdir(fd)):
                _add_layer_entry(tf, fd, child, f"{arc}/{child}", links, remap, skip, depth + 1)
        finally:
            os.close(fd)
        return
    archives.add_to_tar(tf, dirfd, name, arc, links, files.Copied(), remap=remap, depth=depth)


def store_layer(
    top: str,
    parent_chain: Optional[str],
    lowers: tuple[str, ...],
    what: str,
    remap: Optional[archives.IdMap] = None,
    skip: frozenset[str] = frozenset(),
) -> tuple[str, layers.Layer]:
    """``top`` as a stored layer on ``parent_chain``: its tar blob kept under blobs/, its tree
    unpacked into the layer store. Returns (diff_id, layer)."""
    fd, tmp = tempfile.mkstemp(dir=store.tmp_dir(), prefix="blob-commit-")
    try:
        with os.fdopen(fd, "wb") as raw:
            h = _Hashing(raw)
            write_layer(top, h, remap, skip)  # type: ignore[arg-type]
        diff_id = h.digest
        layer = layers.ensure_layer(
            lambda: open(tmp, "rb"),  # noqa: SIM115 - ensure_layer closes what it opens
            None,
            diff_id,
            parent_chain,
            lowers,
            what,
        )
        final = blobs_dir() / diff_id.partition(":")[2]
        if not final.exists():
            os.replace(tmp, final)
        return diff_id, layer
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- an image's layers and config --------------------------------------------------------------


def _layer_meta(root: str) -> Optional[dict[str, Any]]:
    base = str(layers.layers_dir()) + os.sep
    if not root.startswith(base):
        return None
    try:
        meta: dict[str, Any] = json.loads((Path(root).parent / "meta.json").read_text())
        return meta
    except (OSError, ValueError):
        return None


def chain_of(img: Image) -> Optional[str]:
    """The chain id of the image's top layer, for a layered image of the store."""
    meta = _layer_meta(img.lower[0]) if img.lower else None
    return str(meta["chain_id"]) if meta else None


def diff_ids(img: Image) -> list[Optional[str]]:
    """Each layer's diff_id, bottom first (None for a directory that is not a stored layer)."""
    out: list[Optional[str]] = []
    for root in reversed(img.lower):
        meta = _layer_meta(root)
        out.append(str(meta["diff_id"]) if meta else None)
    return out


def oci_config(cfg: ImageConfig, ids: Sequence[str], history: str) -> dict[str, Any]:
    arch, variant = host_platform()
    doc: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": arch,
        "os": "linux",
        "config": {k: v for k, v in cfg.to_dict().items() if v not in (None, "", [], {})},
        "rootfs": {"type": "layers", "diff_ids": list(ids)},
        "history": [{"created_by": history}],
    }
    if variant:
        doc["variant"] = variant
    return doc


def commit(
    img: Image,
    upper: str,
    cfg: ImageConfig,
    tag: Optional[str],
    what: str,
    remap: Optional[archives.IdMap] = None,
    skip: frozenset[str] = frozenset(),
) -> Image:
    """The image ``img`` plus the layer in ``upper``, with config ``cfg``; ``remap`` turns the
    owners the host sees in ``upper`` into the container's (a rootless container's); ``skip``
    as for ``write_layer``."""
    if img.kind == "host":
        raise PyrtError(f"{what}: a container of the host image has no layer of its own to commit")
    with written(f"commit of {what}"), store.loading():
        base_ids, parent, lowers = layered(img, what)
        diff_id, layer = store_layer(upper, parent, lowers, what, remap, skip)
        ids = [*base_ids, diff_id]
        doc = oci_config(cfg, ids, f"pyrt commit ({what})")
        new = _with_doc(img, (str(layer.root), *lowers), cfg, doc, what)
        if tag is not None:
            new.tag(tag)
    return new


def layered(img: Image, what: str) -> tuple[list[str], Optional[str], tuple[str, ...]]:
    """The image as stored layers: (diff_ids bottom first, top chain id, lower directories). A
    rootfs image (a directory or a tarball) becomes a layer of its own first, once."""
    base_ids = diff_ids(img)
    if all(d is not None for d in base_ids):
        return [str(d) for d in base_ids], chain_of(img), img.lower
    if len(img.lower) != 1:
        raise ImageError(f"{what}: the image's layers are not in the store")
    base_id, base = store_layer(img.lower[0], None, (), f"{what}: base rootfs")
    return [base_id], base.chain_id, (str(base.root),)


def _with_doc(
    like: Image, lowers: tuple[str, ...], cfg: ImageConfig, doc: dict[str, Any], what: str
) -> Image:
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    (blobs_dir() / config_digest.partition(":")[2]).write_bytes(raw)
    return type(like)("oci", lowers, cfg, config_digest, source=what)


def configured(
    img: Image, cfg: ImageConfig, history: list[dict[str, Any]], created: str, what: str
) -> Image:
    """The layers of ``img`` with the config ``cfg``, its "created" time and history given, so
    that the same layers and config always make the same image id (a cached build's)."""
    with store.loading():
        ids, _, lowers = layered(img, what) if img.lower else ([], None, ())
        doc = oci_config(cfg, ids, what)
        doc["created"] = created
        doc["history"] = history
        return _with_doc(img, lowers, cfg, doc, what)


def empty_layer(what: str) -> str:
    """An empty layer (the base of a build FROM scratch); returns its directory."""
    tmp = tempfile.mkdtemp(dir=store.tmp_dir(), prefix="empty-")
    try:
        with store.loading():
            _, layer = store_layer(tmp, None, (), what)
    finally:
        os.rmdir(tmp)
    return str(layer.root)


# --- save ---------------------------------------------------------------------------------------


def layer_blobs(img: Image) -> Iterator[tuple[str, Path, bool]]:
    """(diff_id, blob path, temporary) of each layer, bottom first: the kept blob, or a tar made
    now from the layer's tree (for layers pulled or loaded, whose compressed blobs are not kept)."""
    for root, known in zip(reversed(img.lower), diff_ids(img)):
        if known is not None:
            kept = blobs_dir() / known.partition(":")[2]
            if kept.exists():
                yield known, kept, False
                continue
        fd, tmp = tempfile.mkstemp(dir=store.tmp_dir(), prefix="blob-save-")
        try:
            with os.fdopen(fd, "wb") as raw:
                h = _Hashing(raw)
                write_layer(root, h)  # type: ignore[arg-type]
        except BaseException:  # (a tree too deep, a full disk): no half blob stays
            os.unlink(tmp)
            raise
        yield h.digest, Path(tmp), True


def save(img: Image, path: str, fmt: str) -> None:
    if fmt not in ("oci", "oci-archive", "docker-archive"):
        raise ValueError(f"format={fmt!r}: one of 'oci', 'oci-archive', 'docker-archive'")
    if img.kind == "host":
        raise PyrtError("the host image cannot be saved: it is the host's own filesystem")
    dest = Path(path)
    if fmt == "oci" and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PyrtError(f"save: {dest} exists and is not an empty directory")
    if fmt != "oci" and dest.is_dir():
        raise PyrtError(f"save: {dest} is a directory; {fmt} is written as a file")
    copies.refuse_special(str(dest), "save")
    with written(f"save to {dest}"), store.loading():  # `pyrt gc` leaves tmp/ alone meanwhile
        _save(img, dest, fmt)


def _save(img: Image, dest: Path, fmt: str) -> None:
    work = Path(tempfile.mkdtemp(dir=store.tmp_dir(), prefix="save-"))
    temps: list[Path] = []
    try:
        blobs = ensure_dir(work / "blobs" / "sha256", 0o755)
        layer_list: list[tuple[str, int]] = []
        ids: list[str] = []
        for diff_id, blob, temporary in layer_blobs(img):
            hexd = diff_id.partition(":")[2]
            target = blobs / hexd
            if not target.exists():
                if temporary:
                    os.replace(blob, target)
                else:
                    _link_or_copy(blob, target)
            if temporary:
                temps.append(blob)
            layer_list.append((diff_id, target.stat().st_size))
            ids.append(diff_id)
        config = config_blob(img, ids)
        config_digest = _put(blobs, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "config": {"mediaType": CONFIG_MEDIA, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": LAYER_MEDIA, "digest": d, "size": n} for d, n in layer_list],
        }
        mraw = json.dumps(manifest, indent=1).encode()
        mdigest = _put(blobs, mraw)
        ref = _ref_name(img)
        desc: dict[str, Any] = {"mediaType": MANIFEST_MEDIA, "digest": mdigest, "size": len(mraw)}
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA, "manifests": [desc]}
        (work / "index.json").write_text(json.dumps(index, indent=1))
        (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        if fmt == "docker-archive":
            tags = [t if ":" in t.rpartition("/")[2] else t + ":latest" for t in img.tags]
            docker = [
                {
                    "Config": f"blobs/sha256/{config_digest.partition(':')[2]}",
                    "RepoTags": tags,
                    "Layers": [f"blobs/sha256/{d.partition(':')[2]}" for d, _ in layer_list],
                }
            ]
            (work / "manifest.json").write_text(json.dumps(docker))
            # Only Docker's format: readers that see index.json take the archive for an OCI one
            # and name the image after its ref annotation (podman does).
            os.unlink(work / "index.json")
            os.unlink(work / "oci-layout")
        if fmt == "oci":
            dest.mkdir(parents=True, exist_ok=True)
            for entry in os.listdir(work):
                os.replace(work / entry, dest / entry)
        else:
            tmp_tar = dest.with_name(f".{dest.name}.pyrt-tmp")
            with tarfile.open(tmp_tar, "w", format=tarfile.PAX_FORMAT) as tf:
                for entry in sorted(os.listdir(work)):
                    tf.add(work / entry, arcname=entry, filter=_plain)
            os.replace(tmp_tar, dest)
    finally:
        for t in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(t)
        trees.rmtree(work)


def _plain(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _put(blobs: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.partition(":")[2]).write_bytes(data)
    return digest


def config_blob(img: Image, ids: list[str]) -> bytes:
    """The image's own config blob when its diff_ids are those being saved (a committed image),
    else one made from its config."""
    if img.id.startswith("sha256:"):
        kept = blobs_dir() / img.id.partition(":")[2]
        with contextlib.suppress(OSError, ValueError):
            raw = kept.read_bytes()
            doc = json.loads(raw)
            if doc.get("rootfs", {}).get("diff_ids") == ids:
                return raw
    return json.dumps(oci_config(img.config, ids, "pyrt save"), sort_keys=True).encode()


def _ref_name(img: Image) -> Optional[str]:
    for t in img.tags:
        name = t.rpartition("/")[2]
        if ":" in name:
            return name.rpartition(":")[2]
    return "latest" if img.tags else None


def merged_config(base: ImageConfig, changes: Mapping[str, Any]) -> ImageConfig:
    """``base`` with the fields named in ``changes`` replaced (env is added to)."""
    from dataclasses import replace

    fields: dict[str, Any] = {k: v for k, v in changes.items() if v is not None and k != "env"}
    if changes.get("env"):
        fields["env"] = {**base.env, **changes["env"]}
    return replace(base, **fields)
