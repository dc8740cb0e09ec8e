"""A container's directory under the run state root: its overlay upper and work directories,
its log, and a lock file that its owner holds for as long as it lives.

The lock is what makes crash recovery exact: a directory whose lock can be taken belongs to a
process that is gone (the kernel drops an flock with its holder), so it can be deleted, and one
whose lock is held must be left alone, whatever its age."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pyrt import _core
from pyrt.host import reaper, userns
from pyrt.host.collect import collect_stale_once
from pyrt.host.places import ensure_dir, state_root
from pyrt.host.removal import remove_tree
from pyrt.rootfs import disklayer


def containers_root() -> Path:
    """Searchable by all, listable by none: a root caller's container whose root is mapped to
    another id mounts its root below it (container directories have unguessable names)."""
    p = ensure_dir(state_root() / "containers", 0o711)
    if os.geteuid() == 0 and os.stat(p).st_mode & 0o777 == 0o700:
        os.chmod(p, 0o711)
    return p


def mount_point() -> Path:
    """Where every container's root is mounted, each in a mount namespace of its own: one
    directory serves them all, so none is made and removed per container (an inode made and
    one deleted on /run at each start). Searchable by all, as ``containers_root``."""
    p = state_root() / "mnt"
    # (Looked at first: a mkdir of what exists raises, and each start caught it.)
    return p if os.path.isdir(p) else ensure_dir(p, 0o755)


@dataclass
class ContainerDir:
    path: Path
    lock_fd: int
    #: Where the container's root is mounted, in its own mount namespace (``mount_point``).
    rootfs: Path
    #: Host (uid, gid) of the container's root when a root caller maps it to a range: its
    #: writable layer is theirs.
    owner: Optional[tuple[int, int]] = None
    #: Where the upper and work directories are: the directory itself, or its size-bounded
    #: layer (``disk=``).
    layer: Optional[Path] = None
    #: The cgroup paths last written to the ``cgroups`` file.
    recorded: Optional[list[str]] = None
    #: Fields of state.json given as JSON text and written as they are: the seccomp profile,
    #: as the text the core was sent (6 KB that json.dumps took 0.09 ms to encode again at
    #: every write).
    raw_fields: dict[str, str] = field(default_factory=dict)
    #: Whether it was made with a writable layer (not for the host image's containers).
    overlay: bool = True

    @property
    def upper(self) -> Path:
        return (self.layer or self.path) / "upper"

    @property
    def work(self) -> Path:
        return (self.layer or self.path) / "work"

    @property
    def log(self) -> Path:
        return self.path / "log"

    @classmethod
    def create(
        cls,
        cid: str,
        overlay: bool,
        owner: Optional[tuple[int, int]] = None,
        disk: Optional[int] = None,
    ) -> ContainerDir:
        """A new container's directory; with ``disk`` (bytes, overlay only) its writable
        layer on a tmpfs of that size."""
        collect_stale_once()
        root = mount_point()
        path = containers_root() / cid
        path.mkdir(mode=0o711)
        layer = None
        try:
            fd = locked_file(path / "lock")
            # Watched from before the first mount: a SIGKILL from here on leaves nothing.
            reaper.watch(cid)
            if overlay:
                if disk is not None:
                    layer = disklayer.mount(path, disk, owner)
                base = layer or path
                (base / "upper").mkdir(mode=0o755)
                (base / "work").mkdir(mode=0o700)
                _chown_layer(base, owner)
        except BaseException:
            remove_tree(path)
            reaper.forget(cid)
            raise
        return cls(path, fd, root, owner, layer, overlay=overlay)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def write_state(self, state: dict[str, Any]) -> None:
        """Replaces state.json atomically: readers see the old or the new, never half."""
        # One call that keeps the GIL: written from Python, its nine system calls each
        # released it, and a pool's thread waited for it back after each.
        _core.write_replacing(str(self.state_file), self.state_text(state))

    def state_text(self, state: dict[str, Any]) -> str:
        """What ``write_state`` writes: ``state`` as JSON, with the ``raw_fields``."""
        text = json.dumps(state)
        for key, raw in self.raw_fields.items():
            text = f"{text[:-1]}{', ' if len(text) > 2 else ''}{json.dumps(key)}: {raw}}}"
        return text

    def record_cgroups(self, paths: list[str]) -> None:
        """Notes the container's cgroups, for `collect_stale` after a crash (once: a reset
        makes the same ones again)."""
        if paths and paths != self.recorded:
            (self.path / "cgroups").write_text("\n".join(paths) + "\n")
            self.recorded = list(paths)

    def has_layer(self) -> bool:
        """Whether the container has a writable layer of its own here."""
        # (Known without looking when made without one: each look releases the GIL, which a
        # pool's thread then waits to get back while the caller's thread runs Python.)
        return self.overlay and (self.upper.exists() or self.work.exists())

    def reset_layer(self) -> None:
        """A fresh, empty writable layer (the container is not running); nothing for a
        container without one (the host image's). The old upper and work directories go to
        the helper's trash whole, as a removed container's directory does, and are deleted
        off the caller's path."""
        if not self.has_layer():
            return
        with contextlib.suppress(OSError):
            os.chmod(self.work / "work", 0o700)  # overlayfs leaves it mode 000
        layer = [self.upper, self.work]
        if not reaper.discard_layer(layer, f"{self.path.name}.layer.{next(_resets)}"):
            for d in layer:
                if d.exists():
                    userns.remove_tree(d)
        with contextlib.suppress(FileExistsError):
            self.upper.mkdir(mode=0o755)
        with contextlib.suppress(FileExistsError):
            self.work.mkdir(mode=0o700)
        _chown_layer(self.layer or self.path, self.owner)

    def remove(self) -> None:
        # The helper deletes the directory off the caller's path (one rename into its trash,
        # files and all); without one, we do. Either way `remove_tree` deletes a directory
        # left as it was made (most are: an empty upper layer) entry by entry, and walks it
        # with rmtree only when the container wrote into its layer.
        try:
            if self.layer is not None:
                disklayer.unmount(self.path)
            if not reaper.discard(self.path):
                remove_tree(self.path)
        except OSError:
            remove_tree(self.path)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
            reaper.forget(self.path.name)


#: Numbers the old layers a reset hands to the trash (a reset may come before the helper has
#: deleted the previous one).
_resets = itertools.count()


def locked_file(path: Path) -> int:
    """A new lock file at ``path`` that is already locked when it appears: otherwise another
    thread's or process's stale collection could take a lock made a moment before its flock,
    and delete the directory being created as a dead owner's."""
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:  # a filesystem without O_TMPFILE: lock it as soon as it exists
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # linkat(AT_SYMLINK_FOLLOW) through /proc: os.link uses link(2), which does not follow,
        # unless given a directory descriptor.
        fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(fd), path, src_dir_fd=fds, follow_symlinks=True)
        finally:
            os.close(fds)
    except BaseException:
        os.close(fd)
        raise
    return fd


