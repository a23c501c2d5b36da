"""QKV attention (both guided-diffusion orderings) and the timestep embedding against PyTorch transcriptions of
guided-diffusion's code (attention in float64 with autograd; the embedding in float32, as guided-diffusion runs it)."""

import math

import numpy as np
import pytest
import torch
from conftest import ALL_BACKENDS, randn, rel_err, t64

from diffice import ops

ATTN_TOL = 2e-5  # the brief allows 1e-4; measured: ref ~6e-8, cpu up to ~2e-6


# ---- float64 transcriptions of guided-diffusion unet.py (the .float() before the softmax dropped: all float64) ----


def qkv_attention_legacy(qkv, n_heads):
    bs, width, length = qkv.shape
    assert width % (3 * n_heads) == 0
    ch = width // (3 * n_heads)
    q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight, dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(bs, -1, length)


def qkv_attention(qkv, n_heads):
    bs, width, length = qkv.shape
    assert width % (3 * n_heads) == 0
    ch = width // (3 * n_heads)
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum(
        "bct,bcs->bts",
        (q * scale).reshape(bs * n_heads, ch, length),
        (k * scale).reshape(bs * n_heads, ch, length),
    )
    weight = torch.softmax(weight, dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v.reshape(bs * n_heads, ch, length))
    return a.reshape(bs, -1, length)


def reference(qkv, dy, heads, legacy_order):
    qt = t64(qkv, requires_grad=True)
    yt = (qkv_attention_legacy if legacy_order else qkv_attention)(qt, heads)
    yt.backward(t64(dy))
    return yt, qt.grad


ATTN_SHAPES = [
    # (N, C, T, heads)
    (3, 12, 35, 3),
    (3, 12, 35, 4),
    (3, 20, 13 * 19, 4),
    (2, 7, 9, 1),
    (2, 12, 1, 4),  # a single token: weights are all 1
    (1, 64, 28 * 36, 4),  # the UNet's middle-block token count
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("legacy_order", [True, False])
@pytest.mark.parametrize("N, C, T, heads", ATTN_SHAPES)
def test_attention_forward_backward(rng, backend, legacy_order, N, C, T, heads):
    # Scale 2 gives peaked, non-trivial softmax weights (logits of a few units).
    qkv = randn(rng, N, 3 * C, T, scale=2.0)
    dy = randn(rng, N, C, T)
    yt, dqkv_t = reference(qkv, dy, heads, legacy_order)
    y = ops.attention(qkv, heads, legacy_order=legacy_order, backend=backend)
    assert y.shape == (N, C, T)
    assert rel_err(y, yt) <= ATTN_TOL
    dqkv = ops.attention_backward(dy, qkv, heads, legacy_order=legacy_order, backend=backend)
    assert rel_err(dqkv, dqkv_t) <= ATTN_TOL


def test_attention_orderings_differ(rng):
    # Guard against the two layouts silently collapsing into one.
    qkv = randn(rng, 2, 3 * 12, 10)
    assert not np.allclose(ops.attention(qkv, 4, legacy_order=True), ops.attention(qkv, 4, legacy_order=False))


@pytest.mark.parametrize("legacy_order", [True, False])
def test_attention_backends_agree(rng, legacy_order):
    qkv = randn(rng, 3, 3 * 20, 77, scale=3.0)
    dy = randn(rng, 3, 20, 77)
    y_ref = ops.attention(qkv, 4, legacy_order=legacy_order, backend="ref")
    y_cpu = ops.attention(qkv, 4, legacy_order=legacy_order, backend="cpu")
    assert rel_err(y_cpu, y_ref) <= ATTN_TOL
    d_ref = ops.attention_backward(dy, qkv, 4, legacy_order=legacy_order, backend="ref")
    d_cpu = ops.attention_backward(dy, qkv, 4, legacy_order=legacy_order, backend="cpu")
    assert rel_err(d_cpu, d_ref) <= ATTN_TOL


QKV = np.zeros((2, 36, 10), np.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda b: ops.attention(QKV, 5, backend=b), ValueError, ["attention", "heads", "12"]),
        (lambda b: ops.attention(QKV, 0, backend=b), ValueError, ["attention", "heads"]),
        (lambda b: ops.attention(QKV, 2.0, backend=b), TypeError, ["attention", "heads"]),
        (
            lambda b: ops.attention(np.zeros((2, 35, 10), np.float32), 1, backend=b),
            ValueError,
            ["attention", "qkv", "3 * C"],
        ),
        (lambda b: ops.attention(QKV[0], 4, backend=b), ValueError, ["attention", "qkv", "dimensions"]),
        (lambda b: ops.attention(QKV.astype(np.float64), 4, backend=b), TypeError, ["attention", "qkv", "float32"]),
        (
            lambda b: ops.attention_backward(np.zeros((2, 12, 9), np.float32), QKV, 4, backend=b),
            ValueError,
            ["attention_backward", "dy", "(2, 12, 10)"],
        ),
        (
            lambda b: ops.attention_backward(np.zeros((2, 12, 10), np.float32), QKV, 5, backend=b),
            ValueError,
            ["attention_backward", "heads"],
        ),
        (
            lambda b: ops.attention_backward(np.zeros((2, 12, 10), np.int32), QKV, 4, backend=b),
            TypeError,
            ["attention_backward", "dy", "float32"],
        ),
    ],
)
def test_attention_rejects_bad_input(backend, call, exc, words):
    with pytest.raises(exc) as info:
        call(backend)
    for word in words:
        assert word in str(info.value)


