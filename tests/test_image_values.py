"""Pixel values and sizes of input images (issue 14, item 5): one rule by the stored pixel type (integers by their
bit depth, floats by their range, diffice.data.images's docstring), and a warning naming the image when resizing to the
model's size stretches it."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_models
from PIL import Image

from diffice.data.images import AspectRatioWarning, ImageReadError, load_image

# one row of values per file kind, and what each value becomes in [0, 1]
UNIT = np.array([0.0, 0.25, 0.5, 1.0])


def _write(path: Path, values: np.ndarray) -> Path:
    img = np.tile(values, (4, 1))  # 4 x 4: every value in one column, no resize
    Image.fromarray(img).save(path)
    return path


@pytest.mark.parametrize(
    "name, values, unit",
    [
        # 8-bit: / 255
        ("u8.png", np.array([0, 51, 102, 255], np.uint8), np.array([0, 51, 102, 255]) / 255),
        ("u8.tif", np.array([0, 51, 102, 255], np.uint8), np.array([0, 51, 102, 255]) / 255),
        # 16-bit: / 65535 (the values use 12 bits only: no stretching to the image's own range)
        ("u16.tif", np.array([0, 1000, 2048, 4095], np.uint16), np.array([0, 1000, 2048, 4095]) / 65535),
        ("u16.png", np.array([100, 1000, 30000, 40000], np.uint16), np.array([100, 1000, 30000, 40000]) / 65535),
        # float in [0, 1]: as it is (it used to be divided by 255: nearly black)
        ("f01.tif", UNIT.astype(np.float32), UNIT),
        ("f01_dark.tif", (UNIT * 0.2).astype(np.float32), UNIT * 0.2),
        # float in [0, 255]: / 255
        ("f255.tif", (UNIT * 255).astype(np.float32), UNIT),
        ("f255_dark.tif", np.array([0, 2, 40, 100], np.float32), np.array([0, 2, 40, 100]) / 255),
        # float outside [0, 255]: the image's min and max
        ("fwide.tif", np.array([-50, 25, 100, 250], np.float32), UNIT),
    ],
)
def test_pixel_values_follow_the_stored_type(tmp_path, name, values, unit):
    path = _write(tmp_path / name, values)
    x = load_image(path, (4, 4))
    assert x.shape == (1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], unit * 2 - 1, atol=1e-6)


def test_stored_modes_are_what_the_test_means(tmp_path):
    assert Image.open(_write(tmp_path / "a.tif", UNIT.astype(np.float32))).mode == "F"
    assert Image.open(_write(tmp_path / "b.tif", np.array([0, 9, 99, 999], np.uint16))).mode.startswith("I;16")
    assert Image.open(_write(tmp_path / "c.tif", np.array([0, 9, 99, 199], np.uint8))).mode == "L"


def test_16_bit_png_in_pillow_mode_i(tmp_path, monkeypatch):
    # Pillow < 10 opens a 16-bit PNG as 32-bit "I": still scaled by 65535
    path = _write(tmp_path / "wide.png", np.array([0, 500, 6000, 40000], np.uint16))
    as_i = Image.open(path).convert("I")
    as_i.format = "PNG"
    monkeypatch.setattr(Image, "open", lambda p: as_i)
    x = load_image(path, (4, 4))
    np.testing.assert_allclose(x[0, 0], np.array([0, 500, 6000, 40000]) / 65535 * 2 - 1, atol=1e-6)


def test_non_finite_float_image_names_the_file(tmp_path):
    path = _write(tmp_path / "nan.tif", np.array([0, np.nan, 0.5, np.inf], np.float32))
    with pytest.raises(ImageReadError, match=r"nan\.tif: 8 non-finite pixel values \(NaN or infinity\)"):
        load_image(path, (4, 4))


def _gray(path: Path, h: int, w: int) -> Path:
    Image.fromarray(np.full((h, w), 128, np.uint8)).save(path)
    return path


def test_aspect_ratio_warning(tmp_path):
    stretched = _gray(tmp_path / "tall.png", 100, 300)  # H x W: aspect 3 -> 288 / 224 = 1.29
    with pytest.warns(AspectRatioWarning) as record:
        load_image(stretched, (224, 288))
    message = str(record[0].message)
    assert len(record) == 1
    assert str(stretched) in message and "100 x 300" in message and "224 x 288" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", AspectRatioWarning)
        load_image(_gray(tmp_path / "close.png", 224, 290), (224, 288))  # 0.7 % off
        load_image(_gray(tmp_path / "scaled.png", 112, 144), (224, 288))  # same aspect, other size
        load_image(_gray(tmp_path / "same.png", 224, 288), (224, 288))


def test_explain_shows_the_warning_once_per_image(tmp_path):
    """`diffice explain` (default warning filters): one line per stretched image on stderr, naming it, as the
    command's own warning line (not Python's file:line and source line)."""
    models = write_tiny_models(tmp_path / "models")
    images = tmp_path / "in"
    images.mkdir()
    for name, (h, w) in {"wide_a.png": (8, 48), "wide_b.png": (8, 48), "fine.png": (32, 48)}.items():
        rng = np.random.default_rng(len(name))
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(images / name)
    (tmp_path / "run.toml").write_text(f"""
