"""The Gaussian diffusion of openai/guided-diffusion (schedule, respacing, posterior): the float64 tables come from
C (csrc/diffusion/schedule.c, the sampler's own), the per-row arithmetic runs in the op table's diffusion ops.

Indices ``i`` are *respaced* indices in [0, num_timesteps); the denoiser is given ``timestep_map[i]``, the
original training timestep. Images are float32 (N, C, H, W) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Union

import numpy as np

from .. import ops
from .._native import _C
from .network import config_bool, config_int

_VARIANCE_TYPES = {
    "learned_range": 0,
    "fixed_large": 1,
    "fixed_small": 2,
    "learned_output_fixed_large": 3,  # a learn_sigma model whose v is ignored
    "learned_output_fixed_small": 4,
}

IndexLike = Union[int, np.ndarray, list]

# a run config's [diffusion] variance -> GaussianDiffusion's fixed_variance
VARIANCES: dict[str, str | None] = {"learned": None, "small": "small", "large": "large"}


_BE = "ref"  # the reference kernels (the oracle); schedule.c gathers the same float32 coefficients for the sampler


class MeanVariance(NamedTuple):
    """p(x_{i-1} | x_i) as the model predicts it, each (N, C, H, W) float32."""

    mean: np.ndarray
    variance: np.ndarray
    log_variance: np.ndarray
    pred_xstart: np.ndarray


class GaussianDiffusion:
    """guided-diffusion's (Spaced)GaussianDiffusion.

    Args:
        steps: training diffusion steps T (1000 in the paper).
        schedule: "linear" (beta from 1e-4 to 0.02, scaled by 1000/T) or "cosine".
        respacing: "" (no respacing), "K" (K evenly spaced steps, e.g. "400"), "a,b,..." (section counts) or
            "ddimK", exactly as guided-diffusion's ``space_timesteps``.
        learn_sigma: the model outputs 2C channels (eps, v); by default the variance interpolates
            log(beta~)..log(beta) with v (the paper's learned variance).
        fixed_variance: None (default): the learned range with learn_sigma, "large" without (guided-diffusion's
            defaults); "large" ([beta~_1, beta_1..]) or "small" (beta~): that fixed variance, also for a
            learn_sigma model, whose v is then ignored. At coarse respacings (e.g. 100 of 1000 steps) the learned
            range at the last steps is wide and the guided counterfactuals get saturated blotches; "small" avoids
            them at no cost (docs/artefacts.md).

    The float64 tables (``betas``, ``alphas_cumprod``, ``posterior_log_variance_clipped``, ...) and the int64
    ``timestep_map`` are attributes (copies).
    """

    def __init__(
        self,
        steps: int = 1000,
        schedule: str = "linear",
        respacing: str = "400",
        learn_sigma: bool = True,
        fixed_variance: str | None = None,
    ) -> None:
        if fixed_variance not in (None, "large", "small"):
            raise ValueError(f"fixed_variance must be None, 'large' or 'small', got {fixed_variance!r}")
        learn_sigma = config_bool("Diffusion: learn_sigma", learn_sigma)  # "no" is an error, not True
        if fixed_variance is None:
            variance_type = "learned_range" if learn_sigma else "fixed_large"
        else:
            variance_type = ("learned_output_" if learn_sigma else "") + "fixed_" + fixed_variance
        self.steps = config_int("Diffusion: steps", steps)  # 1000.5 is an error, not 1000 steps
        if not isinstance(schedule, str):
            raise TypeError(f"Diffusion: schedule must be 'linear' or 'cosine', got {schedule!r}")
        self.schedule = schedule
        self.respacing = str(respacing)
        self.learn_sigma = learn_sigma
        self.variance_type = variance_type
        self.fixed_variance = fixed_variance
        self._c = _C.Diffusion(self.steps, schedule, self.respacing, _VARIANCE_TYPES[variance_type])
        self.timestep_map: np.ndarray  # set from the C tables below, with betas, alphas_cumprod, ...
        self._arrays = self._c.arrays()
        for name, value in self._arrays.items():
            value.setflags(write=False)
            setattr(self, name, value)

    @property
    def num_timesteps(self) -> int:
        """Respaced step count K; valid indices are 0..K-1."""
        return len(self.timestep_map)

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(steps={self.steps}, schedule={self.schedule!r}, respacing={self.respacing!r}, "
            f"learn_sigma={self.learn_sigma}"
            + ("" if self.fixed_variance is None else f", fixed_variance={self.fixed_variance!r}")
            + ")"
        )

    def _indices(self, i: IndexLike, n: int, op: str = "indices") -> np.ndarray:
        """(n,) int64 respaced indices from an int (every row) or (n,) integers in [0, num_timesteps)."""
        idx = np.asarray(i)
        if not np.issubdtype(idx.dtype, np.integer):  # before int(): a scalar 1.5 is not step 1
            raise TypeError(f"{op}: indices must be integers, got {i!r} (dtype {idx.dtype})")
        if idx.ndim == 0:
            idx = np.full(n, int(idx), dtype=np.int64)
        if idx.shape != (n,):
            raise ValueError(f"{op}: indices must have shape ({n},) (one per row), got {idx.shape}")
        bad = np.flatnonzero((idx < 0) | (idx >= self.num_timesteps))
        if bad.size:
            b = int(bad[0])
            raise ValueError(f"{op}: timestep index {int(idx[b])} of sample {b} is outside [0, {self.num_timesteps})")
        return np.ascontiguousarray(idx, dtype=np.int64)

    def _posterior(self, model_output: np.ndarray, x_t: np.ndarray, idx: np.ndarray, clip: bool) -> MeanVariance:
        coefs = ops.posterior_coefs(self._arrays, idx, _VARIANCE_TYPES[self.variance_type])
        ignore_v = self.learn_sigma and self.fixed_variance is not None
        return MeanVariance(
            *ops.p_mean_variance(
                model_output, x_t, coefs, learned=self.learn_sigma, ignore_v=ignore_v, clip=clip, backend=_BE
            )
        )

    def model_timesteps(self, i: IndexLike) -> np.ndarray:
        """The original timesteps the denoiser receives for respaced indices i."""
        idx = np.asarray(i)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"model_timesteps: respaced indices must be integers, got {i!r} (dtype {idx.dtype})")
        if np.any(idx < 0) or np.any(idx >= self.num_timesteps):
            raise ValueError(f"respaced index out of range [0, {self.num_timesteps}): {i}")
        return self.timestep_map[idx]

    def q_sample(self, x0: np.ndarray, i: IndexLike, noise: np.ndarray) -> np.ndarray:
        """x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) noise. x0, noise (N, C, H, W) float32; i int or (N,)."""
        idx = self._indices(i, len(x0), "q_sample")
        tables = self._arrays["sqrt_alphas_cumprod"], self._arrays["sqrt_one_minus_alphas_cumprod"]
        # each row's float64 entry cast to float32, as guided-diffusion's _extract_into_tensor
        return ops.q_sample(x0, noise, *(t[idx].astype(np.float32) for t in tables), backend=_BE)

    def p_mean_variance(
        self, model_output: np.ndarray, x_t: np.ndarray, i: IndexLike, clip: bool = True
    ) -> MeanVariance:
        """Mean, variance, log-variance and clipped x0 estimate of p(x_{i-1} | x_i).

        model_output: (N, 2C, H, W) with learn_sigma (eps, v), else (N, C, H, W); x_t (N, C, H, W).
        """
        return self._posterior(model_output, x_t, self._indices(i, len(x_t), "p_mean_variance"), bool(clip))

    def p_sample(
        self,
        model_output: np.ndarray,
        x_t: np.ndarray,
        i: IndexLike,
        noise: np.ndarray,
        clip: bool = True,
        grad: np.ndarray | None = None,
    ) -> np.ndarray:
        """One reverse step: mean - variance * grad + 1[i != 0] sigma noise (grad: the guidance loss gradient)."""
        idx = self._indices(i, len(x_t), "p_sample")
        out = self._posterior(model_output, x_t, idx, bool(clip))
        noise_weight = (idx != 0).astype(np.float32)  # no noise at the last step
        return ops.sample_step(out.mean, out.variance, out.log_variance, grad, noise, noise_weight, backend=_BE)


def check_diffusion_section(section: Mapping[str, Any]) -> tuple[int, str | None]:
    """(steps, fixed_variance) of a run config's [diffusion] section (variance "learned" when absent), checked
    without building anything (so a run can fail before it reads a model file); ValueError naming the key."""
    variance = section.get("variance", "learned")
    if variance not in VARIANCES:
        raise ValueError(f"diffusion.variance must be one of {list(VARIANCES)}, got {variance!r}")
    return config_int("diffusion.steps", section["steps"]), VARIANCES[variance]


def diffusion_from_section(section: Mapping[str, Any], learn_sigma: bool) -> GaussianDiffusion:
    """The GaussianDiffusion of a run config's [diffusion] section (steps, schedule, respacing, variance) for a UNet
    with or without learn_sigma."""
    steps, fixed_variance = check_diffusion_section(section)
    return GaussianDiffusion(steps, section["schedule"], str(section["respacing"]), learn_sigma, fixed_variance)
