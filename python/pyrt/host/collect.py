"""Stale collection: what a dead owner left. Container and network directories whose lock
nobody holds, trash its helper never deleted, and cgroups named after containers that are gone.
Run once per process before its first container or network, by `pyrt gc`, and by the helper
when its owner dies (`reaping`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Callable, Optional

from pyrt import _core
from pyrt.host import reaper, userns
from pyrt.host.places import state_root
from pyrt.host.removal import remove_tree


def collect_stale(only: Optional[set[str]] = None) -> list[str]:
    """Deletes the directories of containers whose owner died (of those named in ``only``,
    when given); returns their ids."""

    def clean(path: str) -> None:
        remove_cgroups(os.path.join(path, "cgroups"), os.path.join(path, "state.json"))
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


def remove_cgroups(listing: str, state: Optional[str] = None) -> None:
    """Kills what is left in each cgroup named in ``listing`` and removes it. A detached
    container's are noted in its ``state`` (state.json) instead: read from there when there is
    no listing."""
    try:
        with open(listing) as f:
            paths = [p for p in f.read().split("\n") if p]
    except FileNotFoundError:
        paths = _state_cgroups(state) if state is not None else []
    remove_cgroup(paths)


def _state_cgroups(state: str) -> list[str]:
    """The cgroups a state.json notes, [] when it notes none (or is damaged: then `pyrt gc`
    and the helper find them by name)."""
    import json

    try:
        with open(state) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    found = data.get("cgroups") if isinstance(data, dict) else None
    return [p for p in found if isinstance(p, str) and p] if isinstance(found, list) else []


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
_collecting = threading.Lock()


def collect_stale_once() -> None:
    """Before this process's first container or network. Under a lock: a pool's two workers
    start their first containers at the same moment, and the second waits for the first's
    collection rather than run one of its own."""
    global _collected
    with _collecting:
        if not _collected:
            _collected = True  # once, even if it fails: not again at every start
            collect_stale()
            collect_stale_networks()
