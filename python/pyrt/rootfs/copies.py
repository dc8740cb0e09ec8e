"""`docker cp` in either direction (``copy_in``, ``copy_out``): entry by entry into a
container's root, and out of it to the host through an archive (``archives``) that never lies
whole in memory. Paths are resolved as ``files`` resolves them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import IO

from pyrt.errors import PyrtError
from pyrt.host import trees
from pyrt.image import unpack
from pyrt.rootfs import archives
from pyrt.rootfs.files import CHUNK, Copied, Owner, exists, make_dirs, os_error, split


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
        into, name = split(target)
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
            archives.check_depth(depth, src)
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
    while chunk := os.read(src, CHUNK):
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
        skipped.extend(archives.write_archive(root, src, out, arcname=name).skipped)

    # Only the host's root keeps the container's owners; anyone else (a rootless helper is root
    # of a user namespace only) makes what comes out the caller's.
    owner = None if unpack.privileged() else (0, 0)
    made = os.path.join(into, name)
    refuse_special(made)
    new = name not in ("", ".") and not os.path.lexists(made)
    try:
        with archives.piped(produce) as stream:
            got = archives.extract_to_host(stream, into, f"copy of {src} to {into}", owner)
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
