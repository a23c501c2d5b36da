"""An image size a model cannot take is refused before any work, naming the model and the setting that chose the
size: every network's check_input says exactly what its forward would (tested against the forward itself), the
Explainer names the model, ``diffice explain`` names --image-size and writes nothing, and ``diffice sweep`` fails
before a unit runs, leaving no store that would refuse the corrected size."""

import numpy as np
import pytest

from diffice import Explainer, PlaneClassifier, Segmenter, SonoNet, UNet
from diffice.cli import main
from diffice.explain.demo import load_demo_models
from diffice.explain.sweep.store import SweepStore
from diffice.models.classifier import SmallClassifier
from diffice.models.inception import InceptionV3
from diffice.models.resnet import ResNetFeatures
from diffice.ops._backend import get_backend

UNET = dict(
    model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=1, in_channels=1
)


def _networks():
    seg = Segmenter.random(classes=3, width=8, levels=3, groups=4)
    yield "unet", UNet.random(UNET), 1
    yield "segmenter", seg, 1
    yield "sononet", SonoNet.random(k=2, num_classes=3), 1
    yield "small", SmallClassifier.random(in_channels=1), 1
    yield "plane", PlaneClassifier(seg, SonoNet.random(k=2, in_channels=4, num_classes=2)), 1
    yield "resnet", ResNetFeatures.random(depth=18, in_channels=3), 3
    yield "inception", InceptionV3.random(resize=0), 3


SIZES = [(16, 20), (18, 20), (20, 18), (15, 16), (12, 12), (8, 8), (2, 2), (1, 1), (76, 80), (74, 80)]


def _forward(model, x):
    if isinstance(model, UNet):
        return model._c.forward(get_backend(model.backend), x, np.zeros(len(x), np.float32))
    return model._c.forward(get_backend(model.backend), x)


@pytest.mark.parametrize("name, model, channels", list(_networks()), ids=lambda v: v if isinstance(v, str) else "")
def test_check_input_says_what_the_forward_says(name, model, channels):
    rng = np.random.default_rng(0)
    checked = 0
    for h, w in SIZES:
        if name == "inception" and h < 70:
            continue  # a forward of Inception-v3 below its 75 x 75 minimum is all this kind needs
        x = rng.uniform(-1, 1, (2, channels, h, w)).astype(np.float32)
        try:
            _forward(model, x)
        except ValueError as exc:
            with pytest.raises(ValueError) as info:
                model._c.check_input(x.shape)
            assert str(info.value) == str(exc), (name, h, w)
            checked += 1
        else:
            assert model._c.check_input(x.shape) is None, (name, h, w)
    assert checked or name == "resnet", f"{name}: no size was refused"  # ResNet takes any size of 1 x 1 or more
    with pytest.raises(ValueError, match="channels"):
        model._c.check_input((1, channels + 1, 16, 16))


def test_explainer_names_the_model_that_cannot_take_the_size():
    m = load_demo_models()
    explainer = Explainer(m.unet, m.diffusion, m.classifier, m.perceptual, iterations=1, tau=2)
    x = np.zeros((1, 1, 50, 50), np.float32)
    with pytest.raises(ValueError, match=r"^the UNet cannot take 50 x 50 images: UNet\.forward: x is 50x50; with 3"):
        explainer.explain(x)
    with pytest.raises(ValueError, match=r"^the classifier f cannot take 8 x 8 images: SonoNet\.forward"):
        explainer.check_image_size(8, 8)
    explainer.check_image_size(64, 80)


def test_explain_names_image_size_and_writes_nothing(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    np.save(images / "a.npy", np.zeros((64, 80), np.float32))
    out = tmp_path / "out"
    args = ["explain", "--models", "demo", "--images", str(images), "--out", str(out), "--quiet"]
    assert main([*args, "--image-size", "64", "81"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffice explain: error: run.image_size (--image-size): the UNet cannot take 64 x 81 images")
    assert err.count("\n") == 1 and not out.exists()


def test_sweep_refuses_the_size_before_a_unit_and_takes_the_corrected_one(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    text = '[sweep]\nmodels = "demo"\nphantoms = 1\nout = "{out}"\nmethod = ["diff-ice"]\n'
    text += "[method]\niterations = 1\ntau = 1\n[run]\nimage_size = [{h}, {w}]\n"
    out = tmp_path / "sweep"
    config.write_text(text.format(out=out, h=50, w=50))
    assert main(["sweep", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: [run] image_size: the UNet cannot take 50 x 50 images" in err
    config.write_text(text.format(out=out, h=64, w=80))
    assert main(["sweep", "--config", str(config), "--quiet"]) == 0
    with SweepStore(out / "results.sqlite") as store:
        assert len(store.finished_units()) == 1


def test_a_store_without_units_is_made_afresh_but_one_with_units_is_kept(tmp_path):
    x = np.zeros((1, 1, 8, 8), np.float32)
    meta = dict(run=dict(image_size=[8, 8]), diffusion={}, models={}, store_format="png", image_shape=[1, 8, 8])
    path = tmp_path / "results.sqlite"
    with SweepStore(path, create=True) as store:
        store.initialise(meta, ["a"], x, [])
    other = dict(meta, run=dict(image_size=[16, 16]), image_shape=[1, 16, 16])
    with SweepStore(path) as store:  # nothing finished: the other settings are taken
        store.initialise(other, ["b"], np.zeros((1, 1, 16, 16), np.float32), [])
        store.db.execute("INSERT INTO configs VALUES ('c', 'label', 'diff-ice', 1, 1, '[1]', 0, '{}', 0)")
        store.db.execute("INSERT INTO units VALUES ('u', 'c', 0, '[0]', 1.0, '[]', 0, 0, 'w', 'now')")  # finished
    with SweepStore(path) as store, pytest.raises(ValueError, match=r"made with run = .*16, 16.*now .*8, 8"):
        store.initialise(meta, ["a"], x, [])
