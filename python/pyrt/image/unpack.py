"""Unpacking a tar stream into a directory, as a security boundary.

``tarfile`` only parses here; it never writes. Every entry's parent directory is opened with
``openat2(RESOLVE_IN_ROOT)`` (through the Rust core), so neither ``..``, nor an absolute or
relative symlink planted by an earlier entry, can point a write outside the root; the entry
itself is then made relative to that descriptor by a single name, never following a symlink.
The caller unpacks into a fresh private directory and renames it into place only on success, so
a refused or broken image leaves nothing behind.

Layers carry deletions as whiteouts (the OCI image spec's ``.wh.NAME`` and ``.wh..wh..opq``).
Unpacked for overlayfs, each becomes what overlayfs itself reads in a lower directory: a 0:0
character device, and the ``trusted.overlay.opaque`` xattr. Flattened, they delete from the tree
built so far. Either way no whiteout file is left in the result.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Optional

from .. import _core
from ..errors import ImageError, UnsafeImageError

#: Limits against decompression bombs (overridable per call).
MAX_ENTRIES = 2_000_000
MAX_BYTES = 64 << 30

_CHUNK = 1 << 20


#: What to do with whiteout entries: keep them as plain files (a rootfs tarball, which is not a
#: layer), turn them into overlayfs' markers, or apply them to the tree being unpacked into.
WHITEOUTS_KEEP = "keep"
WHITEOUTS_OVERLAY = "overlay"
WHITEOUTS_APPLY = "apply"

_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
#: Xattrs that steer overlayfs (redirects, metacopy, opaque): an image must not set them itself.
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


@dataclass
class UnpackStats:
    entries: int = 0
    bytes: int = 0
    skipped_devices: list[str] = field(default_factory=list)
    whiteouts: int = 0


def _components(name: str) -> list[str]:
    """The path's components, with "." and leading "/" dropped; ".." is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeImageError(f"tar entry {name!r} climbs out of the root with '..'")
    return parts


