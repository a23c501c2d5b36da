"""The Python API as a notebook shows it: what a cell displays for the main objects (a readable summary, never
every pixel or a training record), and the errors for the usual mistakes with images (one (H, W) image, 8-bit or
[0, 255] pixels, float64, a torch tensor, a list, channels last), each naming what was expected and the fix."""

import warnings

import numpy as np
import pytest
from conftest import tiny_unet

import diffice
from diffice import GaussianDiffusion, SuspiciousRunWarning
from diffice.evaluation import metrics
from diffice.explain.demo import demo_phantoms
from diffice.explain.explainer import Explainer

H, W = 16, 24


class Linear:
    """A user's two-class classifier: forward returns logits (N, 2), vjp the input gradient."""

    def __init__(self):
        self.w = (np.random.default_rng(0).standard_normal((2, 1, H, W)) / (H * W) ** 0.5).astype(np.float32)

    def forward(self, x):
        return np.einsum("nchw,kchw->nk", x, self.w)

    def vjp(self, x, dlogits):
        return np.einsum("nk,kchw->nchw", dlogits, self.w).astype(np.float32)


@pytest.fixture(scope="module")
def explainer():
    diffusion = GaussianDiffusion(1000, "linear", "40", learn_sigma=True)
    return Explainer(tiny_unet(), diffusion, Linear(), None, tau=2, iterations=1, lambda_c=(8.0,), lambda_p=0.0)


@pytest.fixture(scope="module")
def demo():
    return diffice.load_demo_models()


def images(n=2):
    return np.clip(np.random.default_rng(1).standard_normal((n, 1, H, W)) * 0.5, -1, 1).astype(np.float32)


def test_the_main_objects_show_a_summary(explainer, demo):
    """An Explainer showed as <diffice.explain.explainer.Explainer at 0x...>; DemoModels as one 3 KB line with every
    training record of demo.json; a PhantomBatch printed its images and masks (7.5 KB for two phantoms)."""
    text = repr(explainer)
    assert text.startswith("Explainer(method='diff-ice', L=1, tau=2 of 40 steps, lambda_c=[8.0], lambda_p=0, ")
    assert "classifier=Linear, perceptual=None, guidance='python', backend='cpu')" in text
    assert "class_loss='logit'" in repr(Explainer(explainer.unet, explainer.diffusion, Linear(), None, tau=2,
                                                  lambda_p=0.0, class_loss="logit"))  # fmt: skip
    text = repr(demo)
    assert text.splitlines()[0].startswith("DemoModels(") and "info: ddpm, classifier, oracle" in text
    assert [line.split(":")[0] for line in text.splitlines()[1:]] == [
        "  unet", "  diffusion", "  classifier", "  oracle", "  perceptual"
    ]  # fmt: skip
    assert "balanced_accuracy" not in text and len(text) < 2000
    text = repr(demo_phantoms(8))
    assert text.startswith("PhantomBatch(8 phantom(s) of 64 x 80, 0 standard plane(s); failure modes {'tilted': 2")
    assert "images (8, 1, 64, 80) float32" in text and "array(" not in text and len(text) < 500


@pytest.mark.parametrize(
    "make, error, expected",
    [
        (lambda x: x[0, 0], ValueError, r"got shape \(16, 24\) \(one \(H, W\) image: x\[None, None\]"),
        (lambda x: x[0], ValueError, r"got shape \(1, 16, 24\) \(one \(C, H, W\) image: x\[None\]"),
        (lambda x: np.round((x + 1) * 127.5).astype(np.uint8), TypeError,
         r"got uint8 \(uint8 pixel levels 0\.\.255: x\.astype\(np\.float32\) / 127\.5 - 1 gives \[-1, 1\]\)"),
        (lambda x: x.astype(np.float64), TypeError, r"got float64 \(x\.astype\(np\.float32\)\)"),
        (lambda x: (x + 1) * 127.5, ValueError, r"spans \[.*\] \(values in \[0, 255\]: x / 127\.5 - 1"),
        (lambda x: list(x), TypeError, r"got list \(np\.stack\(images\)"),
        (lambda x: x.transpose(0, 2, 3, 1).copy(), ValueError,
         r"x has 16 channels, the UNet takes 1 \(channels last\? x\.transpose\(0, 3, 1, 2\)"),
    ],
)  # fmt: skip
def test_the_usual_image_mistakes_say_what_to_do(explainer, make, error, expected):
    """Each was refused as "x must be float32, got uint8", "x must be (N, C, H, W), got shape (16, 24)", or for
    [0, 255] with advice about clamping counterfactuals: nothing said what x is expected to be made of."""
    with pytest.raises(error, match=expected):
        explainer.explain(make(images()))


def test_a_torch_tensor_says_how_to_make_an_array(explainer):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"got Tensor \(a torch tensor: pass x\.detach\(\)\.cpu\(\)\.numpy\(\)\)"):
        explainer.explain(torch.from_numpy(images()))


@pytest.mark.filterwarnings("ignore:every input")  # this classifier calls them all the target
def test_images_in_0_1_are_explained_with_a_warning(explainer):
    """Images scaled to [0, 1] lie in [-1, 1] and were explained as washed-out gray images without a word."""
    x = (images() + 1) / 2
    with pytest.warns(SuspiciousRunWarning, match=r"every image of x is in \[0, 1\].*2 \* x - 1 gives \[-1, 1\]"):
        explainer.explain(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SuspiciousRunWarning)  # this classifier's verdicts on them: not the point
        warnings.filterwarnings("error", "every image of x is in", SuspiciousRunWarning)
        explainer.explain(x, warn=False)
        explainer.explain(2 * x - 1)


