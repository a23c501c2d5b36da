"""Pixel values and sizes of input images (issue 14, item 5): one rule by the stored pixel type (integers by their
bit depth, floats by their range, diffice.data's docstring), and a warning naming the image when resizing to the
model's size stretches it."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffice.data import AspectRatioWarning, ImageReadError, load_image
from conftest import write_tiny_models

# one row of values per file kind, and what each value becomes in [0, 1]
UNIT = np.array([0.0, 0.25, 0.5, 1.0])


def _write(path: Path, values: np.ndarray, mode=None) -> Path:
    img = np.tile(values, (4, 1))  # 4 x 4: every value in one column, no resize
    (Image.fromarray(img, mode=mode) if mode else Image.fromarray(img)).save(path)
    return path


@pytest.mark.parametrize("name, values, unit", [
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
])
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
    """`diffice explain` (default warning filters): one line per stretched image on stderr, naming it."""
    models = write_tiny_models(tmp_path / "models")
    images = tmp_path / "in"
    images.mkdir()
    for name, (h, w) in {"wide_a.png": (8, 48), "wide_b.png": (8, 48), "fine.png": (32, 48)}.items():
        rng = np.random.default_rng(len(name))
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(images / name)
    (tmp_path / "run.toml").write_text(f"""
[models]
unet = "{models / 'ddpm.safetensors'}"
num_heads = 1
classifier = "{models / 'f.safetensors'}"
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
    proc = subprocess.run([sys.executable, "-m", "diffice", "explain", "--config", str(tmp_path / "run.toml"),
                           "--images", str(images), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if "AspectRatioWarning" in l]
    assert len(lines) == 2, proc.stderr
    for name in ("wide_a.png", "wide_b.png"):
        assert sum(str(images / name) in l and "8 x 48" in l and "16 x 24" in l for l in lines) == 1
    assert "fine.png" not in proc.stderr
