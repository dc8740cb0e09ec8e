"""The reaper helper's own side (see ``reaper``): it reads ``+ID`` and ``-ID`` lines from its
owner's pipe until the owner dies, then removes what is left of each id still noted."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from pyrt.host.places import state_root
from pyrt.host.reaper import NETWORK, STAGING, trash_root


def _set_name(name: bytes) -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME


def main(argv: list[str]) -> int:
    import signal

    _set_name(b"pyrt-reaper")
    # Woken at every removal (a line in its pipe) to delete a directory: under SCHED_BATCH
    # its wakeups never preempt the owner's threads on their CPU (see the core's
    # host/background.rs), and its weight stays ordinary, so it keeps up.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    # The owner's terminal and its process group are not ours to die with.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    owner = int(argv[2]) if len(argv) > 2 and argv[2].isdigit() else 0
    ids: set[str] = set()
    ended = [False]
    for line in _lines(sys.stdin.fileno(), owner, ended):
        if line.startswith("+"):
            ids.add(line[1:])
        elif line.startswith("-"):
            ids.discard(line[1:])
        elif line.startswith("~"):
            empty_trash({line[1:]})
    if ids:
        collect(ids)
        if not ended[0]:
            # A dying owner that still held its pipe also held its containers' locks, which
            # kept their directories from being collected: once the thaw lets it end, again.
            _wait_eof(sys.stdin.fileno(), 10.0)
            collect(ids)
        _collect_until_gone(ids, 2.0)
    return 0


def _collect_until_gone(ids: set[str], seconds: float) -> None:
    """Collects again, for ``seconds`` at most, what is still there: an exiting owner closes
    its descriptors one by one, so the pipe's EOF can arrive a moment before a container's
    lock is released, and a collection in that moment leaves the directory (a locked one
    belongs to a live owner)."""
    import time

    containers, trash = Path(state_root()) / "containers", trash_root()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {i for i in ids if (containers / i).exists() or (trash / i).exists()}
        if not left:
            return
        time.sleep(0.05)
        collect(left)


def _wait_eof(fd: int, seconds: float) -> None:
    """Reads until EOF, or until ``seconds`` pass."""
    import select
    import time

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready and not os.read(fd, 4096):
            return


def _lines(fd: int, owner: int, ended: list[bool]) -> Iterator[str]:
    """The owner's lines, until EOF (it is gone) or until its main thread is a zombie while
    the pipe stays open: a thread of a killed owner that waits in the kernel on one of its
    containers (a clone into a frozen cgroup waits for a thaw) keeps the process, and with it
    the pipe, from ever closing. Collecting thaws that container, and the owner can end.
    ``ended[0]`` says which it was (EOF: true)."""
    import select

    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            if owner and _dying(owner):
                return
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            ended[0] = True
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            yield raw.decode("ascii", "replace").strip()


def _dying(pid: int) -> bool:
    """Whether ``pid``'s main thread has exited (a zombie, or gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    # The state follows the command's closing parenthesis (the command may hold any bytes).
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def empty_trash(names: set[str]) -> None:
    """Deletes the entries ``names`` of the trash (``reaper.discard``): directories of removed
    containers, handed over by the owner."""
    from pyrt.host.removal import remove_tree

    root = trash_root()
    for name in names:
        if name and "/" not in name and name not in (".", ".."):
            remove_tree(root / name)


def collect(ids: set[str]) -> None:
    """What is left of the containers ``ids`` whose owner is gone: state directories (cgroups
    named in them), one already moved to the trash, and any ``pyrt-ID`` cgroup made before it
    was noted down."""
    # Imported only now: the helper lives as long as its owner, and should cost it nothing.
    from pyrt.host import collect as stale

    root = Path(state_root()) / "containers"
    staged = {i for i in ids if i.startswith(STAGING)}
    if staged:
        from pyrt.host import staging, trees

        for key in staged:
            if (path := staging.path_of(key)) is not None:
                trees.rmtree(path)
    nets = {i[len(NETWORK) :] for i in ids if i.startswith(NETWORK)}
    ids = ids - staged - {NETWORK + n for n in nets}  # a new set: the caller's stays as it was
    if nets:
        stale.collect_stale_networks(only=nets)
    stale.collect_stale(only={i for i in ids if (root / i).exists()})
    # An owner killed between moving a directory (or a reset's old layer, "ID.layer.N") into
    # the trash and telling us so.
    with contextlib.suppress(OSError):
        empty_trash({e for e in os.listdir(trash_root()) if e.split(".", 1)[0] in ids})
    if os.geteuid() == 0:
        stale.remove_cgroup(stale.stale_cgroups(set(), only=ids))
