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
        ('[models]\nclassifier = "f.safetensors"\n', r"remove the \[models\] section"),
    ]:
        path = tmp_path / "demo.toml"
        path.write_text(base + extra)
        with pytest.raises(ValueError, match=match):
            load_sweep(str(path))
    path.write_text(base + '[diffusion]\nrespacing = "100"\n')  # the demo's own value is fine
    assert load_sweep(str(path)).models["source"] == "demo"


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
    from diffice.explain.sweep.runner import _StoreLock

    with _StoreLock(spec.store_path):
        with pytest.raises(RuntimeError, match="another diffice sweep"):
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
