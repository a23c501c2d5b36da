"""Weight-file readers and the safetensors writer (diffice.io), against numpy, torch and the safetensors package.

Malformed files are generated here: every prefix of small files, single flipped bytes, hand-made headers and
pickles. Each must raise ValueError (never crash, never run anything); missing files and directories raise
FileNotFoundError / IsADirectoryError.
"""

from __future__ import annotations

import collections
import csv
import io as pyio
import json
import os
import pickle
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, randn

from diffice import io as dio

# ---------------------------------------------------------------- helpers


def st_file(path: Path, header: dict | str, data: bytes = b"", header_len: int | None = None, pad: bool = True) -> Path:
    """A hand-made safetensors file: header dict (or raw JSON text), data section bytes."""
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    h = text.encode()
    if pad:
        h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)
    return path


def f32_header(**shapes) -> tuple[dict, bytes]:
    """Header + zero data for F32 tensors packed in the given order."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    return header, bytes(offset)


class _Storage:
    """Stands for a torch storage in a hand-made checkpoint pickle (pickled as a persistent id)."""

    def __init__(self, key: str, cls, numel: int):
        self.key, self.cls, self.numel = key, cls, numel


class _Tensor:
    """Pickles exactly like torch.save's tensors: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def _pickle(obj, legacy: bool, protocol: int = 2) -> bytes:
    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                pid = ("storage", o.cls, o.key, "cpu", o.numel)
                return pid + (None,) if legacy else pid
            return None

    buf = pyio.BytesIO()
    P(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def torch_zip_file(
    path: Path, obj, records: dict[str, bytes], byteorder: bytes | None = b"little", pkl: bytes | None = None
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl if pkl is not None else _pickle(obj, legacy=False))
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, data in records.items():
            z.writestr(f"archive/data/{key}", data)
    return path


LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def torch_legacy_file(
    path: Path, obj, storages: list[tuple[str, int, bytes]], body: bytes | None = None, sys_info: dict = SYS_INFO
) -> Path:
    """storages: (key, element count written in the file, raw bytes) in file order."""
    parts = [
        LEGACY_MAGIC,
        pickle.dumps(1001, protocol=2),
        pickle.dumps(sys_info, protocol=2),
        body if body is not None else _pickle(obj, legacy=True),
        pickle.dumps([k for k, _, _ in storages], protocol=2),
    ]
    for _, count, data in storages:
        parts += [struct.pack("<q", count), data]
    path.write_bytes(b"".join(parts))
    return path


def assert_same(got: dict, want: dict):
    assert list(got) == list(want)
    for k, v in want.items():
        v = v.detach().float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float32)
        assert got[k].dtype == np.float32 and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def must_fail(path, match: str, loader=dio.load_weights):
    with pytest.raises(ValueError, match=match) as info:
        loader(path)
    assert str(path) in str(info.value), f"message does not name the file: {info.value}"
    return info.value


# ---------------------------------------------------------------- safetensors


def random_tensors(rng, count=6) -> dict[str, np.ndarray]:
    out = {}
    for i in range(count):
        ndim = int(rng.integers(0, 5))
        shape = tuple(int(s) for s in rng.integers(1, 8, size=ndim))
        out[f"blocks.{i}.w{ndim}"] = np.asarray(randn(rng, *shape))
    out["empty"] = np.zeros((0, 3), np.float32)
    return out


def test_safetensors_roundtrip(tmp_path, rng):
    tensors = random_tensors(rng)
    meta = {"format": "pt", "note": 'ü "quoted" \\ \n\t\x01 ☃'}
    path = tmp_path / "model.safetensors"
    dio.save_safetensors(path, tensors, meta)
    got = dio.load_safetensors(path)
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
        assert got[k].flags.writeable and got[k].flags.c_contiguous
    assert dio.load_safetensors_metadata(path) == meta
    assert dio.load_weights(str(path)).keys() == got.keys()
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"], "temporary file left behind"


