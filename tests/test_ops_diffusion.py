"""The diffusion ops (ops.h's last block): reference vs fast kernels vs float64 numpy / PyTorch autograd, odd sizes,
batch > 1; and GaussianDiffusion's q_sample / p_mean_variance / p_sample (each row's coefficients gathered from the
C tables) equal to the ops."""

import numpy as np
import pytest
import torch
from conftest import ALL_BACKENDS, randn, rel_err, t64

from diffice import ops
from diffice._native import _C
from diffice.models.diffusion import _VARIANCE_TYPES, GaussianDiffusion
from diffice.models.probabilities import predicted_class, probabilities

SHAPES = [(3, 3, 5, 7), (2, 1, 9, 4), (1, 5, 3, 3), (2, 3, 41, 37)]  # the last: rows of several blocks


def _schedule(variance_type=0):
    return _C.Diffusion(1000, "linear", "100", variance_type)


def _indices(rng, n):
    idx = rng.integers(0, 100, size=n)
    idx[0] = 0  # timestep 0: no noise in the step, the decoder NLL in the loss
    return idx


def _both(fn):
    """fn(backend) on every backend; the reference and fast kernels do the same arithmetic per element, and so do
    the CUDA kernels (to the last bit but for sums over rows of several chunks, added in another order)."""
    ref, cpu, cuda = fn("ref"), fn("cpu"), fn("cuda_emulated")

    def parts(out):
        return out if isinstance(out, tuple) else (out,)

    for a, b, c in zip(parts(ref), parts(cpu), parts(cuda)):
        assert np.array_equal(a, b)
        assert rel_err(c, a) <= 1e-7
    return ref


@pytest.mark.parametrize("shape", SHAPES)
def test_q_sample(rng, shape):
    x0, noise = randn(rng, *shape), randn(rng, *shape)
    a, s = rng.uniform(0.1, 1, shape[0]).astype(np.float32), rng.uniform(0, 1, shape[0]).astype(np.float32)
    got = _both(lambda be: ops.q_sample(x0, noise, a, s, backend=be))
    bshape = (-1,) + (1,) * (len(shape) - 1)
    want = a.astype(np.float64).reshape(bshape) * x0 + s.astype(np.float64).reshape(bshape) * noise
    assert rel_err(got, want) <= 1e-6


def _torch_p_mean_variance(mo, x, c, learned, clip):
    """guided-diffusion's float32 p_mean_variance (eps prediction) on per-row coefficients; learned "ignore_v": a
    (eps, v) output whose v is dropped (the fixed variances)."""
    bshape = (-1,) + (1,) * (x.ndim - 1)
    col = {k: torch.tensor(v).reshape(bshape) for k, v in c._asdict().items()}
    mo, x = torch.tensor(mo), torch.tensor(x)
    if learned == "ignore_v":
        learned, mo = False, mo[:, : x.shape[1]]
    if learned:
        eps, v = torch.split(mo, x.shape[1], dim=1)
        frac = (v + 1) / 2
        log_var = frac * col["max_log"] + (1 - frac) * col["min_log"]
        var = torch.exp(log_var)
    else:
        eps = mo
        var, log_var = col["variance"] * torch.ones_like(x), col["log_variance"] * torch.ones_like(x)
    x0 = col["sqrt_recip_abar"] * x - col["sqrt_recipm1_abar"] * eps
    if clip:
        x0 = x0.clamp(-1, 1)
    mean = col["coef1"] * x0 + col["coef2"] * x
    return mean, var, log_var, x0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variance_type", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance_matches_guided_diffusion(rng, shape, variance_type, clip):
    """Types 3 and 4: a learn_sigma model's (eps, v) with the fixed large / small variance, v ignored."""
    learned, ignore_v = variance_type in (0, 3, 4), variance_type in (3, 4)
    n, c = shape[:2]
    x = randn(rng, *shape, scale=1.5)
    mo = randn(rng, n, c * (2 if learned else 1), *shape[2:])
    coefs = ops.posterior_coefs(_schedule(variance_type).arrays(), _indices(rng, n), variance_type)
    got = _both(lambda be: ops.p_mean_variance(mo, x, coefs, learned=learned, ignore_v=ignore_v, clip=clip, backend=be))
    for g, w in zip(got, _torch_p_mean_variance(mo, x, coefs, "ignore_v" if ignore_v else learned, clip)):
        assert rel_err(g, w) <= 1e-6
    if ignore_v:  # v does not reach any output
        mo[:, c:] = randn(rng, n, c, *shape[2:], scale=100.0)
        again = _both(lambda be: ops.p_mean_variance(mo, x, coefs, learned=True, ignore_v=True, clip=clip, backend=be))
        assert all(np.array_equal(a, b) for a, b in zip(again, got))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("learned", [True, False, "ignore_v"])
