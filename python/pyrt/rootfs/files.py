"""Files in and out of a container's root, given as a directory descriptor (see ``rootview``).

Every container path is resolved with ``openat2(RESOLVE_IN_ROOT)``: ``..`` stops at the root and
a symlink, absolute or relative, is followed inside it, so nothing here can read or write the
host's files through the container. Here: the paths, and single files read and written;
archives in and out are in ``archives``, `docker cp` in either direction in ``copies``.

Owners: what goes in belongs to the container's root (``owner``, its host ids), except that
``put_archive`` as root keeps the owners the archive names, as Docker does. What comes out keeps
the container's owners where the caller may set them (root) and is the caller's otherwise;
set-id bits are cleared and device nodes and sockets are skipped (and named) on the way out, so
that a container cannot plant a set-uid program or a device node on the host.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from pyrt import _core
from pyrt.errors import PathNotFound, PyrtError

if TYPE_CHECKING:
    pass

#: Who owns what is written: (uid, gid) as the host sees them, or None to leave it to the
#: writing process (a rootless caller, who is the container's root).
Owner = Optional[tuple[int, int]]

CHUNK = 1 << 20
MAX_READ = 1 << 32


@dataclass
class Copied:
    """What a copy did: entries written, and entries left out (with why)."""

    entries: int = 0
    skipped: list[str] = field(default_factory=list)


def _rel(path: str) -> str:
    return path.strip("/") or "."


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a container path; the root itself has no name."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return ".", ""
    return "/".join(parts[:-1]) or ".", parts[-1]


def open_at(root: int, path: str, flags: int, mode: int = 0) -> int:
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
            nxt = open_at(root, "/".join(parts[: i + 1]), os.O_PATH | os.O_DIRECTORY)
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
    parent_path, name = split(path)
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
            if total > MAX_READ:
                raise PyrtError(f"{path}: larger than {bound_text()}; use copy_out for it")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read(fd: int, path: str) -> bytes:
    try:
        return os.read(fd, CHUNK)
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


def bound_text() -> str:
    """MAX_READ, as a person reads it."""
    return f"{MAX_READ >> 30} GiB" if MAX_READ >= 1 << 30 else f"{MAX_READ >> 20} MiB"
