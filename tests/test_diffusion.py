"""GaussianDiffusion against an independent numpy transcription of guided-diffusion, and the table of
docs/method.md section 2.5."""

import math

import numpy as np
import pytest
import torch
from conftest import randn

from diffice.models.diffusion import GaussianDiffusion


def reference_space_timesteps(num_timesteps, section_counts):
    """guided-diffusion respace.py space_timesteps, transcribed."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == desired:
                    return set(range(0, num_timesteps, i))
            raise ValueError
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken = []
        for _ in range(section_count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken
        start_idx += size
    return set(all_steps)


def reference_tables(steps, schedule, respacing):
    if schedule == "linear":
        scale = 1000 / steps
        betas = np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    else:

        def f(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([min(1 - f((i + 1) / steps) / f(i / steps), 0.999) for i in range(steps)])
    use = reference_space_timesteps(steps, respacing) if respacing else set(range(steps))
    ac = np.cumprod(1.0 - betas)
    last, new_betas, tmap = 1.0, [], []
    for i, a in enumerate(ac):
        if i in use:
            new_betas.append(1 - a / last)
            last = a
            tmap.append(i)
    betas = np.array(new_betas)
    ac = np.cumprod(1.0 - betas)
    prev = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - prev) / (1.0 - ac)
    return dict(
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=prev,
        alphas_cumprod_next=np.append(ac[1:], 0.0),
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1 - ac),
        log_one_minus_alphas_cumprod=np.log(1 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1 / ac - 1),
        posterior_variance=pv,
        posterior_log_variance_clipped=np.log(np.append(pv[1], pv[1:])),
        posterior_mean_coef1=betas * np.sqrt(prev) / (1 - ac),
        posterior_mean_coef2=(1 - prev) * np.sqrt(1 - betas) / (1 - ac),
        timestep_map=np.array(tmap),
    )


@pytest.mark.parametrize(
    "steps, schedule, respacing",
    [
        (1000, "linear", "400"),
        (1000, "linear", ""),
        (500, "linear", "200"),
        (1000, "cosine", "250"),
        (1000, "linear", "10,20,30"),
        (1000, "linear", "ddim50"),
        (100, "linear", "7"),
    ],
)
def test_tables_match_guided_diffusion(steps, schedule, respacing):
    d = GaussianDiffusion(steps, schedule, respacing)
    ref = reference_tables(steps, schedule, respacing)
    assert d.num_timesteps == len(ref["betas"])
    np.testing.assert_array_equal(d.timestep_map, ref["timestep_map"])
    for name, want in ref.items():
        np.testing.assert_allclose(getattr(d, name), want, rtol=1e-12, atol=0, err_msg=name)


def test_method_md_table():
    """docs/method.md section 2.5: T=1000 respaced to 400."""
    d = GaussianDiffusion(1000, "linear", "400")
    rows = [  # i, t, beta, abar, sqrt abar, log beta~ clipped, log beta
        (0, 0, 1e-4, 0.9999, 0.99995, -9.42408, -9.21034),
        (119, 298, 0.0179403, 0.398835, 0.631534, -4.03290, -4.02071),
        (120, 300, 0.0120952, 0.394011, 0.627703, -4.42294, -4.41494),
        (399, 999, 0.0587506, 4.0358e-5, 0.0063528, -2.83446, -2.83445),
    ]
    for i, t, beta, abar, sq, lpv, lb in rows:
        assert d.timestep_map[i] == t
        for got, want in [
            (d.betas[i], beta),
            (d.alphas_cumprod[i], abar),
            (d.sqrt_alphas_cumprod[i], sq),
            (d.posterior_log_variance_clipped[i], lpv),
            (np.log(d.betas[i]), lb),
        ]:
            # the table is printed to 6 significant digits
            assert abs(got - want) <= 5e-6 * abs(want) + 1e-10, (i, got, want)
    assert list(d.timestep_map[:6]) == [0, 3, 5, 8, 10, 13]
    assert list(d.timestep_map[-4:]) == [991, 994, 996, 999]


def _extract(arr, idx):
    """guided-diffusion's _extract_into_tensor: gather in float64, cast to float32, broadcast."""
    return torch.from_numpy(np.array(arr))[torch.from_numpy(idx)].float()[:, None, None, None]