@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance_backward_is_the_gradient_through_pred_xstart(rng, shape, learned, clip):
    ignore_v, learned = learned == "ignore_v", bool(learned)
    n, c = shape[:2]
    x = randn(rng, *shape, scale=1.5)
    mo = randn(rng, n, c * (2 if learned else 1), *shape[2:])
    vt = (4 if ignore_v else 0) if learned else 2
    coefs = ops.posterior_coefs(_schedule(vt).arrays(), _indices(rng, n), vt)
    g = randn(rng, *shape)
    dx, dmo = _both(
        lambda be: ops.p_mean_variance_backward(
            g, mo, x, coefs, learned=learned, ignore_v=ignore_v, clip=clip, backend=be
        )
    )
    xt, mot = t64(x, requires_grad=True), t64(mo, requires_grad=True)
    bshape = (-1,) + (1,) * (x.ndim - 1)
    eps = mot[:, :c]
    x0 = t64(coefs.sqrt_recip_abar).reshape(bshape) * xt - t64(coefs.sqrt_recipm1_abar).reshape(bshape) * eps
    if clip:
        x0 = x0.clamp(-1, 1)
    (x0 * t64(g)).sum().backward()
    assert rel_err(dx, xt.grad) <= 1e-6
    assert rel_err(dmo, mot.grad) <= 1e-6
    if learned:
        assert np.all(dmo[:, c:] == 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("guided", [True, False])
def test_sample_step(rng, shape, guided):
    mean, var, log_var, noise = (randn(rng, *shape) for _ in range(4))
    var = np.abs(var)
    grad = randn(rng, *shape) if guided else None
    weight = np.ones(shape[0], np.float32)
    weight[0] = 0.0
    got = _both(lambda be: ops.sample_step(mean, var, log_var, grad, noise, weight, backend=be))
    bshape = (-1,) + (1,) * (len(shape) - 1)
    want = mean.astype(np.float64) - (var.astype(np.float64) * grad if guided else 0.0)
    want = want + weight.reshape(bshape) * np.exp(0.5 * log_var.astype(np.float64)) * noise
    assert rel_err(got, want) <= 1e-6
    assert np.array_equal(got[0], (mean - var * grad if guided else mean)[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_row_scale_and_axpy(rng, shape):
    x, y = randn(rng, *shape), randn(rng, *shape)
    alpha = randn(rng, shape[0])
    bshape = (-1,) + (1,) * (len(shape) - 1)
    assert rel_err(_both(lambda be: ops.row_scale(x, alpha, backend=be)), alpha.reshape(bshape) * x) <= 1e-7
    want = y.astype(np.float64) + alpha.reshape(bshape).astype(np.float64) * x
    assert rel_err(_both(lambda be: ops.row_axpy(alpha, x, y, backend=be)), want) <= 1e-6
    assert np.array_equal(ops.row_scale(x, 2.0), 2.0 * x)  # a scalar is every row's factor


@pytest.mark.parametrize("shape", SHAPES)
def test_change_map_and_masked_blend(rng, shape):
    a, b = np.tanh(randn(rng, *shape)), np.tanh(randn(rng, *shape))
    b[-1] = a[-1]  # a sample without change: its map stays 0, not 0/0
    got = _both(lambda be: ops.change_map(a, b, backend=be))
    want = np.abs((a.astype(np.float64) + 1) / 2 - (b.astype(np.float64) + 1) / 2).sum(axis=1, keepdims=True)
    peak = want.max(axis=(1, 2, 3), keepdims=True)
    want = np.where(peak > 0, want / np.where(peak > 0, peak, 1), 0)
    assert got.shape == (shape[0], 1) + shape[2:] and rel_err(got, want) <= 1e-6
    keep = (got < 0.5).astype(np.float32)
    blended = _both(lambda be: ops.masked_blend(a, b, got, 0.5, backend=be))
    assert np.array_equal(blended, a * (1 - keep) + keep * b)


@pytest.mark.parametrize("shape", SHAPES)
def test_distance_penalty(rng, shape):
    a, b = randn(rng, *shape), randn(rng, *shape)
    l1, l2 = 0.3, 1.7
    dloss = randn(rng, shape[0])
    loss = _both(lambda be: ops.distance_penalty(a, b, l1, l2, backend=be))
    da = _both(lambda be: ops.distance_penalty_backward(a, b, l1, l2, dloss=dloss, backend=be))
    at = t64(a, requires_grad=True)
    diff = at - t64(b)
    want = l1 * diff.abs().sum(dim=(1, 2, 3)) + l2 * diff.norm(dim=1).sum(dim=(1, 2))
    (want * t64(dloss)).sum().backward()
    assert rel_err(loss, want) <= 1e-6
    assert rel_err(da, at.grad) <= 1e-6


def test_nonfinite_rows(rng):
    x = randn(rng, 4, 3, 5, 5)
    x[1, 2, 3, 4], x[3, 0, 0, 0] = np.nan, -np.inf
    for be in ALL_BACKENDS:
        y, bad = ops.nonfinite_rows(x, backend=be)
        assert bad.tolist() == [False, True, False, True]
        assert np.all(y[[1, 3]] == 0) and np.array_equal(y[[0, 2]], x[[0, 2]])


@pytest.mark.parametrize("k", [1, 2, 5])
def test_target_probability(rng, k):
    n = 7
    logits = randn(rng, n, k, scale=3.0)
    logits[0] = 0.0  # ties: the first class wins (k == 1: z > 0 is class 1)
    targets = rng.integers(0, max(k, 2), size=n)
    prob, is_target = _both(lambda be: ops.target_probability(logits, targets, backend=be))
    z = t64(logits)
    if k == 1:
        p1 = torch.sigmoid(z[:, 0]).numpy()
        want, predicted = np.where(targets == 1, p1, 1 - p1), (logits[:, 0] > 0).astype(int)
    else:
        want = torch.softmax(z, dim=1).numpy()[np.arange(n), targets]
        predicted = logits.argmax(axis=1)
    assert rel_err(prob, want) <= 1e-6
    assert np.array_equal(is_target, predicted == targets)
    # the probability rule of diffice.models.probabilities, which the Python guidance path follows
    assert rel_err(prob, probabilities(logits.astype(np.float64))[np.arange(n), targets]) <= 1e-6
    assert np.array_equal(is_target, predicted_class(logits) == targets)


def _torch_vb(mo, x0, xt, c):
    """guided-diffusion's _vb_terms_bpd (frozen mean) in float64, per sample, differentiable in v."""
    col = {
        k: torch.tensor(np.asarray(v, np.float64)).reshape(-1, 1, 1, 1)
        for k, v in c._asdict().items()
        if k not in ("decoder_nll", "scale")
    }
    ch = x0.shape[1]
    mo = t64(mo)
    eps, v = mo[:, :ch].detach(), mo[:, ch:].clone().requires_grad_(True)
    x0, xt = t64(x0), t64(xt)
    frac = (v + 1) / 2
    logvar = frac * col["max_log"] + (1 - frac) * col["min_log"]
    mean = col["coef1"] * (col["sqrt_recip_abar"] * xt - col["sqrt_recipm1_abar"] * eps) + col["coef2"] * xt
    true_mean = col["coef1"] * x0 + col["coef2"] * xt
    kl = 0.5 * (
        -1.0
        + logvar
        - col["min_log"]
        + torch.exp(col["min_log"] - logvar)
        + (true_mean - mean) ** 2 * torch.exp(-logvar)
    )

    def cdf(u):
        return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (u + 0.044715 * u**3)))

    inv_stdv = torch.exp(-0.5 * logvar)
    cdf_plus, cdf_min = cdf(inv_stdv * (x0 - mean + 1 / 255)), cdf(inv_stdv * (x0 - mean - 1 / 255))
    probs = torch.where(x0 < -0.999, cdf_plus, torch.where(x0 > 0.999, 1 - cdf_min, cdf_plus - cdf_min))
    nll = -torch.log(probs.clamp(min=1e-12))
    first = torch.tensor(np.asarray(c.decoder_nll, bool)).reshape(-1, 1, 1, 1)
    vb = torch.where(first, nll, kl).mean(dim=(1, 2, 3)) / np.log(2.0) * c.scale
    return vb, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_diffusion_vb(rng, shape, scale):
    n, ch = shape[:2]
    x0 = (rng.integers(0, 256, size=shape) / 127.5 - 1).astype(np.float32)  # pixels, the ends included
    noise = randn(rng, *shape)
    idx = _indices(rng, n)
    arrays = _schedule().arrays()
    bshape = (-1, 1, 1, 1)
    xt = (
        arrays["sqrt_alphas_cumprod"][idx].reshape(bshape) * x0
        + arrays["sqrt_one_minus_alphas_cumprod"][idx].reshape(bshape) * noise
    ).astype(np.float32)
    mo = randn(rng, n, 2 * ch, *shape[2:], scale=0.5)
    coefs = ops.vb_coefs(arrays, idx, scale)
    dvb = randn(rng, n)
    vb = _both(lambda be: ops.diffusion_vb(mo, x0, xt, coefs, backend=be))
    dv = _both(lambda be: ops.diffusion_vb_backward(mo, x0, xt, coefs, dvb=dvb, backend=be))
    want, v = _torch_vb(mo, x0, xt, coefs)
    (want * t64(dvb)).sum().backward()
    assert rel_err(vb, want) <= 1e-5
    assert rel_err(dv, v.grad) <= 1e-5


@pytest.mark.parametrize("variance_type", [0, 1, 2, 3, 4])
def test_the_diffusion_object_runs_these_ops(rng, variance_type):
    """GaussianDiffusion gathers each row's coefficients from the float64 tables (as schedule.c does for the
    sampler) and calls the ops: the same numbers."""
    learned, ignore_v = variance_type in (0, 3, 4), variance_type in (3, 4)
    fixed = {0: None, 1: "large", 2: "small", 3: "large", 4: "small"}[variance_type]
    d = GaussianDiffusion(1000, "linear", "100", learned, fixed)
    assert d.variance_type == [k for k, v in _VARIANCE_TYPES.items() if v == variance_type][0]
    n, shape = 3, (3, 2, 5, 6)
    idx = _indices(rng, n)
    x, noise = randn(rng, *shape), randn(rng, *shape)
    mo = randn(rng, n, 2 * shape[1] if learned else shape[1], *shape[2:])
    arrays = _schedule(variance_type).arrays()
    sa = arrays["sqrt_alphas_cumprod"][idx].astype(np.float32)
    s1 = arrays["sqrt_one_minus_alphas_cumprod"][idx].astype(np.float32)
    assert np.array_equal(d.q_sample(x, idx, noise), ops.q_sample(x, noise, sa, s1))
    coefs = ops.posterior_coefs(arrays, idx, variance_type)
    out = d.p_mean_variance(mo, x, idx, True)
    for a, b in zip(out, ops.p_mean_variance(mo, x, coefs, learned=learned, ignore_v=ignore_v)):
        assert np.array_equal(a, b)
    grad = randn(rng, *shape)
    want = ops.sample_step(out[0], out[1], out[2], grad, noise, (idx != 0).astype(np.float32))
    assert np.array_equal(d.p_sample(mo, x, idx, noise, grad=grad), want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_inputs_name_the_op_and_argument(rng, backend):
    x = randn(rng, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="q_sample.*noise"):
        ops.q_sample(x, randn(rng, 2, 3, 4, 5), 1.0, 0.0, backend=backend)
    with pytest.raises(ValueError, match="sqrt_abar"):
        ops.q_sample(x, x, np.ones(3, np.float32), np.ones(2, np.float32), backend=backend)
    coefs = ops.posterior_coefs(_schedule().arrays(), [1, 2])
    with pytest.raises(ValueError, match="learned sigma: 2C channels"):
        ops.p_mean_variance(x, x, coefs, learned=True, backend=backend)
    with pytest.raises(ValueError, match="learned sigma: 2C channels"):
        ops.p_mean_variance(x, x, coefs, learned=True, ignore_v=True, backend=backend)
    with pytest.raises(ValueError, match="ignore_v needs learned=True"):
        ops.p_mean_variance(x, x, coefs, learned=False, ignore_v=True, backend=backend)
    with pytest.raises(ValueError, match="output_kind.*got 3"):
        _C.p_mean_variance_forward(ops.get_backend(backend), x, x, *coefs, 3, True)
    with pytest.raises(ValueError, match="masked_blend.*mask"):
        ops.masked_blend(x, x, x, 0.5, backend=backend)
    with pytest.raises(ValueError, match="target_probability.*targets"):
        ops.target_probability(randn(rng, 2, 3), [0, 3], backend=backend)
    with pytest.raises(ValueError, match=r"target_probability: targets\[0\] = -1"):
        ops.target_probability(randn(rng, 2, 1), [-1, 0], backend=backend)


def test_binder_row_vectors_and_typed_outputs(rng):
    """The table-driven binder's per-row host vectors, int32 flag outputs and double result (bind_ops.c)."""
    be = ops.get_backend("cpu")
    x = randn(rng, 2, 3, 4, 4)
    coefs = ops.vb_coefs(_schedule().arrays(), [0, 3])
    mo = randn(rng, 2, 6, 4, 4, scale=0.1)
    with pytest.raises(ValueError, match=r"diffusion_vb: coef1 must have 2 entries \(one per row of x_start\), got 3"):
        ops.diffusion_vb(mo, x, x, coefs._replace(coef1=np.ones(3)))
    with pytest.raises(ValueError, match=r"decoder_nll\[1\] = 4294967296 is outside a C int"):
        ops.diffusion_vb(mo, x, x, coefs._replace(decoder_nll=np.array([1, 2**32])))
    with pytest.raises(TypeError, match="decoder_nll must be a 1-D array of integers"):
        ops.diffusion_vb(mo, x, x, coefs._replace(decoder_nll=np.array([1.0, 0.0])))
    with pytest.raises(TypeError, match=r"q_sample: sqrt_abar must be a 1-D array of float32 values \(one per row"):
        _C.q_sample(be, x, x, object(), np.ones(2, np.float32))
    # a vector before the argument whose rows it follows, and an in-place update of a writable array only
    y = x.copy()
    y.flags.writeable = False
    with pytest.raises(ValueError, match="row_axpy: y must be writable"):
        _C.row_axpy(be, np.ones(2, np.float32), x, y)
    x[1, 0, 0, 0] = np.nan
    flags = _C.nonfinite_rows(be, x)
    assert flags.dtype == np.int32 and flags.tolist() == [0, 1] and not x[1].any()
    total = _C.sum_squares(be, x)
    assert type(total) is float and abs(total - float((x.astype(np.float64) ** 2).sum())) <= 1e-12 * total


# ---- the sampler's noise: the op against an independent numpy Philox4x32-10 + splitmix64 + Box-Muller ----

_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _numpy_noise(m: int, seed: int, key: int, stream: int, iteration: int, step: int, inner: int) -> np.ndarray:
    """The generator's definition (csrc/core/rng.h) in numpy: Philox4x32-10 with counter (group low, group high,
    step, inner step) and the key mixed by splitmix64 from (seed, sample key, stream, iteration); Box-Muller in
    float64 on each counter's two pairs of 32-bit words, rounded to float32."""
    k = _mix64(_mix64(_mix64(seed % 2**64) ^ key) ^ ((stream << 32) | iteration))
    groups = np.arange((m + 3) // 4, dtype=np.uint64)
    c = [groups & 0xFFFFFFFF, groups >> np.uint64(32), np.full_like(groups, step), np.full_like(groups, inner)]
    k0, k1 = np.uint64(k & 0xFFFFFFFF), np.uint64(k >> 32)
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    u = [(w.astype(np.float64) + 0.5) / 2.0**32 for w in c]
    out = np.empty((len(groups), 4))
    for pair in range(2):
        r = np.sqrt(-2.0 * np.log(u[2 * pair]))
        out[:, 2 * pair] = r * np.cos(2 * np.pi * u[2 * pair + 1])
        out[:, 2 * pair + 1] = r * np.sin(2 * np.pi * u[2 * pair + 1])
    return out.reshape(-1)[:m].astype(np.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gaussian_noise_is_the_generator_on_every_backend(rng, backend):
    """Every row is its own stream (keys any uint64, the seed any uint64), equal to the numpy definition (its
    libm may differ in a double's last bit, which moves a float only at a rounding tie: <= 1 float ulp, rare), and
    the CPU backends and the emulation give the same bits; rows of several blocks and a length not a multiple of 4
    (the fast kernel's blocks and the last group's tail)."""
    keys = np.array([0, 2**63 + 12345, int(rng.integers(0, 2**62)), 7], np.uint64)
    # 4551 values a row: 2 blocks of 4096, a tail of 3; a seed past 2**63 (the op takes its bits as an int64)
    shape, seed, counters = (3, 41, 37), 2**64 - 5, (2, 9, 119, 4)
    noise = ops.gaussian_noise(shape, seed, keys, *counters, backend=backend)
    assert noise.shape == (4, *shape) and noise.dtype == np.float32
    m = int(np.prod(shape))
    for b, key in enumerate(keys):
        expected = _numpy_noise(m, seed, int(key), *counters)
        got = noise[b].reshape(-1)
        np.testing.assert_allclose(got, expected, rtol=2e-7, atol=1e-7)
        assert np.mean(got == expected) > 0.999
    if backend != "cuda":
        assert np.array_equal(noise, ops.gaussian_noise(shape, seed, keys, *counters, backend="ref"))
    # a row does not depend on the others; another counter is another stream
    one = ops.gaussian_noise(shape, seed, keys[1:2], *counters, backend=backend)
    assert np.array_equal(one[0], noise[1])
    assert not np.allclose(ops.gaussian_noise(shape, seed, keys, 2, 9, 119, 5, backend=backend), noise)
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05


def test_gaussian_noise_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"gaussian_noise: keys must be a non-empty 1-D array of integer"):
        ops.gaussian_noise((2, 3), 0, np.array([], np.uint64), 1)
    with pytest.raises(ValueError, match=r"gaussian_noise: keys must be .*got dtype float64"):
        ops.gaussian_noise((2, 3), 0, np.array([1.5]), 1)
    with pytest.raises(ValueError, match=r"gaussian_noise: shape must have at least one dimension"):
        ops.gaussian_noise((), 0, np.array([1], np.uint64), 1)
    with pytest.raises(TypeError):
        ops.gaussian_noise((2, 2.5), 0, np.array([1], np.uint64), 1)
