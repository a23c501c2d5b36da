"""Evaluation metrics of counterfactual explanations (the paper's Tables 1, 2, S3; docs/method.md section 7).

Realism
  - **FID**: Fréchet distance between pool3 features of the FID Inception-v3
  (:class:`diffice.models.inception.InceptionV3`,
    pytorch-fid's network and preprocessing: PIL ``convert('RGB')``, [0, 1], bilinear resize to 299, 2x - 1) of
    the real images (all inputs) and of the flipped counterfactuals. Statistics: mean and ``np.cov`` (N - 1).
  - **FSD**: the same Fréchet distance on SonoNet-k features: the last conv block's output (N, 8k, h, w), global
    average pooled to (N, 8k) (the paper does not say which layer and pooling; this is diffice's choice).
  - **SonoSim**: the mean cosine similarity between those SonoNet features of each input and its counterfactual,
    over the flipped counterfactuals.
Validity (guiding classifier f), over the inputs f classifies as not the target (the paper: NSP inputs classified
as NSP, 330 of 423)
  - **FR**: fraction of counterfactuals f classifies as the target;
  - **MAD**: mean |p_target(x) - p_target(cf)|;
  - **BKL**: mean 1 - p_target(cf) (a bounded remapping of KL(onehot(target) || p(cf)));
  - **COUT**: counterfactual transition (ACE), per image AUC(1 - c) - AUC(c) of c = p of x's predicted class while
    the pixels that changed most are inserted from cf into x, in [-1, 1].
Oracle validity (an independent concept oracle, :class:`diffice.models.oracle.ConceptOracle`, quality score QS in [0,
1])
  - **QS(x)**, **QS(cf)**, **QD** = QS(cf) - QS(x) (mean over inputs with QS(x) < 0.5);
  - **MQD** = (1/N) sum_i 1[QS(x_i) < 0.5] (QS(cf_i) - QS(x_i)) over all N inputs.
Artefacts (docs/artefacts.md)
  - **saturated pixel rate**: per image, the fraction of pixels within 1/255 of -1 or +1 (stored as 0 or 255 in an
    8-bit PNG): :func:`saturated_pixel_rate`; :func:`new_saturated_pixel_rate` counts only those where the input has
    no saturated pixel within one pixel (the inputs' own black background and speckle excluded).

Counterfactuals whose sampler step went non-finite (``nonfinite_step >= 0``: the sampler zeroed the image and went
on) are no counterfactuals: they are excluded from every metric (``exclude`` of :func:`evaluate`; a results
folder's records say which), and the subsets and :func:`format_report` say how many were excluded. The inputs all
stay in FID's and FSD's real set.

Images: ``x`` and counterfactuals are float32 (N, 1, H, W) in [-1, 1] for the classifiers (diffice's convention);
Inception takes (N, 3, H, W) in [0, 1] (:func:`fid_images`). Every metric of :func:`evaluate` is a dict
``{"value": float, "subset": "...", "n": int}`` or ``{"skipped": "reason"}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..data.images import judged_images
from ..io import read_json
from ..models.probabilities import probabilities

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "frechet_distance",
    "feature_statistics",
    "fid",
    "fid_images",
    "fsd",
    "sononet_features",
    "sonosim",
    "cosine_similarity",
    "l1_distance",
    "l2_distance",
    "mqd_terms",
    "mean_interval",
    "class_probabilities",
    "flip_ratio",
    "flip_ratio_of",
    "mad",
    "bkl",
    "cout",
    "mqd",
    "saturated_pixel_rate",
    "new_saturated_pixel_rate",
    "evaluate",
    "evaluate_results",
    "load_results",
    "load_metrics_classifier",
    "load_metrics_oracle",
    "recorded_warnings",
    "run_settings_models",
    "check_results_folder",
    "images_given",
    "unfinished_note",
    "check_judges",
    "TargetRangeError",
    "classifier_input",
    "inception_input",
    "format_report",
    "METRICS",
]

METRICS = ("FID", "FSD", "SonoSim", "MQD", "QS_x", "QS_cf", "QD", "BKL", "MAD", "FR", "COUT")

# pytorch-fid fid_score.calculate_frechet_distance
FD_EPS = 1e-6  # added to both covariances' diagonals when the result is not finite
FD_IMAG_TOL = 1e-3  # a larger imaginary part of sqrtm's diagonal is an error
CI_LEVEL = 0.95  # the intervals of means (MQD's, the sweep tables'): percentile bootstrap over the images
CI_RESAMPLES = 10_000
CI_SEED = 0
QS_THRESHOLD = 0.5  # the paper's MQD: inputs the oracle judges low quality, QS(x) < 0.5
COUT_STEPS = 50  # ACE cout_metrics: step = max(1, H W // 50)
BATCH = 32  # images per network call
SATURATION_THRESHOLD = 1.0 / 255.0  # within one 8-bit level of -1 or +1: stored as 0 or 255 in a PNG


# ---- Fréchet distance ----


def _as_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(
            f"frechet_distance: mu{name} must be (d,) and sigma{name} (d, d), got {mu.shape} and {sigma.shape}"
        )
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"frechet_distance: mu{name} / sigma{name} contain non-finite values")
    if not np.allclose(sigma, sigma.T, rtol=1e-8, atol=1e-12 * max(1.0, np.abs(sigma).max())):
        raise ValueError(f"frechet_distance: sigma{name} is not symmetric")
    return mu, (sigma + sigma.T) / 2


def _round_off_floor(lam: np.ndarray) -> float:
    """Eigenvalues of a symmetric d x d matrix below d eps |lambda|_max are round-off around 0 (their square roots,
    about 1e-8 of the scale each, would otherwise add up over the null space of a singular covariance)."""
    return lam.size * np.finfo(np.float64).eps * float(np.abs(lam).max(initial=0.0))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    w = np.where(w > _round_off_floor(w), w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrtm(S1 S2) = sum_i sqrt(lambda_i(S1^1/2 S2 S1^1/2)) for symmetric PSD S1, S2 (S1 S2 is similar to the
    symmetric S1^1/2 S2 S1^1/2, so its eigenvalues are real and >= 0; round-off negatives are clamped to 0)."""
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    scale = max(float(np.abs(lam).max(initial=0.0)), 1e-300)
    # scipy's sqrtm gives an imaginary diagonal of about sqrt(-lambda) for a clearly negative eigenvalue, which
    # pytorch-fid rejects above 1e-3; round-off (relative 1e-9) is not that
    worst = float(lam.min(initial=0.0))
    if worst < 0 and np.sqrt(-worst) > FD_IMAG_TOL and -worst > 1e-9 * scale:
        raise ValueError(
            f"frechet_distance: the covariances are not positive semi-definite (sqrtm would have an "
            f"imaginary component {np.sqrt(-worst):.3g} > {FD_IMAG_TOL})"
        )
    return float(np.sqrt(np.where(lam > _round_off_floor(lam), lam, 0.0)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = FD_EPS
) -> float:
    """d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2), as pytorch-fid's calculate_frechet_distance.

    mu (d,), sigma (d, d) symmetric positive semi-definite (singular is fine: N < d samples). tr sqrtm(S1 S2) comes
    from symmetric eigendecompositions instead of scipy.linalg.sqrtm (same value; see _trace_sqrt_product).
    pytorch-fid's rules are kept: a non-finite result is recomputed with eps I added to both covariances;
    covariances that would give sqrtm an imaginary part above 1e-3 raise ValueError.
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "1")
    mu2, sigma2 = _as_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: the two sets have different dimensions {mu1.size} and {mu2.size}")
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(sigma1, sigma2)
    if not np.isfinite(tr_covmean):
        offset = np.eye(mu1.size) * eps
        tr_covmean = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, d), N >= 2 -> (mean (d,), covariance (d, d) normalised by N - 1), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"feature_statistics: features must be (N, d), got {f.shape}")
    if len(f) < 2:
        raise ValueError(f"feature_statistics: a covariance needs at least 2 images, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _fd_of_features(real: np.ndarray, fake: np.ndarray) -> float:
    """frechet_distance of the two sets' statistics. With fewer samples than dimensions (FID of a few hundred
    images: d = 2048) tr sqrtm(S1 S2) is the nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)), A and B the centred
    features (S1 S2 = A^T A B^T B / c has the nonzero eigenvalues of (A B^T)(A B^T)^T): exact, and far cheaper than
    two d x d eigendecompositions."""
    mu1, sigma1 = feature_statistics(real)
    mu2, sigma2 = feature_statistics(fake)
    n1, n2, d = len(real), len(fake), mu1.size
    if max(n1, n2) >= d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    a = np.asarray(real, dtype=np.float64) - mu1
    b = np.asarray(fake, dtype=np.float64) - mu2
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# ---- realism ----


def fid_images(images: np.ndarray) -> np.ndarray:
    """diffice images (N, 1 or 3, H, W) in [-1, 1] -> Inception's input (N, 3, H, W) in [0, 1] (grayscale
    replicated, as PIL's convert('RGB'))."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"fid_images: images must be (N, 1 or 3, H, W), got {x.shape}")
    x = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


