"""Reading and writing images: PNG, JPEG, TIFF (Pillow) and DICOM (when pydicom is installed).

Images become float32 (1, H, W) arrays in [-1, 1] (grayscale: RGB is averaged, as the SonoNet authors do), resized
bilinearly to the model's size; outputs are written back as 8-bit grayscale PNGs, atomically.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")

# Images are decoded to float64 (24 bytes a pixel for RGB): a small compressed file claiming a huge canvas is
# refused before decoding. 2^25 pixels (e.g. 8192 x 4096) is far above any ultrasound frame.
MAX_IMAGE_PIXELS = 1 << 25


class ImageReadError(ValueError):
    """An input image could not be read or converted; the message names the file and the reason."""


def list_images(folder: PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> List[Path]:
    """The image files directly in `folder` (those whose lower-cased suffix is one of `suffixes`), sorted by name.
    Raises if the folder is missing or has no images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"no images ({', '.join(suffixes)}) in {folder}")
    return files


def _read_pixels(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".dcm":
        try:
            import pydicom
        except ImportError:
            raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from None
        try:
            ds = pydicom.dcmread(str(path))
            claimed = int(getattr(ds, "Rows", 0) or 0) * int(getattr(ds, "Columns", 0) or 0) * \
                max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
            if claimed > 4 * MAX_IMAGE_PIXELS:
                raise ValueError(f"{claimed} pixels is over the {4 * MAX_IMAGE_PIXELS}-pixel limit")
            pixels = ds.pixel_array.astype(np.float64)
        except Exception as exc:
            raise ImageReadError(f"{path}: not a readable DICOM image ({exc})") from None
        if pixels.ndim == 4:  # a multi-frame RGB cine: the first frame
            pixels = pixels[0]
        if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):  # multi-frame grayscale
            pixels = pixels[0]
        return pixels
    try:
        from PIL import Image
    except ImportError:
        raise ImageReadError(f"{path}: reading images needs Pillow (pip install Pillow)") from None
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageReadError(f"{path}: image of {img.width} x {img.height} pixels is over the "
                                     f"{MAX_IMAGE_PIXELS}-pixel limit")
            img.load()
            if img.mode in ("I;16", "I;16B", "I", "F"):
                return np.asarray(img, dtype=np.float64)
            return np.asarray(img.convert("RGB"), dtype=np.float64)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from None


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) -> (H, W) float64, RGB averaged (alpha dropped)."""
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    return pixels


def resize(gray: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize (Pillow's, with its antialiasing when shrinking) to size = (H, W)."""
    from PIL import Image

    h, w = size
    if gray.shape == (h, w):
        return gray
    img = Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float64)


def load_image(path: PathLike, size: Tuple[int, int]) -> np.ndarray:
    """One image as float32 (1, H, W) in [-1, 1]: grayscale, resized to size, scaled by its type's range
    (8-bit: /255; 16-bit and float: min-max of the image)."""
    path = Path(path)
    pixels = _read_pixels(path)
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4) or pixels.ndim not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2-D grayscale or RGB image, got pixel array shape {pixels.shape}")
    if pixels.size > MAX_IMAGE_PIXELS * 4:
        raise ImageReadError(f"{path}: {pixels.size} pixel values is over the limit")
    pixels = to_gray(pixels)
    if pixels.size == 0 or not np.all(np.isfinite(pixels)):
        raise ImageReadError(f"{path}: empty image or non-finite pixel values")
    hi = pixels.max()
    if hi <= 255.0 and pixels.min() >= 0.0:
        unit = pixels / 255.0
    else:
        lo = pixels.min()
        unit = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
    unit = np.clip(resize(unit, size), 0.0, 1.0)
    return (unit * 2.0 - 1.0).astype(np.float32)[None]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] (1, H, W) or (H, W) -> uint8 (H, W), clipped."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a[0]
    return np.round((np.clip(a, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes via a temporary file in the same folder and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would give 0666 - umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_png(path: PathLike, image: np.ndarray) -> None:
    """Writes a [-1, 1] image ((1, H, W), (H, W)) or a uint8 (H, W[, 3]) array as PNG, atomically."""
    import io

    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = to_uint8(a)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def strip(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images side by side (uint8 (H, W) each, or [-1, 1]) with a white gap: an iteration strip."""
    tiles = [to_uint8(im) if np.asarray(im).dtype != np.uint8 else np.asarray(im) for im in images]
    h = max(t.shape[0] for t in tiles)
    out = np.full((h, sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)), 255, np.uint8)
    x = 0
    for t in tiles:
        out[: t.shape[0], x: x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out
