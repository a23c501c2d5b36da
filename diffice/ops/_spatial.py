"""Spatial ops on NCHW float32 arrays: nearest x2 upsample, average / max / global pooling, bilinear resize."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._native import _C
from ._backend import IntPair, get_backend, int_pair

__all__ = [
    "upsample_nearest2x",
    "upsample_nearest2x_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
    "resize_bilinear",
    "resize_bilinear_backward",
]


def _shape4(shape: Sequence[int], op: str, name: str = "x_shape") -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a sequence of 4 ints (N, C, H, W), got {shape!r}") from None
    if len(dims) != 4:
        raise ValueError(f"{op}: {name} must have 4 entries (N, C, H, W), got {shape!r}")
    return dims


def upsample_nearest2x(x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Nearest-neighbour upsampling by 2: x (N, C, H, W) -> (N, C, 2H, 2W), each pixel copied to a 2x2 block
    (F.interpolate(x, scale_factor=2, mode="nearest"))."""
    return _C.upsample_nearest2x_forward(get_backend(backend), x)


def upsample_nearest2x_backward(dy: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of upsample_nearest2x: dy (N, C, 2H, 2W) -> dx (N, C, H, W), the sum of each 2x2 block."""
    return _C.upsample_nearest2x_backward(get_backend(backend), dy)


def avg_pool2d(
    x: np.ndarray, kernel: IntPair = 2, stride: IntPair | None = None, padding: IntPair = 0, *, backend: str = "cpu"
) -> np.ndarray:
    """Average pooling, floor mode (torch AvgPool2d(kernel, stride, padding, count_include_pad=False)).

    x (N, C, H, W) -> (N, C, (H + 2 ph - kh) // sh + 1, (W + 2 pw - kw) // sw + 1). kernel, stride and padding are
    ints or (h, w) pairs; stride defaults to kernel; padding (at most half the kernel) is not counted in the
    average: each window averages the pixels inside the image.
    """
    k = int_pair(kernel, "avg_pool2d", "kernel")
    s = k if stride is None else int_pair(stride, "avg_pool2d", "stride")
    p = int_pair(padding, "avg_pool2d", "padding")
    return _C.avg_pool2d_forward(get_backend(backend), x, k, s, p)


def avg_pool2d_backward(
    dy: np.ndarray,
    x_shape: Sequence[int],
    kernel: IntPair = 2,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    backend: str = "cpu",
) -> np.ndarray:
    """Gradient of avg_pool2d: dy (N, C, Ho, Wo) -> dx of x_shape (N, C, H, W). Rows and columns no window covers
    (odd sizes) get zero."""
    op = "avg_pool2d_backward"
    k = int_pair(kernel, op, "kernel")
    s = k if stride is None else int_pair(stride, op, "stride")
    p = int_pair(padding, op, "padding")
    return _C.avg_pool2d_backward(get_backend(backend), dy, _shape4(x_shape, op), k, s, p)


def max_pool2d(
    x: np.ndarray, kernel: IntPair = 2, stride: IntPair | None = None, padding: IntPair = 0, *, backend: str = "cpu"
) -> np.ndarray:
    """Max pooling with implicit -inf padding, floor mode (torch MaxPool2d(kernel, stride, padding)).

    x (N, C, H, W) -> (N, C, (H + 2 ph - kh) // sh + 1, (W + 2 pw - kw) // sw + 1). stride defaults to kernel;
    padding must be at most half the kernel.
    """
    k = int_pair(kernel, "max_pool2d", "kernel")
    s = k if stride is None else int_pair(stride, "max_pool2d", "stride")
    p = int_pair(padding, "max_pool2d", "padding")
    return _C.max_pool2d_forward(get_backend(backend), x, k, s, p)


def max_pool2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    kernel: IntPair = 2,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    backend: str = "cpu",
) -> np.ndarray:
    """Gradient of max_pool2d at x: each dy element goes to its window's first maximum in row-major scan order
    (PyTorch's rule), recomputed from x. Returns dx of x's shape."""
    op = "max_pool2d_backward"
    k = int_pair(kernel, op, "kernel")
    s = k if stride is None else int_pair(stride, op, "stride")
    p = int_pair(padding, op, "padding")
    return _C.max_pool2d_backward(get_backend(backend), dy, x, k, s, p)


def global_avg_pool(x: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Mean over height and width: x (N, C, H, W) -> (N, C)."""
    return _C.global_avg_pool_forward(get_backend(backend), x)


def global_avg_pool_backward(dy: np.ndarray, x_shape: Sequence[int], *, backend: str = "cpu") -> np.ndarray:
    """Gradient of global_avg_pool: dy (N, C) -> dx of x_shape (N, C, H, W), dy / (H W) everywhere."""
    op = "global_avg_pool_backward"
    return _C.global_avg_pool_backward(get_backend(backend), dy, _shape4(x_shape, op))


def resize_bilinear(x: np.ndarray, size: tuple[int, int], *, backend: str = "cpu") -> np.ndarray:
    """Bilinear resize to size=(H_out, W_out), align_corners=False, no antialiasing: exactly
    F.interpolate(x, size=size, mode="bilinear", align_corners=False). Up or down, any aspect ratio.
    x (N, C, H, W) -> (N, C, H_out, W_out)."""
    return _C.resize_bilinear_forward(get_backend(backend), x, int_pair(size, "resize_bilinear", "size"))


def resize_bilinear_backward(dy: np.ndarray, x_shape: Sequence[int], *, backend: str = "cpu") -> np.ndarray:
    """Gradient of resize_bilinear: dy (N, C, H_out, W_out) -> dx of x_shape (N, C, H, W)."""
    op = "resize_bilinear_backward"
    return _C.resize_bilinear_backward(get_backend(backend), dy, _shape4(x_shape, op))
