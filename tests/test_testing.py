"""diffice.testing: reference runs stored and compared, readable failures, settings and input checks, the update
switch, and the bundled demo models against the reference committed in tests/data/.

Regenerate that reference (after an intended change of the models or the sampler) with
``DIFFICE_UPDATE_REFERENCE=1 python -m pytest tests/test_testing.py -k bundled``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import read_first_line_and_close, tiny_plane_classifier, tiny_unet

from diffice import GaussianDiffusion, PixelLoss
from diffice.explain.explainer import Explainer
from diffice.testing import (
    EXACT,
    UPDATE_ENV,
    assert_matches_reference,
    check_explainer_regression,
    compare_runs,
    load_reference,
    main,
    run_settings,
    save_reference,
)

DEMO_REFERENCE = Path(__file__).with_name("data") / "demo_regression.safetensors"
H, W = 16, 24


@pytest.fixture(scope="module")
def models():
    return tiny_unet(), GaussianDiffusion(1000, "linear", "40", learn_sigma=True), tiny_plane_classifier()


def make_explainer(models, **kw):
    unet, diffusion, clf = models
    return Explainer(
        unet,
        diffusion,
        clf,
        PixelLoss("l2"),
        **dict(dict(iterations=2, tau=3, lambda_c=(1.0, 2.0), lambda_p=10.0), **kw),
    )


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)  # fixed: the sampler's noise follows the pixels
    return np.clip(rng.standard_normal((3, 1, H, W)) * 0.5, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def run(models, inputs):
    return make_explainer(models).explain(inputs, target=1, seed=0)


@pytest.fixture
def no_update(monkeypatch):
    monkeypatch.delenv(UPDATE_ENV, raising=False)


def test_stored_run_matches_itself_bitwise_and_in_float16(run, inputs, models, tmp_path):
    settings = run_settings(make_explainer(models), inputs, target=1, seed=0)
    path = save_reference(tmp_path / "sub" / "ref.safetensors", run, inputs, settings)
    ref = load_reference(path)
    assert ref.counterfactuals.shape == run.counterfactuals.shape and ref.seed == 0
    assert ref.target.tolist() == [1, 1, 1] and ref.settings["method"]["tau"] == 3
    assert ref.environment["diffice"] and ref.environment["threads"] >= 1
    c = assert_matches_reference(run, path, x=inputs, settings=settings, **EXACT)
    assert c.ok and c.pixel_max.max() == 0 and c.prob_diff.max() == 0
    half = save_reference(tmp_path / "half.safetensors", run, inputs, dtype="float16")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    c = assert_matches_reference(run, half, x=inputs)  # float16 rounding is added to each tolerance
    assert 0 < c.pixel_max.max() <= 2**-11


def test_perturbed_pixel_fails_naming_image_iteration_pixel_and_distance(run, inputs, tmp_path):
    path = save_reference(tmp_path / "ref.safetensors", run, inputs)
    cf = run.counterfactuals.copy()
    cf[1, 2, 0, 5, 7] += 0.25  # iteration 2, image 2
    cf[0, 0] += 0.01  # iteration 1, image 0: all pixels, within atol but over mean_atol
    with pytest.raises(AssertionError) as e:
        assert_matches_reference(dataclasses.replace(run, counterfactuals=cf), path)
    msg = str(e.value)
    assert "in 2 places (1 pixel, 1 mean;" in msg
    assert "image 2, iteration 2: counterfactual |diff| 0.25 at pixel (0, 5, 7)" in msg
    assert "> tolerance 0.1" in msg
    assert "image 0, iteration 1: counterfactual mean |diff| 0.01 > mean_atol 0.005" in msg
    assert msg.index("image 2, iteration 2") < msg.index("image 0, iteration 1")  # worst (2.5x vs 2x) first
    assert "reference made with: diffice" in msg and UPDATE_ENV in msg
    # the same run passes with looser tolerances, and without pixels
    assert_matches_reference(dataclasses.replace(run, counterfactuals=cf), path, atol=0.3, mean_atol=0.02)
    assert_matches_reference(dataclasses.replace(run, counterfactuals=cf), path, level="probabilities")


def test_probability_lambda_flip_and_nonfinite_differences_are_named(run, inputs, tmp_path):
    path = save_reference(tmp_path / "ref.safetensors", run, inputs)
    p = run.prob_target.copy()
    p[2, 1] = np.clip(p[2, 1] - 0.06, 0, 1) if p[2, 1] > 0.5 else p[2, 1] + 0.06
    changed = dataclasses.replace(run, prob_target=p)
    with pytest.raises(
        AssertionError,
        match=r"image 1, iteration 2: p_target [0-9.]+ vs reference [0-9.]+ "
        r"\(\|diff\| 0\.06 > prob_atol 0\.001\)",
    ):
        assert_matches_reference(changed, path)
    assert_matches_reference(changed, path, level="probabilities", prob_atol=0.1)
    assert_matches_reference(changed, path, level="flips")
    lam, flipped, nonfinite = run.lambda_used.copy(), run.flipped.copy(), run.nonfinite_step.copy()
    lam[0, 2] = 99.0
    flipped[1, 0] = ~flipped[1, 0]
    nonfinite[0, 1] = 2
    changed = dataclasses.replace(run, lambda_used=lam, flipped=flipped, nonfinite_step=nonfinite)
    with pytest.raises(AssertionError) as e:
        assert_matches_reference(changed, path, level="probabilities")
    msg = str(e.value)
    assert "image 2, iteration 1: lambda_c 99 vs reference" in msg
    assert f"image 0, iteration 2: flipped {bool(flipped[1, 0])} vs reference {bool(run.flipped[1, 0])}" in msg
    assert "image 1, iteration 1: non-finite from step 2 vs reference never" in msg
    with pytest.raises(AssertionError, match="flipped") as e:
        assert_matches_reference(changed, path, level="flips")
    assert "lambda_c" not in str(e.value)


def test_nan_in_both_runs_is_equal_and_in_one_is_a_mismatch(run, inputs, tmp_path):
    cf = run.counterfactuals.copy()
    cf[0, 1, 0, 0, 0] = np.nan
    nan_run = dataclasses.replace(run, counterfactuals=cf)
    path = save_reference(tmp_path / "ref.safetensors", nan_run, inputs)
    assert_matches_reference(nan_run, path, **EXACT)
    with pytest.raises(AssertionError, match=r"image 1, iteration 1: counterfactual \|diff\| inf at pixel \(0, 0, 0\)"):
        assert_matches_reference(run, path)


def test_settings_mismatch_fails_before_running(models, inputs, tmp_path, monkeypatch, no_update):
    path = tmp_path / "ref.safetensors"
    ex = make_explainer(models)
    save_reference(path, ex.explain(inputs, seed=0), inputs, run_settings(ex, inputs, target=1, seed=0))
    other = make_explainer(models, tau=4, lambda_c=(1.0,))

    def not_called(*a, **k):
        raise RuntimeError("explain should not run when the settings differ")

    monkeypatch.setattr(other, "explain", not_called)
    with pytest.raises(AssertionError) as e:
        check_explainer_regression(other, inputs, path, seed=0, settings={"model": "v2"})
    msg = str(e.value)
    assert "settings differ from those of the reference" in msg
    assert "method.tau: 4 (reference: 3)" in msg
    assert "method.lambda_c: [1.0] (reference: [1.0, 2.0])" in msg
    assert 'extra.model: "v2" (reference: (not set))' in msg
    with pytest.raises(AssertionError, match=r"seed: 5 \(reference: 0\)"):
        check_explainer_regression(make_explainer(models), inputs, path, seed=5)
    with pytest.raises(AssertionError, match=r"target: \[1, 0, 1\] \(reference: \[1, 1, 1\]\)"):
        assert_matches_reference(None, path, settings=run_settings(ex, inputs, target=[1, 0, 1]))


def test_missing_reference_is_written_and_fails_then_passes(models, inputs, tmp_path, no_update):
    path = tmp_path / "refs" / "tiny.safetensors"
    ex = make_explainer(models)
    with pytest.raises(pytest.fail.Exception, match="did not exist; wrote it from this run .3 images, 2 iterations"):
        check_explainer_regression(ex, inputs, path, target=1, seed=0)
    ref = load_reference(path)
    assert ref.settings == run_settings(ex, inputs, 1, 0)
    assert ref.environment["backend"] == "cpu" and ref.environment["guidance"] == "python"  # PixelLoss runs in Python
    result = check_explainer_regression(ex, inputs, path, target=1, seed=0)
    np.testing.assert_array_equal(result.counterfactuals, ref.counterfactuals)


def test_update_switch_rewrites_and_skips(models, inputs, tmp_path, monkeypatch, no_update):
    path = tmp_path / "ref.safetensors"
    ex = make_explainer(models)
    save_reference(path, ex.explain(inputs), inputs, run_settings(ex, inputs))
    new = make_explainer(models, tau=4)
    monkeypatch.setenv(UPDATE_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match="rewrote the reference run"):
        check_explainer_regression(new, inputs, path)
    assert load_reference(path).settings["method"]["tau"] == 4
    monkeypatch.setenv(UPDATE_ENV, "0")
    check_explainer_regression(new, inputs, path)
    with pytest.raises(pytest.skip.Exception):
        check_explainer_regression(new, inputs, path, update=True)


def test_inputs_are_checked_and_last_bit_changes_keep_the_stored_noise(models, inputs, run, tmp_path, no_update):
    path = tmp_path / "ref.safetensors"
    ex = make_explainer(models)
    save_reference(path, run, inputs, run_settings(ex, inputs))
    x = inputs.copy()
    x[1, 0, 3, 4] += 1e-3
    with pytest.raises(
        AssertionError,
        match=r"inputs differ from those stored .*\n  image 1: input differs from "
        r"the stored one by 0\.001 at pixel \(0, 3, 4\)",
    ):
        check_explainer_regression(ex, x, path)
    # a change in the last bits (another CPU's phantom generator, say) is within input_atol; the run then draws the
    # stored noise (a fresh image_keys(x) would draw other noise and give another counterfactual)
    x = inputs.copy()
    x[1, 0, 3, 4] = np.nextafter(x[1, 0, 3, 4], np.float32(2))
    check_explainer_regression(ex, x, path)


def test_bad_files_and_arguments(run, inputs, tmp_path):
    from diffice.io import save_safetensors

    other = tmp_path / "weights.safetensors"
    save_safetensors(other, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not a diffice reference run"):
        load_reference(other)
    with pytest.raises(IsADirectoryError, match="is a folder, not a diffice reference run"):
        load_reference(tmp_path)
    path = save_reference(tmp_path / "ref.safetensors", run, inputs)
    with pytest.raises(ValueError, match=r"shape \(2, 2, 1, 16, 24\) .* \(2 iterations of 3 images\)"):
        compare_runs(
            dataclasses.replace(
                run,
                **{
                    f: getattr(run, f)[:, :2]
                    for f in ("counterfactuals", "prob_target", "lambda_used", "flipped", "nonfinite_step")
                },
            ),
            path,
        )
    with pytest.raises(ValueError, match="level must be one of"):
        compare_runs(run, path, level="bits")
    with pytest.raises(TypeError, match="unknown tolerance"):
        from diffice.testing import _tolerances

        _tolerances(dict(pixel_atol=1.0))
    with pytest.raises(ValueError, match="atol must be a finite number"):
        compare_runs(run, path, atol=-1)
    with pytest.raises(ValueError, match=r"settings\['seed'\] is 3 but the run's seed is 0"):
        save_reference(tmp_path / "x.safetensors", run, inputs, {"seed": 3})


def test_cli_show_and_compare(run, inputs, tmp_path, capsys):
    a = save_reference(tmp_path / "a.safetensors", run, inputs)
    cf = run.counterfactuals.copy()
    cf[1, 0] += 0.2
    b = save_reference(tmp_path / "b.safetensors", dataclasses.replace(run, counterfactuals=cf), inputs)
    assert main(["show", str(a)]) == 0
    out = capsys.readouterr().out
    assert "3 images (1, 16, 24), 2 iterations, float32, inputs stored" in out
    assert main(["compare", str(a), str(a)]) == 0
    assert "within the tolerances" in capsys.readouterr().out
    assert main(["compare", str(b), str(a)]) == 1
    out = capsys.readouterr().out
    assert "image 0, iteration 2: counterfactual |diff| 0.2" in out
    assert main(["compare", str(b), str(a), "--atol", "0.3", "--mean-atol", "0.3"]) == 0


def test_cli_bad_files_are_one_line_and_a_closed_pipe_stops_quietly(tmp_path, capsys):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    for args in (["show", str(tmp_path / "missing.safetensors")], ["show", str(tmp_path)], ["show", str(damaged)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m diffice.testing show: error: "), err
        assert args[1] in err[0]
    # `python -m diffice.testing show ref | head` (a reader that goes away): 141 without a traceback
    spam = (
        "import sys, diffice.testing as t\n"
        "t._show = lambda ref: '\\n'.join(f'line {i} ' + 'x' * 60 for i in range(200000))\n"
        f"sys.exit(t.main(['show', {str(DEMO_REFERENCE)!r}]))\n"
    )
    assert read_first_line_and_close(spam) == (141, b"")


def test_bundled_models_match_the_committed_reference():
    """The demo models, 4 phantoms (one of each failure mode), 2 iterations at tau 10 of 100, against
    tests/data/demo_regression.safetensors (float16, 124 KB): with the default tolerances, which cover the
    drift measured across thread counts and oneDNN kernels (diffice/testing.py's docstring)."""
    from diffice.explain.demo import demo_phantoms, load_demo_models

    explainer = load_demo_models().explainer(iterations=2, tau=10)
    result = check_explainer_regression(
        explainer, demo_phantoms(4).images, DEMO_REFERENCE, target=1, seed=0, dtype="float16"
    )
    assert result.flipped[-1].all()  # every phantom reaches the standard plane within 2 iterations
    assert DEMO_REFERENCE.stat().st_size < 300_000


def test_a_method_setting_newer_than_the_reference_counts_as_its_default():
    """tests/data/demo_regression.safetensors predates the precision setting: fp32 (the default) matches it, any
    other value is reported as a difference, as a changed setting would be."""
    from diffice.testing import load_reference, settings_differences

    ref = load_reference(DEMO_REFERENCE)
    assert "precision" not in ref.settings["method"]
    now = dict(ref.settings, method=dict(ref.settings["method"], precision="fp32"))
    assert settings_differences(now, ref) == []
    now["method"]["precision"] = "tf32"
    assert settings_differences(now, ref) == ['method.precision: "tf32" (reference: "fp32")']
