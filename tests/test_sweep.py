"""`diffice sweep`: the grid, the SQLite store (one transaction per unit), resumption, schedule independence,
the tables, the command line. Tiny models from files (what a sweep config names), 3 images at 16x24."""

import sqlite3

import numpy as np
import pytest
from conftest import write_tiny_models

from diffice.explain.cluster import LocalExecutor
from diffice.explain.explainer import Explainer
from diffice.explain.sweep import (
    TABLE_COLUMNS,
    Column,
    SweepStore,
    compute_tables,
    load_sweep,
    register_column,
    run_sweep,
)

H, W = 16, 24


def sweep_toml(models, out, extra="", sweep_extra=""):
    return f"""
[models]
unet = "{models / "ddpm.safetensors"}"
num_heads = 1
classifier = "{models / "f.safetensors"}"
perceptual_kind = "pixel-l2"
[diffusion]
respacing = "10"
[method]
tau = 3
lambda_c = [5, 50]
lambda_p = 1.0
iterations = 2
[run]
image_size = [{H}, {W}]
batch_size = 2
seed = 7
[sweep]
phantoms = 3
out = "{out}"
store_format = "float16"
method = ["diff-ice", "diff-ice-1"]
lambda_p = [1.0, 0]
{sweep_extra}
{extra}
"""


_SHARED = {}  # made once per session, also for tests/test_distributed.py (which imports these fixtures)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    if "models" not in _SHARED:
        _SHARED["models"] = write_tiny_models(tmp_path_factory.mktemp("models"))
    return _SHARED["models"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models_dir):
    """The sweep run once, in order, in this process: what every other schedule must reproduce."""
    if "reference" not in _SHARED:
        spec = spec_for(tmp_path_factory.mktemp("reference"), models_dir)
        summary = run_sweep(spec, progress=False)
        with SweepStore(spec.store_path) as store:
            blobs = store.counterfactual_blobs()
            rows = store.db.execute(RESULT_ROWS).fetchall()
        _SHARED["reference"] = spec, summary, blobs, rows
    return _SHARED["reference"]


RESULT_ROWS = (
    "SELECT config_id, image_id, iteration, prob_target, flipped, lambda_used, nonfinite_step FROM results "
    "ORDER BY 1, 2, 3"
)


def spec_for(tmp_path, models_dir, name="out", **kw):
    path = tmp_path / f"{name}.toml"
    path.write_text(sweep_toml(models_dir, tmp_path / name, **kw))
    return load_sweep(str(path))


