"""Fault injection for the crash-recovery tests: with ``PYRT_FAULT`` naming a point, the process
dies there by SIGKILL, as a crash would leave it (the core has the same for its own points)."""

from __future__ import annotations

import os
import signal


def fault(point: str) -> None:
    """Dies here by SIGKILL when ``PYRT_FAULT`` is ``point``."""
    if os.environ.get("PYRT_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