def test_safetensors_converts_inputs_and_overwrites(tmp_path, rng):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old")
    dio.save_safetensors(path, {"i": np.arange(6).reshape(2, 3), "d": np.float64(2.5), "t": randn(rng, 4, 5).T})
    got = dio.load_safetensors(path)
    np.testing.assert_array_equal(got["i"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert got["d"].shape == () and got["d"] == 2.5
    assert got["t"].shape == (5, 4)
    assert dio.load_safetensors_metadata(path) == {}


def test_safetensors_save_errors(tmp_path):
    with pytest.raises(ValueError, match="'w'.*5 dimensions"):
        dio.save_safetensors(tmp_path / "a.safetensors", {"w": np.zeros((1, 1, 1, 1, 2), np.float32)})
    with pytest.raises(TypeError, match="'w'.*dtype"):
        dio.save_safetensors(tmp_path / "a.safetensors", {"w": np.array(["a"])})
    with pytest.raises(TypeError, match="names must be str"):
        dio.save_safetensors(tmp_path / "a.safetensors", {1: np.zeros(2, np.float32)})
    with pytest.raises(TypeError, match="metadata"):
        dio.save_safetensors(tmp_path / "a.safetensors", {"w": np.zeros(2, np.float32)}, {"k": 3})
    with pytest.raises(ValueError, match="__metadata__"):
        dio.save_safetensors(tmp_path / "a.safetensors", {"__metadata__": np.zeros(2, np.float32)})
    with pytest.raises(OSError, match="no_such_dir"):
        dio.save_safetensors(tmp_path / "no_such_dir" / "a.safetensors", {"w": np.zeros(2, np.float32)})
    (tmp_path / "adir").mkdir()
    with pytest.raises(OSError, match="adir"):
        dio.save_safetensors(tmp_path / "adir", {"w": np.zeros(2, np.float32)})
    assert [p.name for p in tmp_path.iterdir()] == ["adir"], "temporary file left behind"


def test_safetensors_matches_reference_package(tmp_path, rng):
    st = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file, save_file

    tensors = random_tensors(rng)
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    dio.save_safetensors(ours, tensors, {"format": "np"})
    save_file(tensors, str(theirs), metadata={"format": "np"})
    assert ours.read_bytes() == theirs.read_bytes(), "header or layout differs from the reference writer"
    loaded = load_file(str(ours))
    for k, v in tensors.items():
        np.testing.assert_array_equal(loaded[k], v)
    with st.safe_open(str(ours), "np") as f:
        assert f.metadata() == {"format": "np"}

    # The reference writer's other dtypes (via torch for bfloat16) load exactly.
    from safetensors.torch import save_file as save_torch

    t = {
        "f16": torch.randn(3, 5).half(),
        "bf16": torch.randn(7, 2).bfloat16(),
        "f64": torch.randn(4, dtype=torch.float64),
        "i64": torch.tensor(12345, dtype=torch.int64),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
    }
    save_torch(t, str(theirs))
    got = dio.load_safetensors(theirs)  # the reference orders by dtype alignment, then name
    assert_same(dict(sorted(got.items())), dict(sorted(t.items())))


def test_half_and_bfloat16_conversion_is_exact(tmp_path):
    bits = np.arange(65536, dtype=np.uint16)
    header = {
        "h": {"dtype": "F16", "shape": [65536], "data_offsets": [0, 131072]},
        "b": {"dtype": "BF16", "shape": [256, 256], "data_offsets": [131072, 262144]},
    }
    got = dio.load_safetensors(st_file(tmp_path / "x.safetensors", header, bits.tobytes() * 2))
    want_h = bits.view(np.float16).astype(np.float32)  # numpy's exact conversion, NaN payloads included
    np.testing.assert_array_equal(got["h"].view(np.uint32), want_h.view(np.uint32))
    want_b = (bits.astype(np.uint32) << 16).reshape(256, 256)
    np.testing.assert_array_equal(got["b"].view(np.uint32), want_b)
    assert np.isinf(got["h"][0x7C00]) and np.isnan(got["h"][0x7E00]) and got["h"][1] == 2.0**-24


def test_safetensors_f64_and_ints(tmp_path):
    d = np.array([1e300, -1e-300, np.pi, -0.0], np.float64)
    i = np.array([-(2**40), 7], np.int64)
    header = {
        "d": {"dtype": "F64", "shape": [4], "data_offsets": [0, 32]},
        "i": {"dtype": "I64", "shape": [2], "data_offsets": [32, 48]},
        "u": {"dtype": "U8", "shape": [1, 1, 1, 1], "data_offsets": [48, 49]},
        "b": {"dtype": "BOOL", "shape": [1], "data_offsets": [49, 50]},
    }
    got = dio.load_safetensors(st_file(tmp_path / "x.safetensors", header, d.tobytes() + i.tobytes() + b"\xff\x01"))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got["d"], d.astype(np.float32))  # 1e300 -> inf, like torch's .float()
    np.testing.assert_array_equal(got["i"], i.astype(np.float32))
    assert got["u"].reshape(()) == 255 and got["b"][0] == 1


@pytest.mark.parametrize(
    "header, data, match",
    [
        (
            {"w": {"dtype": "F32", "shape": [5, 7], "data_offsets": [0, 100]}},
            bytes(100),
            r"tensor 'w': data_offsets \[0, 100\] but shape \(5, 7\) float32 needs 140 bytes",
        ),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "beyond the 4-byte data section"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "out of order"),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            bytes(24),
            "'a' and 'b' overlap",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "unused bytes before tensor 'a'"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8), "cover only 4"),
        ({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, bytes(1), "unsupported dtype 'F8_E4M3'"),
        ({"w": {"dtype": "F32", "shape": [1, 1, 1, 1, 1], "data_offsets": [0, 4]}}, bytes(4), "5 dimensions"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "shape entry 0"),
        ({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, bytes(4), "shape entry 0"),
        ({"w": {"dtype": "F32", "shape": [2**62, 8], "data_offsets": [0, 4]}}, bytes(4), "too large"),
        ({"w": {"dtype": "F32", "shape": [1]}}, bytes(4), 'lacks "data_offsets"'),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}, bytes(4), "unknown header field"),
        ({"w": [1, 2]}, b"", "not an object"),
        ({"__metadata__": {"k": 1}}, b"", "not a string"),
        ({"__metadata__": "x"}, b"", '__metadata__" is not an object'),
    ],
)
def test_safetensors_rejects_bad_headers(tmp_path, header, data, match):
    must_fail(st_file(tmp_path / "model.safetensors", header, data), match, dio.load_safetensors)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"a":1,}', "not valid JSON"),
        ("{'a':1}", "not valid JSON"),
        ('{"a":NaN}', "not valid JSON"),
        ('{"w":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', "leading zero"),
        ('{"a":{},"a":{}}', "appears twice"),
        ('{"a":"\\ud800"}', "surrogate"),
        ('{"a":"\xff"}', "not valid JSON"),
        ('{"a":"x\\u0000"}', "not valid JSON"),
        ('{"a":' + "[" * 100 + "]" * 100 + "}", "nesting too deep"),
        ('{"a":{}} x', "trailing characters"),
        ('["a"]', "does not start with"),
        ('  {"a":1}', "does not start with"),
        ('{"a":"unterminated}', "unterminated string"),
    ],
)
def test_safetensors_rejects_bad_json(tmp_path, text, match):
    path = tmp_path / "model.safetensors"
    h = text.encode("latin-1") if "\xff" in text else text.encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h)
    must_fail(path, match, dio.load_safetensors)


