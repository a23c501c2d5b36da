"""Data: reading and writing images (images; its API re-exported here, where diffice.data.images was before the
subpackages) and the synthetic fetal-head phantoms (phantoms)."""

from .images import (
    IMAGE_SUFFIXES,
    AspectRatioWarning,
    ImageReadError,
    atomic_write_bytes,
    list_images,
    load_image,
    read_unit,
    resize,
    save_png,
    strip,
    to_gray,
    to_uint8,
    to_unit,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "AspectRatioWarning",
    "ImageReadError",
    "atomic_write_bytes",
    "list_images",
    "load_image",
    "read_unit",
    "resize",
    "save_png",
    "strip",
    "to_gray",
    "to_uint8",
    "to_unit",
]