def fid(real_images: np.ndarray, cf_images: np.ndarray, inception: Any, batch_size: int = 50) -> float:
    """FID between two image sets, each (N, 3, H, W) in [0, 1] (pytorch-fid's ToTensor range; see fid_images),
    N >= 2. inception: a diffice.models.inception.InceptionV3 (resize 299 for the standard FID)."""
    return _fd_of_features(inception.features(real_images, batch_size), inception.features(cf_images, batch_size))


def sononet_features(images: np.ndarray, sononet: Any) -> np.ndarray:
    """SonoNet-k's last conv block output (N, 8k, h, w), global average pooled -> (N, 8k) float64.
    images (N, 1, H, W) in [-1, 1] (SonoNet standardises each image itself)."""
    out = [
        np.asarray(
            sononet.forward(np.ascontiguousarray(images[i : i + BATCH], np.float32)).features, dtype=np.float64
        ).mean(axis=(2, 3))
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(out)


def fsd(real_images: np.ndarray, cf_images: np.ndarray, sononet: Any) -> float:
    """Fréchet SonoNet distance: the Fréchet distance of sononet_features of two sets (N >= 2 each)."""
    return _fd_of_features(sononet_features(real_images, sononet), sononet_features(cf_images, sononet))


def sonosim(images: np.ndarray, cf_images: np.ndarray, sononet: Any) -> np.ndarray:
    """Per pair cosine similarity (N,) in [-1, 1] of sononet_features(x_i) and sononet_features(cf_i)."""
    return cosine_similarity(sononet_features(images, sononet), sononet_features(cf_images, sononet))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row cosine similarity (N,) in [-1, 1] of two feature arrays (N, d) of one shape (SonoSim on given
    features); a row that is all zeros (no direction) gives 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cosine_similarity: a and b must be (N, d) of one shape, got {a.shape} and {b.shape}")
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return (a * b).sum(axis=1) / norms


# ---- distance to the input ----


def l1_distance(images: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Per image mean |image - input| (N,) float64; images, inputs (N, C, H, W) of one shape, in [-1, 1]."""
    d = _difference(images, inputs, "l1_distance")
    return np.abs(d).reshape(len(d), -1).mean(axis=1)


def l2_distance(images: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Per image root mean square of image - input (N,) float64; images, inputs (N, C, H, W), in [-1, 1]."""
    d = _difference(images, inputs, "l2_distance")
    return np.sqrt(np.square(d).reshape(len(d), -1).mean(axis=1))


def _difference(images: np.ndarray, inputs: np.ndarray, name: str) -> np.ndarray:
    if np.shape(images) != np.shape(inputs) or np.ndim(images) < 2:
        raise ValueError(
            f"{name}: images and inputs must be (N, ...) of one shape, got {np.shape(images)} and {np.shape(inputs)}"
        )
    return np.asarray(images, dtype=np.float64) - np.asarray(inputs, dtype=np.float64)


# ---- validity ----


def _logits(classifier: Any, x: np.ndarray) -> np.ndarray:
    if hasattr(classifier, "logits"):
        logits = np.asarray(classifier.logits(x), dtype=np.float64)
    else:
        out = classifier.forward(x)
        logits = np.asarray(out.logits if hasattr(out, "logits") else out, dtype=np.float64)
    if logits.ndim != 2 or len(logits) != len(x):
        raise ValueError(
            f"the classifier f ({type(classifier).__name__}) must give logits (N, classes) = ({len(x)}, C), got "
            f"shape {logits.shape}: not a classifier (a segmenter's or a diffusion model's output?)"
        )
    return logits


def class_probabilities(classifier: Any, x: np.ndarray) -> np.ndarray:
    """f's class probabilities (N, max(C, 2)) float64 (diffice.models.probabilities.probabilities of its logits: softmax
    for C >= 2, for one logit l the two classes' (1 - sigmoid(l), sigmoid(l))). x (N, 1, H, W) in [-1, 1]."""
    return np.concatenate(
        [
            probabilities(_logits(classifier, np.ascontiguousarray(x[i : i + BATCH], np.float32)), axis=1)
            for i in range(0, len(x), BATCH)
        ]
    )


def flip_ratio(p_cf: np.ndarray, target: np.ndarray) -> float:
    """Fraction of counterfactuals whose predicted class (argmax of p_cf (N, C)) is the target (N,)."""
    return flip_ratio_of(np.argmax(p_cf, axis=1) == np.asarray(target))


def flip_ratio_of(flipped: np.ndarray) -> float:
    """FR from the verdicts themselves: the fraction of counterfactuals (N,) bool that f classifies as the target
    (a run's or a sweep's recorded ``flipped``)."""
    return float(np.mean(np.asarray(flipped, dtype=bool)))


def mad(p_target_x: np.ndarray, p_target_cf: np.ndarray) -> float:
    """Mean absolute difference of the target probability (N,) between input and counterfactual."""
    return float(np.mean(np.abs(np.asarray(p_target_x) - np.asarray(p_target_cf))))


def bkl(p_target_cf: np.ndarray) -> float:
    """Mean of 1 - p_target(cf) = 1 - exp(-KL(onehot(target) || p(cf))), in [0, 1]."""
    return float(np.mean(1.0 - np.asarray(p_target_cf)))


def _pixel_change(x: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """sum_c |cf - x| per pixel (H W,) float64 of one image pair (C, H, W). On the 8-bit grid (every value within
    1e-3 of a step of u / 127.5 - 1, as saved PNGs read back) the change is counted in whole 8-bit steps, so that
    equal 8-bit changes are equal numbers; otherwise the exact difference of the given values."""
    ux = (x.astype(np.float64) + 1.0) * 127.5
    uc = (cf.astype(np.float64) + 1.0) * 127.5
    rx, rc = np.rint(ux), np.rint(uc)
    if np.abs(ux - rx).max() <= 1e-3 and np.abs(uc - rc).max() <= 1e-3:
        return np.abs(rc - rx).sum(axis=0).ravel() / 127.5
    return np.abs(cf.astype(np.float64) - x.astype(np.float64)).sum(axis=0).ravel()


def cout(
    classifier: Any, x: np.ndarray, cf: np.ndarray, target: int | np.ndarray | None = None, steps: int = COUT_STEPS
) -> np.ndarray:
    """Counterfactual transition (ACE's cout_metrics) per image, (N,) in [-1, 1] (up to ACE's last step, below).

    x, cf (N, C, H, W) in [-1, 1]. Per image: the mask sum_c |cf - x| (min-max normalised) orders the pixels,
    most changed first; with step = max(1, H W // steps), x_k = cf M_k + x (1 - M_k) where M_k holds the first
    min(k step, H W) pixels, k = 0 .. ceil(H W / step). c_k = p(x_k) of x's predicted class; c'_k = 1 - c_k for
    a binary classifier (ACE's binary form), p(x_k) of the target class (N,) for more classes (its multi-class
    form). AUC is the trapezoid rule (first/2 + middle + last/2) times step / (H W); COUT = AUC(c') - AUC(c).
    As in ACE's code a last, shorter step (H W not a multiple of step) counts as a full one, so |COUT| can
    exceed 1 by up to ceil(H W / step) step / (H W) - 1 (0.02 at 224 x 288).
    Pixels with equal change keep their row-major order (a stable sort; ACE's torch.argsort leaves ties open).
    The change is computed exactly (float64); an image pair on the 8-bit grid (u / 127.5 - 1: the saved PNGs) is
    compared in 8-bit steps, so pixels of equal 8-bit change are ties (float32 round-off would order them).
    """
    x = np.asarray(x, dtype=np.float32)
    cf = np.asarray(cf, dtype=np.float32)
    if x.shape != cf.shape or x.ndim != 4:
        raise ValueError(f"cout: x and cf must be (N, C, H, W) of one shape, got {x.shape} and {cf.shape}")
    n, _, h, w = x.shape
    hw = h * w
    targets = None if target is None else np.broadcast_to(np.asarray(target, dtype=np.int64), (n,))
    step = max(1, hw // steps)
    ks = np.minimum(np.arange(0, -(-hw // step) + 1) * step, hw)
    out = np.empty(n)
    for i in range(n):
        mask = _pixel_change(x[i], cf[i])
        span = mask.max() - mask.min()
        mask = (mask - mask.min()) / span if span > 0 else np.zeros_like(mask)
        order = np.argsort(-mask, kind="stable")
        rank = np.empty(hw, dtype=np.int64)
        rank[order] = np.arange(hw)
        inserted = (rank[None, :] < ks[:, None]).reshape(len(ks), 1, h, w).astype(np.float32)
        path = cf[i][None] * inserted + x[i][None] * (1.0 - inserted)
        p = class_probabilities(classifier, path)
        c = p[:, int(np.argmax(p[0]))]  # k = 0 is x itself: its predicted class
        if p.shape[1] > 2:
            if targets is None:
                raise ValueError("cout: a classifier with more than 2 classes needs the target class")
            c_prime = p[:, targets[i]]
        else:
            c_prime = 1.0 - c
        auc = lambda s: (s[0] / 2 + s[1:-1].sum() + s[-1] / 2) * step / hw  # noqa: E731
        out[i] = auc(c_prime) - auc(c)
    return out


def mqd_terms(qs_x: np.ndarray, qs_cf: np.ndarray, threshold: float = QS_THRESHOLD) -> np.ndarray:
    """Per input 1[QS(x_i) < threshold] (QS(cf_i) - QS(x_i)) (N,) float64: MQD's terms (its mean is :func:`mqd`)."""
    qs_x, qs_cf = np.asarray(qs_x, dtype=np.float64), np.asarray(qs_cf, dtype=np.float64)
    return (qs_x < threshold) * (qs_cf - qs_x)


def mqd(qs_x: np.ndarray, qs_cf: np.ndarray, threshold: float = QS_THRESHOLD) -> float:
    """(1/N) sum_i 1[QS(x_i) < threshold] (QS(cf_i) - QS(x_i)) over all N inputs."""
    return float(np.mean(mqd_terms(qs_x, qs_cf, threshold)))


def mean_interval(
    values: np.ndarray, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES, seed: int = CI_SEED
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of values (N,), N >= 1, at `level`: the means of `resamples`
    resamples of the N values with replacement, their (1 - level) / 2 and (1 + level) / 2 quantiles. Seeded: the
    same values give the same interval (a resumed run reports what it reported)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"mean_interval: values must be (N,) with N >= 1, got shape {v.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"mean_interval: level must be in (0, 1), got {level!r}")
    if resamples < 1:
        raise ValueError(f"mean_interval: resamples must be >= 1, got {resamples!r}")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))
    low, high = np.quantile(v[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ---- saturated pixels (artefacts: docs/artefacts.md) ----


def _saturated(images: np.ndarray, threshold: float, name: str) -> np.ndarray:
    """Boolean map of the pixels within `threshold` of -1 or +1 (or beyond), images (N, ...) with N >= 1."""
    a = np.asarray(images)
    if a.ndim < 2 or len(a) == 0:
        raise ValueError(f"{name} must be (N, ...) with N >= 1 images, got shape {a.shape}")
    if not (0.0 <= threshold < 1.0):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    return (a <= -1.0 + threshold) | (a >= 1.0 - threshold)


def saturated_pixel_rate(images: np.ndarray, threshold: float = SATURATION_THRESHOLD) -> np.ndarray:
    """Per image, the fraction of pixels pinned at an end of the range: within `threshold` of -1 or +1, or beyond.

    images: (N, C, H, W) or (N, H, W) in [-1, 1] (values outside count as saturated: a PNG clips them).
    threshold: in [0, 1); the default 1/255 counts the pixels an 8-bit PNG stores as 0 or 255 (diffice's
    :func:`diffice.data.images.to_uint8`, up to its round-half-to-even ties). Returns (N,) float64 in [0, 1].

    Inputs can be legitimately saturated (the phantoms' black outside the ultrasound fan, 12-22% of the pixels):
    compare a counterfactual with its input by :func:`new_saturated_pixel_rate`.
    """
    sat = _saturated(images, threshold, "images")
    return sat.reshape(len(sat), -1).mean(axis=1, dtype=np.float64)


def new_saturated_pixel_rate(
    images: np.ndarray, inputs: np.ndarray, threshold: float = SATURATION_THRESHOLD, radius: int = 1
) -> np.ndarray:
    """Per image, the fraction of pixels saturated in `images` (:func:`saturated_pixel_rate`'s rule) where no pixel
    of the paired input within `radius` (a (2 radius + 1)^2 window, same channel) is saturated: saturation that the
    input does not have (the salt-and-pepper blotches of docs/artefacts.md), not the input's own dark background or
    speckle moved by a pixel.

    images, inputs: the same shape, (N, C, H, W) or (N, H, W), in [-1, 1]; radius >= 0. Returns (N,) float64 in
    [0, 1]; 0 for an image identical to its input.
    """
    if np.shape(images) != np.shape(inputs):
        raise ValueError(f"images and inputs must have the same shape, got {np.shape(images)} and {np.shape(inputs)}")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    sat = _saturated(images, threshold, "images")
    near = _saturated(inputs, threshold, "inputs")
    h, w = near.shape[-2:]
    padded = np.pad(near, [(0, 0)] * (near.ndim - 2) + [(radius, radius)] * 2)
    dilated = np.zeros_like(near)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            dilated |= padded[..., dy : dy + h, dx : dx + w]
    new = sat & ~dilated
    return new.reshape(len(new), -1).mean(axis=1, dtype=np.float64)


# ---- everything for one set of counterfactuals ----


def _value(value: float, subset: str, n: int) -> dict[str, Any]:
    return {"value": float(value), "subset": subset, "n": int(n)}


def _skip(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


class TargetRangeError(ValueError):
    """The target classes given to :func:`evaluate` are not all classes of the classifier (``targets``: the
    distinct targets, ``classes``: the classifier's class count); :func:`evaluate_results` names the records."""

    def __init__(self, targets: list[int], classes: int) -> None:
        self.targets, self.classes = targets, classes
        super().__init__(
            f"evaluate: target classes {targets} are not all among the classifier's {classes} classes "
            f"(0..{classes - 1})"
        )


def _is_oracle(model: Any) -> bool:
    return callable(getattr(model, "quality_score", None))


def check_judges(classifier: Any, oracle: Any) -> None:
    """ValueError when the guiding classifier f is a concept oracle (its concept heads would be taken for classes:
    wrong numbers, not an error) or the oracle is not one (a model without quality_score)."""
    if classifier is not None and _is_oracle(classifier):
        raise ValueError(
            f"the classifier f is a concept oracle ({type(classifier).__name__}: one logit per concept, not the "
            f"classes the run was guided by); give the classifier that guided the run (a PlaneClassifier or SonoNet "
            f"file) as --classifier and the oracle as --oracle"
        )
    if oracle is not None and not _is_oracle(oracle):
        raise ValueError(
            f"the oracle is a {type(oracle).__name__}, not a concept oracle (a ConceptOracle with quality_score, "
            f"from diffice train oracle); give an oracle file as --oracle"
        )


def evaluate(
    x: np.ndarray,
    cfs: np.ndarray,
    target: int | np.ndarray,
    classifier: Any = None,
    oracle: Any = None,
    inception: Any = None,
    sononet: Any = None,
    flipped: np.ndarray | None = None,
    fid_x: np.ndarray | None = None,
    fid_cfs: np.ndarray | None = None,
    with_cout: bool = True,
    flipped_by: str = "f",
    exclude: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Every metric for inputs x (N, 1, H, W) and their counterfactuals cfs (N, 1, H, W), both in [-1, 1].

    target: the class the counterfactuals move towards (int or (N,)). flipped (N,) bool: which counterfactuals
    are valid (f classifies them as the target); computed with the classifier when not given. fid_x / fid_cfs:
    Inception inputs (N, 3, H, W) in [0, 1] (default: fid_images of x / cfs). A metric whose network is None, or
    whose subset is too small, is {"skipped": reason}. flipped_by: who judged `flipped`, for the subset texts.
    exclude (N,) bool: counterfactuals that are left out of every metric (those whose sampler step went
    non-finite); their inputs stay in FID's and FSD's real set. A non-finite value in an input, or in a
    counterfactual that is not excluded, is a ValueError naming the images.
    """
    x = judged_images(x, "evaluate: x")
    cfs = judged_images(cfs, "evaluate: cfs")
    if x.shape != cfs.shape or x.ndim != 4 or len(x) == 0:
        raise ValueError(
            f"evaluate: x and cfs must be (N, C, H, W) of one shape with N >= 1, got {x.shape} and {cfs.shape}"
        )
    check_judges(classifier, oracle)
    n_all = len(x)
    targets: np.ndarray = np.broadcast_to(np.asarray(target, dtype=np.int64), (n_all,))
    if exclude is None:
        exclude = np.zeros(n_all, dtype=bool)
    exclude = np.asarray(exclude)
    if exclude.shape != (n_all,) or exclude.dtype != bool:
        raise ValueError(f"evaluate: exclude must be ({n_all},) bool, got {exclude.dtype} {exclude.shape}")
    ne = int(exclude.sum())
    note = f"; {ne} excluded: their sampler step went non-finite" if ne else ""
    for what, images, check in (("inputs", x, np.ones(n_all, dtype=bool)), ("counterfactuals", cfs, ~exclude)):
        bad = np.flatnonzero(check & ~np.isfinite(images.reshape(n_all, -1)).all(axis=1))
        if len(bad):
            raise ValueError(
                f"evaluate: {what} {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''} are not finite "
                f"(NaN or inf: every metric of them would be NaN or wrong); "
                + (
                    "leave such counterfactuals out with exclude= (a run's records: nonfinite_step >= 0)"
                    if what == "counterfactuals"
                    else "the inputs must be finite images in [-1, 1]"
                )
            )
    real_x, real_fid = x, fid_x  # the real set: every input
    keep = ~exclude
    x, cfs = x[keep], cfs[keep]
    targets = targets[keep]  # from here on: (N,) int64
    if fid_cfs is not None:
        fid_cfs = np.asarray(fid_cfs)[keep]
    if flipped is not None:
        flipped = np.asarray(flipped, dtype=bool)[keep]
    n = len(x)
    m: dict[str, dict[str, Any]] = {}
    no_f = "no classifier given (--classifier)"

    if classifier is not None and n == 0:
        for name in ("FR", "MAD", "BKL", "COUT"):
            m[name] = _skip(f"every counterfactual is excluded (0 of {n_all}{note})")
    elif classifier is not None:
        p_x, p_cf = class_probabilities(classifier, x), class_probabilities(classifier, cfs)
        if targets.min() < 0 or targets.max() >= p_x.shape[1]:
            raise TargetRangeError(sorted(set(targets.tolist())), p_x.shape[1])
        rows = np.arange(n)
        pt_x, pt_cf = p_x[rows, targets], p_cf[rows, targets]
        if flipped is None:
            flipped = np.argmax(p_cf, axis=1) == targets
        sel = np.argmax(p_x, axis=1) != targets  # the inputs f classifies as not the target
        k = int(sel.sum())
        what = f"inputs f classifies as not the target ({k} of {n}{note})"
        if k == 0:
            for name in ("FR", "MAD", "BKL", "COUT"):
                m[name] = _skip(f"no input is classified as not the target (0 of {n}{note})")
        else:
            m["FR"] = _value(flip_ratio(p_cf[sel], targets[sel]), what, k)
            m["MAD"] = _value(mad(pt_x[sel], pt_cf[sel]), what, k)
            m["BKL"] = _value(bkl(pt_cf[sel]), what, k)
            m["COUT"] = (
                _value(float(np.mean(cout(classifier, x[sel], cfs[sel], targets[sel]))), what, k)
                if with_cout
                else _skip("not requested")
            )
    else:
        for name in ("FR", "MAD", "BKL", "COUT"):
            m[name] = _skip(no_f)

    flipped_known = flipped is not None
    flipped = np.asarray(flipped, dtype=bool) if flipped_known else np.zeros(n, dtype=bool)
    nf = int(flipped.sum())
    fake_what = f"real: all {n_all} inputs; counterfactuals: the {nf} flipped ones (judged by {flipped_by}){note}"
    too_few = (
        f"needs at least 2 inputs and 2 flipped counterfactuals (have {n_all} and {nf}{note})"
        if flipped_known
        else no_f + " to tell which counterfactuals flipped"
    )
    enough = flipped_known and n_all >= 2 and nf >= 2

    if inception is None:
        m["FID"] = _skip("no Inception weights given (--inception pt_inception-2015-12-05-6726825d.pth)")
    elif not enough:
        m["FID"] = _skip(too_few)
    else:
        fx = fid_images(real_x) if real_fid is None else real_fid
        fc = fid_images(cfs) if fid_cfs is None else fid_cfs
        m["FID"] = _value(fid(fx, fc[flipped], inception), fake_what, nf)

    if sononet is None:
        m["FSD"] = _skip("no SonoNet weights given (--sononet)")
        m["SonoSim"] = _skip("no SonoNet weights given (--sononet)")
    else:
        m["FSD"] = _value(fsd(real_x, cfs[flipped], sononet), fake_what, nf) if enough else _skip(too_few)
        if flipped_known and nf >= 1:
            m["SonoSim"] = _value(
                float(np.mean(sonosim(x[flipped], cfs[flipped], sononet))),
                f"pairs (input, flipped counterfactual) ({nf} of {n}; judged by {flipped_by}{note})",
                nf,
            )
        else:
            m["SonoSim"] = _skip(too_few if not flipped_known else f"no flipped counterfactual (0 of {n}{note})")

    if oracle is None:
        for name in ("MQD", "QS_x", "QS_cf", "QD"):
            m[name] = _skip("no oracle given (--oracle)")
    elif n == 0:
        for name in ("MQD", "QS_x", "QS_cf", "QD"):
            m[name] = _skip(f"every counterfactual is excluded (0 of {n_all}{note})")
    else:
        qs_x = np.concatenate([oracle.quality_score(x[i : i + BATCH]) for i in range(0, n, BATCH)])
        qs_cf = np.concatenate([oracle.quality_score(cfs[i : i + BATCH]) for i in range(0, n, BATCH)])
        low = qs_x < QS_THRESHOLD
        m["MQD"] = _value(mqd(qs_x, qs_cf), f"all {n} inputs; terms where QS(x) < 0.5 ({int(low.sum())}){note}", n)
        m["QS_x"] = _value(qs_x.mean(), f"all {n} inputs{note}", n)
        m["QS_cf"] = _value(qs_cf.mean(), f"all {n} counterfactuals{note}", n)
        m["QD"] = (
            _value(
                float(np.mean(qs_cf[low] - qs_x[low])),
                f"inputs with QS(x) < 0.5 ({int(low.sum())} of {n}{note})",
                int(low.sum()),
            )
            if low.any()
            else _skip(f"no input has QS(x) < 0.5 (0 of {n}{note})")
        )
    return {name: m[name] for name in METRICS}


# ---- results folders (diffice explain / diffice demo) ----


def _read_png(path: Path) -> np.ndarray:
    """An 8-bit image as pytorch-fid reads it: (1, H, W) uint8 for grayscale ('L'; PIL's convert('RGB') would
    only replicate it), else (3, H, W) uint8 of convert('RGB')."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            a = np.asarray(img if img.mode == "L" else img.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the image ({exc})") from None
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def classifier_input(images_u8: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, 1, H, W) float32 in [-1, 1] (RGB averaged), as diffice.data.images.load_image."""
    a = images_u8.astype(np.float32)
    if a.shape[1] != 1:
        a = a[:, :3].mean(axis=1, keepdims=True)
    return a / 127.5 - 1.0


def inception_input(images_u8: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, 3, H, W) float32 in [0, 1]: pytorch-fid's ToTensor of convert('RGB')."""
    a = images_u8.astype(np.float32) / 255.0
    return np.repeat(a, 3, axis=1) if a.shape[1] == 1 else a


def went_nonfinite(row: dict[str, Any]) -> bool:
    """Whether an iteration row of a run's record (records/<image>.json: "iterations"[k], k >= 1) says the
    sampler's step went non-finite (nonfinite_step >= 0: the counterfactual was zeroed). ValueError / TypeError on
    a value that is not an integer."""
    return row.get("nonfinite_step") not in (None, "") and int(row["nonfinite_step"]) >= 0


def check_results_folder(results_dir: PathLike) -> None:
    """FileNotFoundError / NotADirectoryError when results_dir is missing or not a folder (the message says which)."""
    root = Path(results_dir)
    if not root.exists():
        raise FileNotFoundError(f"{root}: not found (give the --out folder of 'diffice explain' or 'diffice demo')")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder (give the --out folder of 'diffice explain' or 'diffice demo')")


def images_given(results_dir: PathLike) -> int | None:
    """How many images the run of results_dir was given (its run_settings.json "images_given"); None when it
    does not say (a folder of an older diffice)."""
    settings = Path(results_dir) / "run_settings.json"
    data = read_json(settings) if settings.is_file() else None
    given = data.get("images_given") if isinstance(data, dict) else None
    return given if isinstance(given, int) and not isinstance(given, bool) else None


def unfinished_note(explained: int, given: int | None) -> str:
    """' (not every image: 2 of 12 explained; ...)' when the run was given more images than it explained (it was
    stopped, or some images failed), else ''."""
    if not given or given <= explained:
        return ""
    return (
        f" (not every image: {explained} of {given} explained; a stopped run resumes with the same command, "
        f"failures are listed in errors.csv)"
    )


def load_results(results_dir: PathLike) -> dict[str, Any]:
    """Reads a results folder: records/<stem>.json, <stem>/input.png and <stem>/iteration_<k>.png.

    Returns dict(images [names], records [their records/*.json paths], target (N,) int64, pixels (L + 1, N, C, H,
    W) uint8 -- index 0 the inputs, k the counterfactuals of iteration k, C = 1 for grayscale PNGs --,
    recorded_flipped (L, N) bool: the run's verdict, nonfinite (L, N) bool: the record's nonfinite_step >= 0, the
    sampler zeroed that counterfactual).
    """
    root = Path(results_dir)
    check_results_folder(root)
    record_paths = sorted((root / "records").glob("*.json"))
    if not record_paths:
        raise FileNotFoundError(
            f"{root}: no records/*.json (not a results folder of 'diffice explain' or "
            f"'diffice demo', or nothing has finished yet)"
        )
    names, targets, pixels, flipped, nonfinite = [], [], [], [], []
    num_iterations = None
    for rp in record_paths:
        record = read_json(rp)
        try:
            rows = record["iterations"]
            target = int(record["target"])
            stem = Path(record["image"]).stem
            if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"'iterations' must be a non-empty list of objects, got {_brief(rows)}")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{rp}: not a diffice record ({type(exc).__name__}: {exc})") from None
        L = len(rows) - 1
        if num_iterations is None:
            num_iterations = L
        elif L != num_iterations:
            raise ValueError(f"{rp}: {L} iterations, but other records have {num_iterations} (mixed runs)")
        paths = [root / stem / "input.png"] + [root / stem / f"iteration_{k}.png" for k in range(1, L + 1)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (the record {rp.name} says the image is finished)")
        images = [_read_png(p) for p in paths]
        if len({a.shape for a in images}) != 1:
            raise ValueError(f"{root / stem}: the input and its counterfactuals differ in size or channels")
        names.append(record["image"])
        targets.append(target)
        pixels.append(np.stack(images))
        flipped.append([r.get("flipped") is True or r.get("flipped") in ("True", "true", 1) for r in rows[1:]])
        try:
            nonfinite.append([went_nonfinite(r) for r in rows[1:]])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{rp}: not a diffice record (nonfinite_step: {exc})") from None
    shapes = {a.shape[1:] for a in pixels}
    if len(shapes) != 1:
        raise ValueError(f"{root}: the images differ in size or channels: {sorted(shapes)}")
    if not num_iterations:
        raise ValueError(f"{root}: the records hold no counterfactual iterations")
    return dict(
        images=names,
        records=record_paths,
        target=np.array(targets, dtype=np.int64),
        pixels=np.stack(pixels, axis=1),
        recorded_flipped=np.array(flipped, dtype=bool).reshape(len(names), num_iterations).T,
        nonfinite=np.array(nonfinite, dtype=bool).reshape(len(names), num_iterations).T,
    )


def _brief(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def run_settings_models(settings: Path) -> dict[str, Any]:
    """The ``models`` section of a run's run_settings.json ({} when it has none); ValueError naming the file."""
    data = read_json(settings)
    m = data.get("models", {}) if isinstance(data, dict) else None
    if not isinstance(m, dict):
        raise ValueError(f"{settings}: not a diffice run_settings.json (expected an object with a 'models' object)")
    return m


def load_metrics_classifier(path: PathLike, run_settings: PathLike | None = None, backend: str = "cpu") -> Any:
    """The guiding classifier f for the metrics from a model file (``diffice metrics --classifier``): a
    PlaneClassifier, or a SonoNet (a diffice file or the authors' .npz); a multi-class SonoNet is seen as "target
    class vs the rest" with the run's ``target_class`` (as the run saw it) when the run's `run_settings`
    (run_settings.json) says classifier_kind = "sononet", and is a ValueError otherwise (the records' targets are
    classes of the run's binary f). Any other model (a concept oracle, a UNet, a segmenter) is a ValueError naming
    the file, what it holds and what is expected."""
    from ..models.description import CLASSIFIER_KINDS
    from ..models.files import load_model, read_model_file
    from ..models.network import config_int
    from ..models.sononet import TargetClassView, looks_like_authors_npz

    what = "diffice metrics --classifier (the classifier f that guided the run)"
    try:
        model = load_model(path, backend, expect=tuple(CLASSIFIER_KINDS.values()), what=what)
    except ValueError as exc:
        # the SonoNet authors' .npz (no diffice description), as explain --classifier-kind sononet takes it
        try:
            authors = looks_like_authors_npz(read_model_file(path)[0])
        except (ValueError, OSError):
            authors = False
        if not authors:
            raise exc from None
        model = load_model(path, backend, expect=CLASSIFIER_KINDS["sononet"], what=what)
    classes = getattr(model, "num_classes", None)
    if type(model).__name__ == "SonoNet" and classes is not None and classes > 2:
        settings = Path(run_settings) if run_settings is not None else None
        m = run_settings_models(settings) if settings is not None and settings.is_file() else {}
        if m.get("classifier_kind") != "sononet":
            raise ValueError(
                f"{os.fspath(path)}: a SonoNet with {classes} classes, but the records' targets are classes of the "
                f"binary classifier f that guided the run (a SonoNet run records classifier_kind = 'sononet' and its "
                f"target_class in run_settings.json, {'not found' if settings is None else settings}); give the run's "
                f"classifier"
            )
        return TargetClassView(model, target=config_int("models.target_class", m.get("target_class", 5)))
    return model


def load_metrics_oracle(path: PathLike, backend: str = "cpu") -> Any:
    """The concept oracle for the metrics from a model file (``diffice metrics --oracle``); any other model is a
    ValueError naming the file, what it holds and what is expected."""
    from ..models.files import load_model

    return load_model(path, backend, expect="ConceptOracle", what="diffice metrics --oracle (a concept oracle)")


def recorded_warnings(results_dir: PathLike) -> list[dict[str, Any]]:
    """The warnings a run recorded in its results folder (warnings.json; [] when there is none); an unreadable
    file is a ValueError naming it."""
    path = Path(results_dir) / "warnings.json"
    if not path.is_file():
        return []
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(w, dict) for w in data):
        raise ValueError(f"{path}: not a diffice warnings.json (expected a list of objects)")
    return data


class _FeatureMemo:
    """Inception features of the last image array asked for: the inputs' features serve every iteration."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.key: np.ndarray | None = None
        self.value: np.ndarray | None = None

    def features(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
        if images is not self.key:
            self.key, self.value = images, self.net.features(images, batch_size)
        assert self.value is not None
        return self.value


def evaluate_results(
    results_dir: PathLike,
    classifier: Any = None,
    oracle: Any = None,
    inception: Any = None,
    sononet: Any = None,
    with_cout: bool = True,
) -> dict[str, Any]:
    """Every metric for every iteration of a results folder (see load_results), from its saved 8-bit PNGs. Which
    counterfactuals flipped (for FID, FSD, SonoSim) is judged by the classifier on those PNGs; without a
    classifier the run's recorded verdict is used (and the subsets say so). Counterfactuals whose sampler step
    went non-finite (the records' nonfinite_step) are excluded from every metric of their iteration.

    Returns dict(results_dir, images, iterations=[{"iteration": k, "excluded_nonfinite": count,
    "excluded_images": [names], "metrics": {name: result}}]).
    """
    data = load_results(results_dir)
    pixels = data["pixels"]
    x = classifier_input(pixels[0])
    x01 = inception_input(pixels[0]) if inception is not None else None
    memo = _FeatureMemo(inception) if inception is not None else None
    out = []
    for k in range(1, pixels.shape[0]):
        cf = classifier_input(pixels[k])
        cf01 = inception_input(pixels[k]) if inception is not None else None
        flipped = None if classifier is not None else data["recorded_flipped"][k - 1]
        excluded = data["nonfinite"][k - 1]
        try:
            metrics = evaluate(
                x,
                cf,
                data["target"],
                classifier,
                oracle,
                memo,
                sononet,
                flipped=flipped,
                fid_x=x01,
                fid_cfs=cf01,
                with_cout=with_cout,
                flipped_by="f" if classifier is not None else "the run's record",
                exclude=excluded,
            )
        except TargetRangeError as exc:
            bad = [
                f"{rp} (target {t})"
                for rp, t in zip(data["records"], data["target"].tolist())
                if not 0 <= t < exc.classes
            ]
            raise ValueError(
                f"{'; '.join(bad)}: the target class is not among the classifier's {exc.classes} classes "
                f"(0..{exc.classes - 1}); the records and the classifier do not belong together"
            ) from None
        out.append(
            {
                "iteration": k,
                "excluded_nonfinite": int(excluded.sum()),
                "excluded_images": [name for name, e in zip(data["images"], excluded) if e],
                "metrics": metrics,
            }
        )
    report = {"results_dir": str(results_dir), "images": len(data["images"]), "iterations": out}
    given = images_given(results_dir)
    if given is not None:
        report["images_given"] = given
    return report


def format_report(report: dict[str, Any]) -> str:
    """A per-iteration table of the values, the counterfactuals excluded (non-finite), then each metric's subset
    (or why it was skipped)."""
    note = unfinished_note(report["images"], report.get("images_given"))
    lines = [f"metrics of {report['results_dir']} ({report['images']} images){note}"]
    its = report["iterations"]
    shown = [m for m in METRICS if any("value" in it["metrics"][m] for it in its)]
    header = f"{'iteration':>9}" + "".join(f"  {m:>8}" for m in shown)
    lines += [header]
    for it in its:
        lines.append(
            f"{it['iteration']:>9}"
            + "".join(
                f"  {it['metrics'][m]['value']:8.4f}" if "value" in it["metrics"][m] else f"  {'-':>8}" for m in shown
            )
        )
    excluded = [
        f"[{it['iteration']}] {it.get('excluded_nonfinite', 0)}"
        + (f" ({', '.join(it['excluded_images'])})" if it.get("excluded_images") else "")
        for it in its
    ]
    lines.append(
        f"excluded from every metric (the sampler's step went non-finite), per iteration: {', '.join(excluded)}"
    )
    lines.append("subsets (iteration: subset):")
    for m in METRICS:
        subsets = [(it["iteration"], it["metrics"][m]) for it in its]
        texts = sorted({r.get("subset") or "skipped: " + r["skipped"] for _, r in subsets})
        if len(texts) == 1:
            lines.append(f"  {m:>7}: {texts[0]}")
        else:
            for k, r in subsets:
                lines.append(f"  {m:>7} [{k}]: {r.get('subset') or 'skipped: ' + r['skipped']}")
    return "\n".join(lines)