def test_safetensors_rejects_bad_header_length(tmp_path):
    header, data = f32_header(w=(2,))
    must_fail(st_file(tmp_path / "a.safetensors", header, data, header_len=2**63 + 5), "over the 100000000-byte limit")
    must_fail(st_file(tmp_path / "b.safetensors", header, data, header_len=100_000_000), "exceeds the")
    must_fail(st_file(tmp_path / "c.safetensors", header, data, header_len=0), "does not start")
    (tmp_path / "d.safetensors").write_bytes(b"\x01\x02\x03")
    must_fail(tmp_path / "d.safetensors", "too short")


# ---------------------------------------------------------------- numpy .npz


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_matches_np_load(tmp_path, rng, compressed):
    arrays = {
        "f4": randn(rng, 3, 5, 7),
        "f2": randn(rng, 11).astype(np.float16),
        "f8": rng.standard_normal((2, 3, 4, 5)),
        "i8": rng.integers(-(10**6), 10**6, size=(4, 3)),
        "i4": rng.integers(-100, 100, size=5).astype(np.int32),
        "u1": rng.integers(0, 255, size=(2, 2)).astype(np.uint8),
        "b1": rng.random(6) > 0.5,
        "scalar": np.float64(3.25),
        "fortran": np.asfortranarray(randn(rng, 3, 4, 5)),
        "fortran2d": np.asfortranarray(rng.standard_normal((7, 2))),
        "empty": np.zeros((0, 4), np.float32),
        "model/conv.weight": randn(rng, 5, 3, 3, 3),
    }
    path = tmp_path / "w.npz"
    (np.savez_compressed if compressed else np.savez)(path, randn(rng, 2, 2), **arrays)
    want = dict(np.load(path))
    got = dio.load_npz(path)
    assert list(got) == list(want) and "arr_0" in got
    for k, v in want.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v.astype(np.float32), err_msg=k)
    assert dio.load_weights(path).keys() == got.keys()


def test_npz_rejects_unsupported_arrays(tmp_path):
    np.savez(tmp_path / "be.npz", w=np.arange(3, dtype=">f4"))
    must_fail(tmp_path / "be.npz", "big-endian dtype '>f4'")
    np.savez(tmp_path / "obj.npz", w=np.array([{}, 1], dtype=object))
    must_fail(tmp_path / "obj.npz", "dtype object")
    np.savez(tmp_path / "c.npz", w=np.zeros(2, np.complex64))
    must_fail(tmp_path / "c.npz", "unsupported dtype '<c8'")
    np.savez(tmp_path / "s.npz", w=np.zeros(2, dtype=[("a", "<f4")]))
    must_fail(tmp_path / "s.npz", "structured dtype")
    np.savez(tmp_path / "5d.npz", w=np.zeros((1, 1, 1, 1, 2), np.float32))
    must_fail(tmp_path / "5d.npz", "'w' has 5 dimensions; at most 4")
    good = pyio.BytesIO()
    np.lib.format.write_array(good, np.zeros(2, np.float32))
    with zipfile.ZipFile(tmp_path / "txt.npz", "w") as z:
        z.writestr("a.npy", good.getvalue())
        z.writestr("notes.txt", b"hello")
    must_fail(tmp_path / "txt.npz", "not a .npy array", dio.load_npz)
    # A header claiming a huge shape in a tiny member is refused before allocating.
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", 70) + header.ljust(70)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("w.npy", npy)
    must_fail(tmp_path / "huge.npz", "needs 4000000000000 bytes")