@pytest.mark.parametrize(
    "learn_sigma, fixed",
    [(True, None), (False, None), (False, "large"), (False, "small"), (True, "large"), (True, "small")],
)
def test_p_mean_variance_matches_torch_float32(rng, learn_sigma, fixed):
    """fixed None: the learned range with learn_sigma, fixed large without; a fixed variance with learn_sigma ignores
    the model's v channels."""
    d = GaussianDiffusion(1000, "linear", "400", learn_sigma=learn_sigma, fixed_variance=fixed)
    ref = reference_tables(1000, "linear", "400")
    n, c, h, w = 3, 1, 13, 19
    idx = np.array([0, 119, 399])
    x_t = randn(rng, n, c, h, w)
    out = randn(rng, n, 2 * c if learn_sigma else c, h, w)
    got = d.p_mean_variance(out, x_t, idx)
    xt, o = torch.from_numpy(x_t), torch.from_numpy(out)
    eps = o[:, :c]
    if learn_sigma and fixed is None:
        v = o[:, c:]
        min_log = _extract(ref["posterior_log_variance_clipped"], idx)
        max_log = _extract(np.log(ref["betas"]), idx)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_var)
    else:
        pv = ref["posterior_variance"]
        if fixed in (None, "large"):
            table = np.append(pv[1], ref["betas"][1:])
            var, log_var = _extract(table, idx), _extract(np.log(table), idx)
        else:
            var, log_var = _extract(pv, idx), _extract(ref["posterior_log_variance_clipped"], idx)
        var, log_var = var.expand_as(xt), log_var.expand_as(xt)
    x0 = (
        _extract(ref["sqrt_recip_alphas_cumprod"], idx) * xt - _extract(ref["sqrt_recipm1_alphas_cumprod"], idx) * eps
    ).clamp(-1, 1)
    mean = _extract(ref["posterior_mean_coef1"], idx) * x0 + _extract(ref["posterior_mean_coef2"], idx) * xt
    for g, want in zip(got, (mean, var, log_var, x0)):
        np.testing.assert_allclose(g, want.numpy(), rtol=1e-6, atol=1e-7)

    noise, grad = randn(rng, n, c, h, w), randn(rng, n, c, h, w)
    sample = d.p_sample(out, x_t, idx, noise, grad=grad)
    want = (mean - var * torch.from_numpy(grad)) + torch.tensor([0.0, 1.0, 1.0])[:, None, None, None] * torch.exp(
        0.5 * log_var
    ) * torch.from_numpy(noise)
    np.testing.assert_allclose(sample, want.numpy(), rtol=1e-6, atol=1e-6)


def test_q_sample(rng):
    d = GaussianDiffusion(1000, "linear", "400")
    x0, noise = randn(rng, 3, 1, 8, 10), randn(rng, 3, 1, 8, 10)
    idx = np.array([5, 120, 399])
    got = d.q_sample(x0, idx, noise)
    want = _extract(d.sqrt_alphas_cumprod, idx) * torch.from_numpy(x0) + _extract(
        d.sqrt_one_minus_alphas_cumprod, idx
    ) * torch.from_numpy(noise)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(d.q_sample(x0, 120, noise)[1], got[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        GaussianDiffusion(1000, "quadratic", "400")
    with pytest.raises(ValueError, match="respacing"):
        GaussianDiffusion(1000, "linear", "four hundred")
    with pytest.raises(ValueError, match="divide"):
        GaussianDiffusion(100, "linear", "400")
    d = GaussianDiffusion(1000, "linear", "400")
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="outside"):
        d.q_sample(x, 400, x)
    with pytest.raises(ValueError, match="model_output"):
        d.p_mean_variance(x, x, 3)  # learned sigma needs 2C channels
    with pytest.raises(ValueError, match="indices"):
        d.q_sample(x, np.array([1, 2, 3]), x)
