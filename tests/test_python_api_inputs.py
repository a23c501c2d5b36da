"""The Python API given a researcher's own models and plausible mistakes: what a user's classifier, perceptual
loss, guidance object or progress callback returns is checked where it enters the sampler (a gradient of another
shape is refused, never broadcast to every image or read in the wrong order), the Explainer's models are checked
when it is made, and the settings and diffusion indices are refused rather than consumed, truncated or taken as
true."""

import numpy as np
import pytest
from conftest import tiny_plane_classifier, tiny_unet

import diffice
from diffice import _C, GaussianDiffusion, PerceptualLoss, PixelLoss, ResNetFeatures, TargetClassView
from diffice.explain.explainer import Explainer, ExplainerConfig, PythonGuidance, image_keys
from diffice.models.classifier import SmallClassifier
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


class Returning(UserClassifier):
    """UserClassifier whose forward / vjp answers are passed through `logits` / `grad` first."""

    def __init__(self, logits=None, grad=None):
        super().__init__()
        self.logits, self.grad = logits, grad

    def forward(self, x):
        out = super().forward(x)
        return self.logits(out) if self.logits else out

    def vjp(self, x, grad_logits):
        out = super().vjp(x, grad_logits)
        return self.grad(out) if self.grad else out


class Perceptual:
    """A user's perceptual loss (mean squared pixel distance) whose answer is passed through `answer` first."""

    def __init__(self, answer=None):
        self.answer = answer

    def set_reference(self, b):
        self.b = b.copy()

    def loss_and_grad(self, a):
        d = a - self.b
        out = ((d**2).reshape(len(a), -1).mean(axis=1).astype(np.float32), (2 * d / d[0].size).astype(np.float32))
        return self.answer(*out) if self.answer else out


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


@pytest.mark.parametrize(
    "answer, got",
    [
        (lambda loss, g: (loss, g[:1]), r"\(1, 1, 16, 24\)"),  # the first image's gradient: was copied to all three
        (lambda loss, g: (loss, g[0, 0]), r"\(16, 24\)"),
        (lambda loss, g: (loss, np.float32(0.0)), r"\(\)"),
        (lambda loss, g: (loss, g.transpose(0, 1, 3, 2)), r"\(3, 1, 24, 16\)"),
    ],
)
def test_a_perceptual_gradient_of_another_shape_is_refused_not_broadcast(tiny, answer, got):
    with pytest.raises(ValueError, match=rf"perceptual.loss_and_grad returned a gradient of shape {got}; expected "):
        explain(tiny, UserClassifier(), Perceptual(answer), lambda_p=10.0)


def test_perceptual_losses_are_one_per_image(tiny):
    with pytest.raises(ValueError, match=r"perceptual.loss_and_grad returned losses of shape \(\); expected one per"):
        explain(tiny, UserClassifier(), Perceptual(lambda loss, g: (loss.sum(), g)), lambda_p=10.0)
    with pytest.raises(TypeError, match=r"perceptual.loss_and_grad must return .* got a tuple of 3"):
        explain(tiny, UserClassifier(), Perceptual(lambda loss, g: (loss, g, 0)), lambda_p=10.0)
    explain(tiny, UserClassifier(), Perceptual(lambda loss, g: (loss[:, None], g)), lambda_p=10.0)  # (N, 1): fine


@pytest.mark.parametrize(
    "grad, got",
    [
        (lambda g: np.ascontiguousarray(g.transpose(0, 1, 3, 2)), r"\(3, 1, 24, 16\)"),  # as many values, wrong order
        (lambda g: g.ravel(), r"\(1152,\)"),
        (lambda g: (g,), r"\(1, 3, 1, 16, 24\)"),
        (lambda g: g[:1], r"\(1, 1, 16, 24\)"),
        (lambda g: None, r"\(\)"),
    ],
)
def test_a_classifier_gradient_of_another_shape_is_refused(tiny, grad, got):
    with pytest.raises(ValueError, match=rf"classifier.vjp returned a gradient of shape {got}; expected the images' "):
        explain(tiny, Returning(grad=grad))


@pytest.mark.parametrize(
    "logits, got",
    [
        (lambda z: z[:, 1] - z[:, 0], r"\(1,\) for 1 image; .*not \(N,\)"),  # one binary logit, squeezed
        (lambda z: z[:, :, None], r"\(1, 2, 1\)"),
        (lambda z: z.T, r"\(2, 1\)"),
        (lambda z: {"logits": z}, None),
    ],
)
def test_logits_of_another_shape_name_the_classifier(tiny, logits, got):
    if got is None:
        with pytest.raises(TypeError, match=r"classifier.forward must return logits \(1, K\).*got dict"):
            explain(tiny, Returning(logits=logits))
    else:
        with pytest.raises(ValueError, match=rf"classifier.forward returned logits of shape {got}"):
            explain(tiny, Returning(logits=logits))