def test_npz_rejects_malformed_npy_headers(tmp_path):
    def member(header: str, data: bytes = bytes(8)) -> bytes:
        h = header.encode()
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data

    cases = {
        "evil": ("{'descr': __import__('os').system('true'), 'fortran_order': False, 'shape': (2,), }", "malformed"),
        "extra": ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "malformed"),
        "missing": ("{'descr': '<f4', 'shape': (2,), }", "malformed"),
        "notuple": ("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", "malformed"),
        "size": (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            "needs 12 bytes of data, the member has 8",
        ),
    }
    for name, (header, match) in cases.items():
        with zipfile.ZipFile(tmp_path / f"{name}.npz", "w") as z:
            z.writestr("w.npy", member(header))
        must_fail(tmp_path / f"{name}.npz", match)
    with zipfile.ZipFile(tmp_path / "v9.npz", "w") as z:
        z.writestr("w.npy", b"\x93NUMPY\x09\x00" + bytes(20))
    must_fail(tmp_path / "v9.npz", "version 9.0")


def test_npz_header_versions_2_and_3(tmp_path, rng):
    a = randn(rng, 3, 4)
    for version in [(2, 0), (3, 0)]:
        buf = pyio.BytesIO()
        np.lib.format.write_array(buf, a, version=version)
        with zipfile.ZipFile(tmp_path / "v.npz", "w") as z:
            z.writestr("a.npy", buf.getvalue())
        np.testing.assert_array_equal(dio.load_npz(tmp_path / "v.npz")["a"], a)


SONONET = SHARED / "weights" / "sononet" / "SonoNet16.npz"


@pytest.mark.skipif(not SONONET.exists(), reason=f"{SONONET} not present")
def test_sononet16_npz_matches_np_load():
    want = np.load(SONONET)
    got = dio.load_weights(SONONET)
    assert list(got) == list(want.files) and len(got) == 75
    assert sum(v.size for v in got.values()) == 933_064
    for k in want.files:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ---------------------------------------------------------------- PyTorch checkpoints


def make_state_dict() -> collections.OrderedDict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.Linear(7, 11))
    net(torch.randn(2, 3, 9, 9))  # a training-mode step: running stats and num_batches_tracked change
    sd = net.state_dict()
    base = torch.randn(6, 8)
    sd["half"] = torch.randn(4, 3).half()
    sd["bfloat"] = torch.randn(2, 7).bfloat16()
    sd["double"] = torch.randn(5, dtype=torch.float64)
    sd["param"] = torch.nn.Parameter(torch.randn(3, 2))
    sd["transposed"] = base.t()  # non-contiguous view of a shared storage
    sd["sliced"] = base[1:4, 2:7:2]  # storage offset + strides
    sd["permuted"] = torch.randn(2, 3, 4, 5).permute(3, 1, 0, 2)
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["ints"] = torch.arange(-5, 5, dtype=torch.int32)
    return sd


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_state_dict(tmp_path, legacy, protocol):
    sd = make_state_dict()
    assert sd["1.num_batches_tracked"].dtype == torch.int64
    path = tmp_path / "checkpoint.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    got = dio.load_torch(path)
    assert_same(got, sd)
    assert got["1.num_batches_tracked"].shape == ()
    assert_same(dio.load_weights(path), sd)


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_nested_and_ddp(tmp_path, legacy):
    sd = make_state_dict()
    save = lambda obj, name: torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=not legacy)  # noqa: E731
    other = collections.OrderedDict(w=torch.ones(2))
    save({"epoch": 3, "state_dict": sd, "model": other, "optimizer": {"lr": 0.1, "state": {0: torch.zeros(3)}}}, "a.pt")
    assert_same(dio.load_torch(tmp_path / "a.pt"), sd)  # 'state_dict' wins over 'model'
    save({"model": other, "ema": sd, "step": 10}, "b.pt")
    assert_same(dio.load_torch(tmp_path / "b.pt"), other)
    save({"ema": sd}, "c.pt")
    assert_same(dio.load_torch(tmp_path / "c.pt"), sd)
    ddp = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    save(ddp, "d.pt")
    assert_same(dio.load_torch(tmp_path / "d.pt"), sd)
    mixed = collections.OrderedDict([("module.a", torch.ones(1)), ("b", torch.zeros(1))])
    save(mixed, "e.pt")
    assert list(dio.load_torch(tmp_path / "e.pt")) == ["module.a", "b"]  # only stripped when every key has it
    save({"epoch": 3, "net": sd}, "f.pt")
    must_fail(tmp_path / "f.pt", r"no tensors found.*'epoch', 'net'")
    save([torch.ones(2)], "g.pt")
    must_fail(tmp_path / "g.pt", "holds a list, not a dict")
    save({"w": torch.zeros(1, 1, 1, 1, 2)}, "h.pt")
    must_fail(tmp_path / "h.pt", "tensor 'w' has 5 dimensions; at most 4 are supported")


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_compile_and_wrapper_prefixes_are_stripped(tmp_path, legacy):
    """torch.compile's '_orig_mod.' is stripped like DDP's 'module.', in either order and nested; only when every
    tensor key has it."""
    sd = make_state_dict()
    for i, prefix in enumerate(["_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module."]):
        path = tmp_path / f"{i}.pt"
        wrapped = collections.OrderedDict((prefix + k, v) for k, v in sd.items())
        torch.save({"model": wrapped, "step": 3}, path, _use_new_zipfile_serialization=not legacy)
        assert_same(dio.load_torch(path), sd)
    mixed = collections.OrderedDict([("_orig_mod.a", torch.ones(1)), ("module.b", torch.zeros(1))])
    torch.save(mixed, tmp_path / "m.pt", _use_new_zipfile_serialization=not legacy)
    assert list(dio.load_torch(tmp_path / "m.pt")) == ["_orig_mod.a", "module.b"]


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_whole_pickled_module_is_refused_saying_to_save_the_state_dict(tmp_path, legacy):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 3), path, _use_new_zipfile_serialization=not legacy)
    err = must_fail(path, r"refusing pickle global 'torch\.nn\.modules\.linear\.Linear'")
    assert "torch.save(model.state_dict(), path)" in str(err) and "\n" not in str(err)


