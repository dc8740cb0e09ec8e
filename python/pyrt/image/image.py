"""``pyrt.Image``: the host's own filesystem, a rootfs directory or tarball, with its config."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Optional, Union

from pyrt import _core
from pyrt.config import checks, users
from pyrt.config.users import UserIds
from pyrt.errors import ImageError, ImageNotFound
from pyrt.host import userns
from pyrt.image import flatten, layers, oci, store
from pyrt.image.config import ImageConfig
from pyrt.image.progress import Progress
from pyrt.image.unpack import WHITEOUTS_KEEP

PathLike = Union[str, "os.PathLike[str]"]

_GZIP = b"\x1f\x8b"
#: The most of a file ``read_file`` reads: a real /etc/passwd is kilobytes.
_MAX_READ = 16 << 20
_DEV_NULL = os.makedev(1, 3)
_HOST_ID = "sha256:" + hashlib.sha256(b"pyrt host image").hexdigest()


class Image:
    """An image: a root filesystem (one directory, or read-only layers) plus its config."""

    def __init__(
        self,
        kind: str,
        lower: tuple[str, ...],
        config: Optional[ImageConfig] = None,
        image_id: Optional[str] = None,
        tags: Optional[list[str]] = None,
        source: Optional[str] = None,
    ) -> None:
        self.kind = kind
        #: Directories of the root filesystem, topmost first (overlayfs' order).
        self.lower = lower
        self.config = config or ImageConfig()
        self._id = image_id
        self.tags: list[str] = list(tags or [])
        self.source = source
        #: ``resolve_user``'s answers: for an "oci" image, whose files cannot change, as they
        #: are; for the others with what identified the files they were read from (see there).
        self._users: dict[Optional[str], UserIds] = {}
        self._users_seen: dict[Optional[str], tuple[_FilesKey, UserIds]] = {}

    def __repr__(self) -> str:
        name = self.tags[0] if self.tags else self.source or self.kind
        return f"<pyrt.Image {name} {self.id[:19]}>"

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def host(cls) -> Image:
        """The host's own filesystem, read-only."""
        return cls("host", ("/",), ImageConfig(), _HOST_ID, source="host")

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        tag: Optional[str] = None,
        ref: Optional[str] = None,
        progress: Optional[bool] = None,
    ) -> Image:
        """A rootfs directory, a rootfs tarball (.tar, .tar.gz, .tar.xz, .tar.zst), an OCI image
        layout (a directory, or a tar of one), or a docker archive; the kind is detected from
        the contents, not the name. ``ref`` picks one image of a layout (by its
        ``org.opencontainers.image.ref.name``) or of a docker archive (by a tag). With ``tag``,
        the image is also recorded in the local store under that name. ``progress`` shows a
        progress bar (default: when stderr is a terminal)."""
        p = Path(os.fspath(path))
        checks.optional_flag(progress, "progress")
        if not p.exists():
            raise ImageNotFound(f"no such image: {p} does not exist")
        if not (p.is_dir() or p.is_file()):
            raise ImageError(f"{p}: neither a directory nor a regular file")
        kind = oci.kind_of(p)
        if kind in ("oci-layout", "oci-archive", "docker-archive"):
            src = oci.Source(p, kind)
            try:
                with store.loading():
                    r = src.resolve(ref)
                    with Progress(str(p), sum(x.size or 0 for x in r.layers), progress) as bar:
                        img = cls._stack(r, str(p), bar, verified=False)
                    if tag is not None:
                        img.tag(tag)
                return img
            finally:
                src.close()
        if ref is not None:
            raise ImageError(
                f"{p}: ref= selects an image of an OCI layout or archive; this is a rootfs"
            )
        if kind == "rootfs":
            img = cls("rootfs", (str(p.resolve()),), ImageConfig(), source=str(p))
        else:
            with store.loading():  # `pyrt gc` leaves tmp/ alone meanwhile
                img = cls._load_tarball(p)
        if tag is not None:
            img.tag(tag)
        return img

    @classmethod
    def _stack(cls, r: oci.Resolved, what: str, bar: Progress, verified: bool) -> Image:
        """Unpacks (or finds) each layer of a resolved image, bottom first, and stacks them.
        ``verified``: the blobs were checked against their digests on download."""
        if not r.layers:
            raise ImageError(f"{what}: the image has no layers")
        # Read first: an image whose config is malformed leaves no layer behind.
        config = ImageConfig.from_oci(r.config.get("config"), what)
        lower: tuple[str, ...] = ()
        parent: Optional[str] = None
        for i, layer in enumerate(r.layers):
            got = layers.ensure_layer(
                layer.open,
                layer.digest,
                layer.diff_id,
                parent,
                lower,
                f"{what}: layer {i + 1} of {len(r.layers)} ({layer.digest or layer.diff_id})",
                verified=verified,
                progress=None if verified else bar.update,
                blob_size=layer.size,
            )
            parent = got.chain_id
            lower = (str(got.root), *lower)
        if not overlay_supported():
            lower = (str(flatten.flatten(r.config_digest, lower)),)
        return cls(
            "oci",
            lower,
            config,
            r.config_digest,
            source=what,
        )

    @classmethod
    def _load_tarball(cls, p: Path) -> Image:
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        hexd = digest.hexdigest()
        final = store.root() / "rootfs" / hexd
        if not final.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir(), prefix="unpack-"))
            try:
                os.chmod(tmp, 0o755)
                with open(p, "rb") as raw, _decompressed(raw, magic, str(p)) as stream:
                    layers.unpack_stream(stream, tmp, str(p), WHITEOUTS_KEEP)
                store.place_tree(tmp, final)
            except BaseException:
                userns.remove_tree(tmp)
                raise
        return cls("rootfs", (str(final),), ImageConfig(), "sha256:" + hexd, source=str(p))

    @classmethod
    def pull(
        cls,
        ref: str,
        *,
        insecure: bool = False,
        username: Optional[str] = None,
        password: Optional[str] = None,
        progress: Optional[bool] = None,
    ) -> Image:
        """Pulls ``ref`` from a registry over the OCI distribution API and records it in the
        store under ``ref``. Layers already in the store are not downloaded again; the others
        are fetched three at a time, verified, and unpacked. ``insecure`` allows plain HTTP to
        a registry not on this machine; one on a loopback address gets it unasked."""
        # http.client, ssl and concurrent.futures are imported for pulls only (`import pyrt`
        # and every command line run are faster without them).
        from pyrt.image import registry

        r = registry.parse_reference(checks.text(ref, "ref"))
        insecure = bool(checks.optional_flag(insecure, "insecure"))  # (None: as push takes it)
        for name, v in (("username", username), ("password", password)):
            checks.optional_text(v, name)
        checks.optional_flag(progress, "progress")
        client = registry.Client(r, insecure, username, password)
        with store.loading():
            resolved, descs = registry.resolve(client)
            diff_ids = resolved.config["rootfs"]["diff_ids"]
            chain: Optional[str] = None
            needed = []
            for diff in diff_ids:
                chain = layers.chain_id(chain, diff)
                needed.append(not layers.layer_root(chain).is_dir())
            total = sum(int(d.get("size") or 0) for d, n in zip(descs, needed) if n)
            with Progress(ref, total, progress) as bar:
                futures = registry.download_layers(client, descs, needed, bar.update)
                try:
                    for d, diff, fut in zip(descs, diff_ids, futures):
                        resolved.layers.append(
                            oci.LayerRef(
                                d["digest"],
                                diff,
                                d.get("size"),
                                str(d.get("mediaType")),
                                registry.opener(fut),
                            )
                        )
                    img = cls._stack(resolved, ref, bar, verified=True)
                finally:
                    registry.discard(futures)
            img.source = ref
            img.tag(ref)
        return img

    @classmethod
    def get(cls, name: str) -> Image:
        """An image from the local store by name; ImageNotFound if there is none."""
        name = checks.text(name, "name")
        rec = store.lookup(name)
        # "name" and "name:latest" are one image (Docker's rule), whichever was recorded.
        if rec is None and ":" not in name.rpartition("/")[2] and "@" not in name:
            rec = store.lookup(name + ":latest")
        if rec is None and name.endswith(":latest"):
            rec = store.lookup(name.removesuffix(":latest"))
        if rec is None:
            rec = _by_id(name)
        if rec is None:
            raise ImageNotFound(f"no image named {name!r} in the local store ({store.root()})")
        return cls._from_record(rec, [n for n, r in store.read_index().items() if r == rec])

    @classmethod
    def _from_record(cls, rec: dict[str, Any], tags: list[str]) -> Image:
        lower = tuple(rec.get("lower") or ())
        for d in lower:
            if not os.path.isdir(d):
                raise ImageNotFound(f"image {tags[0] if tags else rec.get('id')}: {d} is gone")
        return cls(
            rec["kind"],
            lower,
            ImageConfig.from_oci(rec.get("config"), f"image {tags[0] if tags else rec.get('id')}"),
            rec.get("id"),
            tags,
            rec.get("source"),
        )

    # --- identity and store -----------------------------------------------------------

    @property
    def id(self) -> str:
        """ "sha256:..." of the image config, or of the rootfs for plain rootfs images (for a
        directory: of its listing of names, types, sizes and times, not of file contents)."""
        if self._id is None:
            self._id = "sha256:" + _listing_digest(self.lower[0])
        return self._id

    def _record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lower": list(self.lower),
            "id": self.id,
            "config": self.config.to_dict(),
            "source": self.source,
        }

    def tag(self, name: str) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"invalid image name: {name!r}")
        store.tag(name, self._record())
        if name not in self.tags:
            self.tags.append(name)

    def remove(self) -> None:
        """Removes this image's names from the store, and its unpacked files when no other name
        refers to them. Running containers keep working on what they have mounted."""
        with store.loading(exclusive=True), store.locked():
            index = store.read_index()
            mine = [n for n, r in index.items() if r.get("id") == self.id]
            for n in mine:
                index.pop(n)
            store.write_index(index)
            still_used = {d for r in index.values() for d in r.get("lower") or ()}
            base = str(store.root()) + os.sep
            if self.kind == "oci":
                layers.collect(still_used, only=set(self.lower), grace=0.0)
            else:
                for d in self.lower:
                    if d.startswith(base) and d not in still_used:
                        userns.remove_tree(d)
        self.tags = []

    def save(self, path: PathLike, format: str = "oci") -> None:
        """Writes the image out: ``"oci"``, an OCI image layout directory (new, or empty);
        ``"oci-archive"`` or ``"docker-archive"``, a tar file. skopeo, umoci and podman read
        them. Layers pulled or loaded are written from their unpacked trees (their compressed
        blobs are not kept), so their digests may differ from the original's."""
        from pyrt.rootfs import snapshot  # snapshot builds on images: imported when used

        dest = checks.host_path(path, "path")
        fmt = checks.text(format, "format")
        snapshot.save(self, dest, fmt)

    def push(
        self,
        ref: str,
        insecure: Optional[bool] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        *,
        progress: Optional[bool] = None,
    ) -> str:
        """Pushes the image to a registry as ``ref`` ("host[:port]/repo:tag") over the OCI
        distribution API; returns the manifest's digest. ``insecure`` allows plain HTTP (None:
        only for a registry on this machine); ``username``/``password`` as for ``pull``."""
        from pyrt.image import push  # push builds on snapshot: imported when used

        ref = checks.text(ref, "ref")
        checks.optional_flag(insecure, "insecure")
        for name, v in (("username", username), ("password", password)):
            checks.optional_text(v, name)
        checks.optional_flag(progress, "progress")
        return push.push(self, ref, insecure, username, password, progress)

    # --- contents -----------------------------------------------------------------------

    def read_file(self, path: str) -> Optional[bytes]:
        """A regular file of the image's root filesystem (symlinks resolved inside it), or None
        when it is absent (or deleted by an upper layer's whiteout). ImageError when it is
        anything else, or larger than 16 MiB: the files read are /etc/passwd and /etc/group,
        and a hostile image's could be a FIFO (whose open or read would wait forever), a device
        (whose open acts on the host's device), or gigabytes. What is there is looked at before
        it is opened; a link to /dev/null, an image's way of saying "none", reads empty."""
        rel = path.lstrip("/")
        for d in self.lower:
            try:
                dfd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                try:
                    probe = _core.open_in_root(dfd, rel, os.O_PATH)
                except OSError:
                    continue
                try:
                    seen = os.fstat(probe)
                finally:
                    os.close(probe)
                if stat.S_ISCHR(seen.st_mode) and seen.st_rdev in (0, _DEV_NULL):
                    return None if seen.st_rdev == 0 else b""  # (0/0: overlayfs's whiteout)
                if not stat.S_ISREG(seen.st_mode):
                    raise ImageError(f"{self!r}: {path} is not a regular file")
                try:
                    fd = _core.open_in_root(dfd, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
                except OSError:
                    continue  # (gone since it was looked at)
            finally:
                os.close(dfd)
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
                    raise ImageError(f"{self!r}: {path} changed as it was read")
                chunks, total = [], 0
                # (In chunks: a buffered read of the bound would allocate all of it at once.)
                while chunk := os.read(fd, 1 << 16):
                    total += len(chunk)
                    if total > _MAX_READ:
                        raise ImageError(f"{self!r}: {path} is larger than {_MAX_READ >> 20} MiB")
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        return None

    def resolve_user(self, user: Optional[str]) -> UserIds:
        """ "uid", "uid:gid", "name" or "name:group", against the image's /etc/passwd and
        /etc/group (Docker's rules: a numeric uid need not exist; its gid then defaults to 0)."""
        # An "oci" image's layers are the store's, never written after they are unpacked: its
        # answers are kept (each start asked again: two files looked at, read and parsed, ~25 us).
        # A rootfs directory or the host may change between starts: an answer is kept with
        # what identified the files it came from, and given again only while they are the same.
        if self.kind == "oci" and user in self._users:
            return self._users[user]
        key = _files_key(self.lower[0]) if self.kind != "oci" and len(self.lower) == 1 else None
        seen = self._users_seen.get(user) if key is not None else None
        if seen is not None and seen[0] == key:
            return seen[1]
        ids = users.resolve(user, self.read_file("/etc/passwd"), self.read_file("/etc/group"))
        if self.kind == "oci" and len(self._users) < 64:
            self._users[user] = ids
        elif key is not None and len(self._users_seen) < 64:
            self._users_seen[user] = (key, ids)
        return ids


#: What identifies an image's /etc, /etc/passwd and /etc/group as they are (``_files_key``).
_FilesKey = tuple[Optional[tuple[int, ...]], ...]

#: A file changed within this many nanoseconds is read again at every start: a change in the
#: same tick of the file system's clock as the one before leaves its times as they were.
_SETTLED_NS = 2_000_000_000


def _files_key(root: str) -> Optional[_FilesKey]:
    """For a rootfs directory or the host: /etc, /etc/passwd and /etc/group under ``root``,
    each by device, inode, size and modification and change times (None for one that does not
    exist), or None when they cannot stand for the contents: a symlink on the way (the files
    are read with links resolved inside the root, which a host path does not do), a file
    changed in the last two seconds, or one that cannot be looked at. The change time moves at
    any write, and no one can set it back; a file renamed into place is another inode."""
    now = time.time_ns()
    key: list[Optional[tuple[int, ...]]] = []
    for rel in ("etc", "etc/passwd", "etc/group"):
        try:
            st = os.lstat(os.path.join(root, rel))
        except FileNotFoundError:
            key.append(None)
            continue
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) or now - max(st.st_mtime_ns, st.st_ctime_ns) < _SETTLED_NS:
            return None
        key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def overlay_supported() -> bool:
    """Whether the kernel offers overlayfs (``PYRT_NO_OVERLAY=1`` pretends it does not, to test
    the fallback)."""
    return os.environ.get("PYRT_NO_OVERLAY") != "1" and _kernel_has_overlay()


