"""Files in and out of a container's root, given as a directory descriptor (see ``rootview``).

Every container path is resolved with ``openat2(RESOLVE_IN_ROOT)``: ``..`` stops at the root and
a symlink, absolute or relative, is followed inside it, so nothing here can read or write the
host's files through the container. Archives going in are extracted by the image unpacker (the
same rules as an image layer: no entry leaves its destination); archives coming out are built
here from ``fstat`` of descriptors, never from host paths.

Owners: what goes in belongs to the container's root (``owner``, its host ids), except that
``put_archive`` as root keeps the owners the archive names, as Docker does. What comes out keeps
the container's owners where the caller may set them (root) and is the caller's otherwise;
set-id bits are cleared and device nodes and sockets are skipped (and named) on the way out, so
that a container cannot plant a set-uid program or a device node on the host.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Optional

from pyrt import _core
from pyrt.errors import PathNotFound, PyrtError
from pyrt.host import trees
from pyrt.image import unpack

if TYPE_CHECKING:
    import tarfile

#: Who owns what is written: (uid, gid) as the host sees them, or None to leave it to the
#: writing process (a rootless caller, who is the container's root).
Owner = Optional[tuple[int, int]]

_CHUNK = 1 << 20
_MAX_READ = 1 << 32


@dataclass
class Copied:
    """What a copy did: entries written, and entries left out (with why)."""

    entries: int = 0
    skipped: list[str] = field(default_factory=list)


def _rel(path: str) -> str:
    return path.strip("/") or "."


def _split(path: str) -> tuple[str, str]:
    """(parent, name) of a container path; the root itself has no name."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return ".", ""
    return "/".join(parts[:-1]) or ".", parts[-1]


def _open(root: int, path: str, flags: int, mode: int = 0) -> int:
    try:
        return _core.open_in_root(root, _rel(path), flags, mode)
    except FileNotFoundError:
        raise PathNotFound(path) from None
    except NotADirectoryError:
        raise PyrtError(f"{path}: a component of the path is not a directory") from None


def exists(root: int, path: str) -> Optional[str]:
    """ "dir", "file" (anything else) or None, following symlinks inside the root."""
    try:
        fd = _core.open_in_root(root, _rel(path), os.O_PATH)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
    finally:
        os.close(fd)