[models]
unet = "{models / "ddpm.safetensors"}"
num_heads = 1
classifier = "{models / "f.safetensors"}"
classifier_kind = "plane"
[diffusion]
respacing = "40"
[method]
iterations = 1
tau = 1
lambda_c = [1]
lambda_p = 0
[run]
image_size = [16, 24]
batch_size = 1
""")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffice",
            "explain",
            "--config",
            str(tmp_path / "run.toml"),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if "aspect ratio" in l]
    assert len(lines) == 2 and all(l.startswith("diffice explain: warning: ") for l in lines), proc.stderr
    assert "load_image(" not in proc.stderr and ".py:" not in proc.stderr
    for name in ("wide_a.png", "wide_b.png"):
        assert sum(str(images / name) in l and "8 x 48" in l and "16 x 24" in l for l in lines) == 1
    assert "fine.png" not in proc.stderr


# ---- DICOM (pydicom writes real files: file meta, Explicit VR Little Endian, an ultrasound SOP class) ----


def _dicom(
    path: Path, pixels: np.ndarray, *, bits_stored=None, photometric="MONOCHROME2", frames=None, **attributes
) -> Path:
    """Writes `pixels` ((rows, columns), (frames, rows, columns), RGB with a last axis of 3) as a DICOM file;
    PixelRepresentation follows the dtype (1 for signed), BitsAllocated its size, BitsStored defaults to it."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    pixels = np.ascontiguousarray(pixels)
    rgb = photometric == "RGB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if frames else UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)  # pydicom 2
    assert pydicom.dcmread(path).Modality == "US"
    return path


def _row(values, dtype) -> np.ndarray:
    return np.tile(np.array(values, dtype), (4, 1))  # 4 x 4, one value a column: no resize at (4, 4)


@pytest.mark.parametrize(
    "name, pixels, bits_stored, unit",
    [
        ("u8", _row([0, 51, 102, 255], np.uint8), None, np.array([0, 51, 102, 255]) / 255),
        # 12 bits in 16-bit words: / 4095, not / 65535 (and not the image's own max)
        ("u12", _row([0, 1000, 2048, 4095], np.uint16), 12, np.array([0, 1000, 2048, 4095]) / 4095),
        ("u12_dim", _row([0, 100, 200, 300], np.uint16), 12, np.array([0, 100, 200, 300]) / 4095),
        ("u16", _row([0, 1000, 30000, 65535], np.uint16), None, np.array([0, 1000, 30000, 65535]) / 65535),
        # signed: shifted by 2**(bits - 1), then / (2**bits - 1)
        ("s16", _row([-32768, -16384, 0, 32767], np.int16), None, np.array([0, 16384, 32768, 65535]) / 65535),
        ("s12", _row([-2048, -1000, 0, 2047], np.int16), 12, np.array([0, 1048, 2048, 4095]) / 4095),
    ],
)
def test_dicom_grayscale_by_bits_stored(tmp_path, name, pixels, bits_stored, unit):
    x = load_image(_dicom(tmp_path / f"{name}.dcm", pixels, bits_stored=bits_stored), (4, 4))
    assert x.shape == (1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], np.tile(unit, (4, 1)) * 2 - 1, atol=1e-6)


