"""The Python API given a researcher's own guidance object or progress callback answering wrongly, and plausible
mistakes in its arguments: what a guidance object returns is checked where it enters the sampler (a gradient of
another shape is refused, never read in the wrong order; is_target is 0 or 1, not truncated), an exception raised by
a progress answer's truth value is the run's, diffusion indices are not truncated, learn_sigma="no" is not true, and
loss weights are finite and >= 0."""

import numpy as np
import pytest
from conftest import tiny_plane_classifier, tiny_unet

from diffice import _C, GaussianDiffusion, PerceptualLoss, PixelLoss, ResNetFeatures
from diffice.explain.explainer import Explainer, ExplainerConfig, PythonGuidance, image_keys
from diffice.ops import get_backend

pytestmark = pytest.mark.filterwarnings("ignore::diffice.SuspiciousRunWarning")

H, W = 16, 24


class UserClassifier:
    """A researcher's own model: forward returns plain logits (N, 2), vjp's argument is not named dlogits."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((2, 1, H, W)) / (H * W) ** 0.5).astype(np.float32)

    def forward(self, x):
        return np.einsum("nchw,kchw->nk", x, self.w)

    def vjp(self, x, grad_logits):
        return np.einsum("nk,kchw->nchw", grad_logits, self.w).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return tiny_unet(), GaussianDiffusion(1000, "linear", "40", learn_sigma=True)


def images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((n, 1, H, W)) * 0.5, -1, 1).astype(np.float32)


def explain(tiny, classifier, perceptual=None, lambda_p=0.0, **kw):
    unet, d = tiny
    ex = Explainer(unet, d, classifier, perceptual, tau=2, iterations=1, lambda_c=(8.0,), lambda_p=lambda_p)
    return ex.explain(images(), target=1, **kw)


@pytest.mark.parametrize("classifier", [UserClassifier, tiny_plane_classifier], ids=["python", "native"])
def test_a_progress_answer_whose_truth_value_raises(tiny, classifier):
    """Its exception is the run's (it was left pending while the C loop went on: a SystemError somewhere else)."""
    with pytest.raises(ValueError, match="truth value of an array"):
        explain(tiny, classifier(), progress=lambda *a: np.array([1, 2]))
    assert explain(tiny, classifier(), progress=lambda *a: None).counterfactuals.shape == (1, 3, 1, H, W)


class Guidance:
    """A guidance object given to the sampler directly, its classify answer passed through `flags` first."""

    def __init__(self, x, flags=None, grad=None):
        self.inner = PythonGuidance(UserClassifier(), None, x, np.ones(len(x), np.int64), "ce")
        self.flags, self.grad = flags, grad

    def loss_and_grad(self, x0, rows, lambda_c, lambda_p):
        grad, loss_c, loss_p = self.inner.loss_and_grad(x0, rows, lambda_c, lambda_p)
        return (self.grad(grad) if self.grad else grad), loss_c, loss_p

    def classify(self, x, rows):
        p, flags = self.inner.classify(x, rows)
        return p, (self.flags(flags) if self.flags else flags)


def sample(tiny, guidance, x):
    unet, d = tiny
    cfg = ExplainerConfig(iterations=1, tau=2, lambda_c=(8.0,), lambda_p=0.0).c_config(0, False)
    return _C.sample(cfg, unet._c, d._c, guidance, get_backend(), x, image_keys(x), None)


def test_a_guidance_object_is_target_is_0_or_1(tiny):
    x = images()
    for flags, shown in [(lambda f: np.full(len(f), 0.7), "0.7"), (lambda f: f * 0 + 2, "2.0"), (lambda f: -f, "-1.0")]:
        with pytest.raises(ValueError, match=rf"is_target\[0\] = {shown}, expected 0 or 1"):
            sample(tiny, Guidance(x, flags=lambda f, flags=flags: flags(np.ones_like(f))), x)
    out = sample(tiny, Guidance(x, flags=lambda f: np.ones(len(f), bool)[:, None]), x)  # bools, (N, 1): fine
    assert out["flipped"].tolist() == [[1, 1, 1]]


def test_a_guidance_object_gradient_has_the_images_shape(tiny):
    x = images()
    with pytest.raises(ValueError, match=r"grad of shape \(3, 1, 24, 16\), expected x0's shape \(3, 1, 16, 24\)"):
        sample(tiny, Guidance(x, grad=lambda g: np.ascontiguousarray(g.transpose(0, 1, 3, 2))), x)


def test_diffusion_indices_and_switches_are_not_truncated_or_guessed():
    d = GaussianDiffusion(1000, "linear", "40", learn_sigma=True)
    x = images(2)
    for call in (
        lambda: d.q_sample(x, 1.5, x),  # was step 1
        lambda: d.p_sample(np.zeros((2, 2, H, W), np.float32), x, np.float64(2.7), x),  # was step 2
    ):
        with pytest.raises(TypeError, match="indices must be integers, got"):
            call()
    with pytest.raises(TypeError, match="model_timesteps: respaced indices must be integers"):
        d.model_timesteps(1.5)
    assert d.q_sample(x, np.int64(1), x).shape == x.shape
    with pytest.raises(ValueError, match="learn_sigma: expected true or false, got 'no'"):
        GaussianDiffusion(1000, "linear", "40", learn_sigma="no")  # was learn_sigma=True
    with pytest.raises(TypeError, match="schedule must be 'linear' or 'cosine', got None"):
        GaussianDiffusion(1000, None, "40")


def test_loss_weights_are_finite_and_nonnegative():
    for weight in (float("nan"), -1.0, "1"):
        with pytest.raises(ValueError, match="PixelLoss: weight must be a finite number >= 0"):
            PixelLoss("l2", weight=weight)
    features = ResNetFeatures.random(18, "torchvision", 1, ("layer1",), seed=1)
    with pytest.raises(ValueError, match="PerceptualLoss: weight must be a finite number >= 0"):
        PerceptualLoss(features, weight=-1.0)
    with pytest.raises(TypeError, match="PerceptualLoss: features must be a diffice feature network .* got str"):
        PerceptualLoss("resnet50")
