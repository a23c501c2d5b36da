"""Writes the fuzzing seed corpus into tests/fuzz/corpus/<reader>/: small valid files made with numpy, torch and
the safetensors package, plus corrupted variants (truncated, bit-flipped, sizes that claim a terabyte).

    python tests/fuzz/make_corpus.py        # rewrites the corpus (deterministic: fixed seeds)

The corpus is committed; run this only to regenerate it. Needs numpy and torch (safetensors optional).
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
RNG = np.random.default_rng(1234)


def small_tensors() -> dict[str, np.ndarray]:
    return {
        "conv.weight": RNG.standard_normal((2, 1, 3, 3)).astype(np.float32),
        "conv.bias": RNG.standard_normal(2).astype(np.float32),
        "norm.scale": np.ones(3, np.float32),
        "scalar": np.array(0.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


def safetensors_bytes(tensors: dict[str, np.ndarray], dtype: str = "F32", meta=None) -> bytes:
    np_dtype = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
                "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}[dtype]
    header, chunks, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr.astype(np_dtype)).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def bf16_safetensors() -> bytes:
    a = RNG.standard_normal((2, 3)).astype(np.float32)
    raw = (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    text = json.dumps({"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]}}).encode()
    return struct.pack("<Q", len(text)) + text + raw


def npz_bytes(tensors: dict[str, np.ndarray], compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **tensors)
    return buf.getvalue()


def torch_bytes(obj, legacy: bool) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def corruptions(name: str, data: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Truncations at a few places and a few bit flips."""
    out = {}
    for frac in (0.25, 0.5, 0.9):
        out[f"{name}.trunc{int(frac * 100)}"] = data[: int(len(data) * frac)]
    for k in range(3):
        b = bytearray(data)
        for _ in range(1 + k):
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
        out[f"{name}.flip{k}"] = bytes(b)
    return out


def write(folder: str, files: dict[str, bytes]) -> None:
    d = CORPUS / folder
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    rng = np.random.default_rng(99)
    t = small_tensors()

    # ---- safetensors
    st = {
        "f32.safetensors": safetensors_bytes(t, meta={"format": "pt", "note": "seed"}),
        "f16.safetensors": safetensors_bytes(t, "F16"),
        "f64.safetensors": safetensors_bytes({"a": t["conv.bias"]}, "F64"),
        "i64.safetensors": safetensors_bytes({"a": np.arange(6).reshape(2, 3)}, "I64"),
        "u8.safetensors": safetensors_bytes({"a": np.arange(4)}, "U8"),
        "bool.safetensors": safetensors_bytes({"a": np.array([True, False])}, "BOOL"),
        "bf16.safetensors": bf16_safetensors(),
        "empty.safetensors": safetensors_bytes({}),
        # A header that claims a terabyte: the length prefix, then a tensor shape.
        "huge_header_len.safetensors": struct.pack("<Q", 10**12) + b"{}",
        "huge_shape.safetensors": (lambda h: struct.pack("<Q", len(h)) + h)(
            b'{"x":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}'),
        "deep_json.safetensors": (lambda h: struct.pack("<Q", len(h)) + h)(b'{"__metadata__":' + b"[" * 40 + b"]" * 40 + b"}"),
    }
    try:
        from safetensors.numpy import save as st_save

        st["reference.safetensors"] = st_save({k: v for k, v in t.items()}, metadata={"a": "b"})
    except ImportError:
        pass
    for name, data in list(st.items())[:3]:
        st.update(corruptions(name, data, rng))
    write("safetensors", st)

    # ---- npz (zip + .npy)
    nz = {
        "plain.npz": npz_bytes(t, False),
        "compressed.npz": npz_bytes(t, True),
        "dtypes.npz": npz_bytes({"f16": np.arange(3, dtype=np.float16), "i32": np.arange(4, dtype=np.int32),
                                 "b": np.array([True]), "f64": np.ones((2, 2))}, False),
        "fortran.npz": npz_bytes({"f": np.asfortranarray(RNG.standard_normal((3, 4)).astype(np.float32))}, False),
        "empty.npz": npz_bytes({}, False),
    }
    # A zip whose .npy header claims a terabyte of float32.
    huge = io.BytesIO()
    with zipfile.ZipFile(huge, "w") as z:
        hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (500000, 500000), }"
        hdr += " " * (-(len(hdr) + 11) % 64) + "\n"
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + b"\0" * 16)
    nz["huge_shape.npz"] = huge.getvalue()
    for name, data in list(nz.items())[:2]:
        nz.update(corruptions(name, data, rng))
    write("npz", nz)

    # ---- torch checkpoints (zip and legacy) and their data.pkl
    try:
        import torch
    except ImportError:
        print("torch not installed: no torch/pickle seeds")
        return
    from collections import OrderedDict

    sd = OrderedDict((k, torch.from_numpy(v.copy())) for k, v in t.items())
    sd["half"] = torch.arange(4, dtype=torch.float16)
    sd["view"] = torch.arange(12, dtype=torch.float32).reshape(3, 4)[1:, ::2]
    sd["param"] = torch.nn.Parameter(torch.ones(2))
    tc = {
        "state_dict.pt": torch_bytes(sd, False),
        "nested.pt": torch_bytes({"state_dict": sd, "epoch": 3, "lr": 1e-4, "name": "x"}, False),
        "ddp.pt": torch_bytes(OrderedDict((f"module.{k}", v) for k, v in list(sd.items())[:2]), False),
        "legacy.pt": torch_bytes(sd, True),
        "legacy_model.pt": torch_bytes({"model": OrderedDict(list(sd.items())[:2])}, True),
    }
    pk = {}
    for name in ("state_dict.pt", "nested.pt", "ddp.pt"):
        with zipfile.ZipFile(io.BytesIO(tc[name])) as z:
            member = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            pk[name.replace(".pt", ".pkl")] = z.read(member)
    # A pickle that asks for os.system: must be refused by name.
    pk["evil.pkl"] = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
    tc["evil_legacy.pt"] = pk["evil.pkl"]
    for name, data in list(tc.items())[:1] + [("legacy.pt", tc["legacy.pt"])]:
        tc.update(corruptions(name, data, rng))
    for name, data in list(pk.items())[:1]:
        pk.update(corruptions(name, data, rng))
    write("torch", tc)
    write("pickle", pk)


if __name__ == "__main__":
    main()
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")