def test_dicom_rgb_is_averaged(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 255  # mean 115
    x = load_image(_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"), (4, 4))
    np.testing.assert_allclose(x[0], np.full((4, 4), 115 / 255 * 2 - 1), atol=1e-6)


@pytest.mark.parametrize("columns", [4, 3])  # 3 columns: a frame must not be taken for RGB
def test_dicom_grayscale_cine_gives_its_first_frame(tmp_path, columns):
    cine = np.stack([np.full((4, columns), v, np.uint8) for v in (51, 204, 255)])
    x = load_image(_dicom(tmp_path / "cine.dcm", cine, frames=3), (4, columns))
    np.testing.assert_allclose(x[0], np.full((4, columns), 51 / 255 * 2 - 1), atol=1e-6)


def test_dicom_rgb_cine_gives_its_first_frame(tmp_path):
    cine = np.zeros((2, 4, 4, 3), np.uint8)
    cine[0] = 102
    cine[1] = 255
    x = load_image(_dicom(tmp_path / "rgb_cine.dcm", cine, photometric="RGB", frames=2), (4, 4))
    np.testing.assert_allclose(x[0], np.full((4, 4), 102 / 255 * 2 - 1), atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    # MONOCHROME1: the lowest value is displayed white, so 0 -> 1 (then +1 in [-1, 1]) and the maximum -> 0
    x = load_image(
        _dicom(tmp_path / "m1.dcm", _row([0, 51, 1000, 4095], np.uint16), bits_stored=12, photometric="MONOCHROME1"),
        (4, 4),
    )
    np.testing.assert_allclose(x[0, 0], (1 - np.array([0, 51, 1000, 4095]) / 4095) * 2 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "slope, intercept, photometric, inverted",
    [
        ("2", "-100", "MONOCHROME2", False),  # a linear rescale keeps the image: the full range maps to [0, 1]
        ("0.5", "1024", "MONOCHROME2", False),
        ("-1", "4095", "MONOCHROME2", True),  # a negative slope turns high stored values dark
        ("-1", "0", "MONOCHROME1", False),  # ... and MONOCHROME1 back
    ],
)
def test_dicom_rescale_slope_and_intercept(tmp_path, slope, intercept, photometric, inverted):
    stored = np.array([0, 1000, 2048, 4095])
    path = _dicom(
        tmp_path / "rescaled.dcm",
        _row(stored, np.uint16),
        bits_stored=12,
        photometric=photometric,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
    )
    unit = stored / 4095
    np.testing.assert_allclose(load_image(path, (4, 4))[0, 0], (1 - unit if inverted else unit) * 2 - 1, atol=1e-6)


def test_dicom_zero_rescale_slope_names_the_key(tmp_path):
    path = _dicom(tmp_path / "flat.dcm", _row([0, 1, 2, 3], np.uint8), RescaleSlope="0", RescaleIntercept="0")
    with pytest.raises(ImageReadError, match=r"flat\.dcm: .*RescaleSlope 0"):
        load_image(path, (4, 4))


def test_dicom_palette_color_is_refused_naming_the_key(tmp_path):
    path = _dicom(tmp_path / "palette.dcm", _row([0, 1, 2, 3], np.uint8), photometric="PALETTE COLOR")
    with pytest.raises(ImageReadError, match=r"palette\.dcm: .*PhotometricInterpretation 'PALETTE COLOR'"):
        load_image(path, (4, 4))


@pytest.mark.parametrize("content", [b"", b"not a dicom file\n" * 10, b"\x89PNG\r\n\x1a\n" + bytes(200)])
def test_dcm_that_is_not_dicom_names_the_file(tmp_path, content):
    pytest.importorskip("pydicom")
    path = tmp_path / "scan.dcm"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=r"scan\.dcm: not a readable DICOM image") as info:
        load_image(path, (4, 4))
    assert str(path) in str(info.value)


def test_dicom_without_pixel_data_names_the_file(tmp_path):
    path = _dicom(tmp_path / "nopixels.dcm", _row([0, 1, 2, 3], np.uint8))
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"nopixels\.dcm: not a readable DICOM image \(no pixel data"):
        load_image(path, (4, 4))


def test_dicom_without_pydicom_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"DICM")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(ImageReadError, match=r"scan\.dcm: reading DICOM needs pydicom \(pip install pydicom"):
        load_image(path, (4, 4))


