"""pyrt: daemonless, in-process Linux containers with a Rust core.

import pyrt
pyrt.run(pyrt.Image.load("busybox"), ["echo", "hi"])
"""

from pyrt.config.mounts import Bind, Tmpfs
from pyrt.container.container import Container, run
from pyrt.container.health import Healthcheck
from pyrt.container.pool import Pool
from pyrt.container.results import Result, Stats
from pyrt.container.stdio import DEVNULL, PIPE, STDOUT
from pyrt.errors import (
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
from pyrt.image import Image, ImageConfig, images
from pyrt.imagebuild import build
from pyrt.network.shared import Network

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
