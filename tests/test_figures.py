"""Path figures: shape, overlay colours, text rows."""

import numpy as np
import pytest

from diffice.evaluation.figures import PALETTE, overlay, path_figure


def test_overlay_colours_labelled_pixels_only(rng):
    img = np.zeros((1, 6, 8), np.float32)
    labels = np.zeros((6, 8), np.int64)
    labels[2:4, 2:4] = 1
    out = overlay(img, labels, alpha=0.5, scale=1)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [128, 128, 128])
    np.testing.assert_array_equal(out[2, 2], np.round(0.5 * 128 + 0.5 * PALETTE[1]).astype(np.uint8))
    assert overlay(img, None, scale=3).shape == (18, 24, 3)


def test_path_figure_layout(rng):
    n, L, h, w = 2, 3, 16, 20
    x = rng.uniform(-1, 1, (n, 1, h, w)).astype(np.float32)
    cfs = rng.uniform(-1, 1, (L, n, 1, h, w)).astype(np.float32)
    prob = rng.uniform(0, 1, (L + 1, n))
    seg = rng.integers(0, 4, (L + 1, n, h, w))
    fig = path_figure(x, cfs, prob, seg, row_titles=["a", "b"], class_names=["bg", "TH", "CSP", "FP"])
    assert fig.ndim == 3 and fig.shape[2] == 3
    assert fig.shape[1] > (L + 1) * 2 * w and fig.shape[0] > n * 2 * h


# ---- strips of a sweep's store ----

MODES = ["tilted", "no_csp", "no_th", "blurred"]
# cf - input of the reference's last iteration, per image: the oracle below scores QS = mean((x + 1) / 2), so the
# gain of image i is DELTA[i] / 2
DELTA = [0.1, 0.3, -0.2, 0.0, 0.5, 0.2, 0.4, 0.9, 0.6, -0.1, 0.1, 0.3]
ALREADY_TARGET, NONFINITE = 8, 7  # out of the subset: they would otherwise be the largest gains
H, W = 8, 10


class MeanOracle:
    def quality_score(self, x):
        return ((np.asarray(x, np.float64) + 1) / 2).reshape(len(x), -1).mean(axis=1)


def method(**kw):
    import dataclasses

    from diffice.explain.explainer import ExplainerConfig

    c = dataclasses.asdict(ExplainerConfig())
    c.update(dict(tau=3, lambda_c=[5.0], lambda_p=1.0), **kw)
    c["iterations"] = c["iterations"] if c["method"] == "diff-ice" else 1
    return c


def write_store(path, configs, ids=None, all_target=False, size=(H, W), models=None, offset=0.0):
    """A store written directly (no model runs): 12 images named as a phantom sweep names them, input -0.5
    everywhere; each configuration's iteration l moves image i by DELTA[i] * l / L (+ 0.05 per configuration,
    + offset)."""
    from diffice.explain.sweep import SweepStore

    n, (h, w) = len(DELTA), size
    x = np.full((n, 1, h, w), -0.5, np.float32)
    x += np.arange(n, dtype=np.float32)[:, None, None, None] * 1e-3  # distinct pixels (the store keys them)
    names = [f"phantom_{i:03d}_{MODES[i % 4]}" for i in range(n)]
    meta = dict(
        run=dict(image_size=[h, w], batch_size=n, seed=0, target=1),
        diffusion={},
        models=models or {},
        store_format="float16",
        image_shape=[1, h, w],
        base=dict(tau=3, lambda_c=[5.0], lambda_p=1.0),
    )
    store = SweepStore(path, create=True)
    store.initialise(meta, names, x, configs)
    for k, c in enumerate(store.configs()):
        L = c["iterations"]
        done = list(range(n)) if ids is None or k < len(configs) - 1 else ids
        steps = np.array([[DELTA[i] * l / L + 0.05 * k + offset for i in done] for l in range(1, L + 1)], np.float32)
        cfs = x[done][None] + steps[:, :, None, None, None]
        nonfinite = np.full((L, len(done)), -1)
        if NONFINITE in done:
            nonfinite[-1, done.index(NONFINITE)] = 2
            cfs[-1, done.index(NONFINITE)] = 0
        prob = np.linspace(0.1, 0.9, (L + 1) * len(done)).reshape(L + 1, len(done))
        target = np.array([all_target or i == ALREADY_TARGET for i in done])
        result = dict(
            counterfactuals=cfs,
            prob_target=prob,
            input_is_target=target,
            flipped=prob[1:] > 0.5,
            lambda_used=np.full((L, len(done)), 5.0),
            nonfinite_step=nonfinite,
            batch_seconds=1.0,
            iteration_seconds=[0.5] * L,
            peak_bytes=1,
            unet_evaluations=1,
        )
        store.write_unit(
            dict(unit=f"{c['config_id']}-b0000", config_id=c["config_id"], batch=0, image_ids=done), result
        )
    return store


