"""Images: where a container's root filesystem and defaults come from."""

from pyrt.image.config import ImageConfig
from pyrt.image.image import Image, images

__all__ = ["Image", "ImageConfig", "images"]