class _Root:
    """The directory being unpacked into, and descriptors of directories resolved inside it."""

    def __init__(self, path: str, lowers: tuple[str, ...] = ()) -> None:
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.lowers: list[int] = []
        #: Directories created without an entry of their own, with the mtime they should keep.
        self.implied: list[tuple[list[str], int]] = []
        try:
            for d in lowers:
                self.lowers.append(os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        os.close(self.fd)
        for fd in self.lowers:
            os.close(fd)

    def _lower_stat(self, rel: str) -> Optional[os.stat_result]:
        """The directory ``rel`` as the layers below have it (topmost first), if they do."""
        for lfd in self.lowers:
            try:
                fd = _core.open_in_root(lfd, rel, os.O_PATH | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        return None

    def open_dir(self, parts: list[str], create: bool, entry: str, depth: int = 0) -> int:
        """A descriptor of the directory ``parts`` inside the root, creating missing ones. A
        dangling symlink on the way is followed inside the root (where it will point once the
        image is a container's root), as Docker's unpacker does."""
        if depth > 40:
            raise UnsafeImageError(f"tar entry {entry!r}: too many levels of symbolic links")
        rel = "/".join(parts) or "."
        try:
            return _core.open_in_root(self.fd, rel, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            if not create or not parts:
                raise
        except NotADirectoryError as e:
            raise UnsafeImageError(f"tar entry {entry!r}: {rel!r} is not a directory") from e
        parent = self.open_dir(parts[:-1], True, entry, depth + 1)
        try:
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
            # A directory the layer implies takes its metadata from the layers below (as a
            # flattened unpack would leave it), else root's 0755.
            if (st := self._lower_stat(rel)) is not None:
                os.chown(parts[-1], st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
                os.chmod(f"/proc/self/fd/{parent}/{parts[-1]}", st.st_mode & 0o7777)
                self.implied.append((parts, st.st_mtime_ns))
        except FileExistsError:
            try:
                target = os.readlink(parts[-1], dir_fd=parent)
            except OSError:
                target = None
            if target is not None:
                base = [] if target.startswith("/") else parts[:-1]
                return self.open_dir(_lexical(base, target), True, entry, depth + 1)
        finally:
            os.close(parent)
        return _core.open_in_root(self.fd, rel, os.O_PATH | os.O_DIRECTORY)


def _lexical(base: list[str], target: str) -> list[str]:
    """``target`` taken relative to ``base`` inside the root; ".." stops at the root, as
    RESOLVE_IN_ROOT makes it."""
    out = list(base)
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return out


def remove_entry(parent: int, name: str) -> None:
    """Removes whatever is at ``name`` under ``parent`` (not following a symlink)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(f"/proc/self/fd/{parent}/{name}")
    else:
        os.unlink(name, dir_fd=parent)


def _apply_meta(fd: int, m: tarfile.TarInfo, as_root: bool) -> None:
    if as_root:
        os.fchown(fd, m.uid, m.gid)
    # chown clears set-id bits, so the mode comes after it.
    os.fchmod(fd, m.mode & 0o7777)
    for k, v in (m.pax_headers or {}).items():
        if k.startswith("SCHILY.xattr."):
            attr = k[len("SCHILY.xattr.") :]
            if attr.startswith(_OVERLAY_XATTRS):
                continue
            try:
                os.setxattr(fd, attr, v.encode("utf-8", "surrogateescape"))
            except OSError as e:
                # security.* / trusted.* need privilege and a filesystem that keeps them.
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
    os.utime(fd, ns=(int(m.mtime * 1e9), int(m.mtime * 1e9)))


def _members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        m = tf.next()
        if m is None:
            return
        yield m


def unpack(
    fileobj: IO[bytes],
    dest: str,
    *,
    what: str,
    max_entries: int = MAX_ENTRIES,
    max_bytes: int = MAX_BYTES,
    whiteouts: str = WHITEOUTS_KEEP,
    lowers: tuple[str, ...] = (),
    owner: Optional[tuple[int, int]] = None,
    devices: bool = True,
    strip_setid: bool = False,
) -> UnpackStats:
    """Unpacks the (uncompressed or tarfile-decompressable) tar stream into the directory
    ``dest`` (empty, or with ``whiteouts="apply"`` the layers below this one). ``what`` names the
    image in errors. ``lowers`` (topmost first) are the layers this one goes on top of.

    For files copied into and out of containers: ``owner`` replaces every entry's owner,
    ``devices=False`` skips device nodes (named in the stats), ``strip_setid`` clears set-uid
    and set-gid bits."""
    as_root = os.geteuid() == 0
    stats = UnpackStats()
    root = _Root(dest, lowers)
    dir_times: list[tuple[list[str], tarfile.TarInfo]] = []
    # Paths this layer wrote: an opaque marker applied to a flattened tree spares them.
    written: set[tuple[str, ...]] = set()
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|*")  # noqa: SIM115 - a stream, closed with fileobj
        for m in _members(tf):
            stats.entries += 1
            if stats.entries > max_entries:
                raise ImageError(f"more than {max_entries} entries; refusing to unpack")
            if owner is not None:
                m.uid, m.gid = owner
            if strip_setid:
                m.mode &= ~0o6000
            if not devices and (m.ischr() or m.isblk()):
                stats.skipped_devices.append(m.name)
                continue
            parts = _components(m.name)
            if not parts:
                if m.isdir():
                    dir_times.append(([], m))
                continue
            parent = root.open_dir(parts[:-1], True, m.name)
            try:
                if whiteouts != WHITEOUTS_KEEP and parts[-1].startswith(_WH):
                    _whiteout(m.name, parts, parent, whiteouts, written)
                    stats.whiteouts += 1
                    continue
                _unpack_one(tf, m, parts, parent, root, stats, as_root, max_bytes, what)
                if whiteouts == WHITEOUTS_APPLY:
                    written.update(tuple(parts[:i]) for i in range(1, len(parts) + 1))
            finally:
                os.close(parent)
            if m.isdir():
                dir_times.append((parts, m))
        # Directory times last: every entry written inside a directory changed its mtime.
        for parts, ns in reversed(root.implied):
            fd = root.open_dir(parts, False, "/".join(parts))
            try:
                os.utime(f"/proc/self/fd/{fd}", ns=(ns, ns))
            finally:
                os.close(fd)
        for parts, m in reversed(dir_times):
            fd = root.open_dir(parts, False, m.name)
            try:
                os.utime(f"/proc/self/fd/{fd}", ns=(int(m.mtime * 1e9),) * 2)
            finally:
                os.close(fd)
    except ImageError as e:
        raise type(e)(f"{what}: {e}") from e
    except (tarfile.TarError, EOFError) as e:
        raise ImageError(f"{what}: not a readable tar archive: {e}") from e
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise ImageError(f"{what}: no space left on device while unpacking into {dest}") from e
        if isinstance(e, OSError) and e.errno == errno.ELOOP:
            raise UnsafeImageError(f"{what}: a symlink loop in the image's paths") from e
        raise ImageError(f"{what}: unpacking failed: {e}") from e
    finally:
        root.close()
    return stats


@functools.lru_cache(maxsize=1)
def privileged() -> bool:
    """Root of the host (not of a user namespace): device nodes and trusted.* xattrs."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def _whiteout(
    entry: str, parts: list[str], parent: int, mode: str, written: set[tuple[str, ...]]
) -> None:
    """A ``.wh.`` entry: an opaque directory marker, or the deletion of one name below."""
    name = parts[-1]
    here = f"/proc/self/fd/{parent}"
    if name == _OPAQUE:
        if mode == WHITEOUTS_OVERLAY:
            os.setxattr(here, "user.overlay.opaque", b"y")
            if privileged():
                # Root's store serves root's containers (trusted.*) and rootless=True ones,
                # whose overlay reads user.* ("userxattr"): both marks, then.
                os.setxattr(here, "trusted.overlay.opaque", b"y")
        else:
            base = tuple(parts[:-1])
            for child in os.listdir(here):
                if (*base, child) not in written:
                    remove_entry(parent, child)
        return
    if name.startswith(_WH + _WH):
        # Other ".wh..wh." names are aufs bookkeeping (e.g. hard link directories): no meaning
        # in an OCI layer, and nothing to unpack.
        return
    target = name[len(_WH) :]
    if target in ("", ".", "..") or "/" in target:
        raise UnsafeImageError(
            f"tar entry {entry!r}: a whiteout must name one entry, not {target!r}"
        )
    remove_entry(parent, target)
    if mode != WHITEOUTS_OVERLAY:
        return
    if privileged():
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        return
    # Without CAP_MKNOD: overlayfs's xattr whiteout (Linux 6.7), a zero-size file marked
    # user.overlay.whiteout in a directory marked opaque "x" (not opaque, but holding such
    # whiteouts), read by overlay mounts with "userxattr", as rootless containers' are.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=parent)  # fmt: skip
    try:
        os.setxattr(fd, "user.overlay.whiteout", b"")  # needs write permission: mode 0 after
        os.fchmod(fd, 0)
    finally:
        os.close(fd)
    try:
        opaque = os.getxattr(here, "user.overlay.opaque")
    except OSError:
        opaque = b""
    if opaque != b"y":
        os.setxattr(here, "user.overlay.opaque", b"x")


def _unpack_one(
    tf: tarfile.TarFile,
    m: tarfile.TarInfo,
    parts: list[str],
    parent: int,
    root: _Root,
    stats: UnpackStats,
    as_root: bool,
    max_bytes: int,
    what: str,
) -> None:
    name = parts[-1]
    existing: Optional[os.stat_result]
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
        remove_entry(parent, name)

    if m.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
        )
        try:
            _apply_meta(fd, m, as_root)
        finally:
            os.close(fd)
    elif m.isreg():
        stats.bytes += m.size
        if stats.bytes > max_bytes:
            raise ImageError(f"more than {max_bytes} bytes of content; refusing to unpack")
        src = tf.extractfile(m)
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
            dir_fd=parent,
        )  # fmt: skip
        try:
            if src is not None:
                while chunk := src.read(_CHUNK):
                    os.write(fd, chunk)
            _apply_meta(fd, m, as_root)
        finally:
            os.close(fd)
    elif m.issym():
        # The link's text is stored as is: it is resolved later inside the container's root (or
        # by this unpacker through RESOLVE_IN_ROOT), never on the host.
        os.symlink(m.linkname, name, dir_fd=parent)
        if as_root:
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(int(m.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)
    elif m.islnk():
        tparts = _components(m.linkname)
        if not tparts:
            raise UnsafeImageError(f"tar entry {m.name!r}: hard link to the root itself")
        try:
            tparent = root.open_dir(tparts[:-1], False, m.name)
        except FileNotFoundError as e:
            raise ImageError(
                f"tar entry {m.name!r}: hard link target {m.linkname!r} is not in the image"
            ) from e
        try:
            tst = os.stat(tparts[-1], dir_fd=tparent, follow_symlinks=False)
            if stat.S_ISDIR(tst.st_mode):
                raise UnsafeImageError(f"tar entry {m.name!r}: hard link to a directory")
            os.link(tparts[-1], name, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError as e:
            raise ImageError(
                f"tar entry {m.name!r}: hard link target {m.linkname!r} is not in the image"
            ) from e
        finally:
            os.close(tparent)
    elif m.ischr() or m.isblk() or m.isfifo():
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        if not m.isfifo() and not privileged():
            # Device nodes need CAP_MKNOD of the host: a rootless store skips them (the
            # container's /dev has the standard ones).
            stats.skipped_devices.append(m.name)
            return
        os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
        if as_root:
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(f"/proc/self/fd/{parent}/{name}", m.mode & 0o7777)
    else:
        raise ImageError(f"tar entry {m.name!r}: unsupported entry type {m.type!r}")
