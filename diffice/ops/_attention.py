"""guided-diffusion's QKV attention and sinusoidal timestep embedding."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._native import _C
from ._backend import get_backend

__all__ = ["attention", "attention_backward", "timestep_embedding"]


def _heads(heads: int, op: str) -> int:
    if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)):
        raise TypeError(f"{op}: heads must be an int, got {heads!r}")
    return int(heads)


def attention(qkv: np.ndarray, heads: int, *, legacy_order: bool = True, backend: str = "cpu") -> np.ndarray:
    """Multi-head self-attention on packed q, k, v: qkv (N, 3C, T) -> (N, C, T).

    heads must divide C; each head has ch = C / heads channels, weights softmax_s(q_t . k_s / sqrt(ch)) over keys s,
    output channels head-major. legacy_order=True is QKVAttentionLegacy (per head [q | k | v] blocks of ch
    channels, guided-diffusion's default); False is QKVAttention (q, k, v blocks of C channels, each split into
    heads).
    """
    return _C.attention_forward(get_backend(backend), qkv, _heads(heads, "attention"), bool(legacy_order))


def attention_backward(
    dy: np.ndarray, qkv: np.ndarray, heads: int, *, legacy_order: bool = True, backend: str = "cpu"
) -> np.ndarray:
    """Gradient of attention w.r.t. qkv: dy (N, C, T), qkv (N, 3C, T) -> dqkv (N, 3C, T) (weights recomputed)."""
    return _C.attention_backward(get_backend(backend), dy, qkv, _heads(heads, "attention_backward"), bool(legacy_order))


def timestep_embedding(t: ArrayLike, dim: int, *, max_period: float = 10000.0, backend: str = "cpu") -> np.ndarray:
    """Sinusoidal embedding of timesteps as guided-diffusion's nn.timestep_embedding, in float32.

    t: integer or float array-like of shape (N,) (converted to float32 like torch's ``.float()``).
    Returns (N, dim): [cos(t f_k), sin(t f_k)] for k < dim // 2 with f_k = exp(-ln(max_period) k / (dim // 2)),
    plus a zero column when dim is odd.
    """
    op = "timestep_embedding"
    arr = np.asarray(t)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{op}: t must be an integer or float array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{op}: t must have shape (N,), got {arr.shape}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{op}: dim must be an int, got {dim!r}")
    t32 = np.ascontiguousarray(arr, dtype=np.float32)
    return _C.timestep_embedding(get_backend(backend), t32, int(dim), float(max_period))
