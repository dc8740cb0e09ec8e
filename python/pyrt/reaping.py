"""The reaper helper's own side (see ``reaper``): it reads ``+ID`` and ``-ID`` lines from its
owner's pipe until the owner dies, then removes what is left of each id still noted."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from .places import state_root
from .reaper import NETWORK


def _set_name(name: bytes) -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME


def main(argv: list[str]) -> int:
    import signal

    _set_name(b"pyrt-reaper")
    # The owner's terminal and its process group are not ours to die with.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    ids: set[str] = set()
    for raw in sys.stdin.buffer:
        line = raw.decode("ascii", "replace").strip()
        if line.startswith("+"):
            ids.add(line[1:])
        elif line.startswith("-"):
            ids.discard(line[1:])
    if ids:
        collect(ids)
    return 0


def collect(ids: set[str]) -> None:
    """What is left of the containers ``ids`` whose owner is gone: state directories (cgroups
    named in them) and any ``pyrt-ID`` cgroup made before it was noted down."""
    # Imported only now: the helper lives as long as its owner, and should cost it nothing.
    from . import state

    root = Path(state_root()) / "containers"
    nets = {i[len(NETWORK) :] for i in ids if i.startswith(NETWORK)}
    ids -= {NETWORK + n for n in nets}
    if nets:
        state.collect_stale_networks(only=nets)
    state.collect_stale(only={i for i in ids if (root / i).exists()})
    if os.geteuid() == 0:
        state.kill_all_and_rmdir(state.stale_cgroups(set(), only=ids))