def test_logits_for_fewer_rows_than_images(tiny):
    with pytest.raises(ValueError, match=r"logits of shape \(1, 2\) for 3 images; expected \(3, K\)"):
        explain(tiny, Returning(logits=lambda z: z[:1]))


def test_the_explainer_checks_its_models_when_made(tiny):
    unet, d = tiny
    kw = dict(tau=2, lambda_p=0.0)
    with pytest.raises(TypeError, match="unet must be a diffice.UNet .* got str"):
        Explainer("ddpm.safetensors", d, UserClassifier(), **kw)
    with pytest.raises(TypeError, match="unet must be a diffice.UNet .* got GaussianDiffusion"):
        Explainer(d, unet, UserClassifier(), **kw)  # swapped
    with pytest.raises(TypeError, match="diffusion must be a diffice.GaussianDiffusion, got NoneType"):
        Explainer(unet, None, UserClassifier(), **kw)
    with pytest.raises(TypeError, match="classifier must have methods forward.*; object has no forward and no vjp"):
        Explainer(unet, d, object(), **kw)
    with pytest.raises(TypeError, match="perceptual must be None or have methods.*; str has no set_reference"):
        Explainer(unet, d, UserClassifier(), "pixel-l2", tau=2, lambda_p=1.0)
    # a C network without vjp is fine with the native guidance, but not when a PixelLoss sends it through Python
    small = SmallClassifier.random(1, width=4, seed=1)
    Explainer(unet, d, small, None, **kw)
    with pytest.raises(TypeError, match="SmallClassifier has no vjp .*PixelLoss is not a diffice PerceptualLoss"):
        Explainer(unet, d, small, PixelLoss("l2"), tau=2, lambda_p=1.0)


