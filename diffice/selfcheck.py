"""`diffice check`: every op on the fast CPU backend against the plain C reference kernels, on random inputs.

A quick way to see that an installation computes what it should (the test suite compares with PyTorch).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import ops
from ._native import _C


def _cases(rng: np.random.Generator) -> list[tuple[str, Callable[[str], object]]]:
    def r(*shape):  # inputs are drawn once, before any op runs, so both backends see the same ones
        return rng.standard_normal(shape).astype(np.float32)

    x, w, b = r(3, 7, 13, 19), r(11, 7, 3, 3), r(11)
    dy_conv = r(3, 11, 7, 10)
    m, lw, lb = r(5, 24), r(9, 24), r(9)
    g = r(3, 64, 13, 19)
    gamma, beta = r(64), r(64)
    qkv = r(2, 3 * 64, 35)
    logits, targets = r(6, 5), rng.integers(0, 5, 6)
    dy_linear, bn_mean, bn_var, bn_gamma, bn_beta = r(5, 9), r(7), np.abs(r(7)) + 0.1, r(7), r(7)
    per_channel, per_sample_channel, dy_attention = r(7), r(3, 7, 1, 1), r(2, 64, 35)
    scale_shift = r(3, 14)
    gn_add, gn_ss = r(3, 64), r(3, 128)
    # cpu: Winograd from 32 channels and 60 4x4 tiles per image (here 12 x 15)
    x_nhwc, w_winograd, b_winograd = r(2, 45, 59, 64), r(67, 64, 3, 3), r(67)
    grad = r(*x.shape)
    # network ops (issue 15, netops)
    one_logit, bce_targets, dloss3, dloss6 = r(6, 1), (r(3, 7, 13, 19) > 0).astype(np.float32), r(3), r(6)
    feats_a, feats_b = r(3, 70, 5, 31), r(3, 70, 5, 31)
    binary_targets = rng.integers(0, 2, 6)
    return [
        ("conv2d", lambda be: ops.conv2d(x, w, b, stride=2, padding=1, backend=be)),
        (
            "conv2d_backward_input",
            lambda be: ops.conv2d_backward_input(dy_conv, w, x.shape, stride=2, padding=1, backend=be),
        ),
        (
            "conv2d_backward_weight",
            lambda be: ops.conv2d_backward_weight(dy_conv, x, w.shape, stride=2, padding=1, backend=be),
        ),
        (
            "conv2d, channels last (cpu: Winograd)",
            lambda be: ops.conv2d(
                x_nhwc, w_winograd, b_winograd, padding=1, x_layout="nhwc", y_layout="nhwc", backend=be
            ),
        ),
        ("linear", lambda be: ops.linear(m, lw, lb, backend=be)),
        ("linear_backward", lambda be: (ops.linear_backward_input(dy_linear, lw, backend=be),)),
        ("group_norm", lambda be: ops.group_norm(g, 32, gamma, beta, backend=be)),
        ("group_norm_backward", lambda be: ops.group_norm_backward(g, g, 32, gamma, backend=be)),
        (
            "group_norm_act (add, to NHWC / scale-shift, NHWC)",
            lambda be: (
                ops.group_norm_act(g, 32, gamma, beta, add=gn_add, y_layout="nhwc", backend=be),
                ops.group_norm_act(
                    g.transpose(0, 2, 3, 1).copy(), 32, gamma, beta, scale_shift=gn_ss, x_layout="nhwc", backend=be
                ),
            ),
        ),
        ("batch_norm", lambda be: ops.batch_norm(x, bn_mean, bn_var, bn_gamma, bn_beta, backend=be)),
        ("silu / backward", lambda be: (ops.silu(x, backend=be), ops.silu_backward(x, x, backend=be))),
        ("softmax / backward", lambda be: (ops.softmax(x, backend=be), ops.softmax_backward(x, x, backend=be))),
        (
            "add / mul broadcast",
            lambda be: (ops.add(x, per_channel, backend=be), ops.mul(x, per_sample_channel, backend=be)),
        ),
        ("concat / split", lambda be: (ops.concat([x, x], backend=be), *ops.split(x, [3, 4], backend=be))),
        ("upsample_nearest2x", lambda be: ops.upsample_nearest2x(x, backend=be)),
        ("avg_pool2d", lambda be: ops.avg_pool2d(x, 2, backend=be)),
        ("max_pool2d 3x3/2", lambda be: ops.max_pool2d(x, 3, 2, 1, backend=be)),
        ("global_avg_pool", lambda be: ops.global_avg_pool(x, backend=be)),
        ("resize_bilinear", lambda be: ops.resize_bilinear(x, (29, 7), backend=be)),
        ("attention (legacy)", lambda be: ops.attention(qkv, 4, backend=be)),
        ("attention_backward", lambda be: ops.attention_backward(dy_attention, qkv, 4, legacy_order=False, backend=be)),
        ("timestep_embedding", lambda be: ops.timestep_embedding(np.array([0, 298, 999]), 128, backend=be)),
        (
            "cross_entropy / backward",
            lambda be: (
                np.float32(ops.cross_entropy(logits, targets, backend=be)),
                ops.cross_entropy_backward(logits, targets, backend=be),
            ),
        ),
        (
            "mse / backward",
            lambda be: (np.float32(ops.mse(x, x * 0.5, backend=be)), *ops.mse_backward(x, x * 0.5, backend=be)),
        ),
        # UNet ops (issue 15, unetnet)
        (
            "scale_shift / backward",
            lambda be: (
                ops.scale_shift(x, scale_shift, backend=be),
                *ops.scale_shift_backward(x, x, scale_shift, backend=be),
            ),
        ),
        # optimizer ops
        (
            "adamw_step / ema_update",
            lambda be: (
                *ops.adamw_step(x, grad, x * 0.1, x * x, 3, weight_decay=0.05, backend=be),
                ops.ema_update(x, grad, 0.999, backend=be),
            ),
        ),
        (
            "sum_squares / scale",
            lambda be: (np.float32(ops.sum_squares(x, backend=be)), ops.scale(x, 0.25, backend=be)),
        ),
        # network ops (issue 15, netops)
        (
            "softmax axis 1 / backward",
            lambda be: (ops.softmax(x, axis=1, backend=be), ops.softmax_backward(x, x, axis=1, backend=be)),
        ),
        (
            "cross_entropy of one logit",
            lambda be: (
                ops.cross_entropy(one_logit, binary_targets, reduction="none", backend=be),
                ops.cross_entropy_backward(one_logit, binary_targets, backend=be),
            ),
        ),
        (
            "logit_loss / backward",
            lambda be: (
                ops.logit_loss(logits, targets, backend=be),
                ops.logit_loss_backward(dloss6, logits, targets, backend=be),
            ),
        ),
        (
            "bce_with_logits / backward",
            lambda be: (
                ops.bce_with_logits(x, bce_targets, backend=be),
                ops.bce_with_logits_backward(dloss3, x, bce_targets, backend=be),
            ),
        ),
        (
            "standardize / backward",
            lambda be: (ops.standardize(x, 255.0, backend=be), ops.standardize_backward(x, x, 255.0, backend=be)),
        ),
        (
            "normalized_distance / bwd",
            lambda be: (
                ops.normalized_distance(feats_a, feats_b, backend=be),
                ops.normalized_distance_backward(dloss3, feats_a, feats_b, backend=be),
            ),
        ),
        ("fill", lambda be: ops.fill(x, 0.25, backend=be)),
    ]


def _diffusion_cases(rng: np.random.Generator) -> list[tuple[str, Callable[[str], object]]]:
    """The diffusion ops (q_sample, p_mean_variance, the reverse step, the sampler's per-row ops, the vb loss)."""

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    n, shape = 3, (3, 3, 13, 11)
    x, noise, g, mo = r(*shape), r(*shape), r(*shape), r(n, 6, 13, 11)
    idx = np.array([0, 41, 99])
    arrays = _C.Diffusion(1000, "linear", "100", 0).arrays()
    post, vb = ops.posterior_coefs(arrays, idx), ops.vb_coefs(arrays, idx)
    alpha, logits, targets = r(n), r(n, 5), rng.integers(0, 5, n)
    x_pixels = (rng.integers(0, 256, shape) / 127.5 - 1).astype(np.float32)
    bad = x.copy()
    bad[1, 0, 2, 3] = np.nan
    return [
        ("q_sample", lambda be: ops.q_sample(x, noise, post.coef1, post.coef2, backend=be)),
        (
            "p_mean_variance / backward",
            lambda be: (
                *ops.p_mean_variance(mo, x, post, backend=be),
                *ops.p_mean_variance_backward(g, mo, x, post, backend=be),
                *ops.p_mean_variance(mo, x, post, ignore_v=True, backend=be),  # a fixed variance, v ignored
            ),
        ),
        ("sample_step", lambda be: ops.sample_step(x, np.abs(g), noise, g, x, [0, 1, 1], backend=be)),
        ("gaussian_noise", lambda be: ops.gaussian_noise((3, 13, 11), 5, [1, 2**63 + 7, 9], 2, 1, 7, 3, backend=be)),
        (
            "row_scale / row_axpy",
            lambda be: (ops.row_scale(x, alpha, backend=be), ops.row_axpy(alpha, x, g, backend=be)),
        ),
        (
            "change_map / masked_blend",
            lambda be: (
                ops.change_map(x, g, backend=be),
                ops.masked_blend(x, g, np.abs(noise[:, :1]), 0.5, backend=be),
            ),
        ),
        (
            "distance_penalty / backward",
            lambda be: (
                ops.distance_penalty(x, g, 0.3, 0.7, backend=be),
                ops.distance_penalty_backward(x, g, 0.3, 0.7, backend=be),
            ),
        ),
        ("nonfinite_rows", lambda be: tuple(np.asarray(a, np.float32) for a in ops.nonfinite_rows(bad, backend=be))),
        (
            "target_probability",
            lambda be: tuple(np.asarray(a, np.float32) for a in ops.target_probability(logits, targets, backend=be)),
        ),
        (
            "diffusion_vb / backward",
            lambda be: (
                ops.diffusion_vb(mo, x_pixels, x, vb, backend=be),
                ops.diffusion_vb_backward(mo, x_pixels, x, vb, backend=be),
            ),
        ),
    ]


def _flatten(result) -> list[np.ndarray]:
    if isinstance(result, (tuple, list)):
        return [np.asarray(a) for a in result if a is not None]
    return [np.asarray(result)]


def run_selfcheck(seed: int = 0, tolerance: float = 1e-4, verbose: bool = True) -> bool:
    """Runs every op on 'cpu' and 'ref'; True when all agree within `tolerance` (max error / max magnitude)."""
    rng = np.random.default_rng(seed)
    ok = True
    rows = []
    for name, fn in _cases(rng) + _diffusion_cases(rng):
        t0 = time.perf_counter()
        fast = _flatten(fn("cpu"))
        t1 = time.perf_counter()
        ref = _flatten(fn("ref"))
        t2 = time.perf_counter()
        err = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(fast, ref))
        passed = err <= tolerance and all(a.shape == b.shape for a, b in zip(fast, ref))
        ok &= passed
        rows.append((name, err, (t1 - t0) * 1e3, (t2 - t1) * 1e3, passed))
    if verbose:
        print(f"{'op':28s} {'rel. diff':>10s} {'cpu ms':>8s} {'ref ms':>8s}")
        for name, err, tc, tr, passed in rows:
            print(f"{name:28s} {err:10.2e} {tc:8.2f} {tr:8.2f}  {'ok' if passed else 'MISMATCH'}")
        print("all ops agree" if ok else "some ops disagree")
    return ok
