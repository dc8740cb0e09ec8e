"""Building images from a Containerfile (``pyrt.build``, ``pyrt build``)."""

from pyrt.imagebuild.builder import build

__all__ = ["build"]
