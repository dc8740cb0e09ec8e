"""Reading images made by other tools: OCI image layouts (a directory, or a tar of one) and
docker archives (``docker save``, ``skopeo copy ... docker-archive:``), as the OCI image spec
and Docker's archive format describe them. Nothing here writes: it yields the image's config
and, for each layer, a way to open its blob, for :mod:`.layers` to verify and unpack.

The archives are read in place: a member is streamed out of the tar by name, never extracted,
and a layout's blobs are opened with ``openat2(RESOLVE_IN_ROOT)``, so a symlink planted in a
hostile layout cannot make pyrt read a file outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

from pyrt import _core
from pyrt.errors import ImageError, ImageNotFound
from pyrt.image.layers import check_size, hex_of

if TYPE_CHECKING:
    import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"

#: Manifests and configs are small; a bigger one is not an image.
MAX_JSON = 16 << 20

_ARCH = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> tuple[str, Optional[str]]:
    m = os.uname().machine
    return _ARCH.get(m, (m, None))


@dataclass
class LayerRef:
    digest: Optional[str]  # of the blob as stored (None: a docker archive's unnamed file)
    diff_id: str  # of the uncompressed tar, from the config
    size: Optional[int]
    media_type: str
    open: Callable[[], IO[bytes]]


@dataclass
class Resolved:
    """One image, ready for the store: its config (verified) and its layers, bottom first."""

    config: dict[str, Any]
    config_digest: str
    layers: list[LayerRef]
    names: list[str] = field(default_factory=list)


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what}: not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: expected a JSON object")
    return doc


def verify(data: bytes, digest: str, what: str, size: Optional[int] = None) -> None:
    """The content of a blob against its descriptor: the digest, and the size when the
    descriptor gives one (the image spec says it must match: a size that lies is where
    truncation and smuggling attacks begin)."""
    hexd = hex_of(digest, what)
    check_size(len(data), size, digest, what)
    got = hashlib.sha256(data).hexdigest()
    if got != hexd:
        raise ImageError(f"{what}: content does not match its digest {digest} (got sha256:{got})")


def _descriptor(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
        raise ImageError(f"{what}: a descriptor without a digest")
    hex_of(d["digest"], what)
    size = d.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ImageError(f"{what}: descriptor {d['digest']} has an invalid size {size!r}")
    return d


def _platform_matches(p: Any) -> bool:
    arch, variant = host_platform()
    if not isinstance(p, dict):
        return False
    if p.get("os") != "linux" or p.get("architecture") != arch:
        return False
    return variant is None or p.get("variant") in (None, variant)


def pick_manifest(index: dict[str, Any], what: str, ref: Optional[str] = None) -> dict[str, Any]:
    """The descriptor in an index that is meant: the one named ``ref`` (by its
    ``org.opencontainers.image.ref.name``), else the only image, choosing the host's platform
    among several."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{what}: the index lists no manifests")
    descs = [_descriptor(m, what) for m in manifests]

    def name(d: dict[str, Any]) -> Optional[str]:
        ann = d.get("annotations")
        v = ann.get(REF_NAME) if isinstance(ann, dict) else None
        return v if isinstance(v, str) else None

    if ref is not None:
        descs = [d for d in descs if name(d) == ref or (name(d) or "").endswith(":" + ref)]
        if not descs:
            known = sorted({n for d in manifests if isinstance(d, dict) and (n := name(d))})
            raise ImageNotFound(f"{what}: no image named {ref!r} (it has: {', '.join(known)})")
    if len(descs) == 1:
        return descs[0]
    if ref is None:
        # Docker's default tag: a layout of several named images loads "latest" unasked.
        latest = [d for d in descs if name(d) == "latest" or (name(d) or "").endswith(":latest")]
        if len(latest) == 1:
            return latest[0]
    platformed = [d for d in descs if "platform" in d]
    if len(platformed) == len(descs):
        for d in descs:
            if _platform_matches(d["platform"]):
                return d
        arch, _variant = host_platform()
        have = sorted(
            "{}/{}".format(d["platform"].get("os"), d["platform"].get("architecture"))
            for d in descs
            if isinstance(d["platform"], dict)
        )
        raise ImageError(
            f"{what}: no manifest for this machine's platform linux/{arch} "
            f"(it has: {', '.join(have)})"
        )
    names = sorted({n for d in descs if (n := name(d))})
    raise ImageError(
        f"{what}: holds {len(descs)} images and none is 'latest' "
        f"(refs: {', '.join(names) or 'none named'}); pick one with ref="
    )


