"""Building images from a Containerfile (``pyrt.build``, ``pyrt build``)."""

from .builder import build

__all__ = ["build"]
