"""The bundled demo models and `diffice demo` (the README's main command)."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from diffice import PlaneClassifier, phantoms
from diffice.cli import main
from diffice.evaluation import metrics
from diffice.explain.demo import DEMO_SIZE, MODELS_DIR, demo_phantoms, load_demo_models, mqd_interval
from diffice.explain.demo_run import run_demo
from diffice.models.oracle import ConceptOracle

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


def _png(path):
    """An 8-bit PNG in [-1, 1], rounded as diffice.data.load_image rounds it (v / 255 * 2 - 1 in float64, then
    float32): the oracle then sees the demo's very inputs (a 1-ulp difference moved its scores by 1e-6)."""
    with Image.open(path) as im:
        return (np.asarray(im, dtype=np.float64)[None, None] / 255.0 * 2.0 - 1.0).astype(np.float32)


def test_run_demo_writes_table_and_figure_and_resumes(models, tmp_path, capsys):
    n = 3
    summary = run_demo(tmp_path, n=n, models=models, progress=False, overrides=QUICK)
    out = capsys.readouterr().out
    assert "flip ratio" in out and "oracle QS" in out and "MQD [95% CI]" in out and "bootstrap" in out
    # the table's flip ratio is over all images, not the paper's FR subset: the output says so
    assert "flip ratio: f's on the run's float images, over all N images" in out and "diffice metrics" in out
    assert summary["images"] == n and summary["explained_now"] == n and len(summary["iterations"]) == 3
    wrote = next(line for line in out.splitlines() if line.startswith("wrote "))
    for name in ("figure.png", "results.csv", "iterations.csv", "summary.json"):  # every file it wrote, named
        assert str(tmp_path / name) in wrote and (tmp_path / name).is_file()
    fig = np.asarray(Image.open(tmp_path / "figure.png"))
    assert fig.ndim == 3 and fig.shape[0] > n * DEMO_SIZE[0] and fig.shape[1] > 3 * DEMO_SIZE[1]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == n * 3
    table = list(csv.DictReader(open(tmp_path / "iterations.csv")))
    for r, s in zip(table, summary["iterations"]):
        assert float(r["flip_ratio"]) == pytest.approx(s["flip_ratio"])
    # MQD and its interval, from the saved PNGs and the oracle, without diffice.evaluation.metrics or the demo's code:
    # the
    # paper's MQD is the mean of 1[QS(x) < 0.5] (QS(cf) - QS(x)); with 3 images, each image's term is the
    # resample mean of the 1/27 > 2.5% of resamples that draw it 3 times, so the 95% percentile interval is
    # [smallest term, largest term]
    stems = sorted(p.stem for p in (tmp_path / "records").glob("*.json"))
    qs_x = np.array([models.oracle.quality_score(_png(tmp_path / s / "input.png"))[0] for s in stems], np.float64)
    assert table[0]["mqd"] == "" and summary["iterations"][0]["mqd"] == ""
    for k in (1, 2):
        qs_cf = np.array(
            [models.oracle.quality_score(_png(tmp_path / s / f"iteration_{k}.png"))[0] for s in stems], np.float64
        )
        terms = np.where(qs_x < 0.5, qs_cf - qs_x, 0.0)
        row = summary["iterations"][k]
        assert row["mqd"] == pytest.approx(terms.mean(), abs=1e-6)
        assert (row["mqd_ci_low"], row["mqd_ci_high"]) == pytest.approx((terms.min(), terms.max()), abs=1e-6)
        assert float(table[k]["mqd"]) == pytest.approx(row["mqd"])
        assert f"{row['mqd']:6.3f} [{row['mqd_ci_low']:6.3f}, {row['mqd_ci_high']:6.3f}]" in out
    # the saturated-pixel rates (docs/artefacts.md), from the same PNGs: 0 and 255 are the saturated values
    x_u8 = np.stack([_png(tmp_path / s / "input.png") for s in stems])
    assert summary["iterations"][0]["saturated_pct"] == pytest.approx(100 * np.mean(np.abs(x_u8) == 1.0), abs=1e-9)
    for k in (1, 2):
        cf_u8 = np.stack([_png(tmp_path / s / f"iteration_{k}.png") for s in stems])
        row = summary["iterations"][k]
        assert row["saturated_pct"] == pytest.approx(100 * np.mean(np.abs(cf_u8) == 1.0), abs=1e-9)
        new = metrics.new_saturated_pixel_rate(cf_u8[:, 0], x_u8[:, 0])
        assert row["new_saturated_pct"] == pytest.approx(100 * new.mean(), abs=1e-9)
    assert "saturated pixels, % (within 1/255" in out
    again = run_demo(tmp_path, n=n, models=models, progress=False, overrides=QUICK)
    assert again["explained_now"] == 0 and again["iterations"] == summary["iterations"]
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == n
    # a counterfactual whose step went non-finite (the sampler zeroed it) leaves its iteration's row, and the
    # table says how many were left out
    record = tmp_path / "records" / f"{stems[0]}.json"
    rec = json.loads(record.read_text())
    rec["iterations"][1]["nonfinite_step"] = 2
    record.write_text(json.dumps(rec))
    capsys.readouterr()
    bad = run_demo(tmp_path, n=n, models=models, progress=False, overrides=QUICK)
    assert bad["iterations"][1]["excluded_nonfinite"] == 1 and bad["iterations"][2]["excluded_nonfinite"] == 0
    qs_cf = np.array([models.oracle.quality_score(_png(tmp_path / s / "iteration_1.png"))[0] for s in stems[1:]])
    terms = np.where(qs_x[1:] < 0.5, qs_cf - qs_x[1:], 0.0)
    assert bad["iterations"][1]["mqd"] == pytest.approx(terms.mean(), abs=1e-6)
    assert bad["iterations"][1]["mean_oracle_qs"] == pytest.approx(qs_cf.mean(), abs=1e-6)
    assert bad["iterations"][2] == summary["iterations"][2] | {"excluded_nonfinite": 0}
    assert "non-finite; iteration: images): 1: 1" in capsys.readouterr().out


