"""Precision "bf16" on the CUDA backend (csrc/cuda/dense.cu, backend.cu): convolutions and GEMMs on bf16 operands
with fp32 accumulation, everything else fp32. On "cuda_emulated" the operands are rounded by the same bit arithmetic
as on the GPU and the products are then exact (fp32 reference convolutions, GEMMs accumulated in double), so the
results are checked against float64 oracles fed torch's own bf16 rounding: to the bit where only the final fp32
rounding differs, to one bf16 unit where cuDNN's bf16 output is rounded after an fp32 (emulation) or float64
(oracle) sum. The GPU ("cuda") runs the same checks against the emulation's bounds where one is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randn, rel_err, t64
from test_cuda_networks import UNET, images, plane_classifier, precision_case

import diffice
from diffice import ops
from diffice.explain.explainer import Explainer

DEVICES = ["cuda_emulated"] + (["cuda"] if diffice.cuda_available() else [])
_C = diffice._C


def bf16(a: np.ndarray) -> np.ndarray:
    """a rounded to bf16 (torch: to nearest, ties to even) and widened back to float64."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).bfloat16().double().numpy()


def assert_bf16_output(got: np.ndarray, exact: np.ndarray, device: str) -> None:
    """got is a bf16 result (widened to fp32) of a sum whose exact value is `exact` (float64): almost every element
    is bf16(exact) to the bit, the rest one bf16 unit away (a sum within fp32 rounding of a rounding boundary)."""
    want = bf16(exact)
    same = np.mean(got.astype(np.float64) == want)
    unit = np.abs(want) * 2.0**-7 + 1e-30  # a bf16 unit is 2^-7 relative at most (8 significand bits)
    assert np.all(np.abs(got - want) <= unit), f"{np.max(np.abs(got - want) / unit):.2f} bf16 units away"
    assert same >= (0.99 if device == "cuda_emulated" else 0.9), f"only {same:.3f} of the elements are bf16(exact)"


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_rounding_is_torchs(device):
    """A 1x1 convolution by 1 returns bf16(x): ties go to even, large values round to infinity, tiny ones stay
    (bf16 has fp32's exponent range)."""
    be = ops.get_backend(device, precision="bf16")
    one = np.float32(1.0)
    ties = one + np.float32(2.0**-8) * np.arange(1, 9, dtype=np.float32)  # every other one a tie
    specials = np.array([3.4e38, -3.39e38, 1e-38, -2.5e-40, 0.0, -1e-30, 65504.0, 1.0 / 3.0], dtype=np.float32)
    rng = np.random.default_rng(11)
    x = np.concatenate([ties, specials, randn(rng, 4 * 37 - 16) * 100]).reshape(4, 1, 37, 1)
    w = np.ones((1, 1, 1, 1), np.float32)
    y = _C.conv2d_forward(be, x, w, None, (1, 1), (0, 0), False, False)
    want = torch.from_numpy(x).bfloat16().float().numpy()
    assert y.tobytes() == want.tobytes()
    flat = y.ravel()
    assert flat[0] == 1.0 and flat[2] == 1.0 + 2.0**-6  # 1 + 2^-8 and 1 + 3 2^-8: ties, to even (bf16's unit is 2^-7)
    assert np.isposinf(flat[8]) and np.isfinite(flat[9])  # past bf16's largest (3.39e38) and just within it


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_convolutions(rng, device):
    """Forward, backward data and backward filter: the two operands a convolution reads are rounded to bf16, the
    sum is taken in fp32 and the result is a bf16; the bias and its gradient stay fp32."""
    be = ops.get_backend(device, precision="bf16")
    x, w, bias = randn(rng, 3, 5, 13, 10), randn(rng, 7, 5, 3, 3), randn(rng, 7)
    stride, pad = (2, 1), (1, 2)
    ref = torch.nn.functional.conv2d(t64(bf16(x)), t64(bf16(w)), stride=stride, padding=pad).numpy()
    y = _C.conv2d_forward(be, x, w, None, stride, pad, False, False)
    assert_bf16_output(y, ref, device)
    assert rel_err(y, ref) > 1e-5  # it really rounded (fp32 would be within 1e-6)
    with_bias = _C.conv2d_forward(be, x, w, bias, stride, pad, False, False)
    assert with_bias.tobytes() == (y + bias[:, None, None]).tobytes()  # the bias added to the bf16 result in fp32

    dy = randn(rng, *ref.shape)
    xt = t64(bf16(x), requires_grad=True)
    wt = t64(bf16(w), requires_grad=True)
    torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad).backward(t64(bf16(dy)))
    dx = _C.conv2d_backward_input(be, dy, w, x.shape, stride, pad)
    assert_bf16_output(dx, xt.grad.numpy(), device)
    dw, db = _C.conv2d_backward_weight(be, dy, x, w.shape, True, stride, pad)
    assert_bf16_output(dw, wt.grad.numpy(), device)
    assert rel_err(db, dy.astype(np.float64).sum(axis=(0, 2, 3))) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_linear_and_attention(rng, device):
    """GEMMs take bf16 operands and accumulate in fp32 into an fp32 result: linear layers against the float64
    product of the rounded operands (the emulation sums in double, so to fp32's rounding), attention against fp32
    within bf16's error (its softmax stays fp32 between two bf16 GEMMs)."""
    be = ops.get_backend(device, precision="bf16")
    tol = 1e-6 if device == "cuda_emulated" else 1e-5
    x, w, b = randn(rng, 11, 37), randn(rng, 13, 37), randn(rng, 13)
    y = _C.linear_forward(be, x, w, b)
    assert rel_err(y, bf16(x) @ bf16(w).T + b) < tol and rel_err(y, x.astype(np.float64) @ w.T + b) > 1e-5
    dy = randn(rng, 11, 13)
    assert rel_err(_C.linear_backward_input(be, dy, w), bf16(dy) @ bf16(w)) < tol
    dw, db = _C.linear_backward_weight(be, dy, x, True)
    assert rel_err(dw, bf16(dy).T @ bf16(x)) < tol and rel_err(db, dy.astype(np.float64).sum(0)) < 1e-6

    qkv = randn(rng, 2, 3 * 6, 15)  # 2 heads of 3 channels, 15 positions
    fp32 = ops.get_backend(device)
    y16, y32 = _C.attention_forward(be, qkv, 2, False), _C.attention_forward(fp32, qkv, 2, False)
    assert 1e-5 < rel_err(y16, y32) < 2e-2
    dy = randn(rng, *y32.shape)
    d16, d32 = _C.attention_backward(be, dy, qkv, 2, False), _C.attention_backward(fp32, dy, qkv, 2, False)
    assert 1e-5 < rel_err(d16, d32) < 2e-2


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_unet(rng, device):
    """The UNet's forward on a bf16 backend: within bf16's error of fp32 (measured 1.1% of the largest output). One
    network on two backends of a kind (a backend per precision): its kept workspace, in the strict emulation's
    memory of the first, is not handed to the second (dfc_backend_same_memory: that crashed), and the weights are
    copied to each."""
    unet = diffice.UNet.random(UNET, seed=3, backend=device)
    x, t = randn(rng, 2, 1, 16, 24), unet._timesteps(np.array([500.0, 900.0]), 2)
    fp32 = unet._c.forward(ops.get_backend(device), x, t)[0]
    low = unet._c.forward(ops.get_backend(device, precision="bf16"), x, t)[0]
    assert 1e-4 < rel_err(low, fp32) < 3e-2
    assert unet._c.forward(ops.get_backend(device), x, t)[0].tobytes() == fp32.tobytes()


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_precision_runs_the_explainer(rng, device):
    """Explainer(precision="bf16"): counterfactuals near fp32's (bf16's 8-bit significands in every convolution and
    GEMM of the guided steps), the same bytes for the same seed; the host backends refuse it when the Explainer is
    made, saying what they offer."""
    parts, settings = precision_case(device)
    x = images(rng)
    fp32 = Explainer(*parts, **settings).explain(x, target=1, seed=5)
    ex = Explainer(*parts, precision="bf16", **settings)
    first = ex.explain(x, target=1, seed=5)
    # measured 0.13-0.25 on three draws: the tiny random networks amplify the UNet's 1% (x0_hat divides by
    # sqrt(abar_t), and the guidance follows a random classifier's gradient)
    moved = np.linalg.norm(first.counterfactuals - fp32.counterfactuals) / np.linalg.norm(fp32.counterfactuals - x)
    assert np.all(np.isfinite(first.counterfactuals)) and 0.0 < moved < 0.5
    assert ex.explain(x, target=1, seed=5).counterfactuals.tobytes() == first.counterfactuals.tobytes()
    cpu_unet = diffice.UNet.random(UNET, seed=3)
    cpu_parts = (cpu_unet, parts[1], plane_classifier("cpu"), diffice.PixelLoss("l2"))
    refused = "the cpu backend does not offer precision 'bf16' \\(it offers 'fp32'\\)"
    with pytest.raises(ValueError, match=refused):
        Explainer(*cpu_parts, precision="bf16", **settings)
