"""Where pyrt keeps things (see the contract's "Places")."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def is_root() -> bool:
    return os.geteuid() == 0


def store_root() -> Path:
    """The image store: $PYRT_ROOT, /var/lib/pyrt as root, else the user's data directory."""
    if env := os.environ.get("PYRT_ROOT"):
        return _absolute(env, "PYRT_ROOT")
    if is_root():
        return Path("/var/lib/pyrt")
    data = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data):  # (unset, or relative: invalid by the XDG spec)
        data = os.path.expanduser("~/.local/share")
    return Path(data) / "pyrt"


def state_root() -> Path:
    """Run state: $PYRT_STATE, /run/pyrt as root, else $XDG_RUNTIME_DIR/pyrt or /tmp/pyrt-$UID."""
    if env := os.environ.get("PYRT_STATE"):
        return _absolute(env, "PYRT_STATE")
    if is_root():
        return Path("/run/pyrt")
    if (xdg := os.environ.get("XDG_RUNTIME_DIR", "")) and os.path.isabs(xdg):
        return Path(xdg) / "pyrt"
    return _private_tmp_dir(Path(f"/tmp/pyrt-{os.getuid()}"))


def _absolute(value: str, name: str) -> Path:
    """A place given by an environment variable: relative, it would move with the working
    directory, and other processes (`pyrt ps`, the helper) would look elsewhere."""
    if not os.path.isabs(value):
        from pyrt.errors import InvalidOption

        raise InvalidOption(f"{name}={value!r}: must be an absolute path")
    return Path(value)


def _private_tmp_dir(p: Path) -> Path:
    """/tmp/pyrt-$UID, owner-only. In a directory everyone may write to, a name can be taken
    first by someone else (a directory of theirs, or a symlink to one): refuse it then."""
    import stat

    from pyrt.errors import PyrtError

    with contextlib.suppress(FileExistsError):
        os.mkdir(p, 0o700)
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PyrtError(
            f"{p} is not a directory of this user's (someone else made it first?); set "
            "XDG_RUNTIME_DIR or PYRT_STATE to a private directory"
        )
    if st.st_mode & 0o077:
        os.chmod(p, 0o700)
    return p


def ensure_dir(p: Path, mode: int = 0o700) -> Path:
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    return p
