"""Reading and writing images: PNG, JPEG, TIFF (Pillow), DICOM (when pydicom is installed) and numpy .npy arrays.

Images become float32 (1, H, W) arrays in [-1, 1] (grayscale: RGB is averaged, as the SonoNet authors do), resized
bilinearly to the model's size; outputs are written back as 8-bit grayscale PNGs, atomically.

Pixel values are brought to [0, 1] (then mapped to [-1, 1]) by one rule, chosen by the type of the stored pixels
(see :func:`to_unit`):

- integer pixels are divided by the largest value of their bit depth: 8-bit files (PNG, JPEG, BMP, 8-bit TIFF,
  palette and RGB images) by 255, 16-bit PNG and TIFF by 65535, DICOM by 2**BitsStored - 1 (12-bit data in 16-bit
  words: by 4095); signed integers are shifted by 2**(bits - 1) first. A 16-bit PNG/TIFF whose values only use
  12 bits therefore comes out dark: the file declares 16 bits (save it as 8 bits, or as a float TIFF in [0, 1]);
- floating-point pixels (32-bit float TIFF) are taken as they are when every value lies in [0, 1], divided by 255
  when they lie in [0, 255], and otherwise stretched to [0, 1] by the image's own minimum and maximum;
- NaN or infinite values make the file unreadable (:class:`ImageReadError` naming it).

A numpy ``.npy`` file holds one image, (H, W), (1, H, W) or (1, 1, H, W) (also (H, W, 3|4): RGB), in diffice's own
convention: floating-point values are taken as they are in [-1, 1] (the range of the arrays diffice takes and
returns), and a value outside [-1, 1] is an ImageReadError naming the file and the range found; integer arrays
follow the bit-depth rule above (uint8 / 255, uint16 / 65535). It is read without pickle.

DICOM (pydicom) adds, in this order: a cine (NumberOfFrames > 1) gives its first frame; RGB (YBR arrives as RGB)
is averaged to gray; signed pixels (PixelRepresentation 1) of BitsStored bits are shifted by 2**(BitsStored - 1)
and divided by 2**BitsStored - 1; MONOCHROME1 is inverted (unit -> 1 - unit): its lowest value is displayed white.
RescaleSlope / RescaleIntercept (the modality LUT) are linear, so the bit-depth scaling above gives the same image
with or without them, except that a negative slope inverts it (with MONOCHROME1: twice, so not at all); a slope of
0 is an ImageReadError naming RescaleSlope. Windowing (WindowCenter / WindowWidth, VOI LUTs) is not applied.
PALETTE COLOR images are refused, naming PhotometricInterpretation.

Resizing to the model's size that changes the aspect ratio (width / height) by more than a factor
:data:`MAX_ASPECT_CHANGE` stretches the anatomy: :class:`AspectRatioWarning` names the file and both sizes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".npy")

# Images are decoded to float64 (24 bytes a pixel for RGB): a small compressed file claiming a huge canvas is
# refused before decoding. 2^25 pixels (e.g. 8192 x 4096) is far above any ultrasound frame.
MAX_IMAGE_PIXELS = 1 << 25


# load_image warns when resizing changes the aspect ratio (width / height) by more than this factor either way.
MAX_ASPECT_CHANGE = 1.1


class ImageReadError(ValueError):
    """An input image could not be read or converted; the message names the file and the reason."""


class AspectRatioWarning(UserWarning):
    """An image was resized to a size whose aspect ratio differs by more than MAX_ASPECT_CHANGE from its own (the
    anatomy is stretched); the message names the file, its size and the size it was resized to."""


def list_images(
    folder: PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES, expected: str = "a folder of images"
) -> list[Path]:
    """The image files directly in `folder` (those whose lower-cased suffix is one of `suffixes`), sorted by name.
    Raises if the folder is missing, is a file (NotADirectoryError "expected <expected>, got the file ...": say
    there what else the caller takes) or has no images."""
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"expected {expected}, got the file {folder}")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"no images ({', '.join(suffixes)}) in {folder}")
    return files


IntegerRange = Optional[tuple[float, float]]


def _bits_range(bits: int, signed: bool) -> tuple[float, float]:
    """The values an integer of `bits` bits holds: [0, 2**bits - 1], or [-2**(bits-1), 2**(bits-1) - 1] signed."""
    return (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1.0) if signed else (0.0, 2.0**bits - 1.0)


def _dtype_range(dtype: np.dtype) -> IntegerRange:
    """An integer dtype's full range; None for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return (0.0, 1.0)
    if dtype.kind in "iu":
        return _bits_range(8 * dtype.itemsize, dtype.kind == "i")
    return None


