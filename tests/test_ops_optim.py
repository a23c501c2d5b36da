"""The optimizer ops (AdamW step, EMA, sum of squares, scale) against torch.optim.AdamW and the EMA formula,
reference vs fast kernel; and the backend's memory interface through an arena of backend memory."""

import numpy as np
import pytest
import torch
from conftest import ALL_BACKENDS, BACKENDS, randn, rel_err, t64

from diffice import ops
from diffice._native import _C
from diffice.train.ddpm import EMA, AdamW, clip_grad_norm

SHAPES = [(7,), (3, 5, 11), (2, 3, 13, 9), (100_003,)]


def _adamw_torch(param, grads, kw, dtype):
    """torch.optim.AdamW (single-tensor path) over the gradient sequence; returns param, exp_avg, exp_avg_sq."""
    p = torch.tensor(param, dtype=dtype, requires_grad=True)
    opt = torch.optim.AdamW([p], foreach=False, **kw)
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    state = opt.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adamw_step_matches_torch_over_several_steps(rng, shape, weight_decay):
    kw = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=weight_decay)
    param = randn(rng, *shape)
    grads = [randn(rng, *shape, scale=10.0 ** (k % 3 - 1)) for k in range(5)]
    want32 = _adamw_torch(param, grads, kw, torch.float32)
    want64 = _adamw_torch(param, grads, kw, torch.float64)
    results = {}
    for backend in ALL_BACKENDS:
        p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
        for step, g in enumerate(grads, start=1):  # bias correction counts from 1
            p, m, v = ops.adamw_step(p, g, m, v, step, backend=backend, **kw)
        assert p.dtype == np.float32 and p.shape == shape
        # torch's float32 single-tensor path runs the same float32 operations in the same order
        np.testing.assert_allclose(p, want32[0].numpy(), rtol=1e-6, atol=1e-7)
        assert rel_err(p, want64[0]) <= 1e-5
        assert rel_err(m, want64[1]) <= 1e-5 and rel_err(v, want64[2]) <= 1e-5
        results[backend] = (p, m, v)
    for other in ALL_BACKENDS[1:]:
        for a, b in zip(results["ref"], results[other]):
            np.testing.assert_array_equal(a, b)  # the same element formula: bit for bit


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_adamw_step_leaves_inputs_and_bad_inputs(rng, backend):
    p, g = randn(rng, 4, 5), randn(rng, 4, 5)
    m, v = np.zeros_like(p), np.zeros_like(p)
    before = p.copy()
    ops.adamw_step(p, g, m, v, 1, backend=backend)
    np.testing.assert_array_equal(p, before)
    with pytest.raises(ValueError, match=r"adamw_step: exp_avg has shape \(4, 6\), expected \(4, 5\)"):
        ops.adamw_step(p, g, np.zeros((4, 6), np.float32), v, 1, backend=backend)
    with pytest.raises(ValueError, match="adamw_step: step"):
        ops.adamw_step(p, g, m, v, 0, backend=backend)
    with pytest.raises(ValueError, match="betas must be in"):
        ops.adamw_step(p, g, m, v, 1, betas=(1.0, 0.9), backend=backend)
    with pytest.raises(ValueError, match="lr must be"):
        ops.adamw_step(p, g, m, v, 1, lr=-1.0, backend=backend)
    with pytest.raises(TypeError, match="adamw_step: grad"):
        ops.adamw_step(p, g.astype(np.float64), m, v, 1, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rate", [0.0, 0.9, 0.9999, 1.0])
def test_ema_update_matches_the_formula(rng, backend, shape, rate):
    ema, param = randn(rng, *shape), randn(rng, *shape)
    got = ops.ema_update(ema, param, rate, backend=backend)
    want = t64(ema).mul_(rate).add_(t64(param), alpha=1 - rate)  # guided-diffusion's update_ema
    assert rel_err(got, want) <= 1e-6
    other = ops.ema_update(ema, param, rate, backend="cpu" if backend == "ref" else "ref")
    np.testing.assert_array_equal(got, other)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ema_update_bad_inputs(rng, backend):
    e = randn(rng, 3, 4)
    with pytest.raises(ValueError, match=r"ema_update: rate must be in \[0, 1\], got 1.5"):
        ops.ema_update(e, e, 1.5, backend=backend)
    with pytest.raises(ValueError, match="ema_update: param has shape"):
        ops.ema_update(e, randn(rng, 4, 3), 0.5, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sum_squares_and_scale(rng, backend, shape):
    x = randn(rng, *shape, scale=3.0)
    want = float((x.astype(np.float64) ** 2).sum())
    assert abs(ops.sum_squares(x, backend=backend) - want) <= 1e-12 * want
    np.testing.assert_array_equal(ops.scale(x, 0.37, backend=backend), x * np.float32(0.37))


def test_sum_squares_does_not_depend_on_the_thread_count(rng):
    x = randn(rng, 100_003)
    sums = {_C.sum_squares(_C.Backend("cpu", threads), x) for threads in (1, 2, 3)}
    assert len(sums) == 1


# ---- the backend's memory interface, through an arena of backend memory ----


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_arena_roundtrip(rng, backend):
    x = randn(rng, 3, 5, 7)
    chunk = 512  # smaller than x's 420 floats: every tensor takes a chunk of its own
    copy, zeros, num_chunks, capacity, peak = _C.arena_roundtrip(ops.get_backend(backend), x, chunk, 0)
    np.testing.assert_array_equal(copy, x)
    np.testing.assert_array_equal(zeros, 0.0)
    assert num_chunks == 3 and capacity >= 3 * x.nbytes and peak >= 3 * x.nbytes
    one_chunk = _C.arena_roundtrip(ops.get_backend(backend), x, 1 << 20, 0)
    assert one_chunk[2] == 1 and one_chunk[3] == 1 << 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_arena_limit(rng, backend):
    x = randn(rng, 1000)
    with pytest.raises(MemoryError, match="arena: .* would pass the memory limit of 8192 bytes"):
        _C.arena_roundtrip(ops.get_backend(backend), x, 4096, 8192)


MIB = 1 << 20
SLACK = MIB // 8  # the room a chunk made for one large tensor gets for the small ones after it (chunk size / 8)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_arena_phases_of_different_sizes_share_one_chunk(backend):
    """Two 3 MiB tensors in one phase, one 6 MiB tensor in the next (a UNet's input and output blocks): the second
    phase merges the two free chunks into one instead of growing a third, and repeating both phases holds no more."""
    a, b = [0, 3 * MIB, 3 * MIB, -1], [0, 6 * MIB, -1]
    capacity, num_chunks, peak = _C.arena_replay(ops.get_backend(backend), a + b + a + b, MIB)
    assert capacity[len(a) - 1] == 2 * (3 * MIB + SLACK)
    assert num_chunks == 1 and capacity[-1] == 2 * (3 * MIB + SLACK)  # 6 MiB fit in the merged chunk
    assert peak == 6 * MIB + SLACK  # the first chunk's unused end counted while the second was in use


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_arena_takes_the_smallest_free_chunk_that_fits(backend):
    """After an 8 MiB and a 2 MiB chunk are freed, a 2 MiB request takes the 2 MiB chunk, so the 8 MiB one still
    serves the next request: no growth."""
    steps = [0, 8 * MIB, 2 * MIB, -1, 0, 2 * MIB, 8 * MIB, -1]
    capacity, num_chunks, _ = _C.arena_replay(ops.get_backend(backend), steps, MIB)
    assert num_chunks == 2 and capacity[-1] == capacity[3] == 10 * MIB + 2 * SLACK


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_arena_marks_inside_a_chunk_survive_the_policy(backend):
    """Nested marks, small tensors sharing a chunk and a reset back into a chunk that is not empty."""
    steps = [0, 1000, 0, 4 * MIB, 0, 10, -1, 3 * MIB, -1, 500, 2 * MIB, -1, 0, 5 * MIB, -1]
    capacity, num_chunks, peak = _C.arena_replay(ops.get_backend(backend), steps, MIB)
    assert capacity[-1] <= 4 * MIB + 3 * MIB + 2 * MIB + 3 * SLACK + MIB and peak >= 7 * MIB
    with pytest.raises(ValueError, match=r"arena_replay: step 1 is -2"):
        _C.arena_replay(ops.get_backend(backend), [0, -2], MIB)


def test_unknown_backend_names_the_registered_ones():
    with pytest.raises(
        ValueError, match=r"unknown backend 'gpu' \(expected one of 'cpu', 'ref', 'cuda_emulated', 'cuda'\)"
    ):
        _C.Backend("gpu")
    assert _C.backend_names() == ops.BACKENDS == ("cpu", "ref", "cuda_emulated", "cuda")
    hosts = [name for name in ops.BACKENDS if name != "cuda"]  # "cuda" needs a GPU (tests/test_cuda_backend.py)
    assert [_C.Backend(name).name for name in hosts] == hosts


def test_training_objects_merge_adjacent_views(rng):
    """diffice.train's AdamW / EMA run their op once per contiguous run of parameters: views of one buffer (one
    call) give the same numbers as separate arrays (a call each), for any thread count."""
    buffer, g = randn(rng, 257), randn(rng, 257)
    results = []
    for threads, separate in ((1, False), (3, True)):
        flat = buffer.copy()
        params = [flat[:100], flat[100:101].reshape(1, 1), flat[101:].reshape(12, 13)]
        if separate:
            params = [p.copy() for p in params]
        opt = AdamW(params, lr=1e-2, weight_decay=0.05, num_threads=threads)
        ema = EMA(params, 0.5, num_threads=threads)
        for _ in range(3):
            opt.step(g)
            ema.update()
        grads = g.copy()
        norm = clip_grad_norm(grads, 1.0, num_threads=threads)
        results.append((np.concatenate([p.ravel() for p in params]), opt.exp_avg_sq, ema.values, grads, norm))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
