"""Diff-ICE and its baselines written in PyTorch eager, as a researcher would write them (the comparison point of
benchmarks/explain.py and benchmarks/gpu.py): guided-diffusion's UNet (tests/gd_reference.py), a classifier module
returning logits, a perceptual loss module, the same equations as diffice's C sampler (docs/method.md sections 3-5).
The noise comes from torch's generator, so results differ from diffice's in their randomness, not in the work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


class TorchDiffusion:
    """The respaced linear schedule and the learned-range posterior, as guided-diffusion computes them."""

    def __init__(self, steps: int = 1000, respacing: int = 400, device: str = "cpu"):
        scale = 1000 / steps
        base_betas = np.linspace(scale * 1e-4, scale * 0.02, steps)
        stride = (steps - 1) / (respacing - 1)
        keep = sorted({round(i * stride) for i in range(respacing)})
        ac, last, betas = np.cumprod(1 - base_betas), 1.0, []
        for j in keep:
            betas.append(1 - ac[j] / last)
            last = ac[j]
        self.timestep_map = torch.tensor(keep, device=device)
        b = np.array(betas)
        acp = np.cumprod(1 - b)
        prev = np.append(1.0, acp[:-1])
        pv = b * (1 - prev) / (1 - acp)
        f = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        self.sqrt_ac, self.sqrt_1mac = f(np.sqrt(acp)), f(np.sqrt(1 - acp))
        self.recip, self.recipm1 = f(np.sqrt(1 / acp)), f(np.sqrt(1 / acp - 1))
        self.logvar_min = f(np.log(np.append(pv[1], pv[1:])))
        self.logvar_max = f(np.log(b))
        self.coef1, self.coef2 = f(b * np.sqrt(prev) / (1 - acp)), f((1 - prev) * np.sqrt(1 - b) / (1 - acp))

    def q_sample(self, x0, i, noise):
        return self.sqrt_ac[i] * x0 + self.sqrt_1mac[i] * noise

    def p_mean_variance(self, model, z, i, clip=True):
        out = model(z, self.timestep_map[i].repeat(len(z)))
        c = z.shape[1]
        eps, v = out[:, :c], out[:, c:]
        frac = (v + 1) / 2
        logvar = frac * self.logvar_max[i] + (1 - frac) * self.logvar_min[i]
        x0 = self.recip[i] * z - self.recipm1[i] * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = self.coef1[i] * x0 + self.coef2[i] * z
        return mean, torch.exp(logvar), logvar, x0


def guidance_loss(classifier, perceptual, x0, x, target, lambda_c, lambda_p):
    """lambda_c CE(f(x0), y) + lambda_p Lp(x0, x), summed over the batch."""
    logits = classifier(x0)
    loss = lambda_c * F.cross_entropy(logits, target, reduction="sum")
    if perceptual is not None and lambda_p:
        loss = loss + lambda_p * perceptual(x0, x)
    return loss


def guided_pass(
    model,
    diffusion: TorchDiffusion,
    classifier,
    perceptual,
    x_in,
    x,
    target,
    tau,
    lambda_c,
    lambda_p,
    generator,
    method="diff-ice",
):
    """One guided reverse process from x_in; method 'diff-ice' (gradient at x0_hat), 'xt' (through the UNet) or
    'dime' (nested unguided chain, 1/sqrt(abar) scaling)."""

    def randn():  # on the images' device, from the generator of that device
        return torch.randn(x_in.shape, generator=generator, device=x_in.device)

    z = diffusion.q_sample(x_in, tau, randn())
    x_c = x_in.clone()
    for i in range(tau - 1, -1, -1):
        if method == "xt":
            z_req = z.detach().requires_grad_(True)
            mean, var, logvar, x0 = diffusion.p_mean_variance(model, z_req, i)
            loss = guidance_loss(classifier, perceptual, x0, x, target, lambda_c, lambda_p)
            g = torch.autograd.grad(loss, z_req)[0]
            mean, var, logvar = mean.detach(), var.detach(), logvar.detach()
        else:
            with torch.no_grad():
                mean, var, logvar, x0 = diffusion.p_mean_variance(model, z, i)
            at = (x_c if method == "dime" else x0).detach().requires_grad_(True)
            loss = guidance_loss(classifier, perceptual, at, x, target, lambda_c, lambda_p)
            g = torch.autograd.grad(loss, at)[0]
            if method == "dime":
                g = g / diffusion.sqrt_ac[i]
        with torch.no_grad():
            noise = randn() if i > 0 else torch.zeros_like(z)
            z = mean - var * g + torch.exp(0.5 * logvar) * noise
            if method == "dime" and i > 0:
                x_c = z.clone()
                for j in range(i - 1, -1, -1):
                    m2, _, lv2, _ = diffusion.p_mean_variance(model, x_c, j)
                    n2 = randn() if j > 0 else torch.zeros_like(z)
                    x_c = m2 + torch.exp(0.5 * lv2) * n2
    return z.detach()


def explain(
    model,
    diffusion,
    classifier,
    perceptual,
    x,
    target,
    iterations=5,
    tau=120,
    lambdas: Sequence[float] = (40, 60, 80),
    lambda_p=30.0,
    method="diff-ice",
    seed=0,
    on_iteration: Callable[[int], None] = None,
):
    """Diff-ICE (method 'diff-ice', L iterations) or a single-pass baseline, with the per-iteration lambda_c search."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    target = torch.as_tensor(target, device=x.device).expand(len(x)).long()
    current = x
    results = []
    for it in range(iterations):
        out = current.clone()
        active = torch.arange(len(x), device=x.device)
        for lam in lambdas:
            cf = guided_pass(
                model,
                diffusion,
                classifier,
                perceptual,
                current[active],
                x[active],
                target[active],
                tau,
                lam,
                lambda_p,
                generator,
                method,
            )
            out[active] = cf
            with torch.no_grad():
                flipped = classifier(cf).argmax(1) == target[active]
            active = active[~flipped]
            if len(active) == 0:
                break
        results.append(out)
        current = out
        if on_iteration:
            on_iteration(it)
    return results
