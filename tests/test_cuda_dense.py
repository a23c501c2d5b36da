"""The CUDA dense kernels (csrc/cuda/dense.cu) beyond what the op tests (test_ops_conv.py, test_ops_attention.py, run
on cuda_emulated) cover: the convolution plan cache past its size, the attention scratch as T grows and shrinks, and
on a machine with a GPU (skipped otherwise) the cuDNN / cuBLAS paths against the CPU backend, and their determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from conftest import randn, rel_err, t64

import diffice
from diffice import ops

EMU = "cuda_emulated"
TOL = 1e-5


def test_conv_plan_cache_past_its_size(rng):
    """More distinct shapes than the state's 64 plans (each op a plan of its own), then the first shapes again."""
    weight = randn(rng, 4, 3, 3, 3, scale=0.3)
    heights = list(range(3, 75)) + [3, 4]
    for h in heights:
        x = randn(rng, 2, 3, h, 5)
        dy = randn(rng, 2, 4, h, 5)
        xt, wt = t64(x, requires_grad=True), t64(weight, requires_grad=True)
        yt = F.conv2d(xt, wt, padding=1)
        yt.backward(t64(dy))
        assert rel_err(ops.conv2d(x, weight, padding=1, backend=EMU), yt) <= TOL
        assert rel_err(ops.conv2d_backward_input(dy, weight, x.shape, padding=1, backend=EMU), xt.grad) <= TOL
        dw, _ = ops.conv2d_backward_weight(dy, x, weight.shape, padding=1, backend=EMU)
        assert rel_err(dw, wt.grad) <= TOL


@pytest.mark.parametrize("legacy_order", [True, False])
def test_attention_scratch_grows_and_is_reused(rng, legacy_order):
    for T in (5, 300, 7):
        qkv = randn(rng, 2, 3 * 12, T, scale=2.0)
        dy = randn(rng, 2, 12, T)
        want = ops.attention(qkv, 3, legacy_order=legacy_order, backend="ref")
        assert rel_err(ops.attention(qkv, 3, legacy_order=legacy_order, backend=EMU), want) <= 2e-5
        want = ops.attention_backward(dy, qkv, 3, legacy_order=legacy_order, backend="ref")
        assert rel_err(ops.attention_backward(dy, qkv, 3, legacy_order=legacy_order, backend=EMU), want) <= 2e-5


gpu = pytest.mark.skipif(not diffice.cuda_available(), reason="no CUDA GPU")


@gpu
@pytest.mark.parametrize("case", [(3, 5, 13, 19, 7, 3, 1, 1), (3, 7, 13, 19, 11, 3, 2, 1), (2, 3, 13, 19, 11, 7, 2, 3)])
def test_conv2d_on_the_gpu(rng, case):
    n, ci, h, w, co, k, stride, pad = case
    x, weight, bias = randn(rng, n, ci, h, w), randn(rng, co, ci, k, k, scale=0.3), randn(rng, co)
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    dy = randn(rng, n, co, ho, wo)
    for _ in range(2):  # the second call takes the cached plan
        got = ops.conv2d(x, weight, bias, stride=stride, padding=pad, backend="cuda")
        assert rel_err(got, ops.conv2d(x, weight, bias, stride=stride, padding=pad, backend="cpu")) <= TOL
        dx = ops.conv2d_backward_input(dy, weight, x.shape, stride=stride, padding=pad, backend="cuda")
        assert rel_err(dx, ops.conv2d_backward_input(dy, weight, x.shape, stride=stride, padding=pad)) <= TOL
        dw, db = ops.conv2d_backward_weight(dy, x, weight.shape, bias=True, stride=stride, padding=pad, backend="cuda")
        dw_cpu, db_cpu = ops.conv2d_backward_weight(dy, x, weight.shape, bias=True, stride=stride, padding=pad)
        assert rel_err(dw, dw_cpu) <= TOL and rel_err(db, db_cpu) <= TOL
    # deterministic algorithms only: the same inputs give the same bytes
    again, _ = ops.conv2d_backward_weight(dy, x, weight.shape, bias=True, stride=stride, padding=pad, backend="cuda")
    assert np.array_equal(again, dw)


@gpu
def test_linear_and_attention_on_the_gpu(rng):
    x, weight, bias, dy = randn(rng, 13, 5), randn(rng, 19, 5), randn(rng, 19), randn(rng, 13, 19)
    assert rel_err(ops.linear(x, weight, bias, backend="cuda"), ops.linear(x, weight, bias)) <= TOL
    assert rel_err(ops.linear_backward_input(dy, weight, backend="cuda"), ops.linear_backward_input(dy, weight)) <= TOL
    dw, db = ops.linear_backward_weight(dy, x, bias=True, backend="cuda")
    dw_cpu, db_cpu = ops.linear_backward_weight(dy, x, bias=True)
    assert rel_err(dw, dw_cpu) <= TOL and rel_err(db, db_cpu) <= TOL
    for legacy_order in (True, False):
        qkv, dy = randn(rng, 2, 3 * 64, 28 * 36, scale=2.0), randn(rng, 2, 64, 28 * 36)
        got = ops.attention(qkv, 4, legacy_order=legacy_order, backend="cuda")
        assert rel_err(got, ops.attention(qkv, 4, legacy_order=legacy_order)) <= 2e-5
        got = ops.attention_backward(dy, qkv, 4, legacy_order=legacy_order, backend="cuda")
        assert rel_err(got, ops.attention_backward(dy, qkv, 4, legacy_order=legacy_order)) <= 2e-5


@gpu
@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_tf32_convolutions_keep_fp32s_range(rng, scale):
    """precision "tf32" rounds a convolution's operands to 10-bit mantissas but keeps fp32's 8-bit exponent: values far
    outside fp16's range (1e-6 is an fp16 subnormal with a few bits, 1e6 past its 65504) come out within TF32's
    rounding (a mode that converted fp32 data to fp16, cuDNN's TENSOR_OP_MATH_ALLOW_CONVERSION, would flush or
    overflow them)."""
    be = ops.get_backend("cuda", precision="tf32")
    x, w, dy = randn(rng, 2, 6, 11, 9) * scale, randn(rng, 5, 6, 3, 3), randn(rng, 2, 5, 11, 9) * scale
    xt, wt = t64(x, requires_grad=True), t64(w, requires_grad=True)
    yt = F.conv2d(xt, wt, padding=1)
    yt.backward(t64(dy))
    assert rel_err(diffice._C.conv2d_forward(be, x, w, None, (1, 1), (1, 1), False, False), yt) <= 5e-3
    assert rel_err(diffice._C.conv2d_backward_input(be, dy, w, x.shape, (1, 1), (1, 1)), xt.grad) <= 5e-3
    dw = diffice._C.conv2d_backward_weight(be, dy, x, w.shape, False, (1, 1), (1, 1))[0]
    assert rel_err(dw, wt.grad) <= 5e-3