def upper_of(path: Path) -> Path:
    """The upper directory of the container directory ``path`` (of another process's
    container: its own ``ContainerDir`` knows)."""
    bounded = path / disklayer.NAME
    return (bounded if bounded.is_dir() else path) / "upper"


def _chown_layer(path: Path, owner: Optional[tuple[int, int]]) -> None:
    """A writable layer for a container whose root is ``owner`` on the host (its overlay is
    mounted, and written, by that root)."""
    if owner is not None:
        for d in ("upper", "work"):
            os.chown(path / d, *owner)


def pid_start_time(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot): a pid plus this names one process,
    never a later one that reused the number."""
    return _core.pid_start_time(pid)


def owner_alive(path: Path) -> bool:
    """Whether the process that owns this container directory still holds its lock."""
    try:
        fd = os.open(path / "lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_state(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_states() -> list[dict[str, Any]]:
    """Every container on this machine whose owner is alive, with its state and status."""
    out = []
    for e in sorted(os.scandir(containers_root()), key=lambda e: e.name):
        path = Path(e.path)
        st = read_state(path)
        if st is None or not isinstance(st.get("id"), str):  # (half made, or damaged)
            continue
        if not owner_alive(path) or (path / "removed").exists():
            continue
        pid = st.get("pid")
        running = isinstance(pid, int) and pid_start_time(pid) == st.get("pid_start")
        st["status"] = "running" if running else st.get("status", "exited")
        if st["status"] == "running" and not running:
            st["status"] = "exited"
        st["dir"] = str(path)
        out.append(st)
    return out


def find(ref: str) -> dict[str, Any]:
    """A container by name, full id or unique id prefix."""
    states = list_states()
    exact = [s for s in states if s.get("name") == ref or s["id"] == ref]
    matches = exact or [s for s in states if s["id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    from pyrt.errors import PyrtError

    if not matches:
        raise PyrtError(f"no such container: {ref}")
    raise PyrtError(f"{ref!r} names {len(matches)} containers: give more of the id")


def networks_root() -> Path:
    return ensure_dir(state_root() / "networks", 0o700)
