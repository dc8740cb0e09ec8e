"""Where pyrt keeps things (see the contract's "Places")."""

from __future__ import annotations

import os
from pathlib import Path


def is_root() -> bool:
    return os.geteuid() == 0


def store_root() -> Path:
    """The image store: $PYRT_ROOT, /var/lib/pyrt as root, else the user's data directory."""
    if env := os.environ.get("PYRT_ROOT"):
        return Path(env)
    if is_root():
        return Path("/var/lib/pyrt")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "pyrt"


def state_root() -> Path:
    """Run state: $PYRT_STATE, /run/pyrt as root, else $XDG_RUNTIME_DIR/pyrt or /tmp/pyrt-$UID."""
    if env := os.environ.get("PYRT_STATE"):
        return Path(env)
    if is_root():
        return Path("/run/pyrt")
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "pyrt"
    return Path(f"/tmp/pyrt-{os.getuid()}")


def ensure_dir(p: Path, mode: int = 0o700) -> Path:
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    return p
