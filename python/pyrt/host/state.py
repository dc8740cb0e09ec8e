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
from typing import Any, Callable, Optional

from pyrt import _core
from pyrt.host import reaper, userns
from pyrt.host.places import ensure_dir, state_root
from pyrt.rootfs import disklayer
from pyrt.rootfs.view import clear_volatile_mark


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
    return ensure_dir(state_root() / "mnt", 0o755)


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
        return cls(path, fd, root, owner, layer)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def write_state(self, state: dict[str, Any]) -> None:
        """Replaces state.json atomically: readers see the old or the new, never half."""
        text = json.dumps(state)
        for key, raw in self.raw_fields.items():
            text = f"{text[:-1]}{', ' if len(text) > 2 else ''}{json.dumps(key)}: {raw}}}"
        # One call that keeps the GIL: written from Python, its nine system calls each
        # released it, and a pool's thread waited for it back after each.
        _core.write_replacing(str(self.state_file), text)

    def record_cgroups(self, paths: list[str]) -> None:
        """Notes the container's cgroups, for `collect_stale` after a crash (once: a reset
        makes the same ones again)."""
        if paths and paths != self.recorded:
            (self.path / "cgroups").write_text("\n".join(paths) + "\n")
            self.recorded = list(paths)

    def reset_layer(self) -> None:
        """A fresh, empty writable layer (the container is not running); nothing for a
        container without one (the host image's). The old upper and work directories go to
        the helper's trash whole, as a removed container's directory does, and are deleted
        off the caller's path."""
        if not (self.upper.exists() or self.work.exists()):
            return
        with contextlib.suppress(OSError):
            os.chmod(self.work / "work", 0o700)  # overlayfs leaves it mode 000
        for d in (self.upper, self.work):
            if d.exists() and not reaper.discard(d, f"{self.path.name}.{d.name}.{next(_resets)}"):
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
        if st is None or not owner_alive(path) or (path / "removed").exists():
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


def collect_stale(only: Optional[set[str]] = None) -> list[str]:
    """Deletes the directories of containers whose owner died (of those named in ``only``,
    when given); returns their ids."""

    def clean(path: str) -> None:
        remove_cgroups(os.path.join(path, "cgroups"))
        remove_tree(Path(path))

    if only is None:
        empty_stale_trash()
    return _collect_unlocked(state_root() / "containers", only, clean)


#: A trash entry this old was not deleted by the helper it was handed to (gone with its owner
#: before it got there): stale collection deletes it. Younger ones are a live helper's.
TRASH_GRACE_SECONDS = 30.0


def empty_stale_trash(grace: float = TRASH_GRACE_SECONDS) -> list[str]:
    """Deletes what lies in the trash (``reaper.discard``) since more than ``grace`` seconds
    (by the time it was moved there: a rename sets its ctime); returns their names."""
    import time

    gone: list[str] = []
    try:
        entries = list(os.scandir(reaper.trash_root()))
    except FileNotFoundError:
        return gone
    now = time.time()
    for e in entries:
        with contextlib.suppress(OSError):
            if now - e.stat(follow_symlinks=False).st_ctime > grace:
                remove_tree(Path(e.path))
                gone.append(e.name)
    return gone


def networks_root() -> Path:
    return ensure_dir(state_root() / "networks", 0o700)


def collect_stale_networks(only: Optional[set[str]] = None) -> list[str]:
    """Deletes the registry directories of shared networks whose owner died (everything else
    of a network, its namespaces and its slirp4netns, dies with the owner)."""
    return _collect_unlocked(
        state_root() / "networks", only, lambda path: userns.remove_tree(Path(path))
    )