@functools.lru_cache(maxsize=1)
def _kernel_has_overlay() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def _listing_digest(path: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, path)
            h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _decompressed(raw: IO[bytes], magic: bytes, what: str) -> Any:
    """The rootfs tarball as the unpacker takes it: gzip, zstd and plain tar as they are (the
    core decompresses them); bzip2 and xz, which some rootfs tarballs still use, through
    Python's codecs."""
    if magic.startswith(b"BZh"):
        import bz2

        with bz2.open(raw) as r:
            yield r
    elif magic.startswith(b"\xfd7zXZ"):
        import lzma

        with lzma.open(raw) as r:
            yield r
    else:
        yield raw


def _by_id(name: str) -> Optional[dict[str, Any]]:
    """The record of the image whose id is ``name`` ("sha256:<hex>", or 12 or more hex digits
    of it, as `pyrt images` shows), when exactly one has it."""
    hexd = name.removeprefix("sha256:")
    if len(hexd) < 12 or any(c not in "0123456789abcdef" for c in hexd):
        return None
    found = {str(r.get("id")): r for r in store.read_index().values()
             if str(r.get("id", "")).removeprefix("sha256:").startswith(hexd)}  # fmt: skip
    return next(iter(found.values())) if len(found) == 1 else None


def images() -> list[Image]:
    """The images in the local store, one per id, with all their names."""
    by_id: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name, rec in sorted(store.read_index().items()):
        by_id.setdefault(rec.get("id", name), (rec, []))[1].append(name)
    out = []
    for rec, names in by_id.values():
        with contextlib.suppress(ImageNotFound):
            out.append(Image._from_record(rec, names))
    return out
