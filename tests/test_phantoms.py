"""diffice.data.phantoms: determinism, shapes and ranges, the label rule, masks, the posterior-fossa signal, bad
input."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from diffice import phantoms as P

SMALL = (32, 40)


@pytest.fixture
def seed(rng) -> int:
    """A fresh seed each run (reproducible with DIFFICE_TEST_SEED)."""
    return int(rng.integers(0, 2**31))


@pytest.fixture(scope="module")
def batch():
    """One shared batch of small phantoms for the statistical checks (fixed seed: the checks are about the
    generator, and a fixed batch keeps the suite fast)."""
    return P.generate(200, size=SMALL, seed=1234)


def test_deterministic_and_independent_of_n(seed):
    a = P.generate(10, seed=seed)
    b = P.generate(3, seed=seed)
    c = P.generate(10, seed=seed)
    np.testing.assert_array_equal(a.images[:3], b.images)
    np.testing.assert_array_equal(a.masks[:3], b.masks)
    np.testing.assert_array_equal(a.labels[:3], b.labels)
    for k in P.CONCEPTS:
        np.testing.assert_array_equal(a.concepts[k][:3], b.concepts[k])
    assert a.params[:3] == b.params
    np.testing.assert_array_equal(a.images, c.images)
    np.testing.assert_array_equal(a.masks, c.masks)
    d = P.generate(3, seed=seed + 1)
    assert not np.array_equal(d.images, b.images)
    assert not np.array_equal(a.images[0], a.images[1])


def test_same_pixels_whatever_the_threads_and_blas_kernel(seed):
    """A phantom's pixels name its noise in the sampler and its rows in a sweep store, so they must not depend on
    OpenBLAS's thread count or kernel (a BLAS product rounded them differently with OMP_NUM_THREADS=1, and with
    OpenBLAS's Sandybridge kernel against its Haswell one: a sweep resumed so said 'made for another image set')."""
    code = (
        "import hashlib, sys; from diffice import phantoms as P; "
        f"b = P.generate(6, size=(40, 56), seed={seed}); "
        "sys.stdout.write(hashlib.sha1(b.images.tobytes() + b.masks.tobytes()).hexdigest())"
    )
    hashes = set()
    for extra in ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}, {"OPENBLAS_CORETYPE": "Sandybridge"}):
        env = dict(os.environ, **extra)
        env.pop("OPENBLAS_NUM_THREADS", None)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        hashes.add(done.stdout)
    assert len(hashes) == 1, hashes


@pytest.mark.parametrize("n, m", [(64, 9), (80, 300), (224, 100), (5, 40)])
def test_banded_product_is_the_matrix_product(rng, n, m):
    for matrix in (P._interp_matrix(n, m - 1), P._resample_matrix(n, m)):
        b = rng.standard_normal((matrix.shape[1], 7)).astype(np.float32)
        np.testing.assert_allclose(P._product(matrix, b), matrix.astype(np.float64) @ b, rtol=0, atol=1e-6)


def test_generate_one_is_a_function_of_the_generator(seed):
    x = P.generate_one(np.random.default_rng(seed), SMALL)
    y = P.generate_one(np.random.default_rng(seed), SMALL)
    np.testing.assert_array_equal(x.image, y.image)
    np.testing.assert_array_equal(x.masks, y.masks)
    assert x.params == y.params and x.label == y.label and x.concepts == y.concepts
    # re-rendering from the recorded parameters reproduces the phantom (they are a fixed point of the fitting)
    z = P.generate_one(np.random.default_rng(seed), SMALL, **{k: v for k, v in x.params.items() if k != "sharp"})
    np.testing.assert_array_equal(x.image, z.image)


def test_dtypes_and_ranges(seed):
    b = P.generate(6, seed=seed)
    assert b.images.shape == (6, 1, 64, 80) and b.images.dtype == np.float32
    assert b.images.min() >= -1.0 and b.images.max() <= 1.0 and np.isfinite(b.images).all()
    assert b.masks.shape == (6, len(P.STRUCTURES), 64, 80) and b.masks.dtype == bool
    assert b.structure_names == P.STRUCTURES
    assert b.labels.shape == (6,) and b.labels.dtype == np.int64 and set(b.labels) <= {0, 1}
    assert set(b.concepts) == set(P.CONCEPTS)
    for v in b.concepts.values():
        assert v.shape == (6,) and v.dtype == bool
    assert len(b) == 6 and len(b.params) == 6
    assert all(isinstance(p, dict) and "failure_mode" in p for p in b.params)
    # images use the range: black outside the fan, bright bone inside
    assert (b.images == -1.0).any() and b.images.max() > 0.5


