"""Hypothesis on the Python side of the readers (issue 9): random bytes and corrupted copies of valid files given to
the image readers (diffice.data.images.load_image / list_images, diffice.train.networks.load_training_set) and the
weight
loaders (diffice.io.load_weights, load_safetensors). Always a Python exception naming the file, never a crash or
a hang; a crash in C would kill the test process (and show up as a failure of the whole run)."""

from __future__ import annotations

import io
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import diffice.io as dio
from diffice.data.images import MAX_IMAGE_PIXELS, ImageReadError, list_images, load_image
from diffice.train.networks import load_training_set

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)


def _png(h=12, w=10, mode="L", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")  # uint8 (h, w, 3): RGB
    return buf.getvalue()


def _valid_weights() -> dict:
    rng = np.random.default_rng(0)
    t = {"a.weight": rng.standard_normal((3, 2)).astype(np.float32), "b": np.arange(4, dtype=np.float32)}
    st_buf = io.BytesIO()
    npz_buf = io.BytesIO()
    np.savez(npz_buf, **t)
    with tempfile.TemporaryDirectory() as d:
        dio.save_safetensors(Path(d) / "w.safetensors", t)
        st_bytes = (Path(d) / "w.safetensors").read_bytes()
    del st_buf
    out = {"safetensors": st_bytes, "npz": npz_buf.getvalue()}
    try:
        import torch

        pt = io.BytesIO()
        torch.save({k: torch.from_numpy(v) for k, v in t.items()}, pt)
        out["pt"] = pt.getvalue()
    except ImportError:  # pragma: no cover - torch is a test dependency
        pass
    return out


VALID = {"png": _png(), "png_rgb": _png(mode="RGB"), **_valid_weights()}


@st.composite
def corrupted(draw, kind: str):
    """A valid file of `kind` truncated, bit-flipped, overwritten in a run, or extended."""
    data = bytearray(VALID[kind])
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "append"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if how == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=16))
        data[i : i + len(chunk)] = chunk
        return bytes(data)
    if how == "insert":
        i = draw(st.integers(0, len(data)))
        return bytes(data[:i]) + draw(st.binary(min_size=1, max_size=32)) + bytes(data[i:])
    return bytes(data) + draw(st.binary(min_size=1, max_size=64))


def _check_named(exc: BaseException, path: Path) -> None:
    assert str(path) in str(exc) or (isinstance(exc, OSError) and exc.filename == str(path)), (
        f"{type(exc).__name__} does not name {path}: {exc}"
    )


# One folder for every example's files, removed when the module's tests are done (at interpreter exit).
_SCRATCH = tempfile.TemporaryDirectory(prefix="diffice-bad-inputs-")


def _fresh_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH.name))


def _write(data: bytes, name: str) -> Path:
    d = _fresh_dir("bad-")
    p = d / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- images


@SETTINGS
@pytest.mark.filterwarnings("ignore::diffice.data.images.AspectRatioWarning")  # random images: odd shapes on purpose
@given(
    data=st.one_of(st.binary(max_size=512), corrupted("png"), corrupted("png_rgb")),
    suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp"]),
)
def test_load_image_random_and_corrupted(data, suffix):
    p = _write(data, "img" + suffix)
    try:
        img = load_image(p, (8, 8))
    except ImageReadError as exc:
        _check_named(exc, p)
    else:  # a corruption Pillow tolerates (e.g. in an ancillary chunk): still a proper image
        assert img.shape == (1, 8, 8) and img.dtype == np.float32
        assert np.all(np.isfinite(img)) and img.min() >= -1 and img.max() <= 1


def test_load_image_refuses_a_huge_canvas_before_decoding(tmp_path):
    """A PNG whose header claims 2^26 pixels (a few hundred bytes on disk) is refused before any pixel is decoded."""
    png = bytearray(_png(4, 4))
    # IHDR: width at bytes 16..20, height at 20..24, then its CRC at 29..33
    import zlib

    png[16:24] = struct.pack(">II", 1 << 13, 1 << 13)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    p = tmp_path / "huge.png"
    p.write_bytes(bytes(png))
    with pytest.raises(ImageReadError, match="pixel limit") as info:
        load_image(p, (8, 8))
    _check_named(info.value, p)
    assert (1 << 26) > MAX_IMAGE_PIXELS


