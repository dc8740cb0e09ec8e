"""``pyrt.Image``: the host's own filesystem, a rootfs directory or tarball, with its config."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, Union

from .. import _core
from ..errors import ImageError, ImageNotFound
from . import store
from .config import ImageConfig
from .unpack import unpack

PathLike = Union[str, "os.PathLike[str]"]

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_HOST_ID = "sha256:" + hashlib.sha256(b"pyrt host image").hexdigest()


@dataclass(frozen=True)
class UserIds:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


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

    def __repr__(self) -> str:
        name = self.tags[0] if self.tags else self.source or self.kind
        return f"<pyrt.Image {name} {self.id[:19]}>"

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def host(cls) -> Image:
        """The host's own filesystem, read-only."""
        return cls("host", ("/",), ImageConfig(), _HOST_ID, source="host")

    @classmethod
    def load(cls, path: PathLike, *, tag: Optional[str] = None, ref: Optional[str] = None) -> Image:
        """A rootfs directory or a rootfs tarball (.tar, .tar.gz, .tar.zst); the kind is
        detected from the contents, not the name. With ``tag``, the image is also recorded in
        the local store under that name."""
        p = Path(os.fspath(path))
        if not p.exists():
            raise ImageNotFound(f"no such image: {p} does not exist")
        if p.is_dir():
            if (p / "oci-layout").exists() or (p / "index.json").exists():
                raise ImageError(f"{p}: OCI image layouts are not supported yet")
            img = cls("rootfs", (str(p.resolve()),), ImageConfig(), source=str(p))
        elif p.is_file():
            img = cls._load_tarball(p)
        else:
            raise ImageError(f"{p}: neither a directory nor a regular file")
        if ref is not None:
            raise ImageError(f"{p}: ref= selects an image of an OCI layout; this is a rootfs")
        if tag is not None:
            img.tag(tag)
        return img

    @classmethod
    def _load_tarball(cls, p: Path) -> Image:
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            magic = f.read(4)
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
                    unpack(stream, str(tmp), what=str(p))
                store.place_tree(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
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
    ) -> Image:
        """Pulls from a registry (OCI distribution API). Not available in this version."""
        raise ImageError(f"cannot pull {ref}: registry pulls are not implemented yet")

    @classmethod
    def get(cls, name: str) -> Image:
        """An image from the local store by name; ImageNotFound if there is none."""
        rec = store.lookup(name)
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
            ImageConfig.from_oci(rec.get("config") or {}),
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
        with store.locked():
            index = store.read_index()
            mine = [n for n, r in index.items() if r.get("id") == self.id]
            for n in mine:
                index.pop(n)
            store.write_index(index)
            still_used = {d for r in index.values() for d in r.get("lower") or ()}
        base = str(store.root()) + os.sep
        for d in self.lower:
            if d.startswith(base) and d not in still_used:
                shutil.rmtree(d, ignore_errors=True)
        self.tags = []

    # --- contents -----------------------------------------------------------------------

    def read_file(self, path: str) -> Optional[bytes]:
        """A file of the image's root filesystem (symlinks resolved inside it), or None."""
        rel = path.lstrip("/")
        for d in self.lower:
            try:
                dfd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fd = _core.open_in_root(dfd, rel, os.O_RDONLY)
            except OSError:
                continue
            finally:
                os.close(dfd)
            with os.fdopen(fd, "rb") as f:
                return f.read()
        return None

    def resolve_user(self, user: Optional[str]) -> UserIds:
        """ "uid", "uid:gid", "name" or "name:group", against the image's /etc/passwd and
        /etc/group (Docker's rules: a numeric uid need not exist; its gid then defaults to 0)."""
        passwd = _parse_colon_file(self.read_file("/etc/passwd"))
        groups = _parse_colon_file(self.read_file("/etc/group"))
        spec = (user or "").strip() or "0"
        uname, _, gname = spec.partition(":")
        entry = None
        if uname.isdigit():
            uid = int(uname)
            entry = next((e for e in passwd if len(e) > 3 and e[2] == uname), None)
        else:
            entry = next((e for e in passwd if e[0] == uname and len(e) > 3), None)
            if entry is None:
                raise ValueError(f"unable to find user {uname}: no matching entries in passwd file")
            uid = int(entry[2])
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        if gname:
            if gname.isdigit():
                gid = int(gname)
            else:
                g = next((e for e in groups if e[0] == gname and len(e) > 2), None)
                if g is None:
                    raise ValueError(
                        f"unable to find group {gname}: no matching entries in group file"
                    )
                gid = int(g[2])
        name = entry[0] if entry else None
        extra = tuple(
            sorted(
                {
                    int(g[2])
                    for g in groups
                    if name and len(g) > 3 and g[2].isdigit() and name in g[3].split(",")
                }
                - {gid}
            )
        )
        home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
        if not entry and uid == 0:
            home = "/root"
        return UserIds(uid, gid, extra, home)


def _parse_colon_file(data: Optional[bytes]) -> list[list[str]]:
    if not data:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


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
    if magic.startswith(_ZSTD):
        try:
            import zstandard
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise ImageError(f"{what}: zstd-compressed; install the zstandard package") from e
        with zstandard.ZstdDecompressor().stream_reader(raw) as r:
            yield io.BufferedReader(r)
    else:
        # tarfile's "r|*" recognises gzip, bzip2 and xz itself.
        yield raw


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
