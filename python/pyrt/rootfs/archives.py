"""Archives out of and into a container's root (a directory descriptor, see ``rootview``):
tars built from ``fstat`` of descriptors, never from host paths, and archives extracted by the
image unpacker (the same rules as an image layer: no entry leaves its destination). Paths are
resolved as ``files`` resolves them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Optional

from pyrt.errors import PathNotFound, PyrtError
from pyrt.image import unpack
from pyrt.rootfs import files
from pyrt.rootfs.files import CHUNK, Copied, Owner, make_dirs, open_at, split

if TYPE_CHECKING:
    import tarfile


def archive_bytes(root: int, path: str) -> bytes:
    """``write_archive`` of ``path`` as bytes in memory, refused (PyrtError naming the path)
    past the bound ``read_file`` has: a tree of the container's (a sparse file of a terabyte
    reads as one) must not fill the caller's memory."""
    buf = _Bounded(path)
    write_archive(root, path, buf)
    return buf.getvalue()


class _Bounded(io.BytesIO):
    """A buffer that refuses to grow past files.MAX_READ bytes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.tell() + len(data) > files.MAX_READ:
            raise PyrtError(
                f"{self._path}: its archive is larger than {files.bound_text()}; use copy_out "
                "for it"
            )
        return super().write(data)


def write_archive(root: int, path: str, out: IO[bytes], arcname: Optional[str] = None) -> Copied:
    """A tar of ``path`` (a file or a tree) inside the root, written to ``out``; its top entry is
    named ``arcname`` (default: the path's last component, "." for the root). Sockets cannot be
    archived and are skipped."""
    import tarfile  # (here: 4 ms of every interpreter's import of pyrt otherwise)

    parent_path, name = split(path)
    top = arcname if arcname is not None else (name or ".")
    result = Copied()
    parent = open_at(root, parent_path, os.O_PATH | os.O_DIRECTORY)
    try:
        if name:
            try:
                os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise PathNotFound(path) from None
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            links: dict[tuple[int, int], str] = {}
            add_to_tar(tf, parent, name or ".", top, links, result, _kernel_dirs(root))
    finally:
        os.close(parent)
    return result


def _kernel_dirs(root: int) -> set[tuple[int, int]]:
    """The running container's /proc and /sys mounts: archived as empty directories (their
    contents are the kernel's, not files)."""
    out = set()
    top = os.stat(root)
    for name in ("proc", "sys"):
        with contextlib.suppress(OSError):
            st = os.stat(name, dir_fd=root, follow_symlinks=False)
            if st.st_dev != top.st_dev:
                out.add((st.st_dev, st.st_ino))
    return out


#: Maps a file's owner as the host sees it to the one the archive records (a user namespace's).
IdMap = Callable[[int, int], tuple[int, int]]


def tar_info(name: str, st: os.stat_result, remap: Optional[IdMap] = None) -> tarfile.TarInfo:
    """The archive header of a file ``st`` names, its owner seen through ``remap``."""
    import tarfile

    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = remap(st.st_uid, st.st_gid) if remap else (st.st_uid, st.st_gid)
    ti.mtime = int(st.st_mtime)
    ti.uname = ti.gname = ""
    return ti


#: How deep a tree pyrt walks (archives out, copies in, commits): each level is a frame of
#: Python's stack and an open directory. A container that nests directories 1500 deep made
#: those a RecursionError; real trees stay far below (node_modules rarely passes 100).
MAX_DEPTH = 400


def check_depth(depth: int, path: str) -> None:
    if depth >= MAX_DEPTH:
        shown = path if len(path) <= 80 else f"{path[:40]}...{path[-30:]}"
        raise PyrtError(f"a tree more than {MAX_DEPTH} directories deep, at {shown}: not copied")


def add_to_tar(
    tf: tarfile.TarFile,
    dirfd: int,
    name: str,
    arcname: str,
    links: dict[tuple[int, int], str],
    result: Copied,
    kernel_dirs: frozenset[tuple[int, int]] | set[tuple[int, int]] = frozenset(),
    remap: Optional[IdMap] = None,
    depth: int = 0,
) -> None:
    """Adds ``name`` (in ``dirfd``, not followed if a symlink) as ``arcname``, a directory
    with all below it; hard links inside the copy stay links (``links``), and directories in
    ``kernel_dirs`` (/proc, /sys of a running container) are added empty. ``depth``: how
    many directories deep ``name`` is, bounded by MAX_DEPTH."""
    import tarfile

    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return  # removed by the running container meanwhile
    ti = tar_info(arcname, st, remap)
    m = st.st_mode
    if stat.S_ISREG(m):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
            tf.addfile(ti)
            result.entries += 1
            return
        # Non-blocking, and the inode stat saw: a running container may have put a FIFO
        # (whose open would block) or a device node in the file's place meanwhile.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=dirfd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                return  # removed, or replaced (a symlink, a FIFO) by the container meanwhile
            raise
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != key:
                return
            ti.size = now.st_size
            tf.addfile(ti, ExactSize(f, ti.size))
        links[key] = arcname
    elif stat.S_ISDIR(m):
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        result.entries += 1
        if (st.st_dev, st.st_ino) in kernel_dirs:
            return
        check_depth(depth, arcname)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dirfd)
        try:
            for child in sorted(os.listdir(fd)):
                add_to_tar(tf, fd, child, f"{arcname}/{child}", links, result, kernel_dirs, remap,
                           depth + 1)  # fmt: skip
        finally:
            os.close(fd)
        return
    elif stat.S_ISLNK(m):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dirfd)
        tf.addfile(ti)
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        tf.addfile(ti)
    elif stat.S_ISFIFO(m):
        ti.type = tarfile.FIFOTYPE
        tf.addfile(ti)
    else:
        result.skipped.append(f"{arcname} (a socket)")
        return
    result.entries += 1