def test_torch_handmade_views(tmp_path):
    data = np.arange(24, dtype=np.float32)
    s = _Storage("0", torch.FloatStorage, 24)
    obj = {
        "t": _Tensor(s, 2, (3, 4), (1, 5)),  # transposed-like, with offset
        "row": _Tensor(s, 23, (1,), (1,)),
        "bcast1": _Tensor(s, 0, (1, 4), (0, 1)),
    }
    got = dio.load_torch(torch_zip_file(tmp_path / "v.pt", obj, {"0": data.tobytes()}))
    want = torch.from_numpy(data).as_strided((3, 4), (1, 5), 2).numpy()
    np.testing.assert_array_equal(got["t"], want)
    assert got["row"][0] == 23 and got["bcast1"].shape == (1, 4)

    bad = {
        "past end": ({"w": _Tensor(s, 20, (2, 3), (3, 1))}, {"0": data.tobytes()}, "reaches past the 24 elements"),
        "broadcast": ({"w": _Tensor(s, 0, (100, 4), (0, 1))}, {"0": data.tobytes()}, "broadcast views"),
        "huge stride": ({"w": _Tensor(s, 0, (2, 2), (2**62, 1))}, {"0": data.tobytes()}, "reaches past"),
        "short record": ({"w": _Tensor(s, 0, (2,), (1,))}, {"0": data.tobytes()[:-4]}, "has 92 bytes"),
        "missing record": ({"w": _Tensor(s, 0, (2,), (1,))}, {}, "'archive/data/0' is missing"),
        "numel claim": ({"w": _Tensor(_Storage("0", torch.FloatStorage, 2**40), 0, (2,), (1,))}, {}, "claims"),
        "dims mismatch": ({"w": _Tensor(s, 0, (2, 2), (1,))}, {"0": data.tobytes()}, "mismatched size and stride"),
        "negative": ({"w": _Tensor(s, 0, (-2,), (1,))}, {"0": data.tobytes()}, "non-negative"),
    }
    for _name, (obj, records, match) in bad.items():
        must_fail(torch_zip_file(tmp_path / "checkpoint.pt", obj, records), match)
    pkl = _pickle({"a": _Tensor(s, 0, (2,), (1,)), "b": _Tensor(s, 2, (2,), (1,))}, legacy=False)
    pkl = pkl.replace(b"X\x01\x00\x00\x00b", b"X\x01\x00\x00\x00a")
    must_fail(torch_zip_file(tmp_path / "dup.pt", None, {"0": data.tobytes()}, pkl=pkl), "tensor 'a' appears twice")
    must_fail(
        torch_zip_file(tmp_path / "big.pt", {"w": _Tensor(s, 0, (2,), (1,))}, {"0": data.tobytes()}, byteorder=b"big"),
        "only little-endian",
    )


