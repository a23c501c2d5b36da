"""Supervised training of the image networks: gradients of the losses, and the loss falls on phantoms."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import interrupt_training_step, randn, rel_err

from diffice import Segmenter, phantoms
from diffice.cli import main
from diffice.models.files import load_model
from diffice.models.oracle import ConceptOracle
from diffice.train.networks import (
    binary_cross_entropy_grad,
    load_training_set,
    pixel_cross_entropy_grad,
    segmentation_labels,
    train_network,
    train_supervised,
)

CLASSES = ["background", "skull", "thalami", "csp", "posterior_fossa"]


def test_loss_gradients_match_torch(rng):
    logits = randn(rng, 2, 5, 6, 7)
    labels = rng.integers(0, 5, (2, 6, 7))
    lt = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels))
    loss.backward()
    got_loss, got_grad = pixel_cross_entropy_grad(logits, labels)
    assert abs(got_loss - loss.item()) <= 1e-6 * abs(loss.item())
    assert rel_err(got_grad, lt.grad) <= 1e-5
    z, t = randn(rng, 4, 3), rng.integers(0, 2, (4, 3))
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.from_numpy(t).double())
    bce.backward()
    got_loss, got_grad = binary_cross_entropy_grad(z, t)
    assert abs(got_loss - bce.item()) <= 1e-6 and rel_err(got_grad, zt.grad) <= 1e-5


def test_segmenter_loss_falls_on_phantoms():
    seg = Segmenter(classes=len(CLASSES), width=8, levels=2, groups=4)
    seg._randomize(0)

    def batches(rng):
        b = phantoms.generate(8, size=(32, 40), seed=int(rng.integers(1 << 30)))
        return b.images, segmentation_labels(b.masks, b.structure_names, CLASSES)

    history = train_network(
        seg,
        batches,
        lambda outputs, y: (lambda l, g: (l, (g,)))(*pixel_cross_entropy_grad(outputs[0], y)),
        steps=40,
        lr=5e-3,
        progress=False,
    )["loss"]
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5])


# ---- training from folders (`diffice train segmenter|classifier|oracle`), checkpoints, resume, model files ----


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    phantoms.write_dataset(folder, 24, size=(32, 40), seed=11)
    return folder


def test_write_dataset_matches_generate(phantom_set):
    b = phantoms.generate(24, size=(32, 40), seed=11)
    ts = load_training_set(
        phantom_set / "images",
        masks=phantom_set / "masks",
        labels=phantom_set / "labels.csv",
        concept_columns=["TH", "CSP", "FP", "sharp"],
    )
    assert ts.files == [f"{i:06d}.png" for i in range(24)]
    assert np.abs(ts.images - b.images).max() <= 1.0 / 255 + 1e-6  # 8-bit PNG round trip
    assert (ts.masks == phantoms.label_map(b.masks)).all()
    assert ts.classes == list(phantoms.SEGMENTATION_CLASSES)
    assert (ts.labels == b.labels).all()
    for i, c in enumerate(["TH", "CSP", "FP", "sharp"]):
        assert (ts.concepts[:, i] == b.concepts[c]).all()
    rows = list(csv.DictReader(open(phantom_set / "labels.csv")))
    assert [r["failure_mode"] for r in rows] == [p["failure_mode"] for p in b.params]


def test_training_set_bad_inputs(phantom_set, tmp_path):
    with pytest.raises(ValueError, match="no mask for image 000000.png"):
        load_training_set(phantom_set / "images", masks=tmp_path)
    bad = tmp_path / "labels.csv"
    bad.write_text("file,label\n000000.png,1\n")
    with pytest.raises(ValueError, match=r"labels.csv: no row for 23 image"):
        load_training_set(phantom_set / "images", labels=bad)
    bad.write_text("file,label\n" + "".join(f"{i:06d}.png,x\n" for i in range(24)))
    with pytest.raises(ValueError, match="column 'label' must be an integer"):
        load_training_set(phantom_set / "images", labels=bad)
    with pytest.raises(ValueError, match=r"no column\(s\) \['TH'\]"):
        load_training_set(phantom_set / "images", labels=bad, concept_columns=["TH"])


def _supervised(kind, phantom_set, out, steps, **kw):
    args = dict(
        masks=phantom_set / "masks",
        labels=phantom_set / "labels.csv",
        steps=steps,
        batch_size=4,
        width=8,
        levels=2,
        groups=4,
        k=2,
        checkpoint_every=2,
        progress=False,
        val_fraction=0.25,
    )
    args.update(kw)
    return train_supervised(kind, phantom_set / "images", out, **args)


@pytest.mark.parametrize("kind", ["segmenter", "oracle"])
def test_ctrl_c_then_resume_continues_bit_for_bit(kind, phantom_set, tmp_path, monkeypatch):
    import diffice.train.networks as tn

    _supervised(kind, phantom_set, tmp_path / "full", 4)
    clip = interrupt_training_step(monkeypatch, tn, step=2)
    assert _supervised(kind, phantom_set, tmp_path / "split", 4)["interrupted"]
    monkeypatch.setattr(tn, "clip_grad_norm", clip)
    assert int(np.load(tmp_path / "split" / "train_state.npz")["step"]) == 2
    with pytest.raises(FileExistsError, match="already holds a training run"):
        _supervised(kind, phantom_set, tmp_path / "split", 4)
    _supervised(kind, phantom_set, tmp_path / "split", 4, resume=True)
    a = load_model(tmp_path / "full" / "model.safetensors")
    b = load_model(tmp_path / "split" / "model.safetensors")
    wa = (a.network if kind == "oracle" else a).state_dict()
    wb = (b.network if kind == "oracle" else b).state_dict()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    log = list(csv.DictReader(open(tmp_path / "split" / "loss.csv")))
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    assert (tmp_path / "split" / "loss.png").stat().st_size > 0


def test_classifier_on_a_frozen_segmenter_and_model_files(phantom_set, tmp_path):
    seg_metrics = _supervised("segmenter", phantom_set, tmp_path / "seg", 3)
    assert 0 <= seg_metrics["validation"]["pixel_accuracy"] <= 1
    seg = load_model(tmp_path / "seg" / "model.safetensors")
    assert seg.class_names == list(phantoms.SEGMENTATION_CLASSES)
    before = seg.state_dict()
    metrics = _supervised(
        "classifier",
        phantom_set,
        tmp_path / "cls",
        3,
        segmenter=tmp_path / "seg" / "model.safetensors",
        weight_decay=0.1,
    )
    assert set(metrics["validation"]) == {"accuracy", "balanced_accuracy"}
    f = load_model(tmp_path / "cls" / "model.safetensors")
    assert f.grad_through_segmenter and f.classifier.in_channels == 1 + len(phantoms.SEGMENTATION_CLASSES)
    after = {k[len("segmenter.") :]: v for k, v in f.state_dict().items() if k.startswith("segmenter.")}
    assert all(np.array_equal(before[k], after[k]) for k in before), "the frozen segmenter changed"
    x = phantoms.generate(2, size=(32, 40), seed=3).images
    assert f.logits(x).shape == (2, 2)
    json.loads((tmp_path / "cls" / "metrics.json").read_text())
    with pytest.raises(ValueError, match="not a segmenter"):
        _supervised("classifier", phantom_set, tmp_path / "cls2", 1, segmenter=tmp_path / "cls" / "model.safetensors")
    # an oracle may see its own (frozen) segmenter's maps too
    metrics = _supervised(
        "oracle", phantom_set, tmp_path / "oracle", 2, segmenter=tmp_path / "seg" / "model.safetensors"
    )
    assert set(metrics["validation"]["concept_accuracy"]) == {"TH", "CSP", "FP", "sharp"}
    oracle = load_model(tmp_path / "oracle" / "model.safetensors")
    assert isinstance(oracle, ConceptOracle) and isinstance(oracle.network, type(f))
    after = {k[len("segmenter.") :]: v for k, v in oracle.network.state_dict().items() if k.startswith("segmenter.")}
    assert all(np.array_equal(before[k], after[k]) for k in before), "the oracle's frozen segmenter changed"
    assert oracle.quality_score(x).shape == (2,)


def test_oracle_quality_score_is_the_rule_on_its_heads(rng):
    from diffice import SonoNet

    net = SonoNet.random(k=2, in_channels=1, num_classes=4, standardize=False, seed=1)
    oracle = ConceptOracle(net, ["TH", "CSP", "FP", "sharp"])
    x = rng.uniform(-1, 1, (3, 1, 32, 48)).astype(np.float32)
    z = net.forward(x).logits.astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    want = p[:, 0] * p[:, 1] * (1 - p[:, 2]) * p[:, 3]
    assert np.allclose(oracle.quality_score(x), want, rtol=1e-6)
    with pytest.raises(ValueError, match="4 outputs but 3 concepts"):
        ConceptOracle(net, ["TH", "CSP", "FP"])
    with pytest.raises(ValueError, match="negative concepts"):
        ConceptOracle(net, ["TH", "CSP", "FP", "sharp"], negative=["XX"])


def test_load_model_errors(tmp_path):
    from diffice.io import save_safetensors

    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "none.safetensors")
    save_safetensors(tmp_path / "plain.safetensors", {"a": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="no 'diffice_model' description"):
        load_model(tmp_path / "plain.safetensors")


def test_cli_phantoms_and_train(tmp_path, capsys):
    assert main(["phantoms", "--out", str(tmp_path / "set"), "--n", "12", "--size", "32", "40", "--quiet"]) == 0
    assert "standard" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "segmenter",
                "--images",
                str(tmp_path / "set" / "images"),
                "--masks",
                str(tmp_path / "set" / "masks"),
                "--out",
                str(tmp_path / "seg"),
                "--steps",
                "2",
                "--width",
                "8",
                "--levels",
                "2",
                "--groups",
                "4",
                "--batch-size",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert "pixel_accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "classifier",
                "--images",
                str(tmp_path / "set" / "images"),
                "--out",
                str(tmp_path / "c"),
                "--labels",
                str(tmp_path / "set" / "labels.csv"),
                "--quiet",
                "--segmenter",
                str(tmp_path / "missing.safetensors"),
            ]
        )
        == 2
    )
    assert "model file not found" in capsys.readouterr().err


def test_dice_of_a_class_absent_from_masks_and_predictions_is_null_in_metrics_json():
    """A class the validation masks never show and the segmenter never predicts has no Dice: null, left out of the
    mean (it was NaN, which json.dumps writes as the bare word NaN: metrics.json was no longer JSON)."""
    from diffice.train.networks import TrainingSet, evaluate

    masks = np.zeros((2, 8, 8), np.int64)
    masks[:, 2:5, 2:5] = 1

    class Perfect:  # predicts the masks: classes 0 and 1, never 2
        def forward(self, x):
            return np.stack([masks[: len(x)] == c for c in range(3)], axis=1).astype(np.float32)

    data = TrainingSet(np.zeros((2, 1, 8, 8), np.float32), ["a.png", "b.png"], masks, ["bg", "skull", "fp"])
    metrics = evaluate("segmenter", Perfect(), data)
    assert metrics["dice"] == {"bg": 1.0, "skull": 1.0, "fp": None}
    assert metrics["mean_foreground_dice"] == 1.0
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