def _dicom_number(ds, key: str, default: float) -> float:
    """A numeric DICOM attribute (DS, IS or US), default where absent or empty; ValueError naming it otherwise."""
    value = getattr(ds, key, None)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} {value!r} is not a number") from None
    if not np.isfinite(number):
        raise ValueError(f"{key} {value!r} is not a finite number")
    return number


def _decode_dicom(path: Path) -> tuple[np.ndarray, IntegerRange, bool]:
    """A DICOM file's first frame in its stored type, its integer range (by BitsStored) and whether it is shown
    inverted (MONOCHROME1, or a negative RescaleSlope): the DICOM rules of the module docstring."""
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"{path}: reading DICOM needs pydicom (pip install pydicom, or diffice[dicom])") from None
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable DICOM image ({exc})") from None
    try:
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ValueError("no pixel data (PixelData)")
        rows, columns = (int(_dicom_number(ds, key, 0)) for key in ("Rows", "Columns"))
        frames = max(1, int(_dicom_number(ds, "NumberOfFrames", 1)))
        samples = max(1, int(_dicom_number(ds, "SamplesPerPixel", 1)))
        if rows * columns > MAX_IMAGE_PIXELS:
            raise ValueError(f"image of {columns} x {rows} pixels is over the {MAX_IMAGE_PIXELS}-pixel limit")
        photometric = str(getattr(ds, "PhotometricInterpretation", "") or "").strip().upper()
        if photometric == "PALETTE COLOR":
            raise ValueError(
                "PhotometricInterpretation 'PALETTE COLOR' is not supported (convert the image to MONOCHROME2 or RGB)"
            )
        slope = _dicom_number(ds, "RescaleSlope", 1.0)
        if slope == 0.0:
            raise ValueError("RescaleSlope 0 maps every pixel to one value")
        try:
            from pydicom.pixels import pixel_array  # pydicom >= 3: decodes only the frame asked for
        except ImportError:  # pydicom 2: every frame
            if rows * columns * frames * samples > 4 * MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{frames} frames of {columns} x {rows} pixels is over the {4 * MAX_IMAGE_PIXELS}-value limit"
                ) from None
            pixels = np.asarray(ds.pixel_array)
            if frames > 1:
                pixels = pixels[0]
            if photometric.startswith("YBR_FULL") and not ds.file_meta.TransferSyntaxUID.is_compressed:
                from pydicom.pixel_data_handlers.util import convert_color_space

                pixels = convert_color_space(pixels, photometric, "RGB")
        else:
            pixels = np.asarray(pixel_array(ds, index=0) if frames > 1 else pixel_array(ds))  # YBR comes as RGB
        value_range = _dtype_range(pixels.dtype)
        bits = int(_dicom_number(ds, "BitsStored", 0))
        if value_range is not None and 1 <= bits < 8 * pixels.dtype.itemsize:
            value_range = _bits_range(bits, pixels.dtype.kind == "i")  # e.g. 12-bit data in 16-bit words
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable DICOM image ({exc})") from None
    return pixels, value_range, (photometric == "MONOCHROME1") != (slope < 0.0)


