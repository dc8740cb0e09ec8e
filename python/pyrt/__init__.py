"""pyrt: daemonless, in-process Linux containers with a Rust core.

import pyrt
pyrt.run(pyrt.Image.load("busybox"), ["echo", "hi"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The errors are cheap and are what callers catch, so they are here from the start.
from pyrt.errors import (
    BuildError,
    ContainerError,
    ImageError,
    ImageNotFound,
    InvalidArgument,
    InvalidOption,
    OutputLimitExceeded,
    PathNotFound,
    PyrtError,
    SpawnError,
    TimeoutExpired,
    UnsafeImageError,
)

if TYPE_CHECKING:
    from pyrt import aio as aio  # (a type checker sees the submodule that __getattr__ gives)
    from pyrt.config.mounts import Bind, Tmpfs
    from pyrt.container.container import Container, run
    from pyrt.container.health import Healthcheck
    from pyrt.container.pool import Pool
    from pyrt.container.results import Result, Stats
    from pyrt.container.stdio import DEVNULL, PIPE, STDOUT
    from pyrt.image import Image, ImageConfig, images
    from pyrt.imagebuild import build
    from pyrt.network.shared import Network

__version__ = "0.1.0"

# Everything else is imported on first use (PEP 562). `import pyrt` is what pyrt's pytest
# plugin costs every pytest session on a machine where pyrt is installed, also sessions that
# use none of its fixtures; the whole package (the core, tarfile, hashlib, socket, asyncio for
# pyrt.aio...) takes ~90 ms to import, this module alone ~1 ms.
_HOME = {
    "Bind": "pyrt.config.mounts",
    "Tmpfs": "pyrt.config.mounts",
    "Container": "pyrt.container.container",
    "run": "pyrt.container.container",
    "Healthcheck": "pyrt.container.health",
    "Pool": "pyrt.container.pool",
    "Result": "pyrt.container.results",
    "Stats": "pyrt.container.results",
    "DEVNULL": "pyrt.container.stdio",
    "PIPE": "pyrt.container.stdio",
    "STDOUT": "pyrt.container.stdio",
    "Image": "pyrt.image",
    "ImageConfig": "pyrt.image",
    "images": "pyrt.image",
    "build": "pyrt.imagebuild",
    "Network": "pyrt.network.shared",
}


def __getattr__(name: str) -> object:
    if name == "aio":
        return importlib.import_module(".aio", __name__)
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'pyrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "Bind",
    "BuildError",
    "Container",
    "ContainerError",
    "Healthcheck",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageNotFound",
    "InvalidArgument",
    "InvalidOption",
    "Network",
    "OutputLimitExceeded",
    "PathNotFound",
    "Pool",
    "PyrtError",
    "Result",
    "SpawnError",
    "Stats",
    "TimeoutExpired",
    "Tmpfs",
    "UnsafeImageError",
    "__version__",
    "build",
    "images",
    "run",
]
