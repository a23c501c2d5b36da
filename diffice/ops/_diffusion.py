"""The diffusion arithmetic: q_sample, p_mean_variance (and its gradient through pred_xstart), the guided reverse
step, the sampler's noise, per-row scale/axpy, FastDiME's change map and masked blend, DiME's distance terms,
non-finite rows, the flip decision and the training loss's variational bound (docs/method.md sections 2-5).

Per-row coefficients are (N,) arrays gathered from the float64 schedule at each row's timestep;
:func:`posterior_coefs` and :func:`vb_coefs` gather them from ``diffice._C.Diffusion(...).arrays()`` as the C
sampler and training loss do (float32 for sampling, float64 for the loss). The ops take them as named vectors in
the field order of these tuples (ops.h's dfc_posterior_coefs, dfc_vb_coefs), so ``*coefs`` is their argument list.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Union

import numpy as np
from numpy.typing import ArrayLike

from .._native import _C
from ._backend import fresh_copy, get_backend

__all__ = [
    "PosteriorCoefs",
    "VbCoefs",
    "posterior_coefs",
    "vb_coefs",
    "q_sample",
    "p_mean_variance",
    "p_mean_variance_backward",
    "sample_step",
    "gaussian_noise",
    "row_scale",
    "row_axpy",
    "change_map",
    "masked_blend",
    "distance_penalty",
    "distance_penalty_backward",
    "nonfinite_rows",
    "target_probability",
    "diffusion_vb",
    "diffusion_vb_backward",
]

RowValues = Union[float, Sequence[float], np.ndarray]


class PosteriorCoefs(NamedTuple):
    """Per-row (N,) coefficients of p_mean_variance (ops.h's dfc_posterior_coefs), float32."""

    sqrt_recip_abar: np.ndarray
    sqrt_recipm1_abar: np.ndarray
    coef1: np.ndarray
    coef2: np.ndarray
    min_log: np.ndarray  # learned range: log beta~ (clipped)
    max_log: np.ndarray  # learned range: log beta
    variance: np.ndarray  # fixed variance
    log_variance: np.ndarray  # its log


class VbCoefs(NamedTuple):
    """Per-row (N,) coefficients of the variational bound (ops.h's dfc_vb_coefs), float64; decoder_nll marks
    timestep 0; scale multiplies vb (RESCALED_MSE: num_timesteps / 1000)."""

    sqrt_recip_abar: np.ndarray
    sqrt_recipm1_abar: np.ndarray
    coef1: np.ndarray
    coef2: np.ndarray
    min_log: np.ndarray
    max_log: np.ndarray
    decoder_nll: np.ndarray
    scale: float = 1.0


def _fixed_variances(arrays: Mapping[str, np.ndarray], variance_type: int) -> tuple[np.ndarray, np.ndarray]:
    """(variance, log_variance) over all timesteps for variance_type 1 or 3 (fixed large), 2 or 4 (fixed small)."""
    pv = arrays["posterior_variance"]
    if variance_type in (1, 3):
        var = np.concatenate([pv[1:2], arrays["betas"][1:]])
        return var, np.log(var)
    return pv, arrays["posterior_log_variance_clipped"]


def posterior_coefs(
    arrays: Mapping[str, np.ndarray], indices: Sequence[int] | np.ndarray, variance_type: int = 0
) -> PosteriorCoefs:
    """The float32 coefficients at respaced indices (N,) from Diffusion.arrays() (float64 tables), cast as
    guided-diffusion's _extract_into_tensor. variance_type: 0 learned range, 1 fixed large, 2 fixed small (3 and 4:
    fixed large and small for a learn_sigma model, as 1 and 2)."""
    idx = np.asarray(indices, dtype=np.int64)
    var, log_var = _fixed_variances(arrays, variance_type)
    tables = [
        arrays["sqrt_recip_alphas_cumprod"],
        arrays["sqrt_recipm1_alphas_cumprod"],
        arrays["posterior_mean_coef1"],
        arrays["posterior_mean_coef2"],
        arrays["posterior_log_variance_clipped"],
        np.log(arrays["betas"]),
        var,
        log_var,
    ]
    return PosteriorCoefs(*(np.ascontiguousarray(t[idx], dtype=np.float32) for t in tables))


def vb_coefs(arrays: Mapping[str, np.ndarray], indices: Sequence[int] | np.ndarray, scale: float = 1.0) -> VbCoefs:
    """The float64 coefficients of the variational bound at respaced indices (N,) from Diffusion.arrays()."""
    idx = np.asarray(indices, dtype=np.int64)
    tables = [
        arrays["sqrt_recip_alphas_cumprod"],
        arrays["sqrt_recipm1_alphas_cumprod"],
        arrays["posterior_mean_coef1"],
        arrays["posterior_mean_coef2"],
        arrays["posterior_log_variance_clipped"],
        np.log(arrays["betas"]),
    ]
    c = [np.ascontiguousarray(t[idx], dtype=np.float64) for t in tables]
    return VbCoefs(c[0], c[1], c[2], c[3], c[4], c[5], decoder_nll=(idx == 0).astype(np.intc), scale=float(scale))


def _rows(values: RowValues, n: int, dtype: type = np.float32) -> np.ndarray:
    """A per-row (n,) array: a scalar is repeated."""
    a: np.ndarray = np.asarray(values, dtype=dtype)
    return np.full(n, a, dtype=dtype) if a.ndim == 0 else np.ascontiguousarray(a)


def q_sample(
    x0: np.ndarray, noise: np.ndarray, sqrt_abar: RowValues, sqrt_one_minus_abar: RowValues, *, backend: str = "cpu"
) -> np.ndarray:
    """x_t = sqrt_abar[b] x0 + sqrt_one_minus_abar[b] noise; x0, noise float32 (N, ...)."""
    n = x0.shape[0]
    return _C.q_sample(get_backend(backend), x0, noise, _rows(sqrt_abar, n), _rows(sqrt_one_minus_abar, n))


def _output_kind(learned: bool, ignore_v: bool) -> int:
    """ops.h's DFC_OUTPUT_*: 0 eps, 1 (eps, v) with the learned range, 2 (eps, v) with the fixed variance."""
    if ignore_v and not learned:
        raise ValueError("p_mean_variance: ignore_v needs learned=True (a model output with v channels)")
    return (2 if ignore_v else 1) if learned else 0


def p_mean_variance(
    model_output: np.ndarray,
    x_t: np.ndarray,
    coefs: PosteriorCoefs,
    *,
    learned: bool = True,
    ignore_v: bool = False,
    clip: bool = True,
    backend: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, variance, log_variance, pred_xstart), each shaped like x_t (N, C, ...), from model_output
    (N, 2C, ...) = (eps, v) when learned, else (N, C, ...) = eps; pred_xstart clamped to [-1, 1] when clip. The
    variance: the learned range with v, or with ignore_v (learned only) or without learned the coefficients' fixed
    variance."""
    kind = _output_kind(learned, ignore_v)
    return _C.p_mean_variance_forward(get_backend(backend), model_output, x_t, *coefs, kind, bool(clip))


def p_mean_variance_backward(
    d_pred_xstart: np.ndarray,
    model_output: np.ndarray,
    x_t: np.ndarray,
    coefs: PosteriorCoefs,
    *,
    learned: bool = True,
    ignore_v: bool = False,
    clip: bool = True,
    backend: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(dx_t, d_model_output) from d_pred_xstart, through the clip (zero where it clamped); the v channels get 0."""
    kind = _output_kind(learned, ignore_v)
    return _C.p_mean_variance_backward(get_backend(backend), d_pred_xstart, model_output, x_t, *coefs, kind, bool(clip))


def sample_step(
    mean: np.ndarray,
    variance: np.ndarray,
    log_variance: np.ndarray,
    grad: np.ndarray | None,
    noise: np.ndarray,
    noise_weight: RowValues,
    *,
    backend: str = "cpu",
) -> np.ndarray:
    """x_prev = mean - variance grad + noise_weight[b] exp(log_variance / 2) noise (grad None: unguided);
    noise_weight is 1[i != 0] per row."""
    return _C.sample_step(
        get_backend(backend), mean, variance, log_variance, grad, noise, _rows(noise_weight, mean.shape[0])
    )


SEED_LIMIT = 2**64  # the sampler's seed is 64 bits: seeds are ints in [0, 2**64), never taken modulo 2**64


def check_seed(seed: Any, name: str = "seed") -> int:
    """seed as an int after checking it: TypeError unless an int (a bool or 1.5 is not), ValueError outside
    [0, 2**64) (-1 and 2**64 used to wrap silently to 2**64 - 1 and 0)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {seed!r}")
    value = int(seed)
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def _index(value: object) -> int:
    """An int key as a Python int (TypeError for a bool, a float or anything else)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"not an integer: {value!r}")
    return operator.index(value)  # type: ignore[arg-type]