# ---- timestep embedding ----


def gd_timestep_embedding(timesteps, dim, max_period=10000, exact_exp=False):
    """guided-diffusion nn.timestep_embedding, verbatim (float32). exact_exp takes the float32 exp correctly
    rounded (through float64) instead of torch's CPU exp (MKL VML here), which is off by 1 ulp for ~1% of inputs."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half
    freqs = torch.exp(exponent.double()).float() if exact_exp else torch.exp(exponent)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


T_STEPS = [0, 1, 298, 300, 999]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dim", [128, 129, 320, 2, 3])
def test_timestep_embedding(backend, dim):
    # Same float32 recipe, operation for operation: agrees to 1 ulp of cos/sin. (A float64 computation would be off
    # by ~3e-5 at t = 999, so this checks the float32 rounding steps too.)
    want = gd_timestep_embedding(torch.tensor(T_STEPS), dim, exact_exp=True)
    got = ops.timestep_embedding(np.array(T_STEPS, dtype=np.int64), dim, backend=backend)
    assert got.dtype == np.float32 and got.shape == (len(T_STEPS), dim)
    assert np.abs(got - want.numpy()).max() <= 1e-6
    if dim % 2:
        assert np.all(got[:, -1] == 0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dim", [128, 129, 320])
def test_timestep_embedding_vs_torch_verbatim(backend, dim):
    # Against torch's own exp the frequencies may differ by 1 ulp, which t magnifies: |error| <= t * 2^-23 at most.
    t = np.array(T_STEPS)
    want = gd_timestep_embedding(torch.from_numpy(t), dim).numpy()
    err = np.abs(ops.timestep_embedding(t, dim, backend=backend) - want).max(axis=1)
    assert np.all(err <= 1e-6 + t * 2.0**-23), err


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_timestep_embedding_input_types(rng, backend):
    # int32 / float64 / uint16 arrays and Python lists all mean the same float32 timesteps; fractional t works too.
    want = gd_timestep_embedding(torch.tensor(T_STEPS), 128, exact_exp=True).numpy()
    for t in (T_STEPS, np.array(T_STEPS, np.int32), np.array(T_STEPS, np.float64), np.array(T_STEPS, np.uint16)):
        assert np.abs(ops.timestep_embedding(t, 128, backend=backend) - want).max() <= 1e-6
    tf = (rng.random(7) * 1000).astype(np.float32)
    want_f = gd_timestep_embedding(torch.from_numpy(tf), 96, max_period=500, exact_exp=True)
    assert np.abs(ops.timestep_embedding(tf, 96, max_period=500, backend=backend) - want_f.numpy()).max() <= 1e-6


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: ops.timestep_embedding(np.zeros((2, 2)), 8), ValueError, ["timestep_embedding", "t", "(N,)"]),
        (lambda: ops.timestep_embedding(["a"], 8), TypeError, ["timestep_embedding", "t"]),
        (lambda: ops.timestep_embedding([1.0, np.nan], 8), ValueError, ["timestep_embedding", "t", "non-finite"]),
        (lambda: ops.timestep_embedding([1], 1), ValueError, ["timestep_embedding", "dim", "[2, 2147483647]"]),
        (lambda: ops.timestep_embedding([1], 8.0), TypeError, ["timestep_embedding", "dim"]),
        (lambda: ops.timestep_embedding([1], 8, max_period=0.5), ValueError, ["timestep_embedding", "max_period"]),
        (lambda: ops.timestep_embedding([], 8), ValueError, ["timestep_embedding", "t", "empty"]),
    ],
)
def test_timestep_embedding_rejects_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value)