def test_torch_legacy_handmade(tmp_path):
    data = np.arange(6, dtype=np.float32)
    s = _Storage("140", torch.FloatStorage, 6)
    obj = {"w": _Tensor(s, 0, (2, 3), (3, 1))}
    good = torch_legacy_file(tmp_path / "ok.pt", obj, [("140", 6, data.tobytes())])
    np.testing.assert_array_equal(dio.load_torch(good)["w"], data.reshape(2, 3))
    cases = {
        "count": ([("140", 7, data.tobytes())], {}, "has 7 elements in the file, 6 in the pickle"),
        "truncated": ([("140", 6, data.tobytes()[:20])], {}, "truncated"),
        "trailing": ([("140", 6, data.tobytes() + b"xx")], {}, "2 unexpected bytes"),
        "unknown key": ([("999", 6, data.tobytes())], {}, "which no tensor uses"),
        "missing": ([], {}, "storage '140' has no data"),
        "big endian": ([("140", 6, data.tobytes())], {"sys_info": {**SYS_INFO, "little_endian": False}}, "big-endian"),
    }
    for _name, (storages, kw, match) in cases.items():
        must_fail(torch_legacy_file(tmp_path / "checkpoint.pt", obj, storages, **kw), match)
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    must_fail(tmp_path / "p.pkl", "not a PyTorch checkpoint")


# Pickles that would run code if unpickled by Python; each must be refused by name, and nothing may run.
def evil_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    cmd = f"touch {marker}".encode()
    binunicode = b"X" + struct.pack("<I", len(cmd)) + cmd
    return {
        "os.system": (b"\x80\x02cos\nsystem\n" + binunicode + b"\x85R.", "refusing pickle global 'os.system'"),
        "posix.system": (b"\x80\x02cposix\nsystem\n" + binunicode + b"\x85R.", "refusing pickle global 'posix.system'"),
        "stack_global": (
            b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93" + binunicode + b"\x85R.",
            "refusing pickle global 'builtins.eval'",
        ),
        "torch.load": (b"\x80\x02ctorch\nload\n.", "refusing pickle global 'torch.load'"),
        "unknown opcode": (b"\x80\x02}\xff.", r"unknown opcode 0xff at offset \d+"),
        "newobj": (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "unsupported opcode NEWOBJ"),
        "inst": (b"\x80\x02(ios\nsystem\n.", "unsupported opcode INST"),
        "storage call": (b"\x80\x02ctorch\nFloatStorage\n)R.", "calls torch.FloatStorage"),
        "huge string": (b"\x80\x02X\xff\xff\xff\xff", "length runs past the end"),
        "huge bytes8": (b"\x80\x04\x8e" + b"\xff" * 8, "length runs past the end"),
        "deep marks": (b"\x80\x02" + b"(" * 5000 + b".", "nested deeper than the limit"),
        "underflow": (b"\x80\x02R.", "stack underflow"),
        "memo gap": (b"\x80\x02}q\x05.", "memo index out of sequence"),
        "memo get": (b"\x80\x02h\x00.", "memo index not defined"),
        "no stop": (b"\x80\x02}", "truncated data|unbalanced stack"),  # legacy: runs into the next pickle
        "unbalanced": (b"\x80\x02}}.", "unbalanced stack"),
        "setitem on list": (b"\x80\x02]K\x01K\x02s.", "not a dict"),
        "protocol 9": (b"\x80\x09}.", "unsupported pickle protocol"),
        "bad pid": (b"\x80\x02X\x01\x00\x00\x00xQ.", "persistent id"),
    }


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_torch_refuses_dangerous_or_unknown_pickles(tmp_path, container):
    marker = tmp_path / "pwned"
    for name, (pkl, match) in evil_pickles(marker).items():
        path = tmp_path / "checkpoint.pt"
        if container == "zip":
            torch_zip_file(path, None, {}, pkl=pkl)
        else:
            torch_legacy_file(path, None, [], body=pkl)
        err = must_fail(path, match)
        assert "checkpoint.pt" in str(err), name
        assert not marker.exists(), f"{name}: the pickle ran code"


# ---------------------------------------------------------------- corrupted files of every format


def small_files(tmp_path: Path, rng) -> dict[str, Path]:
    files = {}
    t = {"a.weight": randn(rng, 3, 2), "b": randn(rng, 4), "s": np.float32(1.5)}
    files["safetensors"] = tmp_path / "m.safetensors"
    dio.save_safetensors(files["safetensors"], t, {"k": "v"})
    files["npz"] = tmp_path / "m.npz"
    np.savez(files["npz"], **t)
    files["npz_compressed"] = tmp_path / "mc.npz"
    np.savez_compressed(files["npz_compressed"], **t)
    sd = collections.OrderedDict(w=torch.randn(2, 3).t(), n=torch.tensor(3), h=torch.randn(2).half())
    files["torch_zip"] = tmp_path / "m.pt"
    torch.save(sd, files["torch_zip"])
    files["torch_legacy"] = tmp_path / "ml.pt"
    torch.save(sd, files["torch_legacy"], _use_new_zipfile_serialization=False)
    return files