def _decode_npy(path: Path) -> tuple[np.ndarray, IntegerRange, bool]:
    """A .npy image (the module docstring's rule): its pixels (H, W) or (H, W, 3|4) and their range, floats in
    [-1, 1] given the range (-1, 1) so that they are kept as they are."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: the shape is checked before reading
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable .npy array ({exc})") from None
    shape = array.shape
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: expected an array of numbers, got dtype {array.dtype}")
    while array.ndim > 2 and array.shape[0] == 1 and not (array.ndim == 3 and array.shape[-1] in (3, 4)):
        array = array[0]  # (1, 1, H, W) and (1, H, W): one image
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageReadError(
            f"{path}: expected one image, (H, W), (1, H, W), (1, 1, H, W) or (H, W, 3), got an array of shape {shape}"
            + (" (a stack of images: save one file per image)" if len(shape) >= 3 and shape[0] > 1 else "")
        )
    if array.size > MAX_IMAGE_PIXELS * 4:
        raise ImageReadError(f"{path}: an array of shape {shape} is over the {MAX_IMAGE_PIXELS}-pixel limit")
    pixels = np.array(array)
    if pixels.dtype.kind != "f":
        return pixels, _dtype_range(pixels.dtype), False
    finite = pixels[np.isfinite(pixels)]
    if finite.size and (finite.min() < -1.0 or finite.max() > 1.0):
        raise ImageReadError(
            f"{path}: a floating-point .npy image must hold values in [-1, 1] (diffice's range), got "
            f"[{finite.min():.6g}, {finite.max():.6g}]"
        )
    return pixels, (-1.0, 1.0), False  # NaN and infinity are refused by to_unit


def _decode(path: Path) -> tuple[np.ndarray, IntegerRange, bool]:
    """The file's pixels in their stored type ((H, W) or (H, W, 3|4)), for integer pixels the range of their
    bit depth (None for floating-point pixels; (-1, 1) for a .npy's), and whether the image is shown inverted (its
    lowest value white: DICOM MONOCHROME1)."""
    if path.suffix.lower() == ".dcm":
        return _decode_dicom(path)
    if path.suffix.lower() == ".npy":
        return _decode_npy(path)
    try:
        from PIL import Image
    except ImportError:
        raise ImageReadError(f"{path}: reading images needs Pillow (pip install Pillow)") from None
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageReadError(
                    f"{path}: image of {img.width} x {img.height} pixels is over the {MAX_IMAGE_PIXELS}-pixel limit"
                )
            img.load()
            if img.mode == "F":
                return np.asarray(img), None, False
            if img.mode.startswith("I;16"):
                pixels = np.asarray(img)
                return pixels, _dtype_range(pixels.dtype), False
            if img.mode == "I":  # 32-bit integers holding a 16-bit PNG (Pillow < 10) or an integer TIFF
                if img.format == "PNG":
                    value_range = _bits_range(16, False)
                else:
                    tags = getattr(img, "tag_v2", {})
                    bits = tags.get(258, (32,))
                    bits = int(bits[0] if isinstance(bits, tuple) else bits)
                    sample_format = tags.get(339, (1,))
                    sample_format = int(sample_format[0] if isinstance(sample_format, tuple) else sample_format)
                    value_range = _bits_range(min(max(bits, 1), 32), sample_format == 2)
                return np.asarray(img), value_range, False
            return np.asarray(img.convert("RGB")), _bits_range(8, False), False
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from None


def _read_pixels(path: Path) -> np.ndarray:
    """The file's pixels in their stored type, (H, W) or (H, W, 3|4) (a DICOM cine: its first frame)."""
    return _decode(path)[0]