def test_run_demo_figure_shows_the_first_six_images(models, tmp_path, capsys):
    """More images than the figure shows: figure.png has the first 6 rows, the table counts them all."""
    summary = run_demo(tmp_path, n=7, models=models, progress=False, overrides=dict(iterations=1, tau=1))
    assert summary["images"] == 7 and len(summary["figure_rows"]) == 6
    assert summary["figure_rows"] == sorted(p.stem for p in (tmp_path / "records").glob("*.json"))[:6]
    with Image.open(tmp_path / "figure.png") as im:
        h = im.size[1]
    one_row = 2 * DEMO_SIZE[0] + 14 + 4  # scale 2, a title line and padding per row (figures.path_figure)
    assert 6 * one_row < h < 7 * one_row
    assert "Diff-ICE on 7 image(s)" in capsys.readouterr().out


def test_mqd_interval_is_the_percentile_bootstrap(rng):
    """Against scipy.stats.bootstrap (percentile method) of the paper's MQD terms."""
    stats = pytest.importorskip("scipy.stats")
    qs_x = rng.uniform(0, 0.8, 30)  # some inputs at QS >= 0.5: their terms are 0
    qs_cf = np.clip(qs_x + rng.normal(0.3, 0.3, 30), 0, 1)
    terms = np.where(qs_x < 0.5, qs_cf - qs_x, 0.0)
    m, low, high = mqd_interval(qs_x, qs_cf)
    assert m == pytest.approx(terms.mean(), abs=1e-12)
    ref = stats.bootstrap(
        (terms,), np.mean, confidence_level=0.95, n_resamples=20000, method="percentile", random_state=1
    ).confidence_interval
    se = terms.std(ddof=1) / np.sqrt(len(terms))
    assert low == pytest.approx(ref.low, abs=0.15 * se) and high == pytest.approx(ref.high, abs=0.15 * se)
    assert low < m < high
    assert mqd_interval(qs_x, qs_cf) == (m, low, high)  # seeded: a resumed demo prints the same interval
    assert mqd_interval(qs_x[:1], qs_cf[:1]) == pytest.approx((terms[0],) * 3)


def test_cli_demo_on_own_images(tmp_path, capsys):
    """--images: any size, resized to 64x80."""
    src = tmp_path / "mine"
    src.mkdir()
    b = phantoms.generate(1, (100, 120), seed=5, standard_fraction=0.0)
    Image.fromarray(((b.images[0, 0] + 1) * 127.5).astype(np.uint8)).save(src / "scan.png")
    assert (
        main(
            ["demo", "--images", str(src), "--out", str(tmp_path / "out"), "--iterations", "1", "--tau", "3", "--quiet"]
        )
        == 0
    )
    assert "Diff-ICE on 1 image" in capsys.readouterr().out
    assert (tmp_path / "out" / "scan" / "iteration_1.png").exists()
    with Image.open(tmp_path / "out" / "scan" / "iteration_1.png") as im:
        assert im.size == (DEMO_SIZE[1], DEMO_SIZE[0])


def test_missing_models_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo models missing"):
        load_demo_models(tmp_path)


def test_run_demo_bounds_n_by_the_sweeps_max_phantoms(tmp_path):
    """One bound on phantoms made at once serves the demo and a sweep's [sweep] phantoms."""
    from diffice.data.phantoms import MAX_PHANTOMS
    from diffice.explain.sweep import config as sweep_config

    assert sweep_config.MAX_PHANTOMS is MAX_PHANTOMS
    want = rf"run_demo: n \(how many phantoms\) must be at most MAX_PHANTOMS = {MAX_PHANTOMS}, got {MAX_PHANTOMS + 1}"
    with pytest.raises(ValueError, match=want):
        run_demo(tmp_path / "d", n=MAX_PHANTOMS + 1, progress=False)
    assert not (tmp_path / "d").exists()
