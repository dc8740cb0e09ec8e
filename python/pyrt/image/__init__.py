"""Images: where a container's root filesystem and defaults come from."""

from .config import ImageConfig
from .image import Image, images

__all__ = ["Image", "ImageConfig", "images"]
