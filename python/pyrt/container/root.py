"""Where a container's files are: its directory on the host (made at its start, or at the first
file written into it before), the image's layers as it mounts them, and its root reached in
whatever state the container is (``rootview``), for the file and snapshot methods."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from pyrt import _core
from pyrt.config import options
from pyrt.errors import PyrtError, state_error
from pyrt.host import userns
from pyrt.host.state import ContainerDir
from pyrt.image import Image
from pyrt.image.image import overlay_supported
from pyrt.rootfs import files
from pyrt.rootfs import view as rootview


class ContainerRoot:
    """The directory and root of ``pyrt.Container`` (a base class of it)."""

    if TYPE_CHECKING:
        id: str
        image: Image
        _o: options.ContainerOptions
        _userns: Optional[userns.IdMaps]
        _dir: Optional[ContainerDir]
        _scratch: bool
        _removed: bool
        _lock: threading.Lock
        _proc: Optional[_core.Process]

        def _alive(self) -> bool: ...
        def _note_live(self) -> None: ...

    def _mapped_root(self) -> Optional[tuple[int, int]]:
        """The host ids of the container's root when a root caller maps it to a range."""
        if self._userns is None or os.geteuid() != 0:
            return None
        return userns.host_id(self._userns.uid, 0), userns.host_id(self._userns.gid, 0)

    def _lower(self) -> tuple[str, ...]:
        """The image's layers as the container mounts them: moved into its range when a root
        caller maps it to one (``image.shifted``)."""
        mapped = self._mapped_root()
        if mapped is None:
            return tuple(self.image.lower)
        from pyrt.image import shifted

        assert self._userns is not None
        count = min(n for _, _, n in self._userns.uid + self._userns.gid)
        return tuple(shifted.shifted_lowers(self.image.lower, mapped[0], mapped[1], count))

    def _make_dir(self) -> ContainerDir:
        try:
            d = ContainerDir.create(
                self.id,
                overlay=self.image.kind != "host",
                owner=self._mapped_root(),
                disk=self._o.disk,
            )
        except OSError as e:
            raise state_error(e) if not isinstance(e, PyrtError) else e from None
        if self.image.kind != "host" and not overlay_supported():
            # No overlayfs: the container gets a private copy of the (flattened) image.
            r = subprocess.run(["cp", "-a", "--", self.image.lower[0], str(d.path / "copy")],
                               capture_output=True, text=True)  # fmt: skip
            if r.returncode != 0:
                d.remove()
                raise PyrtError(f"copying the image for a kernel without overlayfs: {r.stderr}")
        return d

    def _ensure_dir(self) -> ContainerDir:
        """The container's directory, made now for one that was not started yet (files written
        into it are there when it starts)."""
        if self._scratch:
            raise PyrtError(
                f"container {self.id[:12]} runs by run(), which removes it as it ends: its "
                "writable layer is in its own mount namespace, reached only while it runs"
            )
        if self._dir is None:
            self._dir = self._make_dir()
            self._note_live()
        return self._dir

    def _root_owner(self, in_userns: bool) -> files.Owner:
        """Who the container's root is, as the writer of its files sees ids."""
        if in_userns:
            return (0, 0)
        if os.geteuid() != 0:
            return None  # a rootless caller writes as itself: the container's root
        if self._userns is not None:
            return (userns.host_id(self._userns.uid, 0), userns.host_id(self._userns.gid, 0))
        return (0, 0)

    def _in_root(self, what: str, op: Callable[[int, files.Owner], bytes], write: bool) -> bytes:
        """``op(root_fd, owner)`` on the container's root, whatever its state (``rootview``).
        What the kernel refuses on the way (a symlink loop, /proc's links, a file of /sys that
        cannot be read, a directory that cannot be made in /proc) is a PyrtError naming the
        path asked for, as the files module's own refusals are."""
        try:
            return self._on_root(what, op, write)
        except OSError as e:
            if isinstance(e, PyrtError):
                raise
            raise files.os_error(e, what) from None

    def _on_root(self, what: str, op: Callable[[int, files.Owner], bytes], write: bool) -> bytes:
        with self._lock:
            if self._removed:
                raise PyrtError(f"container {self.id[:12]} was removed")
            if self._alive() and self._proc is not None:
                pid = self._proc.pid
                try:
                    if write and self._mapped_root() is not None:
                        return rootview.call_running_as_its_root(pid, lambda fd: op(fd, (0, 0)))
                    return rootview.call_running(pid, lambda fd: op(fd, self._root_owner(False)))
                except PyrtError:
                    # It exited just now: its layer is reached as a stopped one's.
                    if self._proc.wait(0) is None:
                        raise
            d = self._ensure_dir()
            if self.image.kind == "host":
                if write:
                    raise PyrtError(
                        f"{what}: a container of the host image has a read-only root; write "
                        "into a running one's /tmp or /run, or into a Bind or Tmpfs mount"
                    )
                return rootview.call_directory("/", lambda fd: op(fd, None))
            if not overlay_supported():
                owner = self._root_owner(False)
                return rootview.call_directory(str(d.path / "copy"), lambda fd: op(fd, owner))
            rootless = self._userns is not None and os.geteuid() != 0
            ov = rootview.Overlay(
                lower=self._lower(),
                upper=str(d.upper),
                work=str(d.work),
                target=str(d.rootfs),
                userxattr=self._userns is not None,
            )
            return rootview.call_stopped(ov, lambda fd: op(fd, self._root_owner(rootless)),
                                         rootless)  # fmt: skip
