"""diffice.evaluation.metrics against independent computations: pytorch-fid's scipy sqrtm formula for the Fréchet
distance,
the PyTorch FID Inception transcription, scipy/numpy float64 for the validity and oracle metrics, a direct
transcription of ACE's COUT loop; edge cases (one image, identical sets, singular covariances, no flipped
counterfactuals); and `diffice metrics` on a results folder."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rel_err
from inception_reference import FIDInception
from scipy import linalg, special

from diffice import PlaneClassifier, Segmenter, SonoNet
from diffice.cli import main
from diffice.data.images import save_png
from diffice.evaluation import metrics
from diffice.models.files import save_model
from diffice.models.inception import InceptionV3
from diffice.models.oracle import ConceptOracle


def pytorch_fid_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid fid_score.calculate_frechet_distance (scipy.linalg.sqrtm)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():  # scipy warns about (expected) singular products
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def random_features(rng, n, d, shift=0.0):
    mix = rng.standard_normal((d, d)) * rng.uniform(0.1, 1.0)
    return rng.standard_normal((n, d)) @ mix + shift * rng.standard_normal(d)


# ---- Fréchet distance ----


@pytest.mark.parametrize("n1, n2, d", [(200, 150, 8), (120, 90, 32), (12, 20, 40), (5, 7, 64)])  # last two singular
def test_frechet_distance_matches_scipy_sqrtm(rng, n1, n2, d):
    for _ in range(3):
        a, b = random_features(rng, n1, d), random_features(rng, n2, d, shift=0.5)
        s1, s2 = metrics.feature_statistics(a), metrics.feature_statistics(b)
        want = pytorch_fid_distance(*s1, *s2)
        assert abs(metrics.frechet_distance(*s1, *s2) - want) <= 1e-6 * abs(want)


@pytest.mark.parametrize("n1, n2, d", [(5, 7, 64), (30, 12, 40)])
def test_frechet_distance_of_few_samples_matches_scipy_sqrtm(rng, n1, n2, d):
    """fid/fsd take the nuclear-norm route when there are fewer samples than dimensions."""
    a, b = random_features(rng, n1, d), random_features(rng, n2, d, shift=0.5)
    want = pytorch_fid_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
    assert abs(metrics._fd_of_features(a, b) - want) <= 1e-6 * abs(want)
    assert abs(metrics._fd_of_features(a, a)) <= 1e-9 * np.trace(np.cov(a, rowvar=False))


def test_frechet_distance_identical_sets_and_scalars(rng):
    for n, d in [(50, 10), (4, 30)]:  # full-rank and singular covariance
        mu, sigma = metrics.feature_statistics(random_features(rng, n, d))
        assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) <= 1e-9 * np.trace(sigma)
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s
    assert metrics.frechet_distance(0.0, 1.0, 3.0, 4.0) == pytest.approx(9.0 + 1.0, rel=1e-12)
    # rank-0: all points equal
    assert metrics.frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.zeros((3, 3))) == pytest.approx(3.0)


def test_frechet_distance_rejects_bad_input(rng):
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="sigma2"):
        metrics.frechet_distance(mu, sigma, mu, np.eye(3))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(mu, sigma * np.nan, mu, sigma)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        metrics.frechet_distance(mu, sigma, mu, -sigma)
    with pytest.raises(ValueError, match="symmetric"):
        metrics.frechet_distance(mu, sigma + np.triu(np.ones((4, 4)), 1), mu, sigma)
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.feature_statistics(rng.standard_normal((1, 4)))


# ---- FID, FSD, SonoSim ----


def test_fid_matches_pytorch_pipeline(rng):
    net = InceptionV3.random(in_channels=3, resize=75, seed=int(rng.integers(1 << 30)))
    ref = FIDInception(resize=75).double().eval()
    ref.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in net.state_dict().items()}, strict=False)
    real = rng.uniform(-1, 1, (4, 1, 64, 80)).astype(np.float32)
    fake = np.clip(real[:3] + 0.5 * rng.standard_normal((3, 1, 64, 80)), -1, 1).astype(np.float32)
    with torch.no_grad():  # pytorch-fid: RGB in [0, 1], resized inside
        feats = [ref(torch.tensor((a + 1) / 2, dtype=torch.float64).repeat(1, 3, 1, 1)).numpy() for a in (real, fake)]
    # d = 2048 > N: tr sqrtm(S1 S2) is the nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)) (scipy's sqrtm of a
    # 2048 x 2048 matrix would take minutes)
    a, b = [torch.tensor(f - f.mean(0)) for f in feats]
    tr_covmean = float(torch.linalg.svdvals(a @ b.T).sum()) / np.sqrt((len(a) - 1) * (len(b) - 1))
    mu_diff = feats[0].mean(0) - feats[1].mean(0)
    want = (
        mu_diff @ mu_diff
        + np.trace(np.cov(feats[0], rowvar=False))
        + np.trace(np.cov(feats[1], rowvar=False))
        - 2 * tr_covmean
    )
    got = metrics.fid(metrics.fid_images(real), metrics.fid_images(fake), net, batch_size=3)
    assert abs(got - want) <= 1e-3 * abs(want)
    assert abs(metrics.fid(metrics.fid_images(real), metrics.fid_images(real), net)) <= 1e-6 * abs(want)


def test_fsd_and_sonosim(rng):
    net = SonoNet.random(k=4, seed=int(rng.integers(1 << 30)))
    # more images than features: with fewer, the covariances are singular and scipy's sqrtm (the reference) can
    # return imaginary parts above pytorch-fid's 1e-3 limit (~3% of draws); the singular case is tested above
    x = rng.uniform(-1, 1, (40, 1, 32, 48)).astype(np.float32)
    cf = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    fx = net.forward(x).features.astype(np.float64).mean(axis=(2, 3))
    fc = net.forward(cf).features.astype(np.float64).mean(axis=(2, 3))
    assert fx.shape == (40, 32)
    want = pytorch_fid_distance(fx.mean(0), np.cov(fx, rowvar=False), fc.mean(0), np.cov(fc, rowvar=False))
    assert abs(metrics.fsd(x, cf, net) - want) <= 1e-6 * abs(want)
    cos = np.array([1.0 - __import__("scipy.spatial.distance").spatial.distance.cosine(a, b) for a, b in zip(fx, fc)])
    assert rel_err(metrics.sonosim(x, cf, net), cos) <= 1e-9
    assert np.allclose(metrics.sonosim(x, x, net), 1.0)


# ---- validity and oracle metrics ----


class MeanClassifier:
    """logits (N, 2) = (-a mean(x), a mean(x)) + b: a deterministic classifier whose probabilities scipy can
    recompute."""

    def __init__(self, a=4.0, b=0.0):
        self.a, self.b = a, b

    def logits(self, x):
        m = np.asarray(x, np.float64).mean(axis=(1, 2, 3))
        return np.stack([-self.a * m, self.a * m + self.b], axis=1).astype(np.float32)

    def p1(self, x):
        return special.softmax(self.logits(x).astype(np.float64), axis=1)[:, 1]


class MeanOracle:
    def quality_score(self, x):
        return special.expit(3 * np.asarray(x, np.float64).mean(axis=(1, 2, 3)))


def test_validity_metrics_over_inputs_classified_non_standard(rng):
    f = MeanClassifier()
    x = rng.uniform(-1, 1, (9, 1, 8, 10)).astype(np.float32) - 0.2
    cf = np.clip(x + rng.uniform(-0.2, 0.8, (9, 1, 1, 1)), -1, 1).astype(np.float32)
    m = metrics.evaluate(x, cf, 1, classifier=f, with_cout=False)
    px, pc = f.p1(x), f.p1(cf)
    sel = px < 0.5  # f's prediction of x is not the target class 1
    assert 0 < sel.sum() < 9 or sel.all()
    assert m["FR"]["value"] == pytest.approx(np.mean(pc[sel] > 0.5), abs=1e-12)
    assert m["MAD"]["value"] == pytest.approx(np.mean(np.abs(px[sel] - pc[sel])), rel=1e-6)
    assert m["BKL"]["value"] == pytest.approx(np.mean(1 - pc[sel]), rel=1e-6)
    assert m["FR"]["n"] == sel.sum() and f"({sel.sum()} of 9)" in m["FR"]["subset"]
    assert "skipped" in m["FID"] and "--inception" in m["FID"]["skipped"]
    assert "skipped" in m["MQD"] and "skipped" in m["FSD"]


def test_oracle_metrics(rng):
    x = rng.uniform(-1, 1, (7, 1, 6, 6)).astype(np.float32)
    cf = rng.uniform(-1, 1, (7, 1, 6, 6)).astype(np.float32)
    o = MeanOracle()
    m = metrics.evaluate(x, cf, 1, oracle=o)
    qx, qc = o.quality_score(x), o.quality_score(cf)
    want = sum((qc[i] - qx[i]) for i in range(7) if qx[i] < 0.5) / 7
    assert m["MQD"]["value"] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert m["QS_x"]["value"] == pytest.approx(qx.mean()) and m["QS_cf"]["value"] == pytest.approx(qc.mean())
    assert m["MQD"]["n"] == 7


def cout_reference(f, x, cf, target=None):
    """ACE's COUT loop, transcribed with torch (binary: c = p of x's predicted class, c' = 1 - c; more classes:
    c = p of x's class, c' = p of the target)."""
    xt, ct = torch.tensor(x, dtype=torch.float64), torch.tensor(cf, dtype=torch.float64)
    _, _, h, w = xt.shape
    step = max(1, h * w // 50)
    out = []
    for i in range(len(xt)):
        mask = (ct[i] - xt[i]).abs().sum(0).flatten()
        mask = (mask - mask.min()) / (mask.max() - mask.min())
        order = torch.argsort(mask, descending=True, stable=True)
        y0 = int(f.p1(x[i : i + 1])[0] > 0.5) if target is None else int(np.argmax(f.logits(x[i : i + 1])[0]))
        scores, primes = [], []
        for k in list(range(0, h * w, step)) + [h * w]:
            m = torch.zeros(h * w, dtype=torch.float64)
            m[order[:k]] = 1
            m = m.view(1, h, w)
            xk = (ct[i] * m + xt[i] * (1 - m)).numpy()[None].astype(np.float32)
            if target is None:
                p1 = f.p1(xk)[0]
                scores.append(p1 if y0 == 1 else 1 - p1)
                primes.append(1 - scores[-1])
            else:
                p = special.softmax(f.logits(xk)[0].astype(np.float64))
                scores.append(p[y0])
                primes.append(p[target])
        c, c_prime = np.array(scores), np.array(primes)
        auc = lambda s: (s[0] / 2 + s[1:-1].sum() + s[-1] / 2) * step / (h * w)  # noqa: E731
        out.append(auc(c_prime) - auc(c))
    return np.array(out)


@pytest.mark.parametrize("size", [(8, 10), (7, 9)])  # H W divisible by the step, or not
def test_cout_matches_ace_loop(rng, size):
    f = MeanClassifier(a=6.0)
    x = (rng.uniform(-1, 1, (3, 1) + size) - 0.3).astype(np.float32)
    cf = np.clip(x + rng.uniform(0, 1.2, x.shape), -1, 1).astype(np.float32)
    got = metrics.cout(f, x, cf)
    assert np.all(np.abs(got) <= 1)
    assert rel_err(got, cout_reference(f, x, cf)) <= 1e-6
    # no change: c is constant, COUT = (1 - c) - c
    c = 1 - f.p1(x)
    assert np.allclose(metrics.cout(f, x, x), np.where(c >= 0.5, (1 - c) - c, c - (1 - c)), atol=1e-6)


class ThreeClassifier(MeanClassifier):
    def logits(self, x):
        m = np.asarray(x, np.float64).mean(axis=(1, 2, 3))
        return np.stack([-self.a * m, self.a * m, 0.3 + 0 * m], axis=1).astype(np.float32)


def test_cout_multiclass_uses_the_target_probability(rng):
    f = ThreeClassifier(a=5.0)
    x = (rng.uniform(-1, 1, (2, 1, 6, 9)) - 0.4).astype(np.float32)
    cf = np.clip(x + rng.uniform(0, 1.5, x.shape), -1, 1).astype(np.float32)
    assert rel_err(metrics.cout(f, x, cf, target=1), cout_reference(f, x, cf, target=1)) <= 1e-6
    with pytest.raises(ValueError, match="target"):
        metrics.cout(f, x, cf)


def test_edge_cases_one_image_and_no_flips(rng):
    f = MeanClassifier()
    net = SonoNet.random(k=4, seed=1)
    x = -np.ones((1, 1, 16, 16), np.float32) * 0.5
    m = metrics.evaluate(x, x.copy(), 1, classifier=f, sononet=net, oracle=MeanOracle())
    # one image that does not flip: validity computed on it, realism skipped with the reason
    assert m["FR"]["value"] == 0.0 and m["FR"]["n"] == 1
    assert m["MAD"]["value"] == pytest.approx(0.0, abs=1e-7)
    assert "needs at least 2" in m["FSD"]["skipped"] and "no flipped" in m["SonoSim"]["skipped"]
    x3 = -np.ones((3, 1, 16, 16), np.float32) * 0.5
    m = metrics.evaluate(x3, x3, 1, classifier=f, sononet=net)
    assert m["FR"]["value"] == 0.0 and "(have 3 and 0)" in m["FSD"]["skipped"]
    # every input already classified as the target: validity has no subset
    m = metrics.evaluate(-x3, -x3, 1, classifier=f)
    assert all("skipped" in m[k] for k in ("FR", "MAD", "BKL", "COUT"))


# ---- results folders and the CLI ----


def write_results(root: Path, x, cfs, target=1, flipped=None, nonfinite_step=None):
    """The layout diffice explain writes (diffice/explain/run.py): records/<stem>.json, <stem>/input.png,
    iteration_k.png.
    nonfinite_step (L, N): the sampler's record (-1: the counterfactual stayed finite)."""
    (root / "records").mkdir(parents=True)
    for i in range(x.shape[0]):
        stem = f"img_{i:02d}"
        save_png(root / stem / "input.png", x[i])
        rows = [dict(iteration=0, lambda_c="", prob_target=0.1, flipped="", nonfinite_step="", seconds="")]
        for k in range(cfs.shape[0]):
            save_png(root / stem / f"iteration_{k + 1}.png", cfs[k, i])
            rows.append(
                dict(
                    iteration=k + 1,
                    lambda_c=40.0,
                    prob_target=0.6,
                    flipped=bool(flipped[k, i]) if flipped is not None else True,
                    nonfinite_step=int(nonfinite_step[k, i]) if nonfinite_step is not None else -1,
                    seconds=1.0,
                )
            )
        (root / "records" / f"{stem}.json").write_text(
            json.dumps(dict(image=stem + ".png", target=target, iterations=rows))
        )


