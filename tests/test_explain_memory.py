"""The sampler's memory is obtained once and kept: it works in the UNet's workspace, which outlives the call (and
the Explainer), grows only when a call needs more, gives the same results as fresh memory, and is given back by
release_memory() or a with-block."""

import numpy as np
import pytest
from conftest import tiny_plane_classifier, tiny_unet

from diffice import GaussianDiffusion
from diffice.explain.explainer import Explainer

H, W = 16, 24
SETTINGS = dict(method="diff-ice", iterations=2, tau=3, lambda_c=(5.0, 50.0), lambda_p=2.0)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(1000, "linear", "40", learn_sigma=True)


@pytest.fixture(scope="module")
def guides():
    from diffice import PerceptualLoss, ResNetFeatures

    features = ResNetFeatures.random(depth=18, in_channels=1, taps=("layer1",), seed=3)
    return tiny_plane_classifier(), PerceptualLoss(features, variant="mse")


def images(seed, n, h=H, w=W):
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((n, 1, h, w)) * 0.5, -1, 1).astype(np.float32)


def fresh_result(diffusion, guides, x, guidance="native", **settings):
    """The counterfactuals of a new UNet (same weights) that has never held memory."""
    unet = tiny_unet()
    assert unet.held_bytes == 0
    ex = Explainer(unet, diffusion, *guides, guidance=guidance, **dict(SETTINGS, **settings))
    return ex.explain(x, seed=1, warn=False)


@pytest.mark.parametrize("guidance", ["native", "python"])
def test_second_call_reuses_the_memory_and_gives_a_fresh_calls_results(diffusion, guides, guidance):
    unet = tiny_unet()
    ex = Explainer(unet, diffusion, *guides, guidance=guidance, **SETTINGS)
    x = images(0, 3)
    first = ex.explain(x, seed=1, warn=False)
    held = ex.held_bytes
    assert held == unet.held_bytes and held >= first.peak_bytes > 0
    second = ex.explain(x, seed=1, warn=False)
    assert ex.held_bytes == held  # nothing new obtained
    assert second.peak_bytes == first.peak_bytes
    for res in (first, second):
        np.testing.assert_array_equal(res.counterfactuals, fresh_result(diffusion, guides, x, guidance).counterfactuals)
    # a second Explainer on the same UNet (a sweep makes one per unit) finds the memory there
    other = Explainer(unet, diffusion, *guides, guidance=guidance, **dict(SETTINGS, tau=2))
    other_result = other.explain(x, seed=1, warn=False)
    assert unet.held_bytes == held
    expected = fresh_result(diffusion, guides, x, guidance, tau=2)
    np.testing.assert_array_equal(other_result.counterfactuals, expected.counterfactuals)


def test_memory_grows_for_a_larger_call_and_is_kept_for_smaller_ones(diffusion, guides):
    settings = dict(method="diff-ice-1", tau=2, lambda_c=(5.0,))  # the memory does not depend on tau
    unet = tiny_unet()
    ex = Explainer(unet, diffusion, *guides, **dict(SETTINGS, **settings))
    small, large, other_shape = images(1, 1), images(2, 6, 96, 128), images(3, 2, 24, 32)
    ex.explain(small, seed=1, warn=False)
    held_small = ex.held_bytes
    large_result = ex.explain(large, seed=1, warn=False)
    held_large = ex.held_bytes
    assert held_large > held_small  # more than the 64 MiB the small call's arena chunk holds
    # after the larger call, smaller and differently shaped calls reuse (dirty) memory: same results as fresh
    for x in (small, other_shape):
        res = ex.explain(x, seed=1, warn=False)
        assert ex.held_bytes == held_large
        np.testing.assert_array_equal(
            res.counterfactuals, fresh_result(diffusion, guides, x, **settings).counterfactuals
        )
    again = ex.explain(large, seed=1, warn=False)
    assert ex.held_bytes == held_large
    np.testing.assert_array_equal(again.counterfactuals, large_result.counterfactuals)
    np.testing.assert_array_equal(
        again.counterfactuals, fresh_result(diffusion, guides, large, **settings).counterfactuals
    )


def test_release_memory_and_with_block_give_the_memory_back(diffusion, guides):
    unet = tiny_unet()
    x = images(4, 2)
    with Explainer(unet, diffusion, *guides, **SETTINGS) as ex:
        first = ex.explain(x, seed=1, warn=False)
        assert ex.held_bytes > 0
    assert unet.held_bytes == 0
    again = ex.explain(x, seed=1, warn=False)  # usable after the block: obtains the memory again
    assert ex.held_bytes > 0
    np.testing.assert_array_equal(again.counterfactuals, first.counterfactuals)
    ex.release_memory()
    assert ex.held_bytes == 0 and guides[0].held_bytes == 0


def test_unet_forward_shares_the_workspace_with_the_sampler(diffusion, guides):
    """The UNet's own forward and the sampler use one workspace: results unaffected by what the other left."""
    unet = tiny_unet()
    x = images(5, 2)
    t = np.array([10, 500])
    before = unet.forward(x, t)
    ex = Explainer(unet, diffusion, *guides, **SETTINGS)
    res = ex.explain(x, seed=1, warn=False)
    np.testing.assert_array_equal(unet.forward(x, t), before)
    np.testing.assert_array_equal(ex.explain(x, seed=1, warn=False).counterfactuals, res.counterfactuals)


def test_a_progress_callback_using_the_same_unet_runs_beside_the_sampler(diffusion, guides):
    """While the sampler holds the UNet's workspace, a forward of the same UNet (from a callback) runs in memory
    of its own and disturbs nothing."""
    unet = tiny_unet()
    x = images(6, 2)
    seen = []

    def progress(*args):
        seen.append(unet.forward(x, np.array([1, 2])))

    res = Explainer(unet, diffusion, *guides, **SETTINGS).explain(x, seed=1, warn=False, progress=progress)
    assert len(seen) >= 3 and all(np.array_equal(s, seen[0]) for s in seen)
    np.testing.assert_array_equal(res.counterfactuals, fresh_result(diffusion, guides, x).counterfactuals)


@pytest.mark.parametrize("method", ["diff-ice-1-xt", "dime", "fastdime"])
def test_every_method_reuses_the_memory(diffusion, guides, method):
    """The x_t baseline (its VJP tape), DiME (its nested chain) and FastDiME (its mask) in kept memory."""
    settings = dict(method=method, tau=3, lambda_c=(5.0,), mask_warmup=1)
    unet = tiny_unet()
    ex = Explainer(unet, diffusion, *guides, **dict(SETTINGS, **settings))
    x = images(7, 2)
    first = ex.explain(x, seed=1, warn=False)
    held = ex.held_bytes
    second = ex.explain(x, seed=1, warn=False)
    assert ex.held_bytes == held and second.peak_bytes == first.peak_bytes
    expected = fresh_result(diffusion, guides, x, **settings).counterfactuals
    np.testing.assert_array_equal(first.counterfactuals, expected)
    np.testing.assert_array_equal(second.counterfactuals, expected)
