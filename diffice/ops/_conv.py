"""Convolution and linear layers: conv2d (NCHW, groups=1) and linear (y = x W^T + b), forward and backward."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._native import _C
from ._backend import IntPair, Layout, get_backend, int_pair, is_nhwc

__all__ = [
    "conv2d",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "linear",
    "linear_backward_input",
    "linear_backward_weight",
]


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    x_layout: Layout = "nchw",
    y_layout: Layout = "nchw",
    backend: str = "cpu",
) -> np.ndarray:
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d with groups=1, zero padding).

    x: (N, Ci, H, W); weight: (Co, Ci, KH, KW); bias: (Co,) or None; stride, padding: int or (h, w).
    Returns y: (N, Co, Ho, Wo) with Ho = (H + 2 pad_h - KH) // stride_h + 1 (Wo likewise).
    x_layout / y_layout "nhwc": x is given, or y returned, channels last ((N, H, W, C)), the layout oneDNN's
    convolutions work in on x86, so no reorder is made (the "ref" and "cpu" backends; "cuda" takes NCHW only).
    """
    op = "conv2d_forward"
    return _C.conv2d_forward(
        get_backend(backend),
        x,
        weight,
        bias,
        int_pair(stride, op, "stride"),
        int_pair(padding, op, "padding"),
        is_nhwc(x_layout, op, "x_layout"),
        is_nhwc(y_layout, op, "y_layout"),
    )


def conv2d_backward_input(
    dy: np.ndarray,
    weight: np.ndarray,
    x_shape: Sequence[int],
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    backend: str = "cpu",
) -> np.ndarray:
    """Gradient of conv2d with respect to its input x.

    dy: (N, Co, Ho, Wo), the gradient of y; weight: (Co, Ci, KH, KW); x_shape: (N, Ci, H, W), the forward
    input's shape (needed because several H map to one Ho when the stride is above 1).
    Returns dx: x_shape.
    """
    op = "conv2d_backward_input"
    return _C.conv2d_backward_input(
        get_backend(backend),
        dy,
        weight,
        tuple(x_shape),
        int_pair(stride, op, "stride"),
        int_pair(padding, op, "padding"),
    )


def conv2d_backward_weight(
    dy: np.ndarray,
    x: np.ndarray,
    weight_shape: Sequence[int],
    *,
    bias: bool = True,
    stride: IntPair = 1,
    padding: IntPair = 0,
    backend: str = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of conv2d with respect to weight and bias.

    dy: (N, Co, Ho, Wo); x: (N, Ci, H, W), the forward input; weight_shape: (Co, Ci, KH, KW).
    Returns (dweight (Co, Ci, KH, KW), dbias (Co,)), or (dweight, None) when bias is False.
    """
    op = "conv2d_backward_weight"
    return _C.conv2d_backward_weight(
        get_backend(backend),
        dy,
        x,
        tuple(weight_shape),
        bool(bias),
        int_pair(stride, op, "stride"),
        int_pair(padding, op, "padding"),
    )


def _rows(a: np.ndarray, op: str, name: str) -> np.ndarray:
    """a (..., F) as a 2-D (rows, F) view; 2-D arrays and non-arrays pass through for the C checks to judge."""
    if not isinstance(a, np.ndarray) or a.ndim == 2:
        return a
    if a.ndim == 0:
        raise ValueError(f"{op}: {name} must have at least 1 dimension, got a scalar")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous (use numpy.ascontiguousarray), got shape {a.shape}")
    return a.reshape(-1, a.shape[-1])


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, backend: str = "cpu") -> np.ndarray:
    """y = x W^T + b, as torch.nn.functional.linear.

    x: (..., In), any number of leading dims; weight: (Out, In); bias: (Out,) or None. Returns y: (..., Out).
    """
    y = _C.linear_forward(get_backend(backend), _rows(x, "linear_forward", "x"), weight, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1]) if x.ndim != 2 else y


def linear_backward_input(dy: np.ndarray, weight: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of linear with respect to x: dx = dy W.

    dy: (..., Out); weight: (Out, In). Returns dx: (..., In).
    """
    dx = _C.linear_backward_input(get_backend(backend), _rows(dy, "linear_backward_input", "dy"), weight)
    return dx.reshape(*dy.shape[:-1], dx.shape[-1]) if dy.ndim != 2 else dx


def linear_backward_weight(
    dy: np.ndarray, x: np.ndarray, *, bias: bool = True, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients of linear with respect to weight and bias: dweight = dy^T x, dbias = dy summed over rows.

    dy: (..., Out); x: (..., In) with the same leading dims. Returns (dweight (Out, In), dbias (Out,)), or
    (dweight, None) when bias is False.
    """
    op = "linear_backward_weight"
    if isinstance(dy, np.ndarray) and isinstance(x, np.ndarray) and dy.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{op}: dy has shape {dy.shape} and x has shape {x.shape}; their leading dims must match")
    return _C.linear_backward_weight(get_backend(backend), _rows(dy, op, "dy"), _rows(x, op, "x"), bool(bias))
