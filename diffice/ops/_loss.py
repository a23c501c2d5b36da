"""Losses: cross-entropy on logits and mean squared error, with 'mean', 'sum' or 'none' reductions.

The C ops compute per-sample losses (N,); the reduction over the batch happens here, in float64.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._native import _C
from ._backend import get_backend

__all__ = ["cross_entropy", "cross_entropy_backward", "mse", "mse_backward"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: np.ndarray, reduction: str) -> float | np.ndarray:
    if reduction == "none":
        return loss
    total = loss.astype(np.float64).sum()
    return float(total / loss.shape[0] if reduction == "mean" else total)


def _per_sample_dloss(op: str, dloss: float | np.ndarray, n: int, reduction: str) -> np.ndarray:
    """The gradient of the reduced loss with respect to each per-sample loss, as a float32 (N,) array."""
    if reduction == "none":
        d = np.asarray(dloss, dtype=np.float32)
        if d.shape != (n,):
            raise ValueError(f"{op}: dloss must have shape ({n},) for reduction='none', got {d.shape}")
        return np.ascontiguousarray(d)
    if np.ndim(dloss) != 0:
        raise ValueError(f"{op}: dloss must be a scalar for reduction={reduction!r}, got shape {np.shape(dloss)}")
    scale = float(dloss) / n if reduction == "mean" else float(dloss)
    return np.full(n, scale, dtype=np.float32)


def _targets(op: str, targets: ArrayLike) -> np.ndarray:
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets must hold integer class indices, got dtype {t.dtype}")
    return t


def cross_entropy(
    logits: np.ndarray, targets: ArrayLike, *, reduction: str = "mean", backend: str = "cpu"
) -> float | np.ndarray:
    """Cross-entropy of log_softmax(logits) at integer targets (as torch.nn.functional.cross_entropy).

    logits: float32 (N, K); targets: integers (N,) in [0, K). Returns a float for 'mean'/'sum', or the per-sample
    losses (N,) float32 for 'none'.
    """
    op = "cross_entropy"
    _check_reduction(op, reduction)
    loss = _C.cross_entropy_forward(get_backend(backend), logits, _targets(op, targets))
    return _reduce(loss, reduction)


def cross_entropy_backward(
    logits: np.ndarray,
    targets: ArrayLike,
    *,
    reduction: str = "mean",
    dloss: float | np.ndarray = 1.0,
    backend: str = "cpu",
) -> np.ndarray:
    """dlogits (N, K) = dloss_n (softmax(logits) - onehot(targets)), with dloss_n = dloss / N ('mean'),
    dloss ('sum'; a scalar) or dloss[n] ('none'; an (N,) array)."""
    op = "cross_entropy_backward"
    _check_reduction(op, reduction)
    n = logits.shape[0] if getattr(logits, "ndim", 0) >= 1 else 1
    d = _per_sample_dloss(op, dloss, n, reduction)
    return _C.cross_entropy_backward(get_backend(backend), d, logits, _targets(op, targets))


def mse(a: np.ndarray, b: np.ndarray, *, reduction: str = "mean", backend: str = "cpu") -> float | np.ndarray:
    """Mean squared error between a and b (same shape (N, ...)).

    'none' gives the per-sample mean over the non-batch dims (N,) (unlike torch's elementwise 'none');
    'mean' is the mean over every element (= torch.nn.functional.mse_loss), 'sum' the sum over every element.
    """
    op = "mse"
    _check_reduction(op, reduction)
    per_sample = _C.mse_forward(get_backend(backend), a, b)
    if reduction == "none":
        return per_sample
    m = a.size // a.shape[0]
    total = per_sample.astype(np.float64).sum()
    return float(total / a.shape[0] if reduction == "mean" else total * m)


def mse_backward(
    a: np.ndarray, b: np.ndarray, *, reduction: str = "mean", dloss: float | np.ndarray = 1.0, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients (da, db) of mse(a, b, reduction=...) scaled by dloss (a scalar, or (N,) for 'none'); db = -da."""
    op = "mse_backward"
    _check_reduction(op, reduction)
    n = a.shape[0] if getattr(a, "ndim", 0) >= 1 else 1
    d = _per_sample_dloss(op, dloss, n, reduction)
    if reduction == "sum" and isinstance(a, np.ndarray):
        d = d * np.float32(a.size // n)  # sum of all elements = M * (sum of per-sample means)
    return _C.mse_backward(get_backend(backend), d, a, b)