@pytest.mark.parametrize("size", [(32, 40), (33, 47), (64, 64), (48, 96), (96, 48), (120, 40), (224, 288)])
def test_sizes(size, seed):
    b = P.generate(2, size=size, seed=seed)
    H, W = size
    assert b.images.shape == (2, 1, H, W) and b.masks.shape == (2, len(P.STRUCTURES), H, W)
    assert np.isfinite(b.images).all() and b.images.min() >= -1 and b.images.max() <= 1
    _check_masks(b, size)


def _check_masks(b, size):
    names = P.STRUCTURES
    for i in range(len(b)):
        fov = P.field_of_view(b.params[i], size)
        assert not (b.masks[i] & ~fov).any(), "a mask leaves the field of view"
        assert (b.images[i, 0][~fov] == -1.0).all(), "the image is not black outside the field of view"
        assert fov.mean() > 0.25
        for name in ("head", "skull", "midline"):
            assert b.masks[i, names.index(name)].any(), name
        for name, concept in (("thalami", "TH"), ("csp", "CSP"), ("posterior_fossa", "FP")):
            assert b.masks[i, names.index(name)].any() == b.concepts[concept][i], (name, i)
        head = b.masks[i, names.index("head")]
        for name in ("thalami", "csp", "posterior_fossa", "midline"):
            assert not (b.masks[i, names.index(name)] & ~head).any(), f"{name} outside the head"


def test_masks_inside_fov_and_consistent_with_concepts(batch):
    _check_masks(batch, SMALL)


def test_label_is_the_rule(batch):
    c = batch.concepts
    rule = c["TH"] & c["CSP"] & ~c["FP"] & c["sharp"]
    np.testing.assert_array_equal(batch.labels, rule.astype(np.int64))
    np.testing.assert_array_equal(P.standard_plane_rule(**c), rule)
    for i, p in enumerate(batch.params):
        assert (p["failure_mode"] == "none") == bool(batch.labels[i])
        assert p["sharp"] == (p["blur"] <= P.SHARP_MAX_BLUR)
        if p["failure_mode"] == "tilted":
            assert p["FP"]
        if p["failure_mode"] in ("no_csp", "blurred", "no_th"):
            assert not p["FP"]
        if p["failure_mode"] == "no_csp":
            assert not p["CSP"]
        if p["failure_mode"] == "no_th":
            assert not p["TH"]
        if p["failure_mode"] == "blurred":
            assert not p["sharp"] and p["TH"] and p["CSP"]


def test_failure_modes_follow_their_probabilities(batch):
    modes = [p["failure_mode"] for p in batch.params if p["failure_mode"] != "none"]
    n = len(modes)
    for mode, prob in P.FAILURE_MODES.items():
        got = modes.count(mode) / n
        assert abs(got - prob) < 5 * math.sqrt(prob * (1 - prob) / n) + 0.02, (mode, got, prob)
    # every concept fails somewhere, and non-standard images are not all failures of one kind
    nsp = batch.labels == 0
    for k in ("TH", "CSP", "sharp"):
        assert (~batch.concepts[k][nsp]).any(), k
    assert batch.concepts["FP"][nsp].any() and (~batch.concepts["FP"][nsp]).any()


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_standard_fraction(fraction, batch, seed):
    if fraction == 0.5:
        labels = batch.labels
    else:
        labels = P.generate(120 if 0 < fraction < 1 else 20, size=SMALL, seed=seed, standard_fraction=fraction).labels
    if fraction in (0.0, 1.0):
        assert (labels == fraction).all()
    else:
        n = len(labels)
        assert abs(labels.mean() - fraction) < 5 * math.sqrt(fraction * (1 - fraction) / n), labels.mean()