@SETTINGS
@given(
    names=st.lists(
        st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=8), max_size=5, unique=True
    ),
    suffixes=st.lists(st.sampled_from([".png", ".PNG", ".txt", ".jpeg", "", ".dcm"]), min_size=5, max_size=5),
)
def test_list_images_any_folder(names, suffixes):
    d = _fresh_dir("list-")
    for name, suffix in zip(names, suffixes):
        (d / (name + suffix)).write_bytes(b"x")
    expected = sorted(d / (n + s) for n, s in zip(names, suffixes) if s.lower() in (".png", ".jpeg", ".dcm"))
    if expected:
        assert list_images(d) == expected
    else:
        with pytest.raises(ValueError, match=str(d)):
            list_images(d)


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "nope")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.filterwarnings("ignore::diffice.data.images.AspectRatioWarning")  # random images: odd shapes on purpose
@given(
    bad=st.one_of(st.binary(max_size=256), corrupted("png")),
    position=st.integers(0, 2),
    csv_text=st.one_of(st.none(), st.text(max_size=80)),
)
def test_load_training_set_with_a_bad_file(bad, position, csv_text):
    d = _fresh_dir("train-")
    images = d / "images"
    images.mkdir()
    for i in range(3):
        (images / f"im{i}.png").write_bytes(bad if i == position else _png(seed=i))
    labels = None
    if csv_text is not None:
        labels = d / "labels.csv"
        labels.write_text(csv_text)
    try:
        ts = load_training_set(images, size=(8, 8), labels=labels)
    except ValueError as exc:
        assert str(images / f"im{position}.png") in str(exc) or (labels is not None and str(labels) in str(exc)), str(
            exc
        )
    else:
        assert ts.images.shape == (3, 1, 8, 8) and np.all(np.abs(ts.images) <= 1)


# ---------------------------------------------------------------- weights


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=1024),
        corrupted("safetensors"),
        corrupted("npz"),
        *([corrupted("pt")] if "pt" in VALID else []),
    ),
    loader=st.sampled_from(["load_weights", "load_safetensors"]),
)
def test_weight_loaders_random_and_corrupted(data, loader):
    p = _write(data, "model.bin")
    try:
        out = getattr(dio, loader)(p)
    except ValueError as exc:
        assert str(exc).startswith(str(p)), str(exc)
    else:
        assert isinstance(out, dict)
        for name, arr in out.items():
            assert isinstance(name, str) and arr.dtype == np.float32


@SETTINGS
@given(claim=st.integers(0, 2**64 - 1), shape=st.lists(st.integers(0, 2**40), min_size=0, max_size=4))
def test_safetensors_size_claims(claim, shape):
    """Header lengths and shapes up to a terabyte and beyond: refused from the header, before allocating."""
    header = f'{{"x":{{"dtype":"F32","shape":{list(shape)},"data_offsets":[0,{claim}]}}}}'.encode()
    p = _write(struct.pack("<Q", len(header)) + header + b"\0" * 16, "claim.safetensors")
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    try:
        out = dio.load_safetensors(p)
    except ValueError as exc:
        assert str(exc).startswith(str(p))
    else:
        assert claim == 4 * numel <= 16 and out["x"].shape == tuple(shape)
    q = _write(struct.pack("<Q", claim) + b"{}", "len.safetensors")
    if claim != 2:
        with pytest.raises(ValueError, match=str(q)):
            dio.load_safetensors(q)


def test_zip_member_claiming_a_terabyte(tmp_path):
    """An npz whose member's central-directory size says 2^40 bytes (ZIP64) from a few compressed bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", b"\0" * 100)
    data = bytearray(buf.getvalue())
    cd = data.find(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFFF)  # size -> ZIP64 extra field (absent): refused
    p = tmp_path / "bomb.npz"
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(p)):
        dio.load_npz(p)
    data[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFF0)  # 4 GB from a few bytes: beyond deflate's ratio
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="beyond deflate's limit|inflates to|size"):
        dio.load_npz(p)


@pytest.mark.parametrize("bad", [b"", b"\0", b"PK\x05\x06" + b"\0" * 18, b"\x80\x02}q\x00.", b"{}", b"8" * 9])
def test_tiny_files(tmp_path, bad):
    p = tmp_path / "tiny.pt"
    p.write_bytes(bad)
    for load in (dio.load_weights, dio.load_torch, dio.load_npz, dio.load_safetensors):
        try:
            load(p)
        except ValueError as exc:
            assert str(exc).startswith(str(p)), str(exc)
