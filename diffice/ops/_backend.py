"""Backend selection for the ops: one diffice._C.Backend per (name, thread count) and Python thread."""

from __future__ import annotations

import threading
from typing import TypeVar, Union

import numpy as np

from .._native import _C

BACKENDS: tuple[str, ...] = _C.backend_names()  # the C registry's names, the default ('cpu') first
_local = threading.local()


def get_backend(name: str = "cpu", num_threads: int = 0) -> _C.Backend:
    """The backend ``name`` ('cpu': oneDNN + OpenMP, 'ref': plain C reference kernels) for this Python thread.

    num_threads <= 0 uses every core. Backends hold per-thread state (oneDNN stream), so each Python thread gets
    its own.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    cache = getattr(_local, "backends", None)
    if cache is None:
        cache = _local.backends = {}
    key = (name, int(num_threads))
    backend = cache.get(key)
    if backend is None:
        backend = cache[key] = _C.Backend(name, int(num_threads))
    return backend


IntPair = Union[int, tuple[int, int]]


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