def test_the_judges_refuse_pixel_levels(demo):
    """The oracle's quality score and metrics.evaluate took 8-bit pixels (or [0, 255] floats) as they were, giving
    meaningless scores without an error; counterfactuals a few 1e-5 past [-1, 1] (not clamped) are still judged."""
    x = demo_phantoms(2).images
    u8 = np.round((x + 1) * 127.5).astype(np.uint8)
    with pytest.raises(TypeError, match=r"ConceptOracle: images must be .*, got uint8 \(uint8 pixel levels 0\.\.255"):
        demo.oracle.quality_score(u8)
    with pytest.raises(ValueError, match=r"ConceptOracle: images must be in \[-1, 1\], got values in \[0, 255\]"):
        demo.oracle.quality_score(u8.astype(np.float32))
    with pytest.raises(ValueError, match=r"evaluate: cfs: images must be in \[-1, 1\].*x / 127\.5 - 1"):
        metrics.evaluate(x, u8.astype(np.float32), target=1, classifier=demo.classifier)
    cf = x.copy()
    cf[0, 0, 0, 0] = np.float32(1.00003)
    assert demo.oracle.quality_score(cf).shape == (2,)
    assert metrics.evaluate(x, cf, target=1, classifier=demo.classifier, with_cout=False)["FR"]["n"] >= 0


def test_run_explain_warns_at_the_callers_line(tmp_path):
    """From a notebook, run_explain's SuspiciousRunWarning was shown at diffice/explain/run.py's `return _run(` (and,
    as one location, shown once per session whatever folder was explained next); it names the caller's line, as
    run_sweep's and Explainer.explain's do."""
    from PIL import Image

    from diffice.data.images import to_uint8
    from diffice.data.phantoms import generate
    from diffice.explain.config import load_config
    from diffice.explain.run import run_explain

    (tmp_path / "sp").mkdir()
    for i, image in enumerate(generate(2, (64, 80), seed=3, standard_fraction=1.0).images):
        Image.fromarray(to_uint8(image)).save(tmp_path / "sp" / f"s{i}.png")
    cfg = load_config(None, dict(preset="demo", iterations=1, tau=2, batch_size=2))
    with pytest.warns(SuspiciousRunWarning, match=r"every input \(2 of 2\) is already classified") as record:
        run_explain(cfg, str(tmp_path / "sp"), str(tmp_path / "out"), progress=False)
    assert [w.filename for w in record] == [__file__]


def test_dir_lists_the_public_names():
    """dir(diffice), what tab completion offers, listed the helpers diffice/__init__.py imports for itself."""
    names = dir(diffice)
    assert set(diffice.__all__) <= set(names) and {"explain", "evaluation", "models"} <= set(names)
    assert [n for n in names if n.startswith("_") and not n.startswith("__")] == []
    assert diffice._C is not None and "__version__" in names


def test_help_of_the_explainer_names_every_setting():
    """help(diffice.Explainer) said "Remaining keyword arguments: ExplainerConfig fields" without naming one: a
    notebook user had to find ExplainerConfig to learn that tau or lambda_c are settings."""
    import dataclasses

    from diffice.explain.explainer import ExplainerConfig

    doc = diffice.Explainer.__doc__
    assert [f.name for f in dataclasses.fields(ExplainerConfig) if f.name not in doc] == []
    assert "(N, C, H, W) float32 in [-1, 1]" in doc


def test_a_sweep_spec_shows_a_summary(tmp_path):
    """A loaded sweep config printed every configuration's settings (about 2 KB for a small grid)."""
    from diffice.explain.sweep import load_sweep

    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\nmodels = "demo"\nphantoms = 2\nout = "o"\nmethod = ["diff-ice", "dime"]\n')
    text = repr(load_sweep(str(path)))
    assert text.startswith(f"SweepSpec({path}: 2 configurations, models demo, out ") and len(text) < 300


def test_explain_shows_a_progress_bar_where_it_can_be_redrawn(explainer, capsys, monkeypatch):
    """A 2-minute explain() cell showed nothing until it finished: progress=True draws a bar on stderr, and the
    default "auto" does so on a terminal or in a notebook, not in a log or under pytest's capture."""
    import diffice.explain.explainer as explainer_module

    x = np.full((1, 1, 16, 24), -0.5, np.float32)
    explainer.explain(x)
    assert capsys.readouterr().err == ""  # "auto" with a captured (non-tty) stderr
    explainer.explain(x, progress=True)
    err = capsys.readouterr().err
    assert "explain [" in err and "iteration 1/1" in err and "2/2 100.0%" in err
    monkeypatch.setattr(explainer_module, "redraws_in_place", lambda stream: True)  # a terminal or a notebook
    explainer.explain(x)
    assert "explain [" in capsys.readouterr().err
    explainer.explain(x, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match=r"progress must be True, False, 'auto', None or a callable, got 'yes'"):
        explainer.explain(x, progress="yes")
    # a method that runs one iteration whatever `iterations` says: the bar counts that one (it stopped at 33%)
    one = Explainer(explainer.unet, explainer.diffusion, Linear(), None, method="diff-ice-1", iterations=3, tau=2,
                    lambda_p=0.0)  # fmt: skip
    one.explain(x, progress=True)
    err = capsys.readouterr().err
    assert "2/2 100.0%" in err and "iteration 1/1" in err
