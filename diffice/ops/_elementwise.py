"""Elementwise ops: activations, softmax, broadcast add/mul, channel concat/split."""

from __future__ import annotations

import numpy as np

from .._native import _C
from ._backend import get_backend

__all__ = [
    "relu",
    "relu_backward",
    "silu",
    "silu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "add",
    "add_backward",
    "mul",
    "mul_backward",
    "concat",
    "split",
    "concat_backward",
    "split_backward",
    "scale_shift",
    "scale_shift_backward",
]


def relu(x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """max(x, 0). x: float32, any shape with 1-4 dims. Returns an array of x's shape."""
    return _C.activation_forward(get_backend(backend), "relu", x)


def relu_backward(dy: np.ndarray, x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of relu at x: dy * 1[x > 0]."""
    return _C.activation_backward(get_backend(backend), "relu", dy, x)


def silu(x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """x * sigmoid(x). x: float32, any shape with 1-4 dims."""
    return _C.activation_forward(get_backend(backend), "silu", x)


def silu_backward(dy: np.ndarray, x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of silu at x: dy * s (1 + x (1 - s)), s = sigmoid(x)."""
    return _C.activation_backward(get_backend(backend), "silu", dy, x)


def sigmoid(x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """1 / (1 + exp(-x)), computed without overflow. x: float32, any shape with 1-4 dims."""
    return _C.activation_forward(get_backend(backend), "sigmoid", x)


def sigmoid_backward(dy: np.ndarray, x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of sigmoid at x: dy * s (1 - s)."""
    return _C.activation_backward(get_backend(backend), "sigmoid", dy, x)


def softmax(x: np.ndarray, *, axis: int = -1, backend: str = "cpu") -> np.ndarray:
    """Softmax over ``axis`` (negative counts from the end; the max along it is subtracted first, so large inputs do
    not overflow). x: 1-4 dims. Returns an array of x's shape."""
    return _C.softmax_forward(get_backend(backend), x, axis)


def softmax_backward(dy: np.ndarray, y: np.ndarray, *, axis: int = -1, backend: str = "cpu") -> np.ndarray:
    """Gradient of softmax over ``axis`` from its output y: dx = y (dy - sum(dy y, axis))."""
    return _C.softmax_backward(get_backend(backend), dy, y, axis)


def _broadcast_b(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b viewed with a's ndim. A 1-D b against a (N, C, ...) is per-channel if it has C entries (checked first, so
    it wins when N == C), else per-sample if it has N entries; b with a's ndim passes unchanged (each dim 1 or
    equal to a's, checked in C). Non-arrays pass through for the C layer to reject."""
    a_ndim, b_ndim = getattr(a, "ndim", None), getattr(b, "ndim", None)
    if a_ndim is None or b_ndim is None or b_ndim == a_ndim or not isinstance(b, np.ndarray):
        return b
    if b_ndim == 1 and a_ndim >= 2:
        if b.shape[0] == a.shape[1]:
            return b.reshape((1, -1) + (1,) * (a_ndim - 2))
        if b.shape[0] == a.shape[0]:
            return b.reshape((-1,) + (1,) * (a_ndim - 1))
    raise ValueError(
        f"{op}: b with shape {b.shape} cannot be broadcast to a's shape {a.shape}: give b a's number of dimensions "
        f"(each 1 or equal to a's), or a 1-D b with C={a.shape[1] if a_ndim >= 2 else '?'} (per-channel) or "
        f"N={a.shape[0]} (per-sample) entries"
    )


def add(a: np.ndarray, b: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """a + b with b broadcast to a's shape (a: 1-4 dims). b: a's ndim with each dim 1 or equal to a's
    (e.g. (1, C, 1, 1), (N, 1, 1, 1), (N, C, 1, 1), a's shape), or 1-D: (C,) per-channel or (N,) per-sample for
    a (N, C, ...) (per-channel wins when N == C)."""
    return _C.binary_forward(get_backend(backend), "add", a, _broadcast_b("add", a, b))


def mul(a: np.ndarray, b: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """a * b with b broadcast to a's shape, as in add."""
    return _C.binary_forward(get_backend(backend), "mul", a, _broadcast_b("mul", a, b))


def _binary_backward(
    kind: str, dy: np.ndarray, a: np.ndarray, b: np.ndarray, backend: str
) -> tuple[np.ndarray, np.ndarray]:
    b4 = _broadcast_b(kind + "_backward", a, b)
    da, db = _C.binary_backward(get_backend(backend), kind, dy, a, b4)
    return da, db.reshape(b.shape)


def add_backward(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, *, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of add: (da = dy, db = dy summed over b's broadcast dims), db in b's own shape."""
    return _binary_backward("add", dy, a, b, backend)


def mul_backward(
    dy: np.ndarray, a: np.ndarray, b: np.ndarray, *, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of mul: (da = dy b, db = dy a summed over b's broadcast dims), db in b's own shape."""
    return _binary_backward("mul", dy, a, b, backend)


def concat(xs: list, *, backend: str = "cpu") -> np.ndarray:
    """Joins arrays (N, Ci, ...) along axis 1 (channels); every other dim must match. Returns (N, sum Ci, ...)."""
    return _C.concat_channels(get_backend(backend), list(xs))


def split(x: np.ndarray, sizes: list, *, backend: str = "cpu") -> list:
    """Splits x (N, C, ...) along axis 1 into arrays of sizes[k] channels (sizes must add up to C)."""
    return _C.split_channels(get_backend(backend), x, list(sizes))


def concat_backward(dy: np.ndarray, sizes: list, *, backend: str = "cpu") -> list:
    """Gradient of concat: dy (N, sum sizes, ...) split back into the inputs' channel counts (= split)."""
    return split(dy, sizes, backend=backend)


def split_backward(dys: list, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of split: the parts' gradients joined along channels (= concat)."""
    return concat(dys, backend=backend)


# ---- UNet ops (issue 15, unetnet) ----


def scale_shift(x: np.ndarray, ss: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """guided-diffusion's scale-shift norm: x (N, C, ...) (2-4 dims), ss (N, 2C) = [scale | shift] per sample and
    channel. Returns x * (1 + scale) + shift, x's shape."""
    return _C.scale_shift_forward(get_backend(backend), x, ss)


def scale_shift_backward(
    dy: np.ndarray, x: np.ndarray, ss: np.ndarray, *, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of scale_shift: (dx = dy * (1 + scale), dss (N, 2C) = [sum dy * x | sum dy] over x's dims 2...)."""
    return tuple(_C.scale_shift_backward(get_backend(backend), dy, x, ss))
