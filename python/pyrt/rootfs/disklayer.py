"""A writable layer of bounded size (``disk=``): a tmpfs of that size mounted at ``layer/`` in
the container's directory, holding its overlay's upper and work directories.

tmpfs, because it is the one filesystem that enforces a byte limit on any host without a
prepared block device or project quotas, costs one mount(2) (a loop-mounted image would need a
mkfs per container), and is where the rest of the run state already lives (memory). Its pages
are charged to the memory cgroup of whoever writes them, so a container's ``memory=`` covers
its layer too. The mount is the host's, made by root: an unprivileged caller cannot mount
there, which is why ``disk=`` needs root (see ``options.disk``).

Every path that removes a container directory unmounts it first (``removal.remove_tree``, the
fast path of ``ContainerDir.remove``): a leftover mount is a leak the tests look for."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Optional

from pyrt.host.libc import last_errno, libc

#: The name of the mount point in a container's directory.
NAME = "layer"

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MNT_DETACH = 0x2


def mount(directory: Path, size: int, owner: Optional[tuple[int, int]]) -> Path:
    """Mounts the bounded layer in ``directory`` (a new container's) and returns its path."""
    target = directory / NAME
    target.mkdir(mode=0o755)
    uid, gid = owner or (0, 0)
    opts = f"size={size},mode=0755,uid={uid},gid={gid}"
    rc = libc().mount(
        b"pyrt-layer", os.fsencode(target), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts.encode()
    )
    if rc != 0:
        err = last_errno()
        target.rmdir()
        raise OSError(err, f"mounting a {size}-byte tmpfs for disk= on {target}: "
                           f"{os.strerror(err)}")  # fmt: skip
    return target


def unmount(directory: Path) -> None:
    """Detaches the bounded layer of the container directory ``directory``, if it has one
    (the container's own mount namespace keeps its copy until its last process is gone)."""
    target = directory / NAME
    if not os.path.ismount(target):
        return
    rc = libc().umount2(os.fsencode(target), _MNT_DETACH)
    if rc != 0:
        err = last_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"unmounting the disk= layer {target}: {os.strerror(err)}")
    with contextlib.suppress(OSError):
        target.rmdir()