def make_dirs(root: int, path: str, owner: Owner) -> int:
    """A descriptor (O_PATH) of the directory ``path`` inside the root, creating what is missing
    (0755, owned by ``owner``), as ``mkdir -p`` inside a chroot would."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    fd = os.dup(root)
    try:
        for i, part in enumerate(parts):
            if part == "..":
                raise ValueError(f"{path}: '..' is not allowed in a container path")
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            # Re-resolved from the root: the name may be a symlink, followed inside the root.
            nxt = _open(root, "/".join(parts[: i + 1]), os.O_PATH | os.O_DIRECTORY)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_regular(root: int, path: str, flags: int, dir_hint: str = "") -> int:
    """``path`` inside the root opened with ``flags``, only if it is a regular file (or, with
    O_CREAT, absent: it is then made). What the path names is looked at before it is opened:
    opening a FIFO blocks until a peer comes, and opening a device node (one a container given
    CAP_MKNOD made) acts on the host's device, whatever is done with the descriptor after.
    The open is non-blocking and its inode must be the one looked at: a container that swaps
    the file in between is refused too."""
    flags |= os.O_NOCTTY | os.O_NONBLOCK
    try:
        probe = _core.open_in_root(root, _rel(path), os.O_PATH)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise PathNotFound(path) from None
        seen = None  # (also a dangling symlink: the file is made where it points, in the root)
    except NotADirectoryError:
        raise PyrtError(f"{path}: a component of the path is not a directory") from None
    except OSError as e:  # (a symlink loop, or one of /proc's links, which lead elsewhere)
        raise os_error(e, path) from None
    else:
        try:
            seen = os.fstat(probe)
        finally:
            os.close(probe)
        if stat.S_ISDIR(seen.st_mode):
            raise PyrtError(f"{path}: is a directory in the container {dir_hint}".rstrip())
        if not stat.S_ISREG(seen.st_mode):
            raise PyrtError(f"{path}: not a regular file in the container")
    try:
        fd = _core.open_in_root(root, _rel(path), flags, 0o600 if flags & os.O_CREAT else 0)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without a reader, a directory
            raise PyrtError(f"{path}: not a regular file in the container") from None
        raise os_error(e, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (
        seen is not None and (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino)
    ):
        os.close(fd)
        raise PyrtError(
            f"{path}: not a regular file in the container (it changed as it was opened)"
        )
    return fd


def write_file(root: int, path: str, data: bytes, mode: int, owner: Owner) -> None:
    parent_path, name = _split(path)
    if not name:
        raise PyrtError(f"{path}: cannot write the root directory as a file")
    parent = make_dirs(root, parent_path, owner)
    try:
        fd = _open_regular(root, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    finally:
        os.close(parent)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)  # after chown, which clears set-id bits; and past the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        raise os_error(e, path) from None
    finally:
        os.close(fd)


def read_file(root: int, path: str) -> bytes:
    fd = _open_regular(root, path, os.O_RDONLY, "(get_archive reads trees)")
    try:
        chunks = []
        total = 0
        while chunk := _read(fd, path):
            total += len(chunk)
            if total > _MAX_READ:
                raise PyrtError(f"{path}: larger than {_bound()}; use copy_out for it")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read(fd: int, path: str) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:  # (the descriptor does not block: /proc/kmsg waits for messages)
        raise PyrtError(f"{path}: a file that waits for data, not one read to its end") from None
    except OSError as e:  # (/proc/PID/mem, the containers' other files of the kernel's)
        raise os_error(e, path) from None


def os_error(e: OSError, path: str) -> PyrtError:
    """An OSError met on the way to or at ``path`` (the container path asked for) as the
    PyrtError that names it, with the part of the path where it happened when that differs."""
    if e.errno == errno.ENOSPC:
        return PyrtError(f"{path}: no space left in the container's filesystem")
    if e.errno == errno.EROFS:
        return PyrtError(f"{path}: the container's filesystem is read-only there")
    at = f" (at {e.filename})" if e.filename and e.filename != path else ""
    return PyrtError(f"{path}: {e.strerror or e}{at}")


# --- archives out --------------------------------------------------------------------------


def _bound() -> str:
    """_MAX_READ, as a person reads it."""
    return f"{_MAX_READ >> 30} GiB" if _MAX_READ >= 1 << 30 else f"{_MAX_READ >> 20} MiB"


def archive_bytes(root: int, path: str) -> bytes:
    """``write_archive`` of ``path`` as bytes in memory, refused (PyrtError naming the path)
    past the bound ``read_file`` has: a tree of the container's (a sparse file of a terabyte
    reads as one) must not fill the caller's memory."""
    buf = _Bounded(path)
    write_archive(root, path, buf)
    return buf.getvalue()


