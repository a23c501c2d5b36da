"""The bundled demo models and `diffice demo` (the README's main command)."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from diffice import PlaneClassifier, phantoms
from diffice.cli import main
from diffice.demo import DEMO_SIZE, MODELS_DIR, demo_phantoms, load_demo_models, run_demo
from diffice.oracle import ConceptOracle

QUICK = dict(iterations=2, tau=4)  # the demo's settings, shortened for a test


@pytest.fixture(scope="module")
def models():
    return load_demo_models()


def test_bundled_models_are_small_and_load(models):
    size = sum(p.stat().st_size for p in MODELS_DIR.iterdir())
    assert size < 8e6, f"demo models take {size / 1e6:.1f} MB"
    assert isinstance(models.classifier, PlaneClassifier) and isinstance(models.oracle, ConceptOracle)
    assert models.unet.config["learn_sigma"] and models.unet.config["in_channels"] == 1
    assert models.segmentation_classes == list(phantoms.SEGMENTATION_CLASSES)
    for part in ("classifier", "oracle", "segmenter"):
        assert "validation" in models.info[part]


def test_bundled_models_work_on_unseen_phantoms(models):
    """Fresh phantoms (a seed the models never saw): the classifier and the oracle are accurate."""
    b = phantoms.generate(160, DEMO_SIZE, seed=987654)
    pred = models.classifier.logits(b.images).argmax(axis=1)
    assert np.mean(pred == b.labels) >= 0.85
    qs = models.oracle.quality_score(b.images)
    assert np.mean((qs > 0.5) == (b.labels == 1)) >= 0.8
    seg = models.classifier.forward(b.images[:20]).segmentation_labels
    assert np.mean(seg == phantoms.label_map(b.masks[:20])) >= 0.9


def test_demo_phantoms_are_non_standard_planes():
    b = demo_phantoms(5)
    assert (b.labels == 0).all() and b.images.shape == (5, 1) + DEMO_SIZE
    assert [p["failure_mode"] for p in b.params] == ["tilted", "no_csp", "no_th", "blurred", "tilted"]


def test_run_demo_writes_table_and_figure_and_resumes(models, tmp_path, capsys):
    summary = run_demo(tmp_path, n=2, models=models, progress=False, overrides=QUICK)
    out = capsys.readouterr().out
    assert "flip ratio" in out and "oracle QS" in out
    assert summary["images"] == 2 and summary["explained_now"] == 2 and len(summary["iterations"]) == 3
    fig = np.asarray(Image.open(tmp_path / "figure.png"))
    assert fig.ndim == 3 and fig.shape[0] > 2 * DEMO_SIZE[0] and fig.shape[1] > 3 * DEMO_SIZE[1]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 2 * 3
    table = list(csv.DictReader(open(tmp_path / "iterations.csv")))
    for r, s in zip(table, summary["iterations"]):
        assert float(r["flip_ratio"]) == pytest.approx(s["flip_ratio"])
    again = run_demo(tmp_path, n=2, models=models, progress=False, overrides=QUICK)
    assert again["explained_now"] == 0 and again["iterations"] == summary["iterations"]
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == 2


def test_cli_demo_on_own_images(tmp_path, capsys):
    """--images: any size, resized to 64x80."""
    src = tmp_path / "mine"
    src.mkdir()
    b = phantoms.generate(1, (100, 120), seed=5, standard_fraction=0.0)
    Image.fromarray(((b.images[0, 0] + 1) * 127.5).astype(np.uint8)).save(src / "scan.png")
    assert main(["demo", "--images", str(src), "--out", str(tmp_path / "out"), "--iterations", "1", "--tau", "3",
                 "--quiet"]) == 0
    assert "Diff-ICE on 1 image" in capsys.readouterr().out
    assert (tmp_path / "out" / "scan" / "iteration_1.png").exists()
    with Image.open(tmp_path / "out" / "scan" / "iteration_1.png") as im:
        assert im.size == (DEMO_SIZE[1], DEMO_SIZE[0])


def test_missing_models_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo models missing"):
        load_demo_models(tmp_path)