def gaussian_noise(
    shape: Sequence[int],
    seed: int,
    keys: np.ndarray | Sequence[int],
    stream: int,
    iteration: int = 0,
    step: int = 0,
    inner_step: int = 0,
    *,
    backend: str = "cpu",
) -> np.ndarray:
    """(N, *shape) float32 standard normals, N = len(keys): row b is the noise stream (seed, keys[b], stream,
    iteration, step, inner_step) of the sampler's counter-based generator (Philox4x32-10 and Box-Muller,
    csrc/core/rng.h), so any draw of a run can be reproduced. seed: an int in [0, 2**64) (the sampler config's);
    keys: the images' sample keys, ints in [0, 2**64) (a uint64 array, or ints); stream, iteration, step,
    inner_step: ints in [0, 2**32). A seed or key outside [0, 2**64) is a ValueError, never taken modulo 2**64."""
    if isinstance(keys, np.ndarray):
        key_array = keys
    else:  # a sequence of Python ints, as uint64 (numpy would make 2**63 and up float64)
        try:
            ints = [_index(k) for k in keys]
        except TypeError:
            key_array = np.asarray(keys)
        else:
            bad = [k for k in ints if not 0 <= k < SEED_LIMIT]
            if bad:
                raise ValueError(f"gaussian_noise: keys must be integers in [0, 2**64), got {bad[0]}")
            key_array = np.array(ints, np.uint64)
    if key_array.ndim != 1 or key_array.dtype.kind not in "iu" or key_array.size == 0:
        raise ValueError(
            f"gaussian_noise: keys must be a non-empty 1-D array of integer sample keys, got dtype {key_array.dtype} "
            f"and shape {key_array.shape}"
        )
    if key_array.dtype.kind == "i" and (key_array < 0).any():  # astype(uint64) would wrap -1 to 2**64 - 1
        raise ValueError(f"gaussian_noise: keys must be integers in [0, 2**64), got {int(key_array.min())}")
    dims = []
    for k, d in enumerate(shape):
        d = operator.index(d)
        if d < 1:
            raise ValueError(f"gaussian_noise: shape[{k}] must be positive, got {d}")
        dims.append(d)
    if not dims:
        raise ValueError("gaussian_noise: shape must have at least one dimension")
    seed = check_seed(seed, "gaussian_noise: seed")
    signed_seed = seed - 2**64 if seed >= 2**63 else seed  # the op takes the seed's bits as an int64
    keys_bits = key_array.astype(np.uint64).view(np.int64)
    noise = _C.gaussian_noise(
        get_backend(backend), (len(keys_bits), int(np.prod(dims))), signed_seed, keys_bits, stream, iteration, step,
        inner_step,
    )  # fmt: skip
    return noise.reshape((len(keys_bits), *dims))