BASE_CONFIGS = [method(method="diff-ice", iterations=2), method(method="diff-ice-1"), method(method="dime")]
ABLATION = [method(method="diff-ice-1", lambda_p=0.0), method(method="diff-ice-1", tau=5)]


def expected_picks():
    """The rule computed here apart: per failure mode, the lower median of the subset's gains; then the extremes."""
    subset = [i for i in range(len(DELTA)) if i not in (ALREADY_TARGET, NONFINITE)]
    picks = []
    for m in MODES:
        members = sorted((DELTA[i], i) for i in subset if i % 4 == MODES.index(m))
        picks.append(members[(len(members) - 1) // 2][1])
    largest = max(subset, key=lambda i: DELTA[i])
    smallest = min(subset, key=lambda i: DELTA[i])
    return picks + [i for i in (largest, smallest) if i not in picks]


def test_strip_rule_picks_what_it_says(tmp_path):
    from diffice.evaluation.figures import choose_strip_images

    with write_store(tmp_path / "r.sqlite", BASE_CONFIGS) as store:
        ref, picks = choose_strip_images(store, MeanOracle())
        assert ref["method"] == "diff-ice" and ref["iterations"] == 2
        assert [p["image_id"] for p in picks] == expected_picks() == [0, 5, 10, 3, 4, 2]
        assert [p["group"] for p in picks] == MODES + ["tilted", "no_th"]
        assert picks[0]["reason"] == "median gain of 2 tilted" and picks[4]["reason"] == "largest gain of 10"
        for p in picks:
            assert p["gain"] == pytest.approx(DELTA[p["image_id"]] / 2, abs=2e-3)  # float16 storage
        # another reference, named by label; without the extremes only the medians
        _, medians = choose_strip_images(store, MeanOracle(), config=store.configs()[1]["label"], extremes=False)
        assert len(medians) == 4


def test_strip_figure_rows_columns_and_tiles(tmp_path):
    from PIL import Image

    from diffice.evaluation.figures import overlay, strip_figure

    with write_store(tmp_path / "r.sqlite", BASE_CONFIGS + ABLATION, ids=[0, 1, 2, 3]) as store:
        fig = strip_figure(store, MeanOracle(), tmp_path / "fig.png", differences=True)
        ids = [p["image_id"] for p in fig.picks]
        assert ids == expected_picks()
        assert fig.columns == ["input", "Diff-ICE\nit 1", "Diff-ICE\nit 2", "Diff-ICE_1\nbase", "DiME\nbase"]
        assert len(fig.corners) == 2 * len(ids) and all(len(r) == 5 for r in fig.corners)
        # a notebook cell shows the strip itself, and a short repr (not every pick and corner)
        assert fig._repr_png_() == fig.path.read_bytes() and fig._repr_png_().startswith(b"\x89PNG")
        assert repr(fig).startswith(f"StripFigure({fig.path}: {len(ids)} images x 5 columns; ablation ")
        png = np.asarray(Image.open(fig.path).convert("RGB"))
        h, w = fig.tile

        def tile(corners, r, c):
            x, y = corners[r][c]
            return png[y : y + h, x : x + w]

        ref = store.configs()[0]["config_id"]
        for r, i in enumerate(ids):
            np.testing.assert_array_equal(tile(fig.corners, 2 * r, 0), overlay(store.inputs([i])[0]))
            np.testing.assert_array_equal(tile(fig.corners, 2 * r, 2), overlay(store.counterfactuals(ref, 2, [i])[0]))
        # the ablation figure: Diff-ICE_1 at the base setting, then its two ablations; the last one ran on
        # images 0-3 only, so the others' tiles are grey ("not run")
        assert fig.ablation_path.is_file()
        assert fig.ablation_columns == ["input", "Diff-ICE_1\nbase", "Diff-ICE_1\nLp off", "Diff-ICE_1\ntau=5"]
        png = np.asarray(Image.open(fig.ablation_path).convert("RGB"))
        for r, i in enumerate(ids):
            last = tile(fig.ablation_corners, 2 * r, 3)
            assert (last == 200).all() == (i not in (0, 1, 2, 3))


def test_strip_figure_bad_inputs(tmp_path):
    from diffice.evaluation.figures import strip_figure
    from diffice.explain.sweep import SweepStore

    with pytest.raises(FileNotFoundError, match="results store not found"):
        SweepStore(tmp_path / "none.sqlite")
    with write_store(tmp_path / "empty.sqlite", []) as store:
        with pytest.raises(ValueError, match="holds no configuration"):
            strip_figure(store, MeanOracle(), tmp_path / "f.png")
    with write_store(tmp_path / "r.sqlite", BASE_CONFIGS) as store:
        with pytest.raises(ValueError, match="no configuration 'nope'; configurations: "):
            strip_figure(store, MeanOracle(), tmp_path / "f.png", config="nope")
    with write_store(tmp_path / "no-diffice.sqlite", BASE_CONFIGS[1:]) as store:
        with pytest.raises(ValueError, match="no Diff-ICE configuration at the base setting"):
            strip_figure(store, MeanOracle(), tmp_path / "f.png")
    with write_store(tmp_path / "all-target.sqlite", BASE_CONFIGS, all_target=True) as store:
        with pytest.raises(ValueError, match="no image in the validity subset"):
            strip_figure(store, MeanOracle(), tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_paper_figure_script(tmp_path, capsys):
    """benchmarks/paper_figure.py: the strips of a store with the bundled oracle; a clear error without a store."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_figure.py"
    spec = importlib.util.spec_from_file_location("paper_figure", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_store(tmp_path / "r.sqlite", BASE_CONFIGS + ABLATION, size=(64, 80)).close()  # the oracle's size
    out = tmp_path / "fig.png"
    assert script.main(["--store", str(tmp_path / "r.sqlite"), "--out", str(out), "--no-extremes"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and (tmp_path / "fig_ablation.png").is_file()
    assert printed.startswith("rule: ") and printed.count('"reason": "median gain of') == 4
    assert script.main(["--store", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2
    assert "results store not found" in capsys.readouterr().err


def test_paper_comparison_script(tmp_path, capsys):
    """benchmarks/paper_comparison.py: paired differences on the images two configurations share, with the demo
    oracle of a demo store; the L1 cell against the shifts write_store made."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_comparison.py"
    spec = importlib.util.spec_from_file_location("paper_comparison", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    store = tmp_path / "r.sqlite"
    write_store(store, BASE_CONFIGS + ABLATION, size=(64, 80), models=dict(source="demo")).close()
    assert script.main(["--store", str(store)]) == 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()[3:]}
    assert list(rows) == [
        "Diff-ICE iteration 2 - Diff-ICE_1",
        "Diff-ICE (L=2) - dime",
        "Lp off - on (Diff-ICE_1 tau=3)",
        "Diff-ICE_1 tau=5 lc=5 lp=1 - base",
    ]
    # Diff-ICE's iteration 2 moved image i by DELTA[i] (configuration 0), Diff-ICE_1 by DELTA[i] + 0.05 (1);
    # the image that went non-finite is left out of both
    both = [i for i in range(len(DELTA)) if i != NONFINITE]
    expected = np.mean([abs(DELTA[i]) - abs(DELTA[i] + 0.05) for i in both])
    l1 = rows["Diff-ICE iteration 2 - Diff-ICE_1"][script.TERMS.index("L1")]
    assert float(l1.split()[0]) == pytest.approx(expected, abs=2e-3) and l1.endswith(f"(n={len(both)})")


def test_paper_comparison_against_another_store(tmp_path, capsys):
    """--before: every configuration (each Diff-ICE iteration) of one store against the same configuration of another
    store of the same images; its L1 cell against the shifts write_store made; other images are refused."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_comparison.py"
    spec = importlib.util.spec_from_file_location("paper_comparison", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    now, before = tmp_path / "now.sqlite", tmp_path / "before.sqlite"
    write_store(now, BASE_CONFIGS + ABLATION, size=(64, 80), models=dict(source="demo")).close()
    write_store(before, BASE_CONFIGS, size=(64, 80), models=dict(source="demo"), offset=0.02).close()
    assert script.main(["--store", str(now), "--before", str(before)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[3:]}
    assert len(rows) == sum(c.get("iterations", 1) for c in BASE_CONFIGS) and "minus" in lines[0]
    # Diff-ICE's iteration 1 (configuration 0, L = 2) moved image i by DELTA[i] / 2 here, DELTA[i] / 2 + 0.02 before
    expected = np.mean([abs(DELTA[i] / 2) - abs(DELTA[i] / 2 + 0.02) for i in range(len(DELTA))])
    first = rows[next(iter(rows))][script.TERMS.index("L1")]
    assert float(first.split()[0]) == pytest.approx(expected, abs=2e-3) and first.endswith(f"(n={len(DELTA)})")
    both = len(DELTA) - 1  # the image that went non-finite is left out
    assert any(c[script.TERMS.index("L1")].endswith(f"(n={both})") for c in rows.values())
    other = tmp_path / "other.sqlite"
    write_store(other, BASE_CONFIGS, size=(32, 40), models=dict(source="demo")).close()
    with pytest.raises(SystemExit, match="do not hold the same images"):
        script.main(["--store", str(now), "--before", str(other)])
