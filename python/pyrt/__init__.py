"""pyrt: daemonless, in-process Linux containers with a Rust core.

import pyrt
pyrt.run(pyrt.Image.load("busybox"), ["echo", "hi"])
"""

from .container import Container, run
from .errors import (
    BuildError,
    ContainerError,
    ImageError,
    ImageNotFound,
    InvalidArgument,
    InvalidOption,
    PathNotFound,
    PyrtError,
    SpawnError,
    TimeoutExpired,
    UnsafeImageError,
)
from .health import Healthcheck
from .image import Image, ImageConfig, images
from .imagebuild import build
from .mounts import Bind, Tmpfs
from .networks import Network
from .pool import Pool
from .results import Result, Stats
from .stdio import DEVNULL, PIPE, STDOUT

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # pyrt.aio is imported on first use: asyncio costs a plain `import pyrt` nothing.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module 'pyrt' has no attribute {name!r}")


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