def _collect_unlocked(
    root: Path, only: Optional[set[str]], clean: Callable[[str], None]
) -> list[str]:
    """Cleans each directory under ``root`` whose ``lock`` nobody holds; returns their names."""
    gone: list[str] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return gone
    for e in entries:
        if not e.is_dir(follow_symlinks=False) or (only is not None and e.name not in only):
            continue
        try:
            fd = os.open(os.path.join(e.path, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            # Being created right now (lock not yet made) or half-removed: leave it.
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not _still_linked(fd, os.path.join(e.path, "lock")):
            # Its owner removed the directory between our open and our flock (it unlinks the
            # lock it holds, then releases it): the lock we won is of a file that is gone.
            os.close(fd)
            continue
        with contextlib.suppress(OSError):
            clean(e.path)
            if not os.path.exists(e.path):
                gone.append(e.name)
        os.close(fd)
    return gone


def _still_linked(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is still the one at ``path``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


#: What a container directory holds as pyrt makes it, files first, then directories deepest
#: first ("" is the directory itself), overlayfs's volatile mark (``view.VOLATILE_MARK``) among
#: them. A reset's old upper or work directory, handed to the trash on its own, has one of
#: these shapes too: the mark is listed as in a container's directory and as in a work one.
_MADE_FILES = (
    "state.json",
    "lock",
    "log",
    "cgroups",
    "removed",
    "work/work/incompat/volatile/dirty",
    "work/incompat/volatile/dirty",
)
_MADE_DIRS = (
    "rootfs",
    "upper",
    "work/work/incompat/volatile",
    "work/work/incompat",
    "work/incompat/volatile",
    "work/incompat",
    "work/work",
    "work/index",
    "work",
    "",
)


def remove_as_made(path: Path) -> bool:
    """Deletes ``path`` if it holds only what pyrt puts in a container directory (nothing the
    container wrote in its writable layer): a few unlinks and rmdirs, against rmtree's
    open, stat, read and close of every directory, which was the helper's largest cost per
    removed container. False, with the known files gone, when anything else is left:
    ``remove_tree`` then finishes."""
    for f in _MADE_FILES:
        try:
            os.unlink(path / f)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    for d in _MADE_DIRS:
        try:
            os.rmdir(path / d)
        except FileNotFoundError:
            pass
        except OSError:  # not empty (or a mount point): something beyond what pyrt made
            return False
    return True


def remove_tree(path: Path) -> None:
    """A container directory, whatever is left in it. overlayfs leaves its work/work directory
    with mode 000: root walks through that, a rootless owner must open it up first. A
    size-bounded layer is unmounted first (rmtree would empty it and leave the mount)."""
    with contextlib.suppress(OSError):
        disklayer.unmount(path)
    if remove_as_made(path):
        return
    with contextlib.suppress(OSError):
        os.chmod(path / "work" / "work", 0o700)
    for work in (path / "work", path):  # a container's directory, or a reset's work directory
        with contextlib.suppress(OSError):
            clear_volatile_mark(str(work))
    userns.remove_tree(path)


def remove_cgroups(listing: str) -> None:
    """Kills what is left in each cgroup named in ``listing`` and removes it."""
    try:
        with open(listing) as f:
            paths = [p for p in f.read().split("\n") if p]
    except FileNotFoundError:
        return
    remove_cgroup(paths)


def remove_cgroup(cgroup_dirs: list[str]) -> None:
    """Kills what is left in the cgroups of containers (frozen or not) and removes their
    directories (the core's work, as for pyrt-runc's delete), each container's (the same
    pyrt-<id> name in each hierarchy) together. Best effort: what cannot go now, `pyrt gc`
    retries."""
    by_container: dict[str, list[str]] = {}
    for d in cgroup_dirs:
        by_container.setdefault(os.path.basename(d.rstrip("/")), []).append(d)
    for dirs in by_container.values():
        with contextlib.suppress(OSError):
            _core.remove_cgroup(dirs)


def stale_cgroups(
    live_ids: set[str],
    root: str = "/sys/fs/cgroup",
    depth: int = 6,
    only: Optional[set[str]] = None,
) -> list[str]:
    """Cgroup directories named pyrt-<id> whose container is gone (for `pyrt gc`, which
    finds them even when the crashed process died before noting them down); with ``only``,
    just those of these ids."""
    found = []
    base_depth = root.rstrip("/").count("/")
    for dirpath, dirnames, _ in os.walk(root):
        for d in list(dirnames):
            cid = d[5:]
            if d.startswith("pyrt-") and cid not in live_ids and (only is None or cid in only):
                found.append(os.path.join(dirpath, d))
                dirnames.remove(d)
        if dirpath.count("/") - base_depth >= depth:
            dirnames[:] = []
    return found


_collected = False


def collect_stale_once() -> None:
    global _collected
    if not _collected:
        _collected = True
        collect_stale()
        collect_stale_networks()