def test_posterior_fossa_region_differs(batch):
    """Standard images against their tilted twins (same seed, FP forced visible: same geometry and noise):
    the posterior fossa region must differ clearly, on average and image by image."""
    twins = P.generate(60, size=SMALL, seed=1234, FP=True)
    k = P.STRUCTURES.index("posterior_fossa")
    sp = np.flatnonzero(batch.labels[:60] == 1)
    assert len(sp) >= 15
    diff, std_sp, std_fp = [], [], []
    for i in sp:
        region = twins.masks[i, k]
        assert region.sum() >= 4
        a, b = batch.images[i, 0][region], twins.images[i, 0][region]
        diff.append(np.abs(a - b).mean())
        std_sp.append(a.std())
        std_fp.append(b.std())
    assert np.mean(diff) > 0.15 and np.min(diff) > 0.05, (np.mean(diff), np.min(diff))
    assert np.mean(std_fp) > np.mean(std_sp) + 0.08, (np.mean(std_fp), np.mean(std_sp))


def test_overrides(seed):
    rng = np.random.default_rng(seed)
    t = P.generate_one(rng, SMALL, failure_mode="tilted")
    assert t.concepts["FP"] and t.label == 0 and t.params["failure_mode"] == "tilted"
    b = P.generate_one(np.random.default_rng(seed), SMALL, standard=True, blur=2.0)
    assert not b.concepts["sharp"] and b.label == 0
    c = P.generate_one(np.random.default_rng(seed), SMALL, standard=True, CSP=False)
    assert c.label == 0 and not c.masks[P.STRUCTURES.index("csp")].any()
    s = P.generate_one(np.random.default_rng(seed), SMALL, standard=True, rotation_deg=0.0, anterior=1)
    assert s.label == 1 and s.params["rotation_deg"] == 0.0
    # fixing one parameter does not change the others
    s2 = P.generate_one(np.random.default_rng(seed), SMALL, standard=True)
    assert s2.params["fan_apex"] == s.params["fan_apex"] and s2.params["speckle"] == s.params["speckle"]
    # overrides apply to every image of a batch
    g = P.generate(4, size=SMALL, seed=seed, failure_mode="no_th")
    assert not g.concepts["TH"].any() and (g.labels == 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be a positive integer"),
        (dict(n=-3), "n must be a positive integer"),
        (dict(n=2.5), "n must be a positive integer"),
        (dict(n=2, size=(16, 40)), "too small"),
        (dict(n=2, size=(40, 31)), "too small"),
        (dict(n=2, size=(32,)), r"size must be \(height, width\)"),
        (dict(n=2, size=(32.5, 40)), "two integers"),
        (dict(n=2, standard_fraction=-0.1), r"standard_fraction must be in \[0, 1\]"),
        (dict(n=2, standard_fraction=1.5), r"standard_fraction must be in \[0, 1\]"),
        (dict(n=2, standard_fraction=float("nan")), r"standard_fraction must be in \[0, 1\]"),
        (dict(n=2, standard_fraction="half"), "standard_fraction must be a number"),
        (dict(n=2, seed=-1), "seed must be a non-negative integer"),
        (dict(n=2, head_size=0.3), "unknown phantom parameters"),
        (dict(n=2, failure_mode="upside_down"), "failure_mode must be"),
        (dict(n=2, blur=-1.0), "blur must be"),
        (dict(n=2, standard=True), "standard_fraction, not standard"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.generate(**kwargs)


def test_bad_arguments_generate_one():
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        P.generate_one(0, SMALL)
    with pytest.raises(ValueError, match="too small"):
        P.generate_one(np.random.default_rng(0), (31, 64))
    with pytest.raises(ValueError, match="contradicts"):
        P.generate_one(np.random.default_rng(0), SMALL, standard=True, failure_mode="tilted")


def test_write_dataset_refuses_n_below_one_before_writing(tmp_path):
    for n in (0, -1):
        with pytest.raises(ValueError, match=rf"write_dataset: n must be a positive integer, got {n}"):
            P.write_dataset(tmp_path / "set", n)
        assert not (tmp_path / "set").exists()


def test_write_dataset_refuses_a_folder_that_holds_a_dataset(tmp_path):
    """Writing 3 phantoms over 20 once replaced images 0-2 and labels.csv, leaving 17 images without a row (the next
    training failed on them); now the folder is named, with what to do, and nothing is written."""
    out = tmp_path / "ow"
    P.write_dataset(out, 4, SMALL, seed=1)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(FileExistsError, match=rf"^{out} already holds a dataset \(images/, masks/, labels\.csv"):
        P.write_dataset(out, 2, SMALL, seed=9)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    for name in ("labels.csv", "classes.txt"):  # any part of a dataset
        other = tmp_path / name.replace(".", "_")
        other.mkdir()
        (other / name).write_text("x\n")
        with pytest.raises(FileExistsError, match="use another --out or delete it"):
            P.write_dataset(other, 1, SMALL)
        assert sorted(p.name for p in other.iterdir()) == [name]
    # an empty folder, or one with empty images/ and masks/, is fine
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    P.write_dataset(tmp_path / "empty", 1, SMALL)
    assert (tmp_path / "empty" / "labels.csv").read_text().count("\n") == 2
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileExistsError, match=r"afile: it is a file, not a folder"):
        P.write_dataset(tmp_path / "afile", 1, SMALL)


@pytest.mark.parametrize("seed", [2**64, 99999999999999999999999, -1, 1.5, True])
def test_seeds_outside_0_to_2_pow_64_are_refused_before_anything_is_written(tmp_path, seed):
    """seeds are never taken modulo 2**64 (the rule of every command's seed); 99999999999999999999999 was accepted."""
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer below 2\*\*64"):
        P.generate(1, SMALL, seed=seed)
    with pytest.raises(ValueError, match=rf"^write_dataset: seed must be .*, got {seed!r}"):
        P.write_dataset(tmp_path / "set", 1, SMALL, seed=seed)
    assert not (tmp_path / "set").exists()
    P.generate(1, SMALL, seed=2**64 - 1)  # the largest seed


def test_write_dataset_refuses_other_bad_arguments_before_writing(tmp_path):
    for kwargs in (dict(size=(16, 40)), dict(standard_fraction=2.0)):
        with pytest.raises(ValueError):
            P.write_dataset(tmp_path / "set", 1, **kwargs)
        assert not (tmp_path / "set").exists()


def test_diffice_phantoms_stopped_by_ctrl_c_finishes_when_run_again(tmp_path, capsys, monkeypatch):
    """Ctrl-C said "run the same command again to resume", and the same command then refused the folder as one that
    holds a dataset; now it finishes the dataset (the images written before kept, the result the same as a run
    never stopped) and other settings are refused, naming those of the unfinished dataset."""
    import diffice.data.images as images
    from diffice.cli import main

    save, saved = images.save_png, []

    def save_then_interrupt(path, image):
        save(path, image)
        saved.append(path)
        if len(saved) == 7:  # image 3 written, its mask not
            raise KeyboardInterrupt

    out = tmp_path / "set"
    cmd = ["phantoms", "--out", str(out), "--n", "6", "--size", "32", "40", "--seed", "3", "-q"]
    monkeypatch.setattr(images, "save_png", save_then_interrupt)
    assert main(cmd) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"interrupted: the phantoms written so far are kept in {out}; run the same command again to finish the dataset"
    ]
    assert not (out / "labels.csv").exists() and len(list((out / "images").iterdir())) == 4
    kept = (out / "images" / "000000.png").stat().st_mtime_ns
    monkeypatch.setattr(images, "save_png", save)
    assert main(cmd[:-2] + ["4", "-q"]) == 2  # another seed
    err = capsys.readouterr().err
    assert (
        f"{out} holds an unfinished dataset of other settings (n 6, size 32x40, seed 3, standard_fraction 0.5;" in err
    )
    assert main(cmd) == 0
    assert (out / "images" / "000000.png").stat().st_mtime_ns == kept  # not written again
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "images", "labels.csv", "masks"]
    P.write_dataset(tmp_path / "whole", 6, SMALL, seed=3)
    for p in sorted((tmp_path / "whole").rglob("*")):
        if p.is_file():
            assert (out / p.relative_to(tmp_path / "whole")).read_bytes() == p.read_bytes(), p
    assert main(cmd) == 2  # a finished dataset is refused as before