def test_every_prefix_is_rejected(tmp_path, rng):
    for kind, path in small_files(tmp_path, rng).items():
        data = path.read_bytes()
        full = dio.load_weights(path)
        assert full, kind
        cut = tmp_path / f"cut_{kind}"
        cut.write_bytes(data)
        for n in range(len(data) - 1, -1, -1):  # shrinking one file is much faster than rewriting it
            os.truncate(cut, n)
            with pytest.raises(ValueError, match="cut_"):
                dio.load_weights(cut)


def test_flipped_bytes_never_crash(tmp_path, rng):
    """Every single-byte corruption either loads (e.g. a changed name) or raises ValueError."""
    for kind, path in small_files(tmp_path, rng).items():
        data = path.read_bytes()
        bad = tmp_path / f"flip_{kind}"
        bad.write_bytes(data)
        outcomes = {"ok": 0, "error": 0}
        fd = os.open(bad, os.O_WRONLY)
        try:
            for i in range(len(data)):  # patch one byte in place, then restore it
                os.pwrite(fd, bytes([data[i] ^ int(rng.integers(1, 256))]), i)
                try:
                    dio.load_weights(bad)
                    outcomes["ok"] += 1
                except ValueError as e:
                    assert str(bad) in str(e)
                    outcomes["error"] += 1
                os.pwrite(fd, data[i : i + 1], i)
        finally:
            os.close(fd)
        assert outcomes["error"] > 0, kind


def test_zip_level_corruption(tmp_path, rng):
    path = tmp_path / "m.npz"
    np.savez(path, a=randn(rng, 30))
    data = bytearray(path.read_bytes())
    data[80] ^= 0x55  # inside the array data: the CRC catches it
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    must_fail(tmp_path / "crc.npz", "CRC-32")
    # A deflated member claiming an impossible size is refused before allocating.
    np.savez_compressed(path, a=np.zeros(1000, np.float32))
    raw = bytearray(path.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = struct.pack("<I", 0xFFFFFFF0)
    (tmp_path / "bomb.npz").write_bytes(bytes(raw))
    must_fail(tmp_path / "bomb.npz", "beyond deflate's limit")
    raw[cd + 24 : cd + 28] = struct.pack("<I", 5000)
    (tmp_path / "size.npz").write_bytes(bytes(raw))
    must_fail(tmp_path / "size.npz", "inflates to|corrupt")
    end = raw.rfind(b"PK\x05\x06")
    raw2 = bytearray(path.read_bytes())
    raw2[end + 10 : end + 12] = struct.pack("<H", 0xFFFF)  # member count
    (tmp_path / "count.npz").write_bytes(bytes(raw2))
    must_fail(tmp_path / "count.npz", "claims 65535 members")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", b"hi")
    must_fail(tmp_path / "other.zip", "neither")
    with zipfile.ZipFile(tmp_path / "bz.npz", "w", zipfile.ZIP_BZIP2) as z:
        z.writestr("a.npy", b"x" * 100)
    must_fail(tmp_path / "bz.npz", "compression method 12")


def zip64_archive(members: dict[str, bytes]) -> bytes:
    """A stored zip where every size, offset and count lives in ZIP64 fields (0xffffffff in the classic ones)."""
    out, central = bytearray(), bytearray()
    for name, data in members.items():
        n, crc, offset = name.encode(), zlib.crc32(data), len(out)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += (
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(n), len(local_extra)
            )
            + n
            + local_extra
            + data
        )
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                45,
                45,
                0,
                0,
                0,
                0,
                crc,
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(n),
                len(extra),
                0,
                0,
                0,
                0,
                0xFFFFFFFF,
            )
            + n
            + extra
        )
    cd_offset = len(out)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(members), len(members), len(central), cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def test_zip64_archives(tmp_path, rng):
    arrays = {"a": randn(rng, 5, 3), "b": np.arange(4, dtype=np.int64)}
    members = {}
    for k, v in arrays.items():
        buf = pyio.BytesIO()
        np.lib.format.write_array(buf, v)
        members[f"{k}.npy"] = buf.getvalue()
    path = tmp_path / "z64.npz"
    path.write_bytes(zip64_archive(members))
    assert {k: v.shape for k, v in np.load(path).items()} == {k: v.shape for k, v in arrays.items()}  # a valid zip
    got = dio.load_npz(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32))
    # np.savez's own ZIP64 local headers (force_zip64) load too.
    with zipfile.ZipFile(tmp_path / "forced.npz", "w") as z:
        with z.open("a.npy", "w", force_zip64=True) as f:
            f.write(members["a.npy"])
    np.testing.assert_array_equal(dio.load_npz(tmp_path / "forced.npz")["a"], arrays["a"])
    # Broken ZIP64 records.
    data = bytearray(zip64_archive(members))
    locator = data.rfind(b"PK\x06\x07")
    data[locator + 8 : locator + 16] = struct.pack("<Q", 2**40)
    (tmp_path / "bad64.npz").write_bytes(bytes(data))
    must_fail(tmp_path / "bad64.npz", "broken ZIP64 end record")
    data = bytearray(zip64_archive(members))
    cd = data.find(b"PK\x01\x02")
    data[cd + 30 : cd + 32] = struct.pack("<H", 0)  # drop the central ZIP64 extra field length
    (tmp_path / "noextra.npz").write_bytes(bytes(data))
    must_fail(tmp_path / "noextra.npz", "ZIP64|malformed|runs past")


