"""One helper per owning process that finishes its containers off the moment it dies.

A container's processes and mounts die with their owner (parent-death signal, private mount
namespaces), but a cgroup directory and the container's state directory are files, which no
kernel mechanism deletes. Without a helper they would wait for the next pyrt that looks
(`collect_stale`, `pyrt gc`). So the first container of a process starts this helper: a small
process in a session of its own, which reads the ids of the owner's containers from a pipe
(``+ID`` when made, ``-ID`` when removed). The kernel closes the pipe when the owner dies, however
it dies; then the helper (``reaping``) removes what is left of each id it was told about, and
exits. This module is the owner's side.

One helper per owner, not per container: it costs one process start (in the background, off
the container's start) for the life of the owner, and one pipe write per container.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pyrt.host.faults import fault
from pyrt.host.places import ensure_dir, state_root

#: What an id of a shared network's registry directory starts with (``watch(NETWORK + name)``).
NETWORK = "net:"
#: What an id of a copy's staging directory starts with (``pyrt.host.staging``).
STAGING = "copy:"

_lock = threading.Lock()
#: The write end of the pipe to this process's helper, and the pid it was started for (a forked
#: child has none of its own until it makes a container).
_pipe = -1
_owner = -1


#: Run by the helper's interpreter: this package's modules without its __init__ (which imports
#: everything, ~0.3 s of a CPU that the owner's containers should have), and no site-packages.
#: First, it closes what it inherited beyond its stdio (posix_spawn passes every descriptor
#: that is not close-on-exec: a pipe its owner's parent waits on must not stay open here).
_BOOT = (
    "import os; os.closerange(3, os.sysconf('SC_OPEN_MAX')); "
    "import sys, types; p = types.ModuleType('pyrt'); p.__path__ = [sys.argv[1]]; "
    "sys.modules['pyrt'] = p; from pyrt.host import reaping; sys.exit(reaping.main(sys.argv))"
)


def _start() -> int:
    r, w = os.pipe()
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            env = dict(os.environ, PYRT_STATE=str(state_root()))
            # (The package's directory: this module sits in its host/ room.)
            pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            # The interpreter's path may pass through a directory this user cannot search (a
            # venv made by root from a Python under /root): its running image is reachable.
            exe = sys.executable if os.access(sys.executable, os.X_OK) else "/proc/self/exe"
            os.posix_spawn(
                exe,
                [exe, "-S", "-c", _BOOT, pkg, str(os.getpid())],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, r, 0),
                    (os.POSIX_SPAWN_DUP2, null, 1),
                    (os.POSIX_SPAWN_DUP2, null, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(null)
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    # Never block a container operation on a helper that is slow to read: an id it misses is
    # still found by the next stale collection.
    os.set_blocking(w, False)
    return w


def _send(line: str) -> None:
    global _pipe, _owner
    with _lock:
        if _owner != os.getpid():
            if _pipe >= 0:
                with contextlib.suppress(OSError):
                    os.close(_pipe)
            _pipe, _owner = -1, os.getpid()
            if line.startswith("-"):
                return
            try:
                _pipe = _start()
            except OSError:
                return  # no helper: stale collection remains the safety net
        if _pipe >= 0:
            with contextlib.suppress(OSError):
                os.write(_pipe, line.encode())


def watch(cid: str) -> None:
    """The container ``cid`` of this process is cleaned up when the process dies."""
    _send(f"+{cid}\n")


def forget(cid: str) -> None:
    """``cid`` was removed by its owner: nothing is left to clean."""
    _send(f"-{cid}\n")


def trash_root() -> Path:
    """Where removed containers' directories wait for the helper to delete them."""
    return state_root() / "trash"


def discard(path: Path, name: Optional[str] = None) -> bool:
    """Hands the deletion of a removed container's directory (``path``, its name the id) to
    this process's helper, off the caller's path: one rename moves it out of ``containers``
    into the trash, and the helper deletes it there (on the development VM /run is ext4, and
    removing the directory took 0.7 ms of every ``pyrt.run``: benches/log/start.md). The helper
    finishes it even if this process dies right after; what a dead helper leaves, stale
    collection empties. False when there is no helper to hand it to, or the rename or the line
    failed: the caller then deletes ``path`` itself (if the rename happened and the line did
    not, the entry is renamed back first)."""
    return _hand_over([path], name or path.name, whole=True)


def discard_layer(paths: Sequence[Path], name: str) -> bool:
    """``discard`` for a reset's old writable layer: its directories (upper and work, those
    of ``paths`` that exist) go into one trash entry ``name`` ("ID.layer.N"), so that the
    helper is told, and wakes, once a reset. False as for ``discard``, with ``paths`` where
    they were."""
    if _hand_over(paths, name, whole=False):
        return True
    # (No inode for the entry's own directory, on a full disk: each goes whole, as an entry of
    # its own, which takes none, so that the start after it finds their room.)
    return all(_hand_over([p], f"{name}.{p.name}", whole=True) for p in paths if os.path.lexists(p))


def _hand_over(paths: Sequence[Path], name: str, whole: bool) -> bool:
    """Moves ``paths`` into the trash (``whole``: the one path becomes the entry ``name``;
    otherwise each goes into a new directory ``name``) and tells the helper of it."""
    with _lock:
        if _owner != os.getpid() or _pipe < 0:
            return False
        dest = trash_root() / name
        if whole:
            moves = [(paths[0], dest)]
        else:
            moves = [(p, dest / p.name) for p in paths if os.path.lexists(p)]
        moved: list[tuple[Path, Path]] = []
        try:
            ensure_dir(trash_root(), 0o700)
            if not whole:
                os.mkdir(dest, 0o700)
            for src, to in moves:
                os.rename(src, to)
                moved.append((src, to))
        except OSError:  # (no room for the trash itself: the caller deletes it)
            _put_back(moved, dest, whole)
            return False
        fault("trashed")
        try:
            os.write(_pipe, f"~{name}\n".encode())
        except OSError:  # the helper is gone, or far behind (a full pipe)
            # What cannot be put back stays in the trash: stale collection deletes it.
            return not _put_back(moved, dest, whole)
        return True


def _put_back(moved: list[tuple[Path, Path]], dest: Path, whole: bool) -> bool:
    """Undoes the moves of ``_hand_over``; whether all went back."""
    try:
        for src, to in reversed(moved):
            os.rename(to, src)
        if not whole:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dest)
    except OSError:
        return False
    return True


def _after_fork_in_child() -> None:
    # The child's copy of the pipe would keep the parent's helper waiting for the child too.
    global _pipe
    if _pipe >= 0:
        with contextlib.suppress(OSError):
            os.close(_pipe)
        _pipe = -1


os.register_at_fork(after_in_child=_after_fork_in_child)
