"""A user's own models, trained by diffice, then used by diffice explain / sweep / metrics: what the model files
record of their training is checked against the run's settings.

- a DDPM from ``diffice train ddpm --diffusion-steps 100`` sampled with the default ``--steps 1000`` gave wrong
  counterfactuals without a word (the file did not record its diffusion); now it records them and is refused;
- models trained at 32x40 ran at explain's default 224x288 without a warning (minutes of work at a scale they
  never saw); now a ModelSizeWarning names the file, the two sizes and the option.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_UNET_CONFIG, tiny_plane_classifier

from diffice import PlaneClassifier, SonoNet
from diffice.cli import main
from diffice.data.images import save_png
from diffice.models.files import save_model, training_record
from diffice.train.ddpm import train_ddpm

SIZE = (16, 16)


@pytest.fixture(scope="module")
def own_models(tmp_path_factory) -> Path:
    """A DDPM trained (1 step) with 50 diffusion steps at 16x16, a plane classifier recording 16x16, 2 images."""
    root = tmp_path_factory.mktemp("own")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, *SIZE)).astype(np.float32)
    config = {k: v for k, v in TINY_UNET_CONFIG.items()}
    train_ddpm(x, root / "ddpm", config=config, steps=1, batch_size=2, diffusion_steps=50, progress=False)
    record = json.dumps({"size": list(SIZE)})
    save_model(str(root / "f.safetensors"), tiny_plane_classifier(), {"diffice_training": record})
    for i in range(2):
        save_png(root / "images" / f"{i}.png", x[i])
    return root


def _explain(root: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "explain",
            "--unet",
            str(root / "ddpm" / "ema.safetensors"),
            "--classifier",
            str(root / "f.safetensors"),
            "--perceptual-kind",
            "pixel-l2",
            "--images",
            str(root / "images"),
            "--out",
            str(out),
            "--respacing",
            "10",
            "--tau",
            "2",
            "--iterations",
            "1",
            "-q",
            *extra,
        ]
    )


def test_a_trained_ddpm_records_its_diffusion_and_size(own_models):
    for name in ("model.safetensors", "ema.safetensors"):
        record = training_record(own_models / "ddpm" / name)
        assert record["diffusion_steps"] == 50 and record["noise_schedule"] == "linear"
        assert record["size"] == list(SIZE)


def test_explain_refuses_other_diffusion_steps_than_the_ddpm_was_trained_with(own_models, tmp_path, capsys):
    out = tmp_path / "out"
    assert _explain(own_models, out, "--image-size", "16", "16") == 2
    err = capsys.readouterr().err
    assert "ema.safetensors: the UNet was trained with diffusion steps 50" in err
    assert "--diffusion-steps 50" in err and "diffusion.steps (--steps) is 1000: give --steps 50" in err
    assert not out.exists()


def test_explain_warns_when_own_models_run_at_another_size(own_models, tmp_path, capsys):
    out = tmp_path / "out"
    assert _explain(own_models, out, "--steps", "50", "--image-size", "32", "32") == 0
    err = capsys.readouterr().err
    for key, name in (("unet", "ema.safetensors"), ("classifier", "f.safetensors")):
        assert f"{name}: [models] {key} was trained at 16 x 16 pixels" in err
    assert err.count("runs at --image-size 32 32") == 2 and "give --image-size 16 16" in err
    with warnings.catch_warnings():  # at the size they were trained at: no warning
        warnings.simplefilter("error")
        assert _explain(own_models, tmp_path / "same", "--steps", "50", "--image-size", "16", "16") == 0
    assert "trained at" not in capsys.readouterr().err


def _sweep_config(root: Path, size: int) -> Path:
    config = root / f"sweep{size}.toml"
    config.write_text(
        f"""
[sweep]
images = "images"
out = "sweep{size}"
method = ["diff-ice-1"]
lambda_p = [0]

[models]
unet = "ddpm/ema.safetensors"
classifier = "f.safetensors"
perceptual_kind = "pixel-l2"

[diffusion]
steps = 50
respacing = "10"

[method]
tau = 2

[run]
image_size = [{size}, {size}]
"""
    )
    return config


def test_sweep_warns_at_another_size_and_refuses_a_changed_model_file_on_resume(own_models, tmp_path, capsys):
    """A sweep's store recorded the model paths but not their contents: a classifier retrained at the same path
    and a grid extended later mixed two classifiers' results in one table. Its store now keeps their sha256."""
    import shutil

    root = tmp_path / "own"
    shutil.copytree(own_models, root)
    assert main(["sweep", "--config", str(_sweep_config(root, 32)), "-q"]) == 0
    err = capsys.readouterr().err
    assert "f.safetensors: [models] classifier was trained at 16 x 16 pixels" in err
    assert "runs at [run] image_size 32 32" in err
    config = _sweep_config(root, 16)
    assert main(["sweep", "--config", str(config), "-q"]) == 0
    assert "trained at" not in capsys.readouterr().err
    assert main(["sweep", "--config", str(config), "-q"]) == 0  # the same files: resumes
    capsys.readouterr()
    head = SonoNet.random(k=4, in_channels=4, num_classes=2, seed=9)
    retrained = PlaneClassifier(tiny_plane_classifier().segmenter, head)
    save_model(str(root / "f.safetensors"), retrained, {"diffice_training": '{"size": [16, 16]}'})
    assert main(["sweep", "--config", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"made with another classifier file: {root / 'f.safetensors'} has changed since" in err


def test_the_python_api_warns_when_the_unet_runs_at_another_size(own_models):
    """UNet.from_file keeps the size a diffice-trained DDPM was trained at, and Explainer.explain warns at another
    (the CLI's start-up warning had no Python counterpart)."""
    from diffice import Explainer, GaussianDiffusion, ModelSizeWarning, PixelLoss, UNet

    unet = UNet.from_file(own_models / "ddpm" / "ema.safetensors")
    assert unet.trained_size == SIZE and UNet.random(TINY_UNET_CONFIG).trained_size is None
    diffusion = GaussianDiffusion(50, "linear", "10", learn_sigma=unet.config["learn_sigma"])
    ex = Explainer(unet, diffusion, tiny_plane_classifier(), PixelLoss("l2"), iterations=1, tau=2, lambda_p=1.0)
    x = np.full((1, 1, 32, 32), -0.5, np.float32)
    with pytest.warns(ModelSizeWarning, match=r"^the UNet was trained at 16 x 16 pixels .* but x is 32 x 32: "):
        ex.explain(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelSizeWarning)
        ex.explain(x, warn=False)
        ex.explain(np.full((1, 1, *SIZE), -0.5, np.float32))