def row_scale(x: np.ndarray, alpha: RowValues, *, backend: str = "cpu") -> np.ndarray:
    """alpha[b] x for x (N, ...); linear, so it is its own backward."""
    return _C.row_scale(get_backend(backend), x, _rows(alpha, x.shape[0]))


def row_axpy(alpha: RowValues, x: np.ndarray, y: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """y + alpha[b] x (a new array), x and y (N, ...)."""
    y = fresh_copy(y)
    _C.row_axpy(get_backend(backend), _rows(alpha, x.shape[0]), x, y)
    return y


def change_map(a: np.ndarray, b: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """FastDiME's (N, 1, H, W) map: sum over channels of |(a + 1)/2 - (b + 1)/2|, divided by its per-sample
    maximum (when > 0), for images a, b (N, C, H, W) in [-1, 1]; values in [0, 1]."""
    return _C.change_map(get_backend(backend), a, b)


def masked_blend(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray, threshold: float, *, backend: str = "cpu"
) -> np.ndarray:
    """a (1 - keep) + keep b with keep = [mask < threshold], mask (N, 1, H, W) broadcast over the C of a, b."""
    return _C.masked_blend(get_backend(backend), a, b, mask, float(threshold))


def distance_penalty(
    a: np.ndarray, b: np.ndarray, lambda_l1: float, lambda_l2: float, *, backend: str = "cpu"
) -> np.ndarray:
    """Per-sample (N,) lambda_l1 sum |a - b| + lambda_l2 sum over pixels of the channel norm ||a - b||."""
    return _C.distance_penalty_forward(get_backend(backend), a, b, float(lambda_l1), float(lambda_l2))


def distance_penalty_backward(
    a: np.ndarray, b: np.ndarray, lambda_l1: float, lambda_l2: float, *, dloss: RowValues = 1.0, backend: str = "cpu"
) -> np.ndarray:
    """da = dloss[b] (lambda_l1 sign(a - b) + lambda_l2 (a - b) / ||a - b||), 0 where the norm is 0."""
    return _C.distance_penalty_backward(
        get_backend(backend), _rows(dloss, a.shape[0]), a, b, float(lambda_l1), float(lambda_l2)
    )


def nonfinite_rows(x: np.ndarray, *, backend: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(a copy of x (N, ...) with every row holding a NaN or infinity set to 0, those rows as a bool (N,))."""
    y = np.array(x, dtype=np.float32, order="C")  # a copy: the op zeroes the rows in place
    return y, _C.nonfinite_rows(get_backend(backend), y).astype(bool)


def target_probability(
    logits: np.ndarray, targets: ArrayLike, *, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(p(target) (N,) float32, argmax == target (N,) bool) for logits (N, K): softmax for K >= 2; for K == 1 one
    binary logit z with p(1) = sigmoid(z) and the predicted class z > 0 (diffice/probabilities.py's convention)."""
    prob, flags = _C.target_probability(get_backend(backend), logits, np.asarray(targets))
    return prob, flags.astype(bool)


def diffusion_vb(
    model_output: np.ndarray, x_start: np.ndarray, x_t: np.ndarray, coefs: VbCoefs, *, backend: str = "cpu"
) -> np.ndarray:
    """guided-diffusion's vb term in bits per dimension with the mean frozen, per sample (N,), for model_output
    (N, 2C, ...) = (eps, v) and x_start, x_t (N, C, ...) in [-1, 1]."""
    return _C.diffusion_vb_forward(get_backend(backend), model_output, x_start, x_t, *coefs)


def diffusion_vb_backward(
    model_output: np.ndarray,
    x_start: np.ndarray,
    x_t: np.ndarray,
    coefs: VbCoefs,
    *,
    dvb: RowValues = 1.0,
    backend: str = "cpu",
) -> np.ndarray:
    """d (sum_b dvb[b] vb[b]) / d v, (N, C, ...): the gradient reaches the v channels only."""
    return _C.diffusion_vb_backward(
        get_backend(backend), _rows(dvb, x_start.shape[0]), model_output, x_start, x_t, *coefs
    )