class ExactSize(io.RawIOBase):
    """A file read as exactly its first ``size`` bytes, a short read padded with zeros: a file
    that grows or shrinks while it is archived (a running container's, a build context's) must
    not corrupt the archive, and tarfile refuses a short read."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def read(self, n: Optional[int] = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(want) or b""
        if len(data) < want:
            data += b"\0" * (want - len(data))
        self._left -= len(data)
        return data


# --- archives in ---------------------------------------------------------------------------


def extract(
    root: int, dest: str, source: IO[bytes], owner: Owner, *, keep_owners: bool = False
) -> Copied:
    """Extracts the tar stream ``source`` into the directory ``dest`` inside the root (made if
    missing), by the image unpacker's rules: nothing leaves ``dest``."""
    fd = make_dirs(root, dest, owner)
    try:
        stats = unpack.unpack(
            source,
            f"/proc/self/fd/{fd}",
            what=f"archive into {dest}",
            owner=None if keep_owners else owner,
            devices=True,
        )
    finally:
        os.close(fd)
    return Copied(stats.entries, [f"{d} (a device node)" for d in stats.skipped_devices])


def extract_to_host(source: IO[bytes], dest_dir: str, what: str, owner: Owner) -> Copied:
    """Extracts an archive that came out of a container into the host directory ``dest_dir``:
    confined to it, set-id bits cleared, device nodes skipped; owned by ``owner`` when given,
    else as in the container."""
    stats = unpack.unpack(source, dest_dir, what=what, owner=owner, devices=False, to_host=True)
    return Copied(stats.entries, [f"{d} (a device node)" for d in stats.skipped_devices])


@contextlib.contextmanager
def piped(produce: Callable[[IO[bytes]], object]) -> Iterator[IO[bytes]]:
    """A readable stream of what ``produce(writable)`` writes, made by a thread: an archive
    flows from its source to its destination without being held whole in memory."""
    r, w = os.pipe2(os.O_CLOEXEC)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with os.fdopen(w, "wb", buffering=CHUNK) as out:
                produce(out)
        except BrokenPipeError:
            pass  # the reader stopped; its own error says why
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run, name="pyrt-archive", daemon=True)
    t.start()
    with os.fdopen(r, "rb", buffering=CHUNK) as stream:
        try:
            yield stream
            # Whatever the reader left unread is drained, so the writer can finish.
            while stream.read(CHUNK):
                pass
        finally:
            stream.close()
            t.join()
    if failure:
        raise failure[0]