class _Bounded(io.BytesIO):
    """A buffer that refuses to grow past _MAX_READ bytes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.tell() + len(data) > _MAX_READ:
            raise PyrtError(
                f"{self._path}: its archive is larger than {_bound()}; use copy_out for it"
            )
        return super().write(data)


def write_archive(root: int, path: str, out: IO[bytes], arcname: Optional[str] = None) -> Copied:
    """A tar of ``path`` (a file or a tree) inside the root, written to ``out``; its top entry is
    named ``arcname`` (default: the path's last component, "." for the root). Sockets cannot be
    archived and are skipped."""
    import tarfile  # (here: 4 ms of every interpreter's import of pyrt otherwise)

    parent_path, name = _split(path)
    top = arcname if arcname is not None else (name or ".")
    result = Copied()
    parent = _open(root, parent_path, os.O_PATH | os.O_DIRECTORY)
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
            with os.fdopen(w, "wb", buffering=_CHUNK) as out:
                produce(out)
        except BrokenPipeError:
            pass  # the reader stopped; its own error says why
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run, name="pyrt-archive", daemon=True)
    t.start()
    with os.fdopen(r, "rb", buffering=_CHUNK) as stream:
        try:
            yield stream
            # Whatever the reader left unread is drained, so the writer can finish.
            while stream.read(_CHUNK):
                pass
        finally:
            stream.close()
            t.join()
    if failure:
        raise failure[0]


# --- `docker cp` in either direction ---------------------------------------------------------


def copy_in(root: int, host: str, target: str, owner: Owner) -> Copied:
    """The host file or tree ``host`` to ``target`` inside the root: into it when it is a
    directory, else as it (`docker cp`'s rule). Copied entry by entry with copy_file_range (no
    archive in between); every entry is made relative to a descriptor of its parent that was
    resolved inside the root or made by us, never following a symlink."""
    if not os.path.lexists(host):
        raise PyrtError(f"copy_in: {host} does not exist on the host")
    if exists(root, target) == "dir":
        into, name = target, os.path.basename(host.rstrip("/")) or "."
    else:
        into, name = _split(target)
    parent = make_dirs(root, into, owner)
    result = Copied()
    links: dict[tuple[int, int], tuple[int, str]] = {}
    try:
        _copy_entry(host, parent, name, owner, links, result)
    except OSError as e:
        raise os_error(e, target) from None
    finally:
        os.close(parent)
        for fd, _ in links.values():
            os.close(fd)
    return result


def _replace(parent: int, name: str, is_dir: bool) -> None:
    """Clears the way for a new entry ``name``; an existing directory stays when a directory
    comes (the copy merges into it, as `docker cp` does)."""
    if is_dir:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                return
    trees.remove_at(parent, name)


def _copy_entry(
    src: str,
    parent: int,
    name: str,
    owner: Owner,
    links: dict[tuple[int, int], tuple[int, str]],
    result: Copied,
    depth: int = 0,
) -> None:
    st = os.lstat(src)
    m = st.st_mode
    name_fd = os.dup(parent) if name == "." else -1
    try:
        if stat.S_ISDIR(m):
            if name_fd < 0:
                _replace(parent, name, True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=parent)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                name_fd = os.open(name, flags, dir_fd=parent)
            check_depth(depth, src)
            with os.scandir(src) as it:
                for e in sorted(it, key=lambda e: e.name):
                    _copy_entry(e.path, name_fd, e.name, owner, links, result, depth + 1)
            _meta(name_fd, st, owner)
        elif stat.S_ISREG(m):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                lfd, lname = links[key]
                _replace(parent, name, False)
                os.link(lname, name, src_dir_fd=lfd, dst_dir_fd=parent, follow_symlinks=False)
                result.entries += 1
                return
            _replace(parent, name, False)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(name, flags, 0o600, dir_fd=parent)
            try:
                with open(src, "rb") as f:
                    _copy_data(f.fileno(), out, st.st_size)
                _meta(out, st, owner)
            finally:
                os.close(out)
            if st.st_nlink > 1:
                links[key] = (os.dup(parent), name)
        elif stat.S_ISLNK(m):
            _replace(parent, name, False)
            os.symlink(os.readlink(src), name, dir_fd=parent)
            if owner is not None:
                os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
        elif stat.S_ISFIFO(m):
            _replace(parent, name, False)
            os.mkfifo(name, stat.S_IMODE(m), dir_fd=parent)
        else:
            result.skipped.append(f"{src} (a device node or socket)")
            return
        result.entries += 1
    finally:
        if name_fd >= 0:
            os.close(name_fd)


def _meta(fd: int, st: os.stat_result, owner: Owner) -> None:
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_data(src: int, dst: int, size: int) -> None:
    """In the kernel (copy_file_range, then sendfile), else through a buffer."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src, _CHUNK):
        os.write(dst, chunk)


def host_destination(host: str, src: str) -> tuple[str, str]:
    """(directory, name) on the host that a copy of ``src`` goes to."""
    if os.path.isdir(host):
        return host, os.path.basename(src.rstrip("/")) or "."
    into = os.path.dirname(host)
    if not os.path.isdir(into):
        raise PyrtError(f"copy_out: {into} is not a directory on the host")
    return into, os.path.basename(host)


def copy_out(root: int, src: str, host: str) -> list[str]:
    """``src`` inside the root to the host path ``host`` (into it when it is a directory, else
    as it). Returns what was left out (device nodes, sockets)."""
    into, name = host_destination(host, src)
    skipped: list[str] = []

    def produce(out: IO[bytes]) -> None:
        skipped.extend(write_archive(root, src, out, arcname=name).skipped)

    # Only the host's root keeps the container's owners; anyone else (a rootless helper is root
    # of a user namespace only) makes what comes out the caller's.
    owner = None if unpack.privileged() else (0, 0)
    made = os.path.join(into, name)
    refuse_special(made)
    new = name not in ("", ".") and not os.path.lexists(made)
    try:
        with piped(produce) as stream:
            got = extract_to_host(stream, into, f"copy of {src} to {into}", owner)
    except BaseException:
        if new:  # a copy cut short leaves no part of itself where nothing was before
            with contextlib.suppress(OSError):
                if os.path.isdir(made) and not os.path.islink(made):
                    trees.rmtree(made)
                else:
                    os.unlink(made)
        raise
    return skipped + got.skipped


def refuse_special(path: str, what: str = "copy_out") -> None:
    """A copy (or a saved archive) replaces a file that is in its way, as `docker cp` does; a
    device node, a FIFO or a socket is refused rather than replaced (a copy to /dev/null would
    have turned the host's into a regular file)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return
    kind = "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO or a socket"
    raise PyrtError(f"{what}: {path} is {kind}, which pyrt does not replace")