def test_settings_are_checked_when_made_and_not_consumed(tiny):
    unet, d = tiny
    gen = Explainer(unet, d, UserClassifier(), tau=2, iterations=1, lambda_c=(v for v in (8.0, 9.0)), lambda_p=0.0)
    assert tuple(gen.config.lambda_c) == (8.0, 9.0)  # was read empty by explain(): "lambda_c needs 1 to 8 values"
    gen.explain(images(1))
    for bad, message in [
        (dict(lambda_c=list(range(1, 10))), "lambda_c lists at most 8 values"),
        (dict(lambda_c=(1e39,)), r"lambda_c\[0\] = 1e\+39 is past float32's range"),  # was inf in the sampler
        (dict(lambda_p=1e39), "lambda_p = 1e\\+39 is past float32's range"),
        (dict(mask_threshold=5.0), r"mask_threshold must be in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            Explainer(unet, d, UserClassifier(), PixelLoss(), tau=2, **bad)


@pytest.mark.parametrize("classifier", [UserClassifier, tiny_plane_classifier], ids=["python", "native"])
def test_a_progress_answer_whose_truth_value_raises(tiny, classifier):
    """Its exception is the run's (it was left pending while the C loop went on: a SystemError somewhere else)."""
    with pytest.raises(ValueError, match="truth value of an array"):
        explain(tiny, classifier(), progress=lambda *a: np.array([1, 2]))
    assert explain(tiny, classifier(), progress=lambda *a: None).counterfactuals.shape == (1, 3, 1, H, W)


class Guidance:
    """A guidance object given to the sampler directly, its classify answer passed through `flags` first."""

    def __init__(self, x, flags=None, grad=None, prob=None):
        self.inner = PythonGuidance(UserClassifier(), None, x, np.ones(len(x), np.int64), "ce")
        self.flags, self.grad, self.prob = flags, grad, prob

    def loss_and_grad(self, x0, rows, lambda_c, lambda_p):
        grad, loss_c, loss_p = self.inner.loss_and_grad(x0, rows, lambda_c, lambda_p)
        return (self.grad(grad) if self.grad else grad), loss_c, loss_p

    def classify(self, x, rows):
        p, flags = self.inner.classify(x, rows)
        return (self.prob(p) if self.prob else p), (self.flags(flags) if self.flags else flags)


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


def test_a_guidance_object_prob_target_is_a_probability(tiny):
    x = images()
    bad = [(lambda p: p * np.nan, "nan"), (lambda p: p * 0 + 1.5, "1.5"), (lambda p: p * 0 - 0.25, "-0.25")]
    for prob, shown in bad:
        with pytest.raises(ValueError, match=rf"prob_target\[0\] = {shown}, expected a probability in \[0, 1\]"):
            sample(tiny, Guidance(x, prob=prob), x)
    out = sample(tiny, Guidance(x, prob=lambda p: p.astype(np.float64)), x)  # any float dtype: fine
    assert out["prob_target"].shape == (2, 3)


def test_a_guidance_object_gradient_has_the_images_shape(tiny):
    x = images()
    with pytest.raises(ValueError, match=r"grad of shape \(3, 1, 24, 16\), expected x0's shape \(3, 1, 16, 24\)"):
        sample(tiny, Guidance(x, grad=lambda g: np.ascontiguousarray(g.transpose(0, 1, 3, 2))), x)


def test_target_class_view_wraps_a_users_classifier(tiny):
    """The Explainer takes forward -> plain logits and any name for vjp's argument; so does TargetClassView."""

    class ThreeClasses(UserClassifier):
        def forward(self, x):
            z = super().forward(x)
            return np.concatenate([z, -z[:, :1]], axis=1)

        def vjp(self, x, grad_logits):
            g = grad_logits[:, :2].copy()
            g[:, 0] -= grad_logits[:, 2]
            return super().vjp(x, g)

    view = TargetClassView(ThreeClasses(), 1)
    assert view.forward(images()).logits.shape == (3, 2)
    explain(tiny, view)
    with pytest.raises(ValueError, match=r"target 7 is not a class of a 3-class classifier \(its classes are 0..2\)"):
        TargetClassView(ThreeClasses(), 7).forward(images())
    with pytest.raises(TypeError, match="classifier must have a forward"):
        TargetClassView("SonoNet16.npz", 5)


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


@pytest.mark.parametrize(
    "make",
    [
        lambda: diffice.Segmenter(3, 8, 2, 4, 1, backend="tpu"),
        lambda: diffice.SonoNet(k=4, backend="tpu"),
        lambda: diffice.UNet.random(dict(model_channels=32, channel_mult=(1,), num_res_blocks=1), backend="tpu"),
        lambda: diffice.PixelLoss("l2", backend="tpu"),
        lambda: diffice.load_demo_models(backend="tpu"),
    ],
)
def test_a_bad_backend_name_is_refused_when_the_model_is_made(make):
    """A model made for a backend that does not exist was accepted and failed at its first forward."""
    with pytest.raises(ValueError, match=r"backend must be one of .* or 'cuda:N', got 'tpu'"):
        make()


def test_counterfactuals_explained_again_say_how_to_clamp_them(tiny):
    """The sampler does not clamp its output (ExplanationResult.counterfactuals: a few 1e-5 past -1 / +1 is usual);
    a notebook that explains last iteration's counterfactuals again got "x must be in [-1, 1]" about diffice's own
    output, without a word on why or what to do."""
    unet, d = tiny
    ex = Explainer(unet, d, UserClassifier(), None, tau=2, iterations=1, lambda_c=(8.0,), lambda_p=0.0)
    cf = images()
    cf[0, 0, 0, 0] = np.float32(1.0000157)
    with pytest.raises(ValueError) as info:
        ex.explain(cf)
    assert "image 0 spans" in str(info.value) and "np.clip(cf, -1, 1)" in str(info.value)
    assert ex.explain(np.clip(cf, -1, 1)).counterfactuals.shape == (1, 3, 1, H, W)


def test_a_result_shows_a_summary_and_x_must_be_an_array(tiny):
    """Showing an ExplanationResult in a notebook printed every pixel of every array; a list as x was refused as
    "x must be float32, got float64" (numpy's conversion of it), not as what it is."""
    unet, d = tiny
    ex = Explainer(unet, d, UserClassifier(), None, tau=2, iterations=2, lambda_c=(8.0,), lambda_p=0.0)
    result = ex.explain(images(2))
    text = repr(result)
    assert text.startswith(f"ExplanationResult(2 image(s) of 1 x {H} x {W}, L=2: ")
    assert f"counterfactuals (2, 2, 1, {H}, {W})" in text and "prob_target (3, 2)" in text and len(text) < 600
    with pytest.raises(TypeError, match=r"^x must be a numpy array \(N, C, H, W\) of float32 in \[-1, 1\], got list"):
        ex.explain(images(1).tolist())


def test_a_diffice_model_of_another_kind_as_the_unet_says_what_it_holds():
    from diffice.explain.demo import MODELS_DIR

    with pytest.raises(ValueError, match=r"classifier\.safetensors: the file holds a PlaneClassifier .*, not a UNet"):
        diffice.UNet.from_file(MODELS_DIR / "classifier.safetensors")