def test_paths_and_dispatch(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        dio.load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError):
        dio.load_weights(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    must_fail(tmp_path / "empty.pt", "file is empty")
    with pytest.raises(TypeError):
        dio.load_weights(3)
    # The format comes from the bytes, not the extension.
    t = {"w": randn(rng, 2, 2)}
    dio.save_safetensors(tmp_path / "really_safetensors.pt", t)
    np.testing.assert_array_equal(dio.load_weights(str(tmp_path / "really_safetensors.pt"))["w"], t["w"])
    with open(tmp_path / "npz.bin", "wb") as f:
        np.savez(f, **t)
    np.testing.assert_array_equal(dio.load_weights(tmp_path / "npz.bin")["w"], t["w"])
    must_fail(tmp_path / "really_safetensors.pt", "not a zip archive", dio.load_npz)
    must_fail(tmp_path / "really_safetensors.pt", "not a PyTorch checkpoint", dio.load_torch)
    must_fail(tmp_path / "npz.bin", "no <archive>/data.pkl", dio.load_torch)


def test_concurrent_loads(tmp_path, rng):
    """Loads release the GIL; parallel loads of one file give identical results."""
    t = {f"w{i}": randn(rng, 64, 64) for i in range(8)}
    path = tmp_path / "m.safetensors"
    dio.save_safetensors(path, t)
    results = [None] * 4

    def work(i):
        results[i] = dio.load_weights(path)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r in results:
        for k, v in t.items():
            np.testing.assert_array_equal(r[k], v)


def test_pathlike_and_str(tmp_path, rng):
    t = {"w": randn(rng, 3)}
    dio.save_safetensors(str(tmp_path / "s.safetensors"), t)
    assert os.path.exists(tmp_path / "s.safetensors")
    for p in [tmp_path / "s.safetensors", str(tmp_path / "s.safetensors")]:
        np.testing.assert_array_equal(dio.load_safetensors(p)["w"], t["w"])


def test_save_safetensors_float16_reads_back_in_every_reader(tmp_path, rng):
    from safetensors.numpy import load_file

    tensors = {"w": randn(rng, 3, 5, 2), "b": randn(rng, 7), "scalar": np.float32(2.5)}
    path = tmp_path / "half.safetensors"
    dio.save_safetensors(path, tensors, metadata={"k": "v"}, dtype="float16")
    theirs = load_file(str(path))
    assert all(theirs[k].dtype == np.float16 for k in theirs)
    ours = dio.load_safetensors(path)
    for k, v in tensors.items():
        want = np.asarray(v, np.float16)
        assert ours[k].dtype == np.float32 and np.array_equal(ours[k], want.astype(np.float32))
        assert np.array_equal(theirs[k], want)
    assert path.stat().st_size < 8 * 16 + 200 + 2 * 38  # header + 38 halves
    with pytest.raises(ValueError, match="'big' has values beyond float16's range"):
        dio.save_safetensors(tmp_path / "x.safetensors", {"big": np.array([1e6], np.float32)}, dtype="float16")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float16'"):
        dio.save_safetensors(tmp_path / "x.safetensors", tensors, dtype="bfloat16")


def test_read_csv_rows_line_numbers_and_errors(tmp_path):
    from diffice.io import read_csv

    good = tmp_path / "labels.csv"
    good.write_text('file,label\na.png,1\n"b\nc.png",2\nd.png,3\n', encoding="utf-8")
    fields, rows = read_csv(good, ("file",), "a CSV of labels")
    assert fields == ["file", "label"]
    # the line number is where a row ends, so a quoted newline moves the next one down
    assert rows == [
        (2, {"file": "a.png", "label": "1"}),
        (4, {"file": "b\nc.png", "label": "2"}),
        (5, {"file": "d.png", "label": "3"}),
    ]
    missing = tmp_path / "missing.csv"
    missing.write_text("name,label\na.png,1\n", encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=rf"^{missing}: expected a CSV of labels with the columns \['file'\]; "
        r"it has \['name', 'label'\]$",
    ):
        read_csv(missing, ("file",), "a CSV of labels")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"file\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=rf"^{binary}: not a CSV of labels \(not UTF-8 text"):
        read_csv(binary, ("file",), "a CSV of labels")
    huge = tmp_path / "huge.csv"
    huge.write_text("file\n" + "x" * (csv.field_size_limit() + 1) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{huge}: not a CSV of labels \(field larger than field limit"):
        read_csv(huge, ("file",), "a CSV of labels")
