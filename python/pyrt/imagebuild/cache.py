"""The build cache: what a layer-making step produced, keyed by the step, everything before it
and the digests of its inputs, so that an unchanged step is not run again.

An entry is a small JSON file under ``<store>/build-cache/`` naming the layer directories of
the result (topmost first) and when it was built; an entry whose layers `pyrt gc` has removed
since is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from pyrt.host.places import ensure_dir
from pyrt.image import store


def key(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def _dir() -> Path:
    return ensure_dir(store.root() / "build-cache", 0o700)


def lookup(k: str) -> Optional[dict[str, Any]]:
    try:
        rec = json.loads((_dir() / f"{k}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("lower"), list):
        return None
    if not all(isinstance(d, str) and os.path.isdir(d) for d in rec["lower"]):
        return None
    return rec


def record(k: str, lower: tuple[str, ...], created: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=_dir(), prefix=".entry-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"lower": list(lower), "created": created}, f)
        os.replace(tmp, _dir() / f"{k}.json")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def collect() -> list[str]:
    """Removes the entries whose layers are gone (`pyrt gc` collected them); returns their
    keys."""
    gone = []
    base = _dir()
    for name in sorted(os.listdir(base)):
        if name.endswith(".json") and lookup(name[:-5]) is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base / name)
            gone.append(name[:-5])
    return gone