def test_npy_images_in_diffices_own_range(tmp_path):
    """.npy: floats as they are in [-1, 1] (any of the usual single-image shapes), integers by their bit depth;
    values outside [-1, 1], stacks, strings and pickles are an ImageReadError naming the file."""
    rng = np.random.default_rng(0)
    image = rng.uniform(-0.9, 0.7, (5, 7)).astype(np.float32)  # neither end reached: kept, not stretched
    for i, shape in enumerate([(5, 7), (1, 5, 7), (1, 1, 5, 7)]):
        np.save(tmp_path / f"f{i}.npy", image.reshape(shape))
        np.testing.assert_allclose(load_image(tmp_path / f"f{i}.npy", (5, 7))[0], image, atol=1e-6)
    np.save(tmp_path / "f64.npy", image.astype(np.float64))
    np.testing.assert_allclose(load_image(tmp_path / "f64.npy", (5, 7))[0], image, atol=1e-6)
    np.save(tmp_path / "u8.npy", np.array([[0, 51, 102, 255]], np.uint8))
    np.testing.assert_allclose(load_image(tmp_path / "u8.npy", (1, 4))[0, 0], np.array([0, 51, 102, 255]) / 127.5 - 1,
                               atol=1e-6)  # fmt: skip
    np.save(tmp_path / "u16.npy", np.array([[0, 4095, 65535]], np.uint16))
    np.testing.assert_allclose(load_image(tmp_path / "u16.npy", (1, 3))[0, 0], np.array([0, 4095, 65535]) / 32767.5 - 1,
                               atol=1e-6)  # fmt: skip
    rgb = np.stack([image] * 3, axis=-1)
    np.save(tmp_path / "rgb.npy", rgb)
    np.testing.assert_allclose(load_image(tmp_path / "rgb.npy", (5, 7))[0], image, atol=1e-6)

    np.save(tmp_path / "wide.npy", image * 300)
    with pytest.raises(ImageReadError, match=r"wide\.npy: a floating-point \.npy image must hold values in \[-1, 1\]"):
        load_image(tmp_path / "wide.npy", (5, 7))
    np.save(tmp_path / "stack.npy", np.stack([image[None]] * 3))
    with pytest.raises(ImageReadError, match=r"stack\.npy: expected one image.*\(3, 1, 5, 7\).*one file per image"):
        load_image(tmp_path / "stack.npy", (5, 7))
    np.save(tmp_path / "nan.npy", np.where(image > 0, np.nan, image))
    with pytest.raises(ImageReadError, match=r"nan\.npy: \d+ non-finite pixel values"):
        load_image(tmp_path / "nan.npy", (5, 7))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    with pytest.raises(ImageReadError, match=r"text\.npy: expected an array of numbers, got dtype <U1"):
        load_image(tmp_path / "text.npy", (1, 2))
    np.save(tmp_path / "objects.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match=r"objects\.npy: not a readable \.npy array"):
        load_image(tmp_path / "objects.npy", (1, 1))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ImageReadError, match=r"junk\.npy: not a readable \.npy array"):
        load_image(tmp_path / "junk.npy", (1, 1))


def test_atomic_writes_name_the_file_on_every_failure(tmp_path, monkeypatch):
    """Every output goes through atomic_write_bytes: a folder in the file's place, a file in a folder's place and a
    full disk are errors naming the file written (not the temporary file), leaving no temporary file behind."""
    import errno
    import os

    from diffice.data import images

    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(IsADirectoryError, match=r"cannot write a file there: it is a folder: '.*folder'"):
        images.atomic_write_bytes(tmp_path / "folder", b"x")
    with pytest.raises(NotADirectoryError, match=r"file is a file, not a folder: '.*file/x\.html'"):
        images.atomic_write_bytes(tmp_path / "file" / "x.html", b"x")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images.os, "fsync", full_disk)
    with pytest.raises(OSError, match=r"No space left on device: '.*out\.bin'") as info:
        images.atomic_write_bytes(tmp_path / "out.bin", b"x")
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]


def test_train_ddpm_prints_the_aspect_warning_as_one_line_when_the_images_are_read(tmp_path):
    """diffice train ddpm showed Python's raw two-line warning (file:line, source) for an image --size stretches;
    now it is one "diffice train ddpm: warning:" line naming the file, shown before training starts (before the
    progress bar's first line), not when the run ends."""
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in {"wide.png": (8, 48), "fine_a.png": (32, 48), "fine_b.png": (16, 24)}.items():
        rng = np.random.default_rng(len(name))
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(images / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["OMP_NUM_THREADS"] = "1"
    tiny = ["--model-channels", "32", "--num-res-blocks", "1", "--channel-mult", "1,1", "--attention-ds", "2",
            "--num-heads", "1", "--diffusion-steps", "20"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "diffice", "train", "ddpm", "--images", str(images), "--out", str(tmp_path / "out"),
         "--size", "16", "24", "--steps", "2", "--batch-size", "2", *tiny],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    warned = [i for i, l in enumerate(lines) if "aspect ratio" in l]
    assert len(warned) == 1 and lines[warned[0]].startswith("diffice train ddpm: warning: "), proc.stderr
    assert str(images / "wide.png") in lines[warned[0]] and ".py:" not in proc.stderr
    bar = [i for i, l in enumerate(lines) if "[" in l and "]" in l and "/2" in l]
    assert bar and warned[0] < bar[0], proc.stderr