def check_consistent(store_path):
    """Every unit row has all its result rows and no result row lacks its unit; SQLite's own check passes."""
    db = sqlite3.connect(str(store_path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    import json

    expected = 0
    for cid, ids in db.execute("SELECT config_id, image_ids FROM units"):
        L = db.execute("SELECT iterations FROM configs WHERE config_id = ?", (cid,)).fetchone()[0]
        expected += len(json.loads(ids)) * (L + 1)
    assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == expected
    db.close()


def test_grid_expansion_and_errors(tmp_path, models_dir):
    spec = spec_for(
        tmp_path,
        models_dir,
        extra="""
[[grid]]
method = "diff-ice-1"
tau = [2, 3, 4]
lambda_c = [[400]]
""",
    )
    labels = [f"{c['method']} {c['iterations']} {c['tau']} {c['lambda_c']} {c['lambda_p']}" for c in spec.configs]
    # main grid: 2 methods x 2 lambda_p; extra grid: 3 taus (lambda_p 1 from [method]); iterations forced to 1
    assert labels == [
        "diff-ice 2 3 [5.0, 50.0] 1.0",
        "diff-ice 2 3 [5.0, 50.0] 0.0",
        "diff-ice-1 1 3 [5.0, 50.0] 1.0",
        "diff-ice-1 1 3 [5.0, 50.0] 0.0",
        "diff-ice-1 1 2 [400.0] 1.0",
        "diff-ice-1 1 3 [400.0] 1.0",
        "diff-ice-1 1 4 [400.0] 1.0",
    ]
    assert spec.base == dict(tau=3, lambda_c=[5.0, 50.0], lambda_p=1.0)
    assert spec.models["source"] == "files" and spec.store_path == tmp_path / "out" / "results.sqlite"
    bad = tmp_path / "bad.toml"
    good = sweep_toml(models_dir, tmp_path / "bad")
    for old, new, match in [
        ("phantoms = 3", "phantoms = 3\ntauu = [1]", "tauu"),
        ('store_format = "float16"', 'store_format = "jpeg"', "store_format"),
        ("phantoms = 3", 'phantoms = 3\nimages = "x"', "not both"),
        ('"diff-ice-1"]', '"nope"]', "method must be one of"),
    ]:
        bad.write_text(good.replace(old, new))
        with pytest.raises(ValueError, match=match):
            load_sweep(str(bad))


def test_demo_sweep_refuses_model_settings_it_would_ignore(tmp_path):
    """[sweep] models = "demo" chooses the model files and their schedule: a [models] section or [diffusion]
    values in the same file would be ignored, so they are errors (they were silently ignored)."""
    base = '[sweep]\nmodels = "demo"\nphantoms = 2\nmethod = ["diff-ice-1"]\n'
    for extra, match in [
        ('[diffusion]\nrespacing = "10"\n', "diffusion.respacing"),
        ('[models]\nclassifier = "f.safetensors"\n', r"remove models.classifier \(only models.device may stay\)"),
    ]:
        path = tmp_path / "demo.toml"
        path.write_text(base + extra)
        with pytest.raises(ValueError, match=match):
            load_sweep(str(path))
    path.write_text(base + '[diffusion]\nrespacing = "100"\n')  # the demo's own value is fine
    assert load_sweep(str(path)).models == dict(source="demo", folder=None, device="cpu")
    # the device is the user's: [models] device, or diffice sweep --device over it
    path.write_text(base + '[models]\ndevice = "cuda"\n')
    assert load_sweep(str(path)).models["device"] == "cuda"
    assert load_sweep(str(path), dict(device="cuda:1")).models["device"] == "cuda:1"


def test_a_sweep_on_a_device_this_machine_lacks_writes_nothing(tmp_path):
    import diffice

    if diffice.cuda_available():
        pytest.skip("a GPU is present: the error path is not reachable")
    path = tmp_path / "demo.toml"
    path.write_text('[sweep]\nmodels = "demo"\nphantoms = 2\nmethod = ["diff-ice-1"]\n[models]\ndevice = "cuda"\n')
    spec = load_sweep(str(path), dict(out=str(tmp_path / "out")))
    with pytest.raises(NotImplementedError, match="cuda: "):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_device_is_not_part_of_the_models_identity():
    from diffice.explain.sweep.store import _without_device

    cpu = dict(source="files", models=dict(unet="u.safetensors", device="cpu"), diffusion={})
    cuda = dict(source="files", models=dict(unet="u.safetensors", device="cuda:1"), diffusion={})
    assert _without_device(cpu) == _without_device(cuda) != _without_device(dict(cpu, models=dict(unet="v")))
    assert _without_device(dict(source="demo", folder=None, device="cpu")) == dict(source="demo", folder=None)


class ReversedExecutor(LocalExecutor):
    """Runs the units last first: a different schedule."""

    def run(self, tasks, progress=None):
        return super().run(list(tasks)[::-1], progress)


def test_store_results_and_tables(reference):
    spec, summary, blobs, _ = reference
    assert summary["units"] == 4 * 2 and summary["ran"] == 8 and summary["images"] == 3
    check_consistent(spec.store_path)
    with SweepStore(spec.store_path) as store:
        configs = store.configs()
        assert len(configs) == 4 and store.image_names()[0].startswith("phantom_000_")
        x = store.inputs()
        assert x.shape == (3, 1, H, W) and x.dtype == np.float32
        # the stored results are the Explainer's on the same batch (float16 in the store)
        from diffice.explain.cluster import load_models

        unet, diffusion, clf, perc = load_models(spec.models)
        c = configs[0]
        ex = Explainer(unet, diffusion, clf, perc, **{k: v for k, v in c.items() if k not in ("config_id", "label")})
        from diffice.explain.sweep import load_sweep_images

        _, pixels = load_sweep_images(spec)
        res = ex.explain(pixels[:2], target=1, seed=7)
        got = store.counterfactuals(c["config_id"], 2)[:2]
        np.testing.assert_array_equal(got, res.counterfactuals[1].astype(np.float16).astype(np.float32))
        r = store.results(c)
        np.testing.assert_allclose(r.prob_target[:2].T, res.prob_target, rtol=1e-6)
        np.testing.assert_array_equal(r.flipped[:2].T, res.flipped)
        assert r.batch_seconds.shape == (2,) and r.iteration_seconds.shape == (2, 2) and r.peak_bytes.min() > 0
        tables = compute_tables(store)
    t1, t2, s3 = tables
    assert [row[0] for row in t1["rows"]] == ["diff-ice (L=2)", "diff-ice-1"]  # lambda_p = 1: the base
    assert [row[0] for row in t2["rows"]] == ["1", "2"] and len(s3["rows"]) == 4
    s = r.validity
    fr = t1["header"].index("FR")
    assert t1["rows"][0][fr] == (f"{r.flipped[s, 1].mean():.3f}" if s.any() else "-")
    assert "Batch time (s)" in t1["header"] and "+-" in t1["rows"][0][t1["header"].index("Batch time (s)")]

    assert run_sweep(spec, progress=False)["ran"] == 0  # nothing left to do on a rerun


def test_results_do_not_depend_on_the_schedule(tmp_path, models_dir, reference):
    """The same sweep scheduled the other way round gives the same bytes."""
    other = spec_for(tmp_path, models_dir, name="reversed")
    run_sweep(other, executor=ReversedExecutor(), progress=False)
    with SweepStore(other.store_path) as store:
        assert store.counterfactual_blobs() == reference[2]
        assert store.db.execute(RESULT_ROWS).fetchall() == reference[3]


def test_interrupted_unit_is_never_half_written_and_resume_is_identical(tmp_path, models_dir, monkeypatch, reference):
    _, _, want, want_rows = reference
    spec = spec_for(tmp_path, models_dir, name="cut")
    from diffice.explain.sweep import store as sweep_module

    calls = {"n": 0}
    original = sweep_module.encode_image

    def failing_encode(image, fmt):  # dies in the middle of writing the third unit's rows
        calls["n"] += 1
        if calls["n"] == 3 + 4 + 2 + 2:  # 3 inputs, units 1-2 (2 + 1 images x 2 iterations), 2 of unit 3
            raise KeyboardInterrupt
        return original(image, fmt)

    monkeypatch.setattr(sweep_module, "encode_image", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, progress=False)
    monkeypatch.undo()
    check_consistent(spec.store_path)
    with SweepStore(spec.store_path) as store:
        assert len(store.finished_units()) == 2
    summary = run_sweep(spec, progress=False)
    assert summary["skipped_done"] == 2 and summary["ran"] == 6
    check_consistent(spec.store_path)
    with SweepStore(spec.store_path) as store:
        assert store.counterfactual_blobs() == want
        assert store.db.execute(RESULT_ROWS).fetchall() == want_rows


def test_store_refuses_other_settings_and_concurrent_writers(tmp_path, models_dir):
    spec = spec_for(tmp_path, models_dir)
    spec.configs = spec.configs[:1]
    run_sweep(spec, progress=False)
    changed = spec_for(tmp_path, models_dir)
    changed.cfg["run"]["seed"] = 8
    with pytest.raises(ValueError, match="seed"):
        run_sweep(changed, progress=False)
    from diffice.explain.run import RunBusyError, WriterLock

    with WriterLock(spec.store_path.with_name(spec.store_path.name + ".lock"), "held"):  # another sweep's lock
        with pytest.raises(RunBusyError, match="another diffice sweep"):
            run_sweep(spec, progress=False)


def test_cli_sweep_and_tables_only(tmp_path, models_dir, capsys):
    from diffice.cli import main

    path = tmp_path / "s.toml"
    path.write_text(
        sweep_toml(models_dir, "cli-out")
        .replace('method = ["diff-ice", "diff-ice-1"]', 'method = ["dime", "diff-ice-1-xt"]')
        .replace("lambda_p = [1.0, 0]", "lambda_p = [1.0]")
    )
    assert main(["sweep", "--config", str(path), "--quiet", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "| dime " in out and "| diff-ice-1-xt " in out and "Table S3" in out
    assert (tmp_path / "cli-out" / "tables.md").read_text().strip() == out.strip()

    calls = []
    register_column(Column("extra", lambda r, l: calls.append(r.counterfactuals(l).shape) or 1.0))
    try:
        assert main(["sweep", "--config", str(path), "--tables-only"]) == 0
    finally:
        TABLE_COLUMNS.pop()
    assert "| extra" in capsys.readouterr().out and calls[0] == (3, 1, H, W)
    assert main(["sweep", "--config", str(path), "--tables-only", "--out", str(tmp_path / "nothing")]) == 2


def test_sweep_killed_hard_resumes_identically(tmp_path, models_dir, reference):
    """`diffice sweep` killed with SIGKILL (no cleanup at all) once some units are in: the store is intact, holds
    only whole units, and the rerun completes it with the reference bytes."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    spec = spec_for(tmp_path, models_dir, name="killed")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffice", "sweep", "--config", str(tmp_path / "killed.toml"), "--quiet"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if spec.store_path.exists():
                try:
                    db = sqlite3.connect(str(spec.store_path), timeout=30)
                    n = db.execute("SELECT COUNT(*) FROM units").fetchone()[0]
                    db.close()
                except sqlite3.OperationalError:  # the schema is not there yet
                    n = 0
                if n >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.kill()
    finally:
        proc.wait()
    check_consistent(spec.store_path)
    with SweepStore(spec.store_path) as store:
        assert 2 <= len(store.finished_units()) < 8
    run_sweep(spec, progress=False)
    check_consistent(spec.store_path)
    with SweepStore(spec.store_path) as store:
        assert store.counterfactual_blobs() == reference[2]
        assert store.db.execute(RESULT_ROWS).fetchall() == reference[3]


def test_columns_exclude_nonfinite_counterfactuals():
    """Images whose counterfactual went non-finite (the sampler zeroed it) are in no column of that iteration, and
    the n column says how many were excluded."""
    from diffice.explain.sweep import ConfigResults

    config = dict(config_id="c", label="c", method="diff-ice", iterations=2, tau=3, lambda_c=[5.0], lambda_p=1.0)
    results = ConfigResults(
        config=config,
        store=None,
        image_ids=np.arange(5),
        prob_target=np.array([[0.1, 0.9, 0.9], [0.2, 0.8, 0.7], [0.3, 0.4, 0.2], [0.1, 0.5, 0.3], [0.9, 0.9, 0.9]]),
        input_is_target=np.array([False, False, False, False, True]),
        flipped=np.array([[1, 1], [1, 1], [0, 0], [0, 1], [1, 1]], bool),
        lambda_used=np.full((5, 2), 5.0),
        nonfinite_step=np.array([[-1, -1], [-1, -1], [-1, 2], [0, 0], [-1, 1]]),
        batch_seconds=np.array([1.0]),
        iteration_seconds=np.array([[0.5, 0.5]]),
        peak_bytes=np.array([2**20]),
    )

    class Store:
        def meta(self, key):
            return None

        def configs(self):
            return [config]

        def results(self, c):
            return results

    np.testing.assert_array_equal(results.finite(1), [True, True, True, False, True])
    t1, t2, s3 = compute_tables(Store())
    col = {name: t2["header"].index(name) for name in ("n", "FR", "MAD", "BKL")}
    it1, it2 = t2["rows"]
    # iteration 1: images 0-2 (3 excluded: non-finite; 4: already the target)
    assert it1[col["n"]] == "3/5 (1 non-finite)"
    assert it1[col["FR"]] == f"{2 / 3:.3f}" and it1[col["BKL"]] == f"{np.mean([0.1, 0.2, 0.6]):.3f}"
    assert it1[col["MAD"]] == f"{np.mean([0.8, 0.6, 0.1]):.3f}"
    # iteration 2: images 0-1 (2 and 3 non-finite, 4 non-finite and the target anyway)
    assert it2[col["n"]] == "2/5 (3 non-finite)" and it2[col["FR"]] == "1.000"
    assert it2[col["BKL"]] == f"{np.mean([0.1, 0.3]):.3f}"
    assert t1["rows"][0][t1["header"].index("n")] == "2/5 (3 non-finite)"  # the last iteration
    assert any("non-finite" in note for note in t1["notes"])


# ---- the image columns (MQD, QS, realism, L1/L2, saturated pixels) and their intervals ----


def write_tiny_judges(folder):
    """A tiny concept oracle (a PlaneClassifier with 4 concept heads) and a tiny SonoNet (the realism features)."""
    from diffice import PlaneClassifier, Segmenter, SonoNet
    from diffice.models.files import save_model
    from diffice.models.oracle import ConceptOracle

    seg = Segmenter(classes=3, width=8, levels=2, groups=4)
    seg._randomize(1)
    oracle = ConceptOracle(
        PlaneClassifier(seg, SonoNet.random(k=4, in_channels=4, num_classes=4, seed=3)), ["TH", "CSP", "FP", "sharp"]
    )
    save_model(str(folder / "oracle.safetensors"), oracle)
    save_model(str(folder / "sononet.safetensors"), SonoNet.random(k=4, num_classes=2, seed=5))
    return oracle


def tables_spec(tmp_path, models_dir, reference_spec, tables):
    """The reference sweep's config with a [tables] section, its out the reference store."""
    path = tmp_path / "tables.toml"
    path.write_text(sweep_toml(models_dir, reference_spec.out) + "\n[tables]\n" + tables)
    return load_sweep(str(path))


def cell(table, row, name):
    return table["rows"][row][table["header"].index(name)]


def interval(text):
    low, high = text.strip("[]").split(", ")
    return float(low), float(high)


def test_image_columns_equal_the_metrics_of_the_stored_images(tmp_path, models_dir, reference):
    """Every new column of every table is the diffice.evaluation.metrics function of the store's images: the oracle's
    QS (MQD, QS), a SonoNet's pooled features against standard-plane phantoms (FSD) and the inputs (SonoSim), L1/L2,
    saturated pixels; the intervals are the hand-computed Wilson and bootstrap ones."""
    from diffice.data.phantoms import generate
    from diffice.evaluation import metrics as M
    from diffice.explain.demo import mqd_interval
    from diffice.explain.sweep.runner import resize_phantoms

    oracle = write_tiny_judges(tmp_path)
    spec = tables_spec(
        tmp_path,
        models_dir,
        reference[0],
        'oracle = "oracle.safetensors"\nfeatures = "sononet.safetensors"\n'
        "realism_reference = {phantoms = 3, seed = 5}\n",
    )
    assert spec.tables["reference"] == dict(phantoms=3, seed=5) and spec.tables["oracle"].endswith("oracle.safetensors")
    from diffice.models.files import load_model

    sononet = load_model(spec.tables["features"])
    ref = resize_phantoms(generate(3, (64, 80), 5, standard_fraction=1.0).images, (H, W))
    ref = ref.astype(np.float16).astype(np.float32)  # through the store's float16 encoding
    with SweepStore(spec.store_path) as store:
        tables = compute_tables(store, spec.tables)
        configs = {c["label"]: c for c in store.configs()}
        x_all = store.inputs()
        t1, t2, s3 = tables
        checked = 0
        for table, rows in ((t1, t1["rows"]), (s3, s3["rows"]), (t2, t2["rows"])):
            for k, row in enumerate(rows):
                if table is t2:
                    c, l = configs[next(lb for lb in configs if lb.startswith("diff-ice L=2") and "lp=1" in lb)], k + 1
                else:
                    method = row[0].split(" ")[0]
                    lp = 1.0 if table is t1 or row[2].startswith("yes") else 0.0
                    c = next(v for v in configs.values() if v["method"] == method and v["lambda_p"] == lp)
                    l = c["iterations"]
                r = store.results(c)
                keep = r.finite(l)
                x, cf = x_all[r.image_ids[keep]], store.counterfactuals(c["config_id"], l, r.image_ids[keep])
                qs_x, qs_cf = oracle.quality_score(x), oracle.quality_score(cf)
                n = len(x)
                want = {
                    "MQD": M.mqd(qs_x, qs_cf),
                    "QS": qs_cf.mean(),
                    "FSD": M.frechet_distance(
                        *M.feature_statistics(M.sononet_features(ref, sononet)),
                        *M.feature_statistics(M.sononet_features(cf, sononet)),
                    ),
                    "SonoSim": M.sonosim(x, cf, sononet).mean(),
                    "L1": np.abs(cf - x).mean(axis=(1, 2, 3)).mean(),
                    "L2": np.sqrt(np.square(cf - x).mean(axis=(1, 2, 3))).mean(),
                    "Sat %": 100 * M.saturated_pixel_rate(cf).mean(),
                    "New sat %": 100 * M.new_saturated_pixel_rate(cf, x).mean(),
                }
                for name, value in want.items():  # to the printed digits (QS: the oracle's SonoNet run apart, ~1e-6)
                    text = cell(table, k, name)
                    digits = len(text.split(".")[1])
                    assert float(text) == pytest.approx(value, abs=0.5 * 10**-digits + 1e-5), name
                # intervals: the bootstrap of the mean by hand, MQD's by the demo's function, FR's Wilson by formula
                idx = np.random.default_rng(0).integers(0, n, size=(10_000, n))
                l1 = np.abs(cf - x).mean(axis=(1, 2, 3))
                assert interval(cell(table, k, "L1 CI")) == pytest.approx(
                    np.quantile(l1[idx].mean(axis=1), [0.025, 0.975]), abs=1e-3
                )
                assert interval(cell(table, k, "MQD CI")) == pytest.approx(mqd_interval(qs_x, qs_cf)[1:], abs=2e-3)
                s = r.validity & keep
                f, m = r.flipped[s, l - 1].sum(), int(s.sum())
                z = 1.959963984540054
                centre = (f / m + z * z / (2 * m)) / (1 + z * z / m)
                half = z / (1 + z * z / m) * np.sqrt(f / m * (1 - f / m) / m + z * z / (4 * m * m))
                assert interval(cell(table, k, "FR CI")) == pytest.approx((centre - half, centre + half), abs=1e-3)
                checked += 1
    assert checked == 2 + 4 + 2
    notes = "\n".join(t1["notes"])
    assert "SonoNet-4" in notes and "3 standard-plane phantoms" in notes and "seed 5" in notes
    assert f"Inputs (all {len(x_all)}): QS {oracle.quality_score(x_all).mean():.3f}" in notes


def test_interval_helpers_match_known_values():
    from diffice.explain.sweep.tables import mean_interval, wilson_interval

    assert wilson_interval(2, 3) == pytest.approx((0.2077, 0.9385), abs=1e-4)  # the textbook Wilson interval
    assert wilson_interval(0, 3) == pytest.approx((0.0, 0.5615), abs=1e-4)
    v = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    idx = np.random.default_rng(0).integers(0, 5, size=(10_000, 5))
    assert mean_interval(v) == pytest.approx(tuple(np.quantile(v[idx].mean(axis=1), [0.025, 0.975])), rel=1e-12)


def test_plane_classifier_features_are_its_sononets_on_the_composite_input():
    """The realism features of a PlaneClassifier oracle come from its SonoNet on [x, softmax(segmenter(x))]: the
    logits of that forward are the composite's own (what the oracle's QS is computed from)."""
    from conftest import tiny_plane_classifier

    from diffice.explain.sweep.judges import FeatureNetwork

    net = tiny_plane_classifier()
    x = np.random.default_rng(3).uniform(-1, 1, (3, 1, H, W)).astype(np.float32)
    out = FeatureNetwork(net).forward(x)
    np.testing.assert_allclose(out.logits, net.forward(x).logits, rtol=1e-4, atol=1e-5)
    assert out.features.shape[:2] == (3, 32)


def test_tables_without_an_oracle_show_a_dash_and_say_why(reference):
    spec = reference[0]
    assert spec.tables == dict(oracle=None, features="oracle", reference=dict(phantoms=100, seed=20261207))
    with SweepStore(spec.store_path) as store:
        t1 = compute_tables(store, spec.tables)[0]
    for name in ("MQD", "MQD CI", "QS", "FSD", "SonoSim", "SonoSim CI"):
        assert {row[t1["header"].index(name)] for row in t1["rows"]} == {"-"}, name
    assert all(row[t1["header"].index("L1")] != "-" for row in t1["rows"])
    notes = "\n".join(t1["notes"])
    assert "MQD, QS shown as -: no concept oracle" in notes and "FSD, SonoSim shown as -" in notes


def test_tables_config_errors(tmp_path, models_dir):
    good = sweep_toml(models_dir, tmp_path / "out")
    (tmp_path / "folder").mkdir()
    path = tmp_path / "t.toml"
    for tables, match in [
        ("oracles = 1", r"\[tables\]: unknown keys \['oracles'\]"),
        ("oracle = 3", r"\[tables\] oracle: expected 'demo' or 'none' or a model file, got 3"),
        ('oracle = "missing.safetensors"', r"oracle: .* got 'missing.safetensors' \(.* is not a file\)"),
        ("features = true", r"\[tables\] features: expected 'oracle' or a model file, got True"),
        ("realism_reference = {phantoms = 1}", r"realism_reference.phantoms: expected an integer >= 2, got 1"),
        ("realism_reference = {phantoms = 5, seed = -1}", r"realism_reference.seed: expected an integer >= 0, got -1"),
        ('realism_reference = {images = "nope"}', r"realism_reference.images: expected an image folder, got 'nope'"),
        ('realism_reference = {images = "folder", phantoms = 3}', r"realism_reference: expected \{phantoms"),
        ('realism_reference = "all"', r"realism_reference: expected .* got 'all'"),
        ("tables = 1", r"unknown keys"),
    ]:
        path.write_text(good + "\n[tables]\n" + tables + "\n")
        with pytest.raises(ValueError, match=match):
            load_sweep(str(path))
    path.write_text(good + '\n[tables]\noracle = "none"\nrealism_reference = {images = "folder"}\n')
    assert load_sweep(str(path)).tables == dict(
        oracle=None, features="oracle", reference=dict(images=str(tmp_path / "folder"))
    )


def test_cli_tables_only_prints_the_image_columns(tmp_path, models_dir, reference, capsys):
    from diffice.cli import main

    write_tiny_judges(tmp_path)
    path = tmp_path / "tables.toml"
    path.write_text(
        sweep_toml(models_dir, reference[0].out)
        + '\n[tables]\noracle = "oracle.safetensors"\nrealism_reference = {phantoms = 3, seed = 5}\n'
    )
    assert main(["sweep", "--config", str(path), "--tables-only"]) == 0
    out = capsys.readouterr().out
    for name in ("FR CI", "MQD", "MQD CI", "QS", "FSD", "SonoSim", "L1", "L2", "Sat %", "New sat %", "Peak MB"):
        assert f"| {name} " in out, name
    t1 = out.split("### Table 2")[0].splitlines()
    header = [h.strip() for h in next(line for line in t1 if line.startswith("| Method")).split("|")]
    row = [v.strip() for v in next(line for line in t1 if line.startswith("| diff-ice (L=2)")).split("|")]
    assert row[header.index("MQD")] != "-" and row[header.index("FSD")] != "-"
    assert "the SonoNet-4 of a PlaneClassifier" in out and "Oracle (MQD, QS): the concept oracle" in out
    assert (reference[0].out / "tables.md").read_text().strip() == out.strip()


def test_realism_reference_from_an_image_folder(tmp_path, models_dir, reference):
    """realism_reference = {images = "FOLDER"}: the folder's images (read as diffice reads inputs) are the reference,
    and a SonoNet file gives the features without any oracle (MQD and QS then show -)."""
    from PIL import Image

    from diffice.data.images import load_image, to_uint8
    from diffice.data.phantoms import generate
    from diffice.evaluation import metrics as M
    from diffice.models.files import load_model

    write_tiny_judges(tmp_path)
    (tmp_path / "ref").mkdir()
    for i, im in enumerate(generate(3, (32, 48), 9, standard_fraction=1.0).images):
        Image.fromarray(to_uint8(im)).save(tmp_path / "ref" / f"sp_{i}.png")
    spec = tables_spec(
        tmp_path,
        models_dir,
        reference[0],
        'oracle = "none"\nfeatures = "sononet.safetensors"\nrealism_reference = {images = "ref"}\n',
    )
    sononet = load_model(spec.tables["features"])
    ref = np.stack([load_image(f, (H, W)) for f in sorted((tmp_path / "ref").glob("*.png"))])
    ref = ref.astype(np.float16).astype(np.float32)
    with SweepStore(spec.store_path) as store:
        t1 = compute_tables(store, spec.tables)[0]
        c = next(c for c in store.configs() if c["method"] == "diff-ice" and c["lambda_p"] == 1.0)
        cf = store.counterfactuals(c["config_id"], c["iterations"])
    want = M._fd_of_features(M.sononet_features(ref, sononet), M.sononet_features(cf, sononet))
    assert cell(t1, 0, "FSD") == f"{want:.2f}" and cell(t1, 0, "MQD") == "-"
    assert f"the 3 images of {tmp_path / 'ref'}" in "\n".join(t1["notes"])


def test_demo_sweeps_judge_with_the_demo_oracle_and_its_sononet(tmp_path, reference):
    """[sweep] models = "demo": the demo's oracle (QS, MQD) and its SonoNet-12 (realism) against 100 standard-plane
    phantoms of their own seed, by default; oracle = "demo" judges any store with them."""
    from diffice.explain.demo import load_demo_models

    path = tmp_path / "demo.toml"
    path.write_text('[sweep]\nmodels = "demo"\nphantoms = 2\nmethod = ["diff-ice-1"]\n')
    assert load_sweep(str(path)).tables == dict(
        oracle="demo", features="oracle", reference=dict(phantoms=100, seed=20261207)
    )
    oracle = load_demo_models().oracle
    with SweepStore(reference[0].store_path) as store:
        t1 = compute_tables(store, dict(oracle="demo", features="oracle", reference=dict(phantoms=3, seed=5)))[0]
        c = next(c for c in store.configs() if c["method"] == "diff-ice" and c["lambda_p"] == 1.0)
        qs = oracle.quality_score(store.counterfactuals(c["config_id"], c["iterations"]))
    assert float(cell(t1, 0, "QS")) == pytest.approx(qs.mean(), abs=5e-4 + 1e-5)
    notes = "\n".join(t1["notes"])
    assert "the demo's concept oracle" in notes and "SonoNet-12 of a PlaneClassifier" in notes and "96 values" in notes


def test_paper_tables_configs_load():
    """benchmarks/paper_tables*.toml (the sweep behind RESULTS.md's paper tables) stay loadable: 100 held-out
    phantoms with a seed neither training (1, 7) nor the demo uses; Table 1's four methods at the demo's setting and
    Table S3's ablation on Diff-ICE_1."""
    from pathlib import Path

    from diffice.explain.demo import DEMO_METHOD, DEMO_PHANTOM_SEED
    from diffice.explain.sweep import load_sweep

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = load_sweep(str(bench / "paper_tables.toml"))
    assert spec.sweep["phantoms"] >= 100 and spec.sweep["phantom_seed"] not in (1, 7, DEMO_PHANTOM_SEED)
    assert spec.base == dict(tau=DEMO_METHOD["tau"], lambda_c=DEMO_METHOD["lambda_c"], lambda_p=DEMO_METHOD["lambda_p"])
    table1 = {c["method"] for c in spec.configs if all(c[k] == spec.base[k] for k in spec.base)}
    assert table1 == {"diff-ice", "diff-ice-1", "diff-ice-1-xt", "dime"}
    one = [c for c in spec.configs if c["method"] == "diff-ice-1"]
    ablation = {(c["tau"], c["lambda_p"] > 0, tuple(c["lambda_c"])) for c in one}
    assert ablation == {(t, lp, (40.0, 60.0, 80.0)) for t in (20, 30, 50) for lp in (True, False)} | {
        (30, True, (400.0,))
    }
    weak = load_sweep(str(bench / "paper_tables_weak.toml"))
    assert weak.sweep["phantoms"] == spec.sweep["phantoms"] and weak.sweep["phantom_seed"] == spec.sweep["phantom_seed"]
    assert [(c["method"], c["iterations"], c["lambda_c"]) for c in weak.configs] == [("diff-ice", 5, [1.0])]


def test_config_ids_outlive_new_settings(tmp_path, models_dir):
    """A configuration's id (the store's key, how a sweep resumes) is a hash of its settings; a setting added later
    (precision) leaves the ids of configurations at its default as they were, so stores made before resume. The new
    setting is a sweep axis like the others."""
    import dataclasses

    from diffice.explain.explainer import ExplainerConfig
    from diffice.explain.sweep.config import config_id

    c = dataclasses.asdict(ExplainerConfig())
    assert config_id(c) == "1887c4391f3d"  # the id before precision existed (commit f2ca9f0)
    assert config_id(dict(c, precision="tf32")) != config_id(c)
    toml = tmp_path / "s.toml"
    toml.write_text(sweep_toml(models_dir, tmp_path / "out", sweep_extra='precision = ["fp32", "tf32"]'))
    configs = load_sweep(str(toml)).configs
    assert len(configs) == 8 and sorted({c.get("precision", "fp32") for c in configs}) == ["fp32", "tf32"]
    assert len({config_id(c) for c in configs}) == 8


def test_an_out_that_is_a_file_is_named_as_such(tmp_path, models_dir, capsys):
    """sweep --out afile once said only "[Errno 17] File exists: 'afile'"."""
    from diffice.cli import main

    path = tmp_path / "s.toml"
    path.write_text(sweep_toml(models_dir, tmp_path / "afile"))
    (tmp_path / "afile").write_text("")
    for args in (["--out", str(tmp_path / "afile")], ["--out", str(tmp_path / "afile"), "--tables-only"]):
        assert main(["sweep", "--config", str(path), "--quiet", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"diffice sweep: error: --out {tmp_path / 'afile'} is a file, not a folder"
    assert main(["sweep", "--config", str(path), "--quiet"]) == 2  # [sweep] out in the config
    assert capsys.readouterr().err.strip().endswith(f"[sweep] out = '{tmp_path / 'afile'}' is a file, not a folder")


# ---- a damaged store, a changed config, rows apart in another setting, the warning's count ----


def test_a_damaged_store_is_a_one_line_error(tmp_path, models_dir, reference, capsys):
    """A results.sqlite that is damaged (truncated, overwritten) or no sweep store: one line naming the file and
    what to do, exit 2 (it was a traceback of sqlite3.DatabaseError, exit 1), for the sweep and --tables-only."""
    import shutil

    from diffice.cli import main

    spec = spec_for(tmp_path, models_dir, name="damaged")
    spec.out.mkdir()
    cases = {
        "half": lambda p: p.write_bytes(reference[0].store_path.read_bytes()[: p.stat().st_size // 2]),
        "garbage": lambda p: p.write_bytes(bytes(range(256)) * 64),
        "another database": lambda p: (p.unlink(), sqlite3.connect(str(p)).execute("CREATE TABLE t (a)").close()),
    }
    for name, damage in cases.items():
        shutil.copy(reference[0].store_path, spec.store_path)
        damage(spec.store_path)
        with pytest.raises(ValueError, match="not a readable diffice sweep store"):
            SweepStore(spec.store_path)
        for args in ([], ["--tables-only"]):
            assert main(["sweep", "--config", str(tmp_path / "damaged.toml"), "--quiet", *args]) == 2, name
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"diffice sweep: error: {spec.store_path}: not a readable diffice sweep store (")
            assert "move it aside" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_tables_leave_out_configurations_the_config_no_longer_has(tmp_path, models_dir, reference, capsys):
    """A configuration changed (or removed) in the config after it ran stays in the store; the tables of that
    config (after the run, --tables-only) show only its own configurations and name the others in a note (the
    stale rows were in every table, a second Table 1 row and a second Table 2, without a word)."""
    import shutil

    from diffice.cli import main

    path = tmp_path / "changed.toml"
    path.write_text(sweep_toml(models_dir, tmp_path / "changed").replace("lambda_p = [1.0, 0]", "lambda_p = [1.0]"))
    (tmp_path / "changed").mkdir()
    shutil.copy(reference[0].store_path, tmp_path / "changed" / "results.sqlite")
    assert main(["sweep", "--config", str(path), "--tables-only"]) == 0
    out = capsys.readouterr().out
    s3 = out.split("### Table S3")[1]
    rows = [line for line in s3.splitlines() if line.startswith("| diff-ice")]
    assert len(rows) == 2 and all("| yes (1) " in row for row in rows)
    assert "Left out: 2 configuration(s) of the store" in out
    assert "diff-ice L=2 tau=3 lc=5/50 lp=0; diff-ice-1 tau=3 lc=5/50 lp=0." in out
    with SweepStore(reference[0].store_path) as store:  # from Python, without a config: every configuration
        assert len(compute_tables(store)[-1]["rows"]) == 4


def test_configurations_apart_in_another_setting_have_distinct_rows(tmp_path, models_dir):
    """Two configurations that differ only in a setting no column shows (precision, mask_dilation, ...) had the
    same Method cell in every table and the same Table 2 title; now the setting that sets them apart is named."""
    from diffice.explain.sweep import ConfigResults
    from diffice.explain.sweep.config import distinguishing_settings

    toml = tmp_path / "s.toml"
    toml.write_text(sweep_toml(models_dir, tmp_path / "out", sweep_extra='precision = ["fp32", "tf32"]'))
    configs = load_sweep(str(toml)).configs
    for c in configs:
        c["config_id"] = c["label"] = str(id(c))
    extras = distinguishing_settings(configs)
    assert sorted(extras.values()) == [""] * 4 + ["precision=tf32"] * 4
    assert set(distinguishing_settings(configs[:1]).values()) == {""}

    def results(c):
        return ConfigResults(
            config=c,
            store=None,
            image_ids=np.arange(2),
            prob_target=np.full((2, c["iterations"] + 1), 0.5),
            input_is_target=np.zeros(2, bool),
            flipped=np.ones((2, c["iterations"]), bool),
            lambda_used=np.full((2, c["iterations"]), 5.0),
            nonfinite_step=np.full((2, c["iterations"]), -1),
            batch_seconds=np.array([1.0]),
            iteration_seconds=np.ones((1, c["iterations"])),
            peak_bytes=np.array([2**20]),
        )

    class Store:
        def meta(self, key):
            return dict(tau=3, lambda_c=[5.0, 50.0], lambda_p=1.0) if key == "base" else None

        def configs(self):
            return configs

        def results(self, c):
            return results(c)

    t1, t2a, t2b, s3 = compute_tables(Store())
    assert [row[0] for row in t1["rows"]] == [
        "diff-ice (L=2)",
        "diff-ice (L=2, precision=tf32)",
        "diff-ice-1",
        "diff-ice-1 (precision=tf32)",
    ]
    assert t2a["title"] != t2b["title"] and t2b["title"].endswith(", precision=tf32)")
    assert len({(row[0], row[2]) for row in s3["rows"]}) == 8  # no two S3 rows read the same


def test_the_warning_counts_images_and_is_recorded_once(tmp_path, models_dir, reference):
    """The warning "every input (k of k) is already the target" counted image x configuration (6 of 6 for 2 images and 3
    configurations), and a resumed sweep recorded it over the units of its own run (4 of 4): it counts the distinct
    images the store holds results of, and a rerun finding it again does not record it twice."""
    import shutil
    import warnings

    from diffice.explain.sweep.runner import _check_sweep

    checks = {f"c{k}": [dict(input_is_target=np.ones(2, bool), first_step_target=None)] for k in range(3)}
    configs = [dict(method="diff-ice-1", lambda_c=[5.0], label=f"c{k}") for k in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [message] = _check_sweep(checks, [], 1, np.ones(2, bool))
        assert message.startswith("every input (2 of 2) is already classified as the target class 1")
        assert _check_sweep(checks, configs[:0], 1, np.array([True, False])) == []
    path = tmp_path / "store.sqlite"
    shutil.copy(reference[0].store_path, path)
    with SweepStore(path) as store:
        assert store.input_verdicts().shape == (3,)
        store.add_warning(message)
        store.add_warning(message)
        assert [w["message"] for w in store.meta("warnings")] == [message]


def test_a_full_disk_is_said_so_and_keeps_the_store(tmp_path):
    """A unit that did not fit on the disk ended the sweep with a traceback (sqlite3.OperationalError: database or
    disk is full, exit 1), and a store that could not be made was called "damaged ... move it aside and run the
    sweep again (it starts over)", which loses every finished unit. Now both are an OSError (ENOSPC) naming the
    store and saying that what it holds is kept."""
    import errno

    from diffice.explain.sweep.store import SweepStore

    path = tmp_path / "results.sqlite"
    with SweepStore(path, create=True) as store:
        with store._transaction() as db:
            db.execute("INSERT INTO meta VALUES ('kept', '1')")
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: SQLite's SQLITE_FULL
        with pytest.raises(OSError, match="the units finished before are kept in the store") as info:
            with store._transaction() as db:
                db.execute("INSERT INTO meta VALUES ('big', ?)", ("x" * 100_000,))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
        assert store.meta("kept") == 1 and store.meta("big") is None
        with pytest.raises(ValueError, match="not a diffice"):  # another error is not taken for a full disk
            with store._transaction() as db:
                raise ValueError("not a diffice error")
    full = sqlite3.OperationalError("database or disk is full")
    assert SweepStore._disk_full(store, full).errno == errno.ENOSPC
    assert SweepStore._disk_full(store, sqlite3.OperationalError("no such table: x")) is None
