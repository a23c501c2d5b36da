"""Elementwise ops: activations, softmax, broadcast add/mul, channel concat/split."""
from __future__ import annotations

import numpy as np

from .._native import _C
from ._backend import get_backend

__all__ = ["relu", "relu_backward", "silu", "silu_backward", "sigmoid", "sigmoid_backward"]


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