def to_unit(pixels: np.ndarray, integer_range: IntegerRange = None) -> np.ndarray:
    """Pixel values -> float64 in [0, 1] by the module's rule. integer_range: (lo, hi) of the stored integers' bit
    depth, mapped to 0 and 1 (values outside are clipped); None for floating-point pixels, which are kept when
    they lie in [0, 1], divided by 255 when they lie in [0, 255], else stretched by their own min and max (a
    constant image becomes 0). Non-finite values are a ValueError."""
    a = np.asarray(pixels, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"{int(np.size(a) - np.count_nonzero(np.isfinite(a)))} non-finite pixel values (NaN or infinity)"
        )
    if integer_range is not None:
        lo, hi = integer_range
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    if a.size == 0:
        return a
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0:
        return a / 255.0
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def read_unit(path: PathLike) -> np.ndarray:
    """One image file as grayscale float64 (H, W) in [0, 1] at its own size (RGB averaged; values by the module's
    rule). Raises ImageReadError naming the file."""
    path = Path(path)
    pixels, integer_range, inverted = _decode(path)
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4) or pixels.ndim not in (2, 3):
        raise ImageReadError(f"{path}: expected a 2-D grayscale or RGB image, got pixel array shape {pixels.shape}")
    if pixels.size > MAX_IMAGE_PIXELS * 4:
        raise ImageReadError(f"{path}: {pixels.size} pixel values is over the limit")
    if pixels.size == 0:
        raise ImageReadError(f"{path}: empty image")
    try:
        gray = to_gray(to_unit(pixels, integer_range))
    except ValueError as exc:
        raise ImageReadError(f"{path}: {exc}") from None
    return 1.0 - gray if inverted else gray


def aspect_change(shape: tuple[int, int], size: tuple[int, int]) -> float:
    """The factor (>= 1) by which resizing (H, W) `shape` to (H, W) `size` changes the aspect ratio (1 for an empty
    one)."""
    (h, w), (th, tw) = shape, size
    if min(h, w, th, tw) <= 0:
        return 1.0
    change = (tw / th) / (w / h)
    return max(change, 1.0 / change)


def warn_aspect_change(path: PathLike, shape: tuple[int, int], size: tuple[int, int]) -> None:
    """AspectRatioWarning when resizing an image of shape (H, W) to size (H, W) changes its aspect ratio by more
    than MAX_ASPECT_CHANGE."""
    (h, w), (th, tw) = shape, size
    change = aspect_change(shape, size)
    if change > MAX_ASPECT_CHANGE:
        warnings.warn(
            f"{os.fspath(path)}: resized from {h} x {w} to {th} x {tw} pixels (height x width), which "
            f"changes its aspect ratio by a factor of {change:.2f} and stretches the anatomy; crop or pad "
            f"it to the model's aspect ratio first",
            AspectRatioWarning,
            stacklevel=3,
        )


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) -> (H, W) float64, RGB averaged (alpha dropped)."""
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    return pixels


def resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (Pillow's, with its antialiasing when shrinking) to size = (H, W)."""
    from PIL import Image

    h, w = size
    if gray.shape == (h, w):
        return gray
    img = Image.fromarray(gray.astype(np.float32))  # mode "F" (passing mode= is deprecated in Pillow 11.3)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)


def load_image(path: PathLike, size: tuple[int, int]) -> np.ndarray:
    """One image as float32 (1, H, W) in [-1, 1]: grayscale, resized bilinearly to size = (H, W).

    Values are scaled by the type of the stored pixels (the module docstring has the rule): integers by their bit
    depth (8-bit / 255, 16-bit / 65535, DICOM by BitsStored), floats as they are in [0, 1], / 255 in [0, 255],
    else by the image's min and max. Raises ImageReadError naming the file (unreadable, not 2-D, NaN or infinite
    values); warns (AspectRatioWarning) when the resize changes the aspect ratio by more than MAX_ASPECT_CHANGE.
    """
    path = Path(path)
    return unit_to_input(path, read_unit(path), size)


