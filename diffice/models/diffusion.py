"""The Gaussian diffusion of openai/guided-diffusion (schedule, respacing, posterior), computed in C.

Indices ``i`` are *respaced* indices in [0, num_timesteps); the denoiser is given ``timestep_map[i]``, the
original training timestep. Images are float32 (N, C, H, W) in [-1, 1].
"""

from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np

from .._native import _C
from .network import config_int

_VARIANCE_TYPES = {"learned_range": 0, "fixed_large": 1, "fixed_small": 2}

IndexLike = Union[int, np.ndarray, list]


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
        learn_sigma: the model outputs 2C channels (eps, v) and the variance interpolates log(beta~)..log(beta).
        fixed_variance: without learn_sigma, "large" ([beta~_1, beta_1..]) or "small" (beta~).

    The float64 tables (``betas``, ``alphas_cumprod``, ``posterior_log_variance_clipped``, ...) and the int64
    ``timestep_map`` are attributes (copies).
    """

    def __init__(
        self,
        steps: int = 1000,
        schedule: str = "linear",
        respacing: str = "400",
        learn_sigma: bool = True,
        fixed_variance: str = "large",
    ) -> None:
        if fixed_variance not in ("large", "small"):
            raise ValueError(f"fixed_variance must be 'large' or 'small', got {fixed_variance!r}")
        variance_type = "learned_range" if learn_sigma else "fixed_" + fixed_variance
        self.steps = config_int("Diffusion: steps", steps)  # 1000.5 is an error, not 1000 steps
        self.schedule = schedule
        self.respacing = str(respacing)
        self.learn_sigma = bool(learn_sigma)
        self.variance_type = variance_type
        self._c = _C.Diffusion(self.steps, schedule, self.respacing, _VARIANCE_TYPES[variance_type])
        self.timestep_map: np.ndarray  # set from the C tables below, with betas, alphas_cumprod, ...
        for name, value in self._c.arrays().items():
            value.setflags(write=False)
            setattr(self, name, value)

    @property
    def num_timesteps(self) -> int:
        """Respaced step count K; valid indices are 0..K-1."""
        return self._c.num_timesteps

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(steps={self.steps}, schedule={self.schedule!r}, respacing={self.respacing!r}, "
            f"learn_sigma={self.learn_sigma})"
        )

    def _indices(self, i: IndexLike, n: int) -> np.ndarray:
        idx = np.asarray(i)
        if idx.ndim == 0:
            idx = np.full(n, int(idx), dtype=np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        return np.ascontiguousarray(idx, dtype=np.int64)

    def model_timesteps(self, i: IndexLike) -> np.ndarray:
        """The original timesteps the denoiser receives for respaced indices i."""
        idx = np.asarray(i)
        if np.any(idx < 0) or np.any(idx >= self.num_timesteps):
            raise ValueError(f"respaced index out of range [0, {self.num_timesteps}): {i}")
        return self.timestep_map[idx]

    def q_sample(self, x0: np.ndarray, i: IndexLike, noise: np.ndarray) -> np.ndarray:
        """x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) noise. x0, noise (N, C, H, W) float32; i int or (N,)."""
        return self._c.q_sample(x0, self._indices(i, len(x0)), noise)

    def p_mean_variance(
        self, model_output: np.ndarray, x_t: np.ndarray, i: IndexLike, clip: bool = True
    ) -> MeanVariance:
        """Mean, variance, log-variance and clipped x0 estimate of p(x_{i-1} | x_i).

        model_output: (N, 2C, H, W) with learn_sigma (eps, v), else (N, C, H, W); x_t (N, C, H, W).
        """
        return MeanVariance(*self._c.p_mean_variance(model_output, x_t, self._indices(i, len(x_t)), bool(clip)))

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
        idx = self._indices(i, len(x_t))
        out = self._c.p_mean_variance(model_output, x_t, idx, bool(clip))
        return self._c.sample_step(out[0], out[1], out[2], grad, noise, idx)
