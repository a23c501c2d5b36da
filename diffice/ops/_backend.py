"""Backend selection for the ops: one diffice._C.Backend per (name, thread count, precision) and Python thread."""

from __future__ import annotations

import threading
from typing import Literal, TypeVar, Union

import numpy as np

from .._native import _C, preload_cuda_libraries

BACKENDS: tuple[str, ...] = _C.backend_names()  # the C registry's names, the default ('cpu') first
_local = threading.local()

# What a backend's convolutions and matrix products may use: "fp32" everywhere (the default); on "cuda" (and its
# emulation) "tf32" (TF32 tensor cores) or "bf16" (operands rounded to bf16, sums in fp32); everything else stays fp32.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
Precision = Literal["fp32", "tf32", "bf16"]


def check_precision(precision: str) -> None:
    """ValueError unless precision is one of PRECISIONS (whether the backend offers it is its own check)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_backend_name(name: str) -> None:
    """ValueError unless name is a registered backend, or "cuda:N" for a GPU index N."""
    key, _, device = name.partition(":") if isinstance(name, str) else (name, "", "")
    if key not in BACKENDS or (device and (key != "cuda" or not device.isdigit())):
        raise ValueError(f"backend must be one of {BACKENDS} or 'cuda:N', got {name!r}")


def get_backend(name: str = "cpu", num_threads: int = 0, precision: Precision = "fp32") -> _C.Backend:
    """The backend ``name`` for this Python thread: 'cpu' (oneDNN + OpenMP), 'ref' (plain C reference kernels),
    'cuda' or 'cuda:N' (the GPU; RuntimeError/NotImplementedError saying why where there is none), 'cuda_emulated'
    (the CUDA kernels run on the host: for tests).

    num_threads <= 0 uses every core. precision: see PRECISIONS; a backend that does not offer it raises ValueError
    saying which it offers. Backends hold per-thread state (oneDNN stream, CUDA stream), so each Python thread gets
    its own.
    """
    check_backend_name(name)
    check_precision(precision)
    cache = getattr(_local, "backends", None)
    if cache is None:
        cache = _local.backends = {}
    key = (name, int(num_threads), precision)
    backend = cache.get(key)
    if backend is None:
        if name.partition(":")[0] == "cuda":
            preload_cuda_libraries()
        backend = cache[key] = _C.Backend(name, int(num_threads), precision)
    return backend


def cuda_available() -> bool:
    """True when diffice can run on a GPU here: the CUDA plugin was built, its libraries load, a device exists."""
    try:
        get_backend("cuda")
    except (RuntimeError, NotImplementedError, OSError):
        return False
    return True


def cuda_device_count() -> int:
    """How many GPUs diffice can use here ("cuda:0" .. "cuda:<count - 1>"); 0 without the CUDA plugin, a driver or
    a device. Creates no backend."""
    preload_cuda_libraries()  # the plugin finds cuBLAS and cuDNN by soname only once they are loaded
    return int(_C.device_count("cuda"))


IntPair = Union[int, tuple[int, int]]


Layout = Literal["nchw", "nhwc"]


def is_nhwc(layout: Layout, op: str, name: str) -> bool:
    """True for "nhwc", False for "nchw"; ValueError naming op and argument otherwise."""
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"{op}: {name} must be 'nchw' or 'nhwc', got {layout!r}")
    return layout == "nhwc"


def int_pair(value: IntPair, op: str, name: str) -> tuple[int, int]:
    """An int or an (h, w) pair of ints as (h, w); TypeError naming op and argument otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{op}: {name} must be an int or a pair of ints (h, w), got {value!r}")


_Array = TypeVar("_Array")


def fresh_copy(a: _Array) -> _Array:
    """A fresh C-ordered copy of a float32 array, for an in-place op to update so the caller's array is left
    unchanged; anything else is passed on for the op to refuse with its message (naming op and argument)."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        return a.copy(order="C")
    return a