def unit_to_input(path: PathLike, unit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """load_image's second half: a read image (H0, W0) in [0, 1] (:func:`read_unit` of path) as float32 (1, H, W)
    in [-1, 1], resized to size = (H, W) (warning when that changes the aspect ratio)."""
    warn_aspect_change(path, unit.shape, size)
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
    """Writes via a temporary file in the same folder and a rename: readers never see half a file. Every OSError
    names path (a full disk, a folder in its place), not the temporary file."""
    import errno

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot write a file there: it is a folder", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = exc.filename or path.parent
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot write a file there: {blocker} is a file, not a folder", str(path)
        ) from None
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would give 0666 - umask
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def check_writable_file(path: PathLike) -> None:
    """The OSError :func:`atomic_write_bytes` would raise for path, raised before the work whose result goes there
    (``diffice metrics --json``): a folder in its place, a file where one of its folders should be, a folder that
    cannot be written. Creates nothing."""
    import errno

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot write a file there: it is a folder", str(path))
    folder = path.parent
    while not os.path.lexists(folder) and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot write a file there: {folder} is a file, not a folder", str(path)
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write a file there: {folder} is not writable", str(path))


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
        out[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


IMAGES = "(N, C, H, W) float32 in [-1, 1]"  # what the networks, the Explainer and the metrics take


def images_hint(x: object) -> str:
    """Why x is likely not images in diffice's convention (IMAGES) and how to make it so, as " (...)" for an error
    message, "" when none of the usual mistakes shows: a torch tensor, integer pixels, [0, 255] or [0, 1] floats, one
    image without its batch (and channel) axis, channels last."""
    if type(x).__module__.split(".")[0] == "torch":
        return " (a torch tensor: pass x.detach().cpu().numpy())"
    if not isinstance(x, np.ndarray):
        return " (np.stack(images) makes one array of a list of (C, H, W) images)" if isinstance(x, list) else ""
    if x.dtype == bool or np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(np.int8 if x.dtype == bool else x.dtype)
        if info.min < 0:
            return f" ({x.dtype} pixel levels, not values in [-1, 1]: scale them to [-1, 1])"
        return f" ({x.dtype} pixel levels 0..{info.max}: x.astype(np.float32) / {info.max / 2:g} - 1 gives [-1, 1])"
    if x.ndim == 2:
        return " (one (H, W) image: x[None, None] is a batch of one)"
    if x.ndim == 3:
        return " (one (C, H, W) image: x[None]; N (H, W) images: x[:, None])"
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return " (channels last? x.transpose(0, 3, 1, 2) is (N, C, H, W))"
    if x.size and np.issubdtype(x.dtype, np.floating) and np.all(np.isfinite(x)) and x.min() >= 0:
        if 1 < x.max() <= 255:
            return " (values in [0, 255]: x / 127.5 - 1 gives [-1, 1])"
        if x.max() <= 1:
            return " (values in [0, 1]: 2 * x - 1 gives [-1, 1])"
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        return " (x.astype(np.float32))"
    return ""


def judged_images(x: object, what: str) -> np.ndarray:
    """x as float32 images for a judge (the concept oracle, diffice.evaluation.metrics.evaluate), which takes
    counterfactuals as the sampler left them (not clamped: a few 1e-5 past [-1, 1]). Integer pixels are a TypeError
    and finite values past [-2, 2] (pixel levels 0..255 as floats, say) a ValueError, each naming `what` and the
    fix (:func:`images_hint`): they used to be judged as they were, giving meaningless scores without an error."""
    a = np.asarray(x)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what}: images must be {IMAGES}, got {a.dtype}{images_hint(a)}")
    a = a.astype(np.float32, copy=False)
    finite = np.isfinite(a)
    low = float(np.min(a, where=finite, initial=np.inf))
    high = float(np.max(a, where=finite, initial=-np.inf))
    if low < -2.0 or high > 2.0:
        raise ValueError(f"{what}: images must be in [-1, 1], got values in [{low:g}, {high:g}]{images_hint(a)}")
    return a