def test_metrics_command_on_results_folder(tmp_path, rng, capsys):
    x = rng.uniform(-1, 1, (3, 1, 16, 16)).astype(np.float32)
    cfs = np.clip(x[None] + 0.3 * rng.standard_normal((2,) + x.shape), -1, 1).astype(np.float32)
    write_results(tmp_path / "run", x, cfs)
    seg = Segmenter.random(classes=3, width=8, levels=2, groups=4)
    save_model(tmp_path / "f.safetensors", PlaneClassifier(seg, SonoNet.random(k=4, in_channels=4, num_classes=2)))
    save_model(
        tmp_path / "o.safetensors",
        ConceptOracle(SonoNet.random(k=4, num_classes=4, standardize=False), ["TH", "CSP", "FP", "sharp"]),
    )
    SonoNet.random(k=4).save(tmp_path / "sononet.safetensors")
    code = main(
        [
            "metrics",
            str(tmp_path / "run"),
            "--classifier",
            str(tmp_path / "f.safetensors"),
            "--oracle",
            str(tmp_path / "o.safetensors"),
            "--sononet",
            str(tmp_path / "sononet.safetensors"),
            "--json",
            str(tmp_path / "m.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "FID: skipped: no Inception weights" in out and "MQD: all 3 inputs" in out
    report = json.loads((tmp_path / "m.json").read_text())
    assert [it["iteration"] for it in report["iterations"]] == [1, 2]
    for it in report["iterations"]:
        assert set(it["metrics"]) == set(metrics.METRICS)
        for r in it["metrics"].values():
            assert ("value" in r and r["subset"]) or r["skipped"]
    # the same numbers from the library on the PNGs as saved (8-bit)
    data = metrics.load_results(tmp_path / "run")
    assert data["pixels"].shape == (3, 3, 1, 16, 16) and data["pixels"].dtype == np.uint8
    xs = metrics.classifier_input(data["pixels"][0])
    assert np.abs(xs - x).max() <= 1 / 255 + 1e-6
    from diffice.data.images import load_image
    from diffice.models.files import load_model

    assert np.abs(xs[0] - load_image(tmp_path / "run" / "img_00" / "input.png", (16, 16))).max() <= 1e-6
    m2 = metrics.evaluate(
        xs, metrics.classifier_input(data["pixels"][2]), 1, oracle=load_model(tmp_path / "o.safetensors")
    )
    assert report["iterations"][1]["metrics"]["MQD"]["value"] == pytest.approx(m2["MQD"]["value"], rel=1e-9)


def test_realism_uses_recorded_flips_without_classifier(tmp_path, rng):
    x = rng.uniform(-1, 1, (5, 1, 16, 16)).astype(np.float32)
    cfs = np.clip(x[None] + 0.5, -1, 1).astype(np.float32)
    flipped = np.array([[True, False, True, True, False]])
    write_results(tmp_path / "run", x, cfs, flipped=flipped)
    net = SonoNet.random(k=4)
    report = metrics.evaluate_results(tmp_path / "run", sononet=net)
    fsd = report["iterations"][0]["metrics"]["FSD"]
    assert fsd["n"] == 3 and "the 3 flipped ones (judged by the run's record)" in fsd["subset"]
    data = metrics.load_results(tmp_path / "run")
    xs, cf = (metrics.classifier_input(p) for p in data["pixels"])
    assert fsd["value"] == pytest.approx(metrics.fsd(xs, cf[flipped[0]], net), rel=1e-12)
    assert "no classifier" in report["iterations"][0]["metrics"]["FR"]["skipped"]


def test_nonfinite_counterfactuals_are_excluded_from_every_metric(tmp_path, rng):
    """A counterfactual whose sampler step went non-finite (zeroed by the sampler) is in no metric of its
    iteration; the report says how many (and which) were excluded; the inputs stay FSD's real set."""
    n = 6
    x = np.clip(rng.uniform(-1, 1, (n, 1, 16, 16)) - 0.3, -1, 1).astype(np.float32)
    cfs = np.clip(x[None] + np.array([0.6, 0.9])[:, None, None, None, None], -1, 1).astype(np.float32)
    nonfinite_step = np.full((2, n), -1)
    nonfinite_step[0, [1, 4]] = [3, 0]  # iteration 1: images 1 and 4 went non-finite; the sampler zeroed them
    cfs[0, [1, 4]] = 0.0
    write_results(tmp_path / "run", x, cfs, nonfinite_step=nonfinite_step)
    f, net, oracle = MeanClassifier(), SonoNet.random(k=4), MeanOracle()
    report = metrics.evaluate_results(tmp_path / "run", classifier=f, sononet=net, oracle=oracle, with_cout=False)
    first, second = report["iterations"]
    assert first["excluded_nonfinite"] == 2 and first["excluded_images"] == ["img_01.png", "img_04.png"]
    assert second["excluded_nonfinite"] == 0 and second["excluded_images"] == []
    data = metrics.load_results(tmp_path / "run")
    np.testing.assert_array_equal(data["nonfinite"], nonfinite_step >= 0)
    xs, cf1 = metrics.classifier_input(data["pixels"][0]), metrics.classifier_input(data["pixels"][1])
    keep = nonfinite_step[0] < 0
    m = first["metrics"]
    want = metrics.evaluate(xs[keep], cf1[keep], 1, classifier=f, oracle=oracle, with_cout=False)
    px, pc = f.p1(xs[keep]), f.p1(cf1[keep])
    sel = px < 0.5
    assert m["FR"]["n"] == sel.sum() and "2 excluded" in m["FR"]["subset"]
    for name in ("FR", "MAD", "BKL", "MQD", "QS_x", "QS_cf"):
        assert m[name]["value"] == pytest.approx(want[name]["value"], rel=1e-12), name
    assert m["BKL"]["value"] == pytest.approx(np.mean(1 - pc[sel]), rel=1e-6)
    flipped = f.p1(cf1) > 0.5
    assert m["FSD"]["n"] == int((flipped & keep).sum())
    assert m["FSD"]["value"] == pytest.approx(metrics.fsd(xs, cf1[flipped & keep], net), rel=1e-9)
    assert "2 excluded" in m["FSD"]["subset"] and "2 excluded" in m["SonoSim"]["subset"]
    assert "excluded" not in second["metrics"]["FR"]["subset"]
    text = metrics.format_report(report)
    assert "non-finite" in text and "[1] 2 (img_01.png, img_04.png), [2] 0" in text
    # evaluate's own exclude, and every counterfactual excluded
    direct = metrics.evaluate(xs, cf1, 1, classifier=f, with_cout=False, exclude=~keep)
    assert direct["FR"] == m["FR"]
    none_left = metrics.evaluate(xs, cf1, 1, classifier=f, oracle=oracle, exclude=np.ones(n, bool))
    assert all("every counterfactual is excluded" in none_left[k]["skipped"] for k in ("FR", "BKL", "MQD"))
    with pytest.raises(ValueError, match="exclude"):
        metrics.evaluate(xs, cf1, 1, classifier=f, exclude=np.ones(n - 1, bool))


def test_missing_results_are_errors(tmp_path, capsys):
    assert main(["metrics", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err


def test_inception_input_is_pytorch_fid_loading(tmp_path, rng):
    """PIL convert('RGB') -> ToTensor, for a grayscale PNG as diffice writes them and for an RGB one."""
    from PIL import Image

    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    for name in ("g.png", "c.png"):
        want = np.asarray(Image.open(tmp_path / name).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
        got = metrics.inception_input(metrics._read_png(tmp_path / name)[None])[0]
        assert np.array_equal(got, want)


def test_demo_results_use_the_demo_models(tmp_path, rng, monkeypatch, capsys):
    """A folder written by `diffice demo` (inputs/, summary.json) is judged by the demo classifier and oracle."""
    import diffice.explain.demo

    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32) - 0.5
    write_results(tmp_path / "demo", x, np.clip(x[None] + 1.0, -1, 1))
    (tmp_path / "demo" / "inputs").mkdir()
    (tmp_path / "demo" / "summary.json").write_text("{}")
    asked = []

    class Demo:
        classifier, oracle = MeanClassifier(), MeanOracle()

    def fake_load(folder=None, backend="cpu"):
        asked.append(folder)
        return Demo()

    monkeypatch.setattr(diffice.explain.demo, "load_demo_models", fake_load)
    assert main(["metrics", str(tmp_path / "demo"), "--demo-models", "somewhere", "--no-cout"]) == 0
    out = capsys.readouterr().out
    assert asked == ["somewhere"]
    assert "FR: inputs f classifies as not the target" in out and "MQD: all 3 inputs" in out
    assert "COUT: skipped: not requested" in out

    def missing(folder=None, backend="cpu"):
        raise FileNotFoundError("demo models missing in nowhere")

    monkeypatch.setattr(diffice.explain.demo, "load_demo_models", missing)
    assert main(["metrics", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    assert "demo models missing" in captured.err and "FR: skipped: no classifier given" in captured.out


def test_target_outside_the_classifier_is_an_error(rng):
    x = rng.uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="target classes"):
        metrics.evaluate(x, x, 2, classifier=MeanClassifier())
    with pytest.raises(ValueError, match="one shape"):
        metrics.evaluate(x, x[:1], 1)


def test_record_errors_name_the_record(tmp_path, rng):
    """A target the classifier does not have, and a corrupt or malformed records/<x>.json, name the record file."""
    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    write_results(tmp_path / "run", x, x[None].copy())
    rec = tmp_path / "run" / "records" / "img_01.json"
    record = json.loads(rec.read_text())
    rec.write_text(json.dumps(dict(record, target=7)))
    with pytest.raises(ValueError) as info:
        metrics.evaluate_results(tmp_path / "run", classifier=MeanClassifier())
    msg = str(info.value)
    assert f"{rec} (target 7)" in msg and "img_00" not in msg and "2 classes" in msg
    for text, says in (("", "the file is empty"), ("{", "Expecting property name"), ("\xff", "not UTF-8")):
        rec.write_bytes(text.encode("latin-1"))
        with pytest.raises(ValueError, match=rf"^{rec}: not valid JSON \(.*{says}"):
            metrics.evaluate_results(tmp_path / "run")
    for bad in ([], dict(record, iterations=5), dict(record, iterations=[]), dict(record, iterations=[1, 2])):
        rec.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=rf"^{rec}: not a diffice record"):
            metrics.load_results(tmp_path / "run")


def test_metrics_command_names_a_corrupt_record(tmp_path, rng, capsys):
    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    write_results(tmp_path / "run", x, x[None].copy())
    (tmp_path / "run" / "records" / "img_00.json").write_text("{")
    assert main(["metrics", str(tmp_path / "run")]) == 2
    assert "img_00.json: not valid JSON (Expecting property name" in capsys.readouterr().err


def test_explain_results_default_to_the_run_classifier(tmp_path, rng, capsys):
    """`diffice explain` writes run_settings.json; its classifier judges the run when --classifier is not given."""
    x = rng.uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32)
    write_results(tmp_path / "run", x, x[None].copy())
    seg = Segmenter.random(classes=3, width=8, levels=2, groups=4)
    save_model(tmp_path / "f.safetensors", PlaneClassifier(seg, SonoNet.random(k=4, in_channels=4, num_classes=2)))
    (tmp_path / "run" / "run_settings.json").write_text(
        json.dumps(
            {"models": {"classifier": str(tmp_path / "f.safetensors"), "classifier_kind": "plane", "target_class": 5}}
        )
    )
    assert main(["metrics", str(tmp_path / "run"), "--no-cout"]) == 0
    captured = capsys.readouterr()
    assert "f.safetensors (from" in captured.err
    assert "FR: skipped: no classifier" not in captured.out


# ---- saturated pixels (docs/artefacts.md) ----


def saturated_reference(images, threshold):
    """Pixel by pixel in float64: within threshold of -1 or +1, or beyond."""
    a = np.asarray(images, dtype=np.float64)
    flat = a.reshape(len(a), -1)
    return np.array([sum(1 for v in row if v <= -1.0 + threshold or v >= 1.0 - threshold) / len(row) for row in flat])


def new_saturated_reference(images, inputs, threshold, radius):
    """Pixel by pixel in float64: saturated in images, no saturated input pixel in the window (same channel)."""
    a = np.asarray(images, dtype=np.float64)
    b = np.asarray(inputs, dtype=np.float64)
    a4 = a.reshape((len(a), -1) + a.shape[-2:])
    b4 = b.reshape(a4.shape)
    n, c, h, w = a4.shape
    sat = lambda v: v <= -1.0 + threshold or v >= 1.0 - threshold  # noqa: E731
    out = np.zeros(n)
    for i in range(n):
        count = 0
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    if not sat(a4[i, ch, y, x]):
                        continue
                    window = b4[i, ch, max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
                    count += not any(sat(v) for v in window.ravel())
        out[i] = count / (c * h * w)
    return out


def test_saturated_pixel_rate_hand_made():
    img = np.zeros((3, 1, 4, 5), np.float32)
    img[0, 0, 0, 0] = -1.0  # one of 20
    img[0, 0, 1, 1] = 1.0 - 0.5 / 255  # within the default threshold
    img[0, 0, 2, 2] = 1.0 - 2.0 / 255  # not
    img[1] = -1.0  # all
    img[2, 0, 3, :] = 1.5  # beyond the range counts (a PNG clips it): 5 of 20
    got = metrics.saturated_pixel_rate(img)
    np.testing.assert_allclose(got, [2 / 20, 1.0, 5 / 20])
    np.testing.assert_allclose(got, saturated_reference(img, metrics.SATURATION_THRESHOLD))
    # (N, H, W) and a larger threshold
    np.testing.assert_allclose(metrics.saturated_pixel_rate(img[:, 0], threshold=0.01), [3 / 20, 1.0, 5 / 20])
    assert got.dtype == np.float64 and got.shape == (3,)


def test_new_saturated_pixel_rate_hand_made():
    x = np.zeros((2, 1, 6, 7), np.float32)
    x[:, 0, :, 0] = -1.0  # the input's own saturated column (a dark background edge)
    cf = x.copy()
    np.testing.assert_array_equal(metrics.new_saturated_pixel_rate(cf, x), [0.0, 0.0])
    cf[0, 0, 2, 1] = -1.0  # next to the input's saturated column: not new at radius 1, new at radius 0
    cf[0, 0, 3, 4] = 1.0  # new
    cf[1, 0, 0:2, 5:7] = 1.0  # a new 2x2 clump in a corner
    np.testing.assert_allclose(metrics.new_saturated_pixel_rate(cf, x), [1 / 42, 4 / 42])
    np.testing.assert_allclose(metrics.new_saturated_pixel_rate(cf, x, radius=0), [2 / 42, 4 / 42])
    # radius 4 reaches the column from everywhere but x = 5, 6
    np.testing.assert_allclose(metrics.new_saturated_pixel_rate(cf, x, radius=4), [0.0, 4 / 42])
    for radius in (0, 1, 2, 4):
        np.testing.assert_allclose(
            metrics.new_saturated_pixel_rate(cf, x, radius=radius),
            new_saturated_reference(cf, x, metrics.SATURATION_THRESHOLD, radius),
        )


def test_saturated_rates_random_against_reference():
    rng = np.random.default_rng(3)
    # odd sizes, 2 channels, values spread over and beyond [-1, 1] so every case occurs
    cf = np.clip(rng.normal(0, 0.8, size=(3, 2, 9, 11)), -1.2, 1.2).astype(np.float32)
    x = np.clip(rng.normal(0, 0.8, size=(3, 2, 9, 11)), -1.0, 1.0).astype(np.float32)
    for threshold in (0.0, 1 / 255, 0.05):
        np.testing.assert_allclose(
            metrics.saturated_pixel_rate(cf, threshold), saturated_reference(cf, threshold), rtol=1e-12
        )
        for radius in (0, 1, 3):
            np.testing.assert_allclose(
                metrics.new_saturated_pixel_rate(cf, x, threshold, radius),
                new_saturated_reference(cf, x, threshold, radius),
                rtol=1e-12,
            )


def test_saturated_rates_reject_bad_arguments():
    x = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="threshold"):
        metrics.saturated_pixel_rate(x, threshold=1.0)
    with pytest.raises(ValueError, match="N >= 1"):
        metrics.saturated_pixel_rate(np.zeros((0, 1, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.new_saturated_pixel_rate(x, x[:1])
    with pytest.raises(ValueError, match="radius"):
        metrics.new_saturated_pixel_rate(x, x, radius=-1)


def test_metrics_refuses_a_json_it_cannot_write_before_any_work(tmp_path, rng, monkeypatch, capsys):
    """`--json results/m.json` under a file, or naming a folder, failed after the whole report was computed
    (minutes with FID and COUT); now it is a one-line error before a model is loaded."""
    import diffice.evaluation.run_judges as run_judges

    x = rng.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    write_results(tmp_path / "run", x, np.clip(x[None] + 0.5, -1, 1))
    (tmp_path / "afile").write_text("")
    loaded = []
    monkeypatch.setattr(run_judges, "load_metrics_models", lambda *a, **k: loaded.append(1))
    for target, reason in (
        (tmp_path / "afile" / "m.json", f"cannot write a file there: {tmp_path / 'afile'} is a file, not a folder"),
        (tmp_path / "run", "cannot write a file there: it is a folder"),
    ):
        assert main(["metrics", str(tmp_path / "run"), "--json", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("diffice metrics: error: ") and reason in err[0], err
    assert not loaded