def check_manifest(doc: dict[str, Any], what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config descriptor and layer descriptors of an image manifest, checked."""
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{what}: not a schema 2 image manifest")
    config = _descriptor(doc.get("config"), what + " config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: the manifest has no layers list")
    descs = [_descriptor(layer, what + " layer") for layer in layers]
    for d in descs:
        mt = str(d.get("mediaType", ""))
        if "encrypted" in mt:
            raise ImageError(f"{what}: layer {d['digest']} is encrypted ({mt}); not supported")
    return config, descs


def check_config(data: bytes, what: str, layer_count: int) -> dict[str, Any]:
    cfg = parse_json(data, what + " config")
    if cfg.get("os", "linux") != "linux":
        raise ImageError(f"{what}: an image for {cfg.get('os')!r}, not linux")
    rootfs = cfg.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        raise ImageError(
            f"{what}: the config's rootfs.diff_ids does not list one digest per layer "
            f"({layer_count} layers)"
        )
    for d in diff_ids:
        if not isinstance(d, str):
            raise ImageError(f"{what}: a diff_id that is not a string")
        hex_of(d, what + " diff_id")
    return cfg


# --- sources ---------------------------------------------------------------------------------


class _LayoutDir:
    """An OCI image layout directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.what = str(path)
        try:
            self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"{path}: cannot open: {e.strerror}") from e

    def close(self) -> None:
        os.close(self.fd)

    def open_path(self, rel: str) -> IO[bytes]:
        try:
            # Non-blocking: a FIFO's open would wait for a writer forever (a regular file's
            # reads never see the flag).
            fd = _core.open_in_root(self.fd, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError as e:
            raise ImageError(f"{self.what}: {rel} is missing") from e
        except OSError as e:
            raise ImageError(f"{self.what}: cannot read {rel}: {e.strerror}") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ImageError(f"{self.what}: {rel} is not a regular file")
        return os.fdopen(fd, "rb")

    def open_blob(self, digest: str) -> IO[bytes]:
        return self.open_path("blobs/sha256/" + hex_of(digest, self.what))


#: The most entries an OCI or docker archive may have (blobs, manifests, indexes: a few each).
MAX_ARCHIVE_MEMBERS = 1 << 16


class _Archive:
    """A tar archive read in place: an OCI layout in a tar, or a docker archive."""

    def __init__(self, path: Path) -> None:
        import tarfile  # (here: 4 ms of every interpreter's import of pyrt otherwise)

        self.path = path
        self.what = str(path)
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            self.members: dict[str, tarfile.TarInfo] = {}
            # tarfile keeps every member it reads: an archive of millions of empty entries
            # would hold the memory of each. An image archive has a few per image.
            for m in self.tar:
                if len(self.members) >= MAX_ARCHIVE_MEMBERS:
                    self.tar.close()
                    raise ImageError(
                        f"{path}: more than {MAX_ARCHIVE_MEMBERS} entries; not an image archive"
                    )
                self.members[os.path.normpath(m.name.lstrip("/"))] = m
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ImageError(f"{path}: not a readable archive: {e}") from e

    def close(self) -> None:
        self.tar.close()

    def has(self, rel: str) -> bool:
        return rel in self.members

    def open_path(self, rel: str) -> IO[bytes]:
        m = self.members.get(os.path.normpath(rel.lstrip("/")))
        if m is None:
            raise ImageError(f"{self.what}: {rel} is missing from the archive")
        import tarfile

        try:
            f = self.tar.extractfile(m)
        except (tarfile.TarError, KeyError) as e:
            raise ImageError(f"{self.what}: cannot read {rel}: {e}") from e
        if f is None:
            raise ImageError(f"{self.what}: {rel} is not a file")
        return f

    def open_blob(self, digest: str) -> IO[bytes]:
        return self.open_path("blobs/sha256/" + hex_of(digest, self.what))


def _read_small(f: IO[bytes], what: str) -> bytes:
    with f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ImageError(f"{what}: larger than {MAX_JSON} bytes; not an image document")
    return data


def _resolve_layout(src: Any, ref: Optional[str]) -> Resolved:
    what = src.what
    layout = parse_json(_read_small(src.open_path("oci-layout"), what), what + " oci-layout")
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise ImageError(
            f"{what}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}"
        )
    index = parse_json(_read_small(src.open_path("index.json"), what), what + " index.json")
    desc = pick_manifest(index, what, ref)
    names = []
    ann = desc.get("annotations")
    if isinstance(ann, dict) and isinstance(ann.get(REF_NAME), str):
        names.append(ann[REF_NAME])
    for _ in range(8):  # indexes may nest; a loop is refused
        data = _read_small(src.open_blob(desc["digest"]), what)
        verify(data, desc["digest"], what + " manifest", desc.get("size"))
        doc = parse_json(data, what + " manifest")
        mt = doc.get("mediaType") or desc.get("mediaType")
        if mt in INDEX_TYPES or (mt is None and "manifests" in doc):
            desc = pick_manifest(doc, what)
            continue
        return _from_manifest(doc, what, src.open_blob, names)
    raise ImageError(f"{what}: indexes nested too deep")


def _from_manifest(
    doc: dict[str, Any], what: str, open_blob: Callable[[str], IO[bytes]], names: list[str]
) -> Resolved:
    config_desc, layer_descs = check_manifest(doc, what)
    cdata = _read_small(open_blob(config_desc["digest"]), what)
    verify(cdata, config_desc["digest"], what + " config", config_desc.get("size"))
    cfg = check_config(cdata, what, len(layer_descs))
    layers = []
    for d, diff in zip(layer_descs, cfg["rootfs"]["diff_ids"]):
        digest = d["digest"]
        layers.append(
            LayerRef(
                digest=digest,
                diff_id=diff,
                size=d.get("size"),
                media_type=str(d.get("mediaType", "")),
                open=lambda digest=digest: open_blob(digest),  # type: ignore[misc]
            )
        )
    return Resolved(cfg, config_desc["digest"], layers, names)


def _resolve_docker_archive(src: _Archive, ref: Optional[str]) -> Resolved:
    what = src.what
    doc = json.loads(_read_small(src.open_path("manifest.json"), what) or b"null")
    if not isinstance(doc, list) or not doc:
        raise ImageError(f"{what}: manifest.json lists no images")
    entries = [e for e in doc if isinstance(e, dict)]
    if ref is not None:
        entries = [
            e
            for e in entries
            if any(t == ref or t.endswith(":" + ref) for t in e.get("RepoTags") or [])
        ]
        if not entries:
            raise ImageNotFound(f"{what}: no image tagged {ref!r}")
    if len(entries) != 1:
        raise ImageError(f"{what}: holds {len(entries)} images; pick one with ref=")
    e = entries[0]
    config_path, layer_paths = e.get("Config"), e.get("Layers")
    if not isinstance(config_path, str) or not isinstance(layer_paths, list):
        raise ImageError(f"{what}: manifest.json entry without Config and Layers")
    cdata = _read_small(src.open_path(config_path), what)
    cfg = check_config(cdata, what, len(layer_paths))
    config_digest = "sha256:" + hashlib.sha256(cdata).hexdigest()
    # Docker names the config file after its digest; when it does, hold it to that.
    stem = Path(config_path).name.removesuffix(".json")
    if len(stem) == 64 and "sha256:" + stem != config_digest:
        raise ImageError(f"{what}: {config_path} does not match the digest in its name")
    layers = []
    for p, diff in zip(layer_paths, cfg["rootfs"]["diff_ids"]):
        if not isinstance(p, str):
            raise ImageError(f"{what}: a layer path that is not a string")
        layers.append(LayerRef(None, diff, None, "", lambda p=p: src.open_path(p)))  # type: ignore[misc]
    return Resolved(cfg, config_digest, layers, list(e.get("RepoTags") or []))


def kind_of(path: Path) -> str:
    """ "oci-layout", "oci-archive", "docker-archive", "rootfs" (a directory) or "tarball"."""
    if path.is_dir():
        return (
            "oci-layout"
            if (path / "oci-layout").exists() or (path / "index.json").exists()
            else "rootfs"
        )
    import tarfile

    try:
        with tarfile.open(path, "r:") as tf:
            names = set()
            for i, m in enumerate(tf):
                names.add(os.path.normpath(m.name.lstrip("/")))
                if i > 64 and not names & {"oci-layout", "manifest.json"}:
                    break
    except (tarfile.TarError, EOFError, OSError):
        return "tarball"
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    return "tarball"


class Source:
    """An opened image source; ``resolve`` picks the image, ``close`` releases the files."""

    def __init__(self, path: Path, kind: str) -> None:
        self.kind = kind
        self.src: Any = _LayoutDir(path) if kind == "oci-layout" else _Archive(path)

    def resolve(self, ref: Optional[str]) -> Resolved:
        if self.kind == "docker-archive":
            return _resolve_docker_archive(self.src, ref)
        return _resolve_layout(self.src, ref)

    def close(self) -> None:
        self.src.close()
