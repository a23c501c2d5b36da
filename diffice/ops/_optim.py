"""Optimizer ops: one AdamW step, the EMA of the weights, and the two halves of gradient clipping.

The C ops update in place; these wrappers return new arrays (the inputs are left unchanged), like every op here.
diffice.train.AdamW / EMA / clip_grad_norm run the same ops in place over a network's parameter buffer.
"""

from __future__ import annotations

import numpy as np

from .._native import _C
from ._backend import fresh_copy as _copy
from ._backend import get_backend

__all__ = ["adamw_step", "ema_update", "sum_squares", "scale"]


def adamw_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    step: int,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    backend: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One torch.optim.AdamW step (decoupled weight decay, bias correction with the 1-based ``step``).

    param, grad, exp_avg, exp_avg_sq: float32 arrays of one shape (any, up to 4 dims); the moments are zero before
    the first step. lr, eps, weight_decay >= 0, betas in [0, 1). Returns (param, exp_avg, exp_avg_sq) after the step.
    """
    param, exp_avg, exp_avg_sq = _copy(param), _copy(exp_avg), _copy(exp_avg_sq)
    _C.adamw_step(
        get_backend(backend),
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        int(step),
        float(lr),
        float(betas[0]),
        float(betas[1]),
        float(eps),
        float(weight_decay),
    )
    return param, exp_avg, exp_avg_sq


def ema_update(ema: np.ndarray, param: np.ndarray, rate: float, *, backend: str = "cpu") -> np.ndarray:
    """rate * ema + (1 - rate) * param (guided-diffusion's update_ema); ema, param float32 of one shape,
    rate in [0, 1]."""
    ema = _copy(ema)
    _C.ema_update(get_backend(backend), float(rate), ema, param)
    return ema


def sum_squares(x: np.ndarray, *, backend: str = "cpu") -> float:
    """The sum of x**2 over every element of a float32 array, accumulated in double (the same value for any
    thread count)."""
    return float(_C.sum_squares(get_backend(backend), x))


def scale(x: np.ndarray, factor: float, *, backend: str = "cpu") -> np.ndarray:
    """x * factor (float32; the factor is rounded to float32 as the op takes it)."""
    x = _copy(x)
    _C.scale(get_backend(backend), x, float(factor))
    return x
