"""Image reading and writing: formats, grayscale, resizing, ranges, clear errors."""

import numpy as np
import pytest
from PIL import Image

from diffice.data.images import ImageReadError, list_images, load_image, save_png, strip, to_uint8


def test_png_jpeg_tiff_rgb_and_16_bit(tmp_path, rng):
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "c.tif")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "d.png")
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.jpg", "c.tif", "d.png"]
    for f in files:
        x = load_image(f, (30, 40))
        assert x.shape == (1, 30, 40) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(load_image(tmp_path / "a.png", (30, 40))[0], rgb.mean(axis=2) / 127.5 - 1, atol=1e-6)
    assert load_image(tmp_path / "a.png", (56, 72)).shape == (1, 56, 72)


def test_roundtrip_png(tmp_path, rng):
    x = rng.uniform(-1, 1, (1, 20, 28)).astype(np.float32)
    save_png(tmp_path / "out" / "x.png", x)
    back = load_image(tmp_path / "out" / "x.png", (20, 28))
    assert np.abs(back - x).max() <= 1 / 127.5 + 1e-6
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert strip([x, x, x]).shape == (20, 3 * 28 + 8)
    assert to_uint8(np.array([[-2.0, 0.0, 2.0]])).tolist() == [[0, 128, 255]]


def test_errors_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image(tmp_path / "broken.png", (8, 8))
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "empty")


def test_a_file_where_a_folder_of_images_is_expected_is_named_as_a_file(tmp_path):
    from diffice.train.ddpm import load_images

    save_png(tmp_path / "a.png", np.zeros((8, 8), np.float32))
    with pytest.raises(NotADirectoryError) as info:
        list_images(tmp_path / "a.png")
    assert str(info.value) == f"expected a folder of images, got the file {tmp_path / 'a.png'}"
    with pytest.raises(
        NotADirectoryError, match=r"expected a folder of images or a \.npy array \(N, H, W\), got the file"
    ):
        load_images(tmp_path / "a.png")
    with open(tmp_path / "B.NPY", "wb") as f:  # a .npy array, whatever the case of its suffix
        np.save(f, np.zeros((2, 8, 8), np.float32))
    assert load_images(tmp_path / "B.NPY").shape == (2, 1, 8, 8)
