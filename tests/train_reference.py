"""A PyTorch transcription of openai/guided-diffusion's training loss, for tests only.

gaussian_diffusion.py (GaussianDiffusion.training_losses with LossType.MSE / RESCALED_MSE, ModelMeanType.EPSILON,
ModelVarType.LEARNED_RANGE or FIXED_*, _vb_terms_bpd, q_posterior_mean_variance, p_mean_variance) and losses.py
(normal_kl, approx_standard_normal_cdf, discretized_gaussian_log_likelihood), with the schedule built
independently of diffice in float64 numpy. Everything runs at the dtype of the inputs (float64 in the tests).
"""

from __future__ import annotations

import numpy as np
import torch as th


# ---- losses.py ----
def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + th.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * th.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + th.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * th.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    assert x.shape == means.shape == log_scales.shape
    centered_x = x - means
    inv_stdv = th.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    cdf_plus = approx_standard_normal_cdf(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_min = approx_standard_normal_cdf(min_in)
    log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    log_probs = th.where(
        x < -0.999, log_cdf_plus, th.where(x > 0.999, log_one_minus_cdf_min, th.log(cdf_delta.clamp(min=1e-12)))
    )
    return log_probs


def mean_flat(tensor):
    return tensor.mean(dim=list(range(1, len(tensor.shape))))


# ---- gaussian_diffusion.py ----
class GaussianDiffusion:
    """Linear schedule, no respacing (training), eps prediction."""

    def __init__(self, steps=1000, learn_sigma=True, loss_type="mse"):
        scale = 1000 / steps
        betas = np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
        self.num_timesteps = steps
        self.learn_sigma = learn_sigma
        self.loss_type = loss_type
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @staticmethod
    def _extract(arr, timesteps, broadcast_shape, dtype):
        res = th.from_numpy(arr)[timesteps].to(dtype)
        while len(res.shape) < len(broadcast_shape):
            res = res[..., None]
        return res.expand(broadcast_shape)

    def q_sample(self, x_start, t, noise):
        e = self._extract
        return (
            e(self.sqrt_alphas_cumprod, t, x_start.shape, x_start.dtype) * x_start
            + e(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape, x_start.dtype) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        e, d = self._extract, x_t.dtype
        mean = (
            e(self.posterior_mean_coef1, t, x_t.shape, d) * x_start
            + e(self.posterior_mean_coef2, t, x_t.shape, d) * x_t
        )
        return mean, e(self.posterior_log_variance_clipped, t, x_t.shape, d)

    def p_mean_variance(self, model_output, x, t):
        """clip_denoised=False, as _vb_terms_bpd calls it in training."""
        e, d = self._extract, x.dtype
        B, C = x.shape[:2]
        if self.learn_sigma:
            assert model_output.shape == (B, C * 2, *x.shape[2:])
            model_output, model_var_values = th.split(model_output, C, dim=1)
            min_log = e(self.posterior_log_variance_clipped, t, x.shape, d)
            max_log = e(np.log(self.betas), t, x.shape, d)
            frac = (model_var_values + 1) / 2
            model_log_variance = frac * max_log + (1 - frac) * min_log
        else:
            model_log_variance = e(np.log(np.append(self.posterior_variance[1], self.betas[1:])), t, x.shape, d)
        pred_xstart = (
            e(self.sqrt_recip_alphas_cumprod, t, x.shape, d) * x
            - e(self.sqrt_recipm1_alphas_cumprod, t, x.shape, d) * model_output
        )
        model_mean, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return model_mean, model_log_variance

    def _vb_terms_bpd(self, model_output, x_start, x_t, t):
        true_mean, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
        mean, log_variance = self.p_mean_variance(model_output, x_t, t)
        kl = normal_kl(true_mean, true_log_variance_clipped, mean, log_variance)
        kl = mean_flat(kl) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_variance)
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        return th.where((t == 0), decoder_nll, kl)

    def training_losses(self, model_output, x_start, t, noise, x_t=None):
        """model_output: the model's output at x_t (a tensor, so gradients flow to it); returns the terms dict."""
        if x_t is None:
            x_t = self.q_sample(x_start, t, noise)
        terms = {}
        if self.learn_sigma:
            B, C = x_t.shape[:2]
            model_output, model_var_values = th.split(model_output, C, dim=1)
            # the vb term trains the variance only: the mean is frozen
            frozen_out = th.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen_out, x_start, x_t, t)
            if self.loss_type == "rescaled_mse":
                terms["vb"] *= self.num_timesteps / 1000.0
        terms["mse"] = mean_flat((noise - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
