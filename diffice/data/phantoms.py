"""Seeded procedural phantoms of the fetal head in the trans-thalamic (TT) plane, with plane-quality labels.

No real ultrasound can ship with diffice, so the demo models (DDPM, segmenter, standard-plane classifier, oracle)
are trained on these phantoms. Each phantom is a B-mode-like image of a fetal head cross-section, rendered the way
a scanner forms one: an echo-level map (in dB) is built on the scan lines of a convex probe, acoustic shadowing
is accumulated along each line, depth attenuation, time-gain variation and correlated speckle are added, the lines
are log-compressed, scan-converted into the fan-shaped field of view (black outside) and optionally blurred.
Only numpy is used; everything is vectorised.

Anatomy (head-local coordinates: ``s`` along the midline, +1 = frontal bone, -1 = occiput; ``t`` across it,
+1 = the parietal bone far from the probe; the inner skull surface is s^2 + t^2 = 1):

- skull: an elliptical bone ring, brightest where the beam meets it head-on, thicker on the side near the probe,
  faint where the beam grazes it, casting an acoustic shadow behind it; a thin scalp layer outside it;
- amniotic fluid (anechoic) around the head, maternal tissue beyond it, abdominal-wall echoes near the probe;
- brain parenchyma (hypoechoic, textured), the midline echo (falx), the choroid plexus in the far atrium and a few
  short bright sulcal echoes;
- thalami (``TH``): paired hypoechoic ovals either side of the midline, with the third-ventricle echo between them;
- cavum septi pellucidi (``CSP``): an anechoic rounded box on the midline, anterior to the thalami, with bright walls;
- posterior fossa (``FP``): the cerebellum (two hemispheres joined by the bright vermis: the dumbbell) and the
  anechoic cisterna magna behind it; it appears only when the plane is tilted towards the trans-cerebellar plane.

Geometry is in units of ``L = min(H, W / 1.25)`` pixels (the height for the default 4:5 images); depth 0 is the
image top, the probe (fan apex) sits above it on the vertical centre line. Sampled parameters (uniform unless
noted; every one can be fixed with a keyword argument of the same name):

====================  ==================================  ====================================================
parameter             range                               meaning
====================  ==================================  ====================================================
head_length           [0.30, 0.42]                        semi-axis along the midline (occipito-frontal), L
aspect                [0.74, 0.90]                        across / along semi-axis ratio (cephalic index)
head_center           x [-0.08, 0.08],                    centre of the head, L (x from the vertical centre
                      depth [0.47, 0.57] * H / L          line, depth from the image top)
rotation_deg          [-30, 30]                           angle of the midline from horizontal
anterior              -1 or +1 (p = 1/2)                  the frontal bone points left (-1) or right (+1)
fan_half_angle_deg    [36, 46]                            half opening angle of the sector
fan_apex              [0.15, 0.45]                        height of the virtual apex above the image top, L
fan_top               [0, 0.06]                           first sample below the apex (r0 - apex), L
skull_thickness       [0.022, 0.032]                      bone thickness, L (x1.6 where it faces the probe)
fluid_margin          [0.04, 0.30]                        width of the amniotic fluid around the head / b
brain_db              [-35, -30]                          parenchyma echo level, dB below normal-incidence bone
thalami_contrast_db   [-5, -1]                            thalami relative to the parenchyma, dB (inside a
                                                          +7 dB rim of deep grey matter, so they read darker)
thalami_size          [0.18, 0.24] x [0.13, 0.18]         thalamus semi-axes (s, t)
thalami_center        s [-0.10, 0.02],                    thalamus centres (the pair mirrored about t = 0)
                      |t| = size_t + [0.01, 0.04]
csp_center            s [0.28, 0.38]                      CSP centre on the midline
csp_size              [0.08, 0.12] x [0.06, 0.09]         CSP half length (s) and half width (t)
csp_db                [-50, -40]                          CSP content echo level (anechoic), dB
brightness            [0.13, 0.28]                        display level in [0, 1] of the mean parenchyma
                                                          echo (the sonographer's gain)
dynamic_range_db      [38, 52]                            log-compression range (contrast)
depth_slope_db        [-12, 0]                            net depth attenuation after TGC, dB per L
tgc_db                5 knots, N(0, 2.5) each             time-gain variation along depth, dB
haze_db               [0, 8]                              near-field reverberation haze, dB
speckle               [0.8, 1.3]                          speckle strength (scale of the log-speckle, dB)
speckle_corr          [0.05, 0.20]                        speckle correlation (3-tap smoothing weight)
shadow_db             [60, 200]                           shadow loss per unit bone path, dB / L (cap 20 dB)
blur                  [0, 0.4] if sharp, else [0.8, 1.5]  Gaussian blur sigma in pixels at H = 64 (scaled
                                                          with H); ``sharp`` iff blur <= 0.6
====================  ==================================  ====================================================

Fixed (not sampled): the posterior fossa (cerebellar hemispheres at s = -0.58, |t| = 0.21, semi-axes 0.13 x 0.17;
vermis at s = -0.60, 0.10 x 0.08; cisterna magna at s = -0.84, 0.13 x 0.30), and the echo levels of bone (-1 dB
at normal incidence, down to -29 dB where the beam grazes it), midline (-9 dB), tissue (-25 dB) and fluid (-45 dB).
Texture details (sulcal echoes, choroid plexus position, abdominal-wall layers, noise fields) are drawn from the
same generator but not recorded.

Concepts and label rule. Each image has four boolean concepts: ``TH`` (thalami visible), ``CSP`` (cavum septi
pellucidi visible), ``FP`` (posterior fossa visible) and ``sharp`` (``blur <= 0.6``). The label is::

    standard plane (1)  <=>  TH and CSP and not FP and sharp

A standard image (drawn with probability ``standard_fraction``) has exactly those concepts. A non-standard image
has one failure mode, drawn with ``FAILURE_MODES`` probabilities:

- ``tilted`` (0.40): the plane is tilted towards the trans-cerebellar plane: FP visible; CSP lost with p = 0.5,
  thalami lost with p = 0.2;
- ``no_csp`` (0.20): the CSP is not in the plane;
- ``no_th`` (0.15): the thalami are not in the plane (trans-ventricular-like); the CSP is also lost with p = 0.25;
- ``blurred`` (0.25): all structures right, but not sharp.

``tilted``, ``no_csp`` and ``no_th`` images are additionally blurred with p = 0.15. Overriding a concept (e.g.
``CSP=False``) or the blur recomputes the label with the rule, so the label always equals the rule. Masks contain
only visible structures, clipped to the field of view (a visible structure always has at least one pixel).
Structures are kept inside the field of view: the head is pulled towards the image centre (and shrunk) if needed.

Masks, one channel per ``STRUCTURES`` entry: ``head`` (filled, out to the outer bone surface, like the HC18 head
masks), ``skull`` (the bone ring), ``midline`` (at least a pixel wide), ``thalami`` (both), ``csp``,
``posterior_fossa`` (cerebellum and cisterna magna). Each is the scan-line coverage of the shape, scan-converted
like the image and thresholded at 1/2.

Reproducibility: ``generate(n, seed=s)`` gives image i a generator seeded with ``SeedSequence(s).spawn(n)[i]``, so
image i depends only on (s, i), never on n.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PhantomBatch",
    "Phantom",
    "generate",
    "generate_one",
    "standard_plane_rule",
    "field_of_view",
    "STRUCTURES",
    "CONCEPTS",
    "FAILURE_MODES",
    "MIN_SIZE",
    "MAX_PHANTOMS",
    "SEGMENTATION_CLASSES",
    "label_map",
    "write_dataset",
]

STRUCTURES: tuple[str, ...] = ("head", "skull", "midline", "thalami", "csp", "posterior_fossa")
CONCEPTS: tuple[str, ...] = ("TH", "CSP", "FP", "sharp")
FAILURE_MODES: dict[str, float] = {"tilted": 0.40, "no_csp": 0.20, "no_th": 0.15, "blurred": 0.25}
MIN_SIZE = 32
# phantoms made at once and held in memory (diffice demo --n, a sweep's [sweep] phantoms): at most this many (~5 ms
# each; 10000 at 64x80 is 200 MB). A larger set: write it with `diffice phantoms` (one image at a time, no bound)
# and give its folder (--images, [sweep] images).
MAX_PHANTOMS = 10_000
SHARP_MAX_BLUR = 0.6  # blur sigma (pixels at H = 64) above which an image is not sharp
_EXTRA_BLUR_P = 0.15  # chance that a tilted / no_csp / no_th image is also blurred
_SPECKLE_GRAIN = 96  # speckle cells per L (fixed physical grain, whatever the image size)
_MAX_GRID = 112  # scan-line samples per L (caps the cost and the speckle grain of large images)


def standard_plane_rule(TH, CSP, FP, sharp):
    """The label rule: standard plane iff thalami and CSP visible, posterior fossa not visible, and sharp."""
    return np.logical_and.reduce(
        [np.asarray(TH, bool), np.asarray(CSP, bool), ~np.asarray(FP, bool), np.asarray(sharp, bool)]
    )


@dataclass
class Phantom:
    """One phantom: image (1, H, W) float32 in [-1, 1], masks (K, H, W) bool, concepts, label, parameters."""

    image: np.ndarray
    masks: np.ndarray
    concepts: dict[str, bool]
    label: int
    params: dict[str, Any]


@dataclass
class PhantomBatch:
    """n phantoms. images (n, 1, H, W) float32 in [-1, 1] (-1 outside the fan); masks (n, K, H, W) bool, one
    channel per ``structure_names`` entry; concepts {"TH", "CSP", "FP", "sharp"} -> (n,) bool; labels (n,) int64
    (1 = standard plane); params: one dict of sampled parameters per image (plus ``failure_mode``)."""

    images: np.ndarray
    masks: np.ndarray
    structure_names: tuple[str, ...]
    concepts: dict[str, np.ndarray]
    labels: np.ndarray
    params: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        """A summary and the arrays' shapes (a notebook cell showing the batch printed every image and mask)."""
        modes: dict[str, int] = {}
        for p in self.params:
            mode = str(p.get("failure_mode", "?"))
            modes[mode] = modes.get(mode, 0) + 1
        size = " x ".join(str(v) for v in self.images.shape[2:])
        return (
            f"PhantomBatch({len(self)} phantom(s) of {size}, {int(np.sum(self.labels == 1))} standard plane(s); "
            f"failure modes {modes}; images {self.images.shape} {self.images.dtype}, masks {self.masks.shape} "
            f"({', '.join(self.structure_names)}), concepts {list(self.concepts)}, labels {self.labels.shape})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Argument checks


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
        ok = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if not ok:
        raise ValueError(f"size must be two integers (height, width), got {size!r}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"size {(h, w)} too small: height and width must be >= {MIN_SIZE}")
    return h, w


# ----------------------------------------------------------------------------------------------------------------
# Parameters


def _sample_params(
    rng: np.random.Generator, size: tuple[int, int], standard: bool | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Draw every parameter (a fixed number of draws in a fixed order, so overriding one never shifts the others),
    then apply the overrides and derive the concepts."""
    u = rng.random(40)
    depth = size[0] / min(size[0], size[1] / 1.25)
    mode_u, concept_u, blur_u = u[0], u[1:5], u[5]
    p: dict[str, Any] = {
        "head_length": 0.30 + 0.12 * u[6],
        "aspect": 0.74 + 0.16 * u[7],
        "head_center": (-0.08 + 0.16 * u[8], (0.47 + 0.10 * u[9]) * depth),
        "rotation_deg": -30.0 + 60.0 * u[10],
        "anterior": 1 if u[11] < 0.5 else -1,
        "fan_half_angle_deg": 36.0 + 10.0 * u[12],
        "fan_apex": 0.15 + 0.30 * u[13],
        "fan_top": 0.06 * u[14],
        "skull_thickness": 0.022 + 0.010 * u[15],
        "fluid_margin": 0.04 + 0.26 * u[16],
        "brain_db": -35.0 + 5.0 * u[17],
        "thalami_contrast_db": -5.0 + 4.0 * u[18],
        "csp_db": -50.0 + 10.0 * u[19],
        "csp_center": 0.28 + 0.10 * u[20],
        "csp_size": (0.08 + 0.04 * u[21], 0.06 + 0.03 * u[22]),
        "thalami_size": (0.18 + 0.06 * u[25], 0.13 + 0.05 * u[26]),
        "thalami_center": (-0.10 + 0.12 * u[23], 0.14 + 0.05 * u[26] + 0.03 * u[24]),
        "brightness": 0.13 + 0.15 * u[27],
        "dynamic_range_db": 38.0 + 14.0 * u[28],
        "depth_slope_db": -12.0 + 12.0 * u[29],
        "tgc_db": tuple(float(v) for v in rng.normal(0.0, 2.5, 5)),
        "haze_db": 8.0 * u[30],
        "speckle": 0.8 + 0.5 * u[31],
        "speckle_corr": 0.05 + 0.15 * u[32],
        "shadow_db": 60.0 + 140.0 * u[33],
    }
    unknown = set(overrides) - set(p) - set(CONCEPTS) - {"failure_mode", "blur"}
    if unknown:
        raise ValueError(
            f"unknown phantom parameters {sorted(unknown)}; known: "
            f"{sorted(set(p) | set(CONCEPTS) | {'failure_mode', 'blur'})}"
        )

    mode = overrides.get("failure_mode")
    if mode is not None:
        if mode != "none" and mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be 'none' or one of {list(FAILURE_MODES)}, got {mode!r}")
        if standard is not None and bool(standard) != (mode == "none"):
            raise ValueError(f"standard={standard} contradicts failure_mode={mode!r}")
    else:
        if standard is None:
            standard = bool(concept_u[3] < 0.5)
        if standard:
            mode = "none"
        else:
            names = list(FAILURE_MODES)
            cum = np.cumsum([FAILURE_MODES[k] for k in names])
            mode = names[min(int(np.searchsorted(cum, mode_u * cum[-1], side="right")), len(names) - 1)]

    th, csp, fp, sharp = True, True, False, True
    extra_blur = concept_u[2] < _EXTRA_BLUR_P
    if mode == "tilted":
        fp, csp, th, sharp = True, concept_u[0] >= 0.5, concept_u[1] >= 0.2, not extra_blur
    elif mode == "no_csp":
        csp, sharp = False, not extra_blur
    elif mode == "no_th":
        th, csp, sharp = False, concept_u[0] >= 0.25, not extra_blur
    elif mode == "blurred":
        sharp = False
    concepts = {"TH": bool(th), "CSP": bool(csp), "FP": bool(fp), "sharp": bool(sharp)}
    for k in CONCEPTS:
        if k in overrides:
            concepts[k] = bool(overrides[k])
    blur = 0.4 * blur_u if concepts["sharp"] else 0.8 + 0.7 * blur_u
    if "blur" in overrides:
        blur = float(overrides["blur"])
        if not (blur >= 0.0 and math.isfinite(blur)):
            raise ValueError(f"blur must be a finite sigma >= 0, got {blur!r}")
        concepts["sharp"] = blur <= SHARP_MAX_BLUR
    for k, v in overrides.items():
        if k in p:
            p[k] = v
    p["blur"] = float(blur)
    p["failure_mode"] = mode
    p.update(concepts)
    return {k: _plain(v) for k, v in p.items()}


def _plain(v):
    """numpy scalars (and tuples of them) as plain Python numbers, so parameter dicts print and serialise."""
    if isinstance(v, (tuple, list, np.ndarray)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


# ----------------------------------------------------------------------------------------------------------------
# Geometry helpers (all lengths in units of L)


class _Head:
    """Head-local frame: s along the midline (anterior +), t across it (+ = away from the probe), both
    normalised by the semi-axes a (along) and b (across)."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.a = float(p["head_length"])
        self.b = self.a * float(p["aspect"])
        self.cx, self.cy = (float(v) for v in p["head_center"])
        th = math.radians(float(p["rotation_deg"]))
        sgn = 1.0 if p["anterior"] >= 0 else -1.0
        self.m = (sgn * math.cos(th), sgn * math.sin(th))  # anterior direction
        self.n = (-math.sin(th), math.cos(th))  # across, pointing down (away from the probe)

    def local(self, x, y):
        dx, dy = x - self.cx, y - self.cy
        return ((dx * self.m[0] + dy * self.m[1]) / self.a, (dx * self.n[0] + dy * self.n[1]) / self.b)

    def world(self, s, t):
        s, t = np.asarray(s, float) * self.a, np.asarray(t, float) * self.b
        return self.cx + s * self.m[0] + t * self.n[0], self.cy + s * self.m[1] + t * self.n[1]


def _ellipse_sd(du, dv, P: float, Q: float):
    """Approximate signed distance to the ellipse u^2/P^2 + v^2/Q^2 = 1 (first order in the distance, so exact
    on the boundary's normal), for offsets du, dv in world units; negative inside."""
    x, y = du * (1.0 / P), dv * (1.0 / Q)
    e2 = x * x + y * y
    gx, gy = x * (1.0 / P), y * (1.0 / Q)
    return (e2 - 1.0) * 0.5 / np.sqrt(gx * gx + gy * gy + 1e-12)


def _soft(sd, edge: float):
    """Coverage in [0, 1] of a shape with signed distance sd, anti-aliased over `edge`."""
    return np.clip(0.5 - sd * (1.0 / edge), 0.0, 1.0)


def _key_points(p: dict[str, Any]) -> np.ndarray:
    """Local (s, t) points that must lie inside the field of view: the extremes of every inner structure."""
    cs, (hl, hw) = float(p["csp_center"]), p["csp_size"]
    ts, tt = p["thalami_center"]
    tp, tq = p["thalami_size"]
    pts = [
        (cs + hl, 0),
        (cs - hl, 0),
        (cs, hw),
        (cs, -hw),
        (ts + tp, tt),
        (ts - tp, -tt),
        (ts, tt + tq),
        (ts, -tt - tq),
        (-0.97, 0),
        (-0.58, 0.38),
        (-0.58, -0.38),
        (-0.45, 0),
        (0.9, 0),
    ]
    return np.array(pts, float)


class _Fan:
    """The sector: lines from a virtual apex `apex` above the image top, radii r0..r1, angles -half..half."""

    def __init__(self, p: dict[str, Any], depth: float) -> None:
        self.apex = float(p["fan_apex"])
        self.half = math.radians(float(p["fan_half_angle_deg"]))
        self.r0 = self.apex + float(p["fan_top"])
        self.r1 = self.apex + depth + 0.02  # reaches just past the image bottom

    def polar(self, x, y):
        yy = y + self.apex
        return np.hypot(x, yy), np.arctan2(x, yy)

    def inside(self, x, y, margin: float = 0.0):
        r, phi = self.polar(x, y)
        return (
            (r >= self.r0 + margin)
            & (r <= self.r1 - margin)
            & (np.abs(phi) <= self.half - margin / np.maximum(r, 1e-6))
        )


def _fit_head(p: dict[str, Any], fan: _Fan, depth: float, half_width: float) -> None:
    """Pull the head towards the image centre (and shrink it) until every inner structure is inside the fan and
    the image, with a margin. Deterministic: no random draws."""
    home = np.array([0.0, 0.52 * depth])
    pts = _key_points(p)
    for _ in range(40):
        hd = _Head(p)
        x, y = hd.world(pts[:, 0], pts[:, 1])
        if (
            fan.inside(x, y, 0.03).all()
            and (np.abs(x) <= half_width - 0.03).all()
            and (y >= 0.03).all()
            and (y <= depth - 0.03).all()
        ):
            return
        c = np.asarray(p["head_center"], float)
        p["head_center"] = tuple(float(v) for v in home + 0.8 * (c - home))
        p["head_length"] = float(p["head_length"]) * 0.97


def _interp_matrix(n: int, cells: int) -> np.ndarray:
    """(n, cells + 1) weights that interpolate a lattice of cells + 1 knots at n evenly spaced samples, with
    smoothstep weights (no visible creases)."""
    g = np.linspace(0.0, cells, n)
    i = np.minimum(g.astype(np.intp), cells - 1)
    f = g - i
    f = f * f * (3 - 2 * f)
    m = np.zeros((n, cells + 1), np.float32)
    m[np.arange(n), i] = 1 - f
    m[np.arange(n), i + 1] = f
    return m


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (float32) for a banded a (each row's nonzero weights in consecutive columns, as the interpolation and
    resampling matrices here have), in one fixed order of operations: over the band, left to right, each product
    rounded to float32. BLAS kernels block and fuse (FMA) differently by CPU and thread count, and a phantom's
    pixels name its noise in the sampler and its rows in a sweep store, so a BLAS product made the same seed give
    other phantoms with OMP_NUM_THREADS=1 or another OpenBLAS kernel."""
    nonzero = a != 0
    first = nonzero.argmax(axis=1)
    last = a.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)
    rows = np.arange(a.shape[0])
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for d in range(int((last - first).max()) + 1):
        cols = np.minimum(first + d, a.shape[1] - 1)
        weight = np.where(first + d <= last, a[rows, cols], np.float32(0))
        out += weight[:, None] * b[cols]
    return out


def _polar_noise(rng: np.random.Generator, nr: int, nphi: int, length: float, arc: float, cell: float):
    """Smooth noise of roughly unit variance on the (nr, nphi) scan-line grid: a random lattice with spacing
    `cell` (world units: `length` along the lines, `arc` across them at mid depth), interpolated separably."""
    cr, cp = max(1, int(math.ceil(length / cell))), max(1, int(math.ceil(arc / cell)))
    lat = rng.standard_normal((cr + 1, cp + 1)).astype(np.float32) * np.float32(1.6)
    return _product(_interp_matrix(nphi, cp), _product(_interp_matrix(nr, cr), lat).T).T


def _smooth3(z, c: float, axis: int):
    """One pass of the 3-tap kernel [c, 1 - 2c, c] along `axis` (edges replicated)."""
    z = np.moveaxis(z, axis, 0)
    out = (1 - 2 * c) * z
    out[1:] += c * z[:-1]
    out[:1] += c * z[:1]
    out[:-1] += c * z[1:]
    out[-1:] += c * z[-1:]
    return np.moveaxis(out, 0, axis)


def _gaussian_blur(img, sigma: float):
    """Separable Gaussian blur (edges replicated); sigma in pixels."""
    if sigma < 0.2:
        return img
    rad = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(img.dtype)
    for axis in (0, 1):
        n = img.shape[axis]
        pad = np.pad(img, [(rad, rad) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        out = np.zeros_like(img)
        for j, kj in enumerate(k):
            out += kj * (pad[j : j + n] if axis == 0 else pad[:, j : j + n])
        img = out
    return img


def _speckle_db(rng: np.random.Generator, size: tuple[int, int], density: float, corr: float):
    """Speckle in dB: 10 log10 of the intensity of a correlated complex Gaussian field (the Rayleigh envelope,
    squared), made at a fixed physical grain (`density` cells per pixel) and resampled in intensity to the
    pixels, so small images average several speckle cells per pixel as a downsampled scan does; images with
    more pixels than cells get two looks (mild compounding) instead. The lateral correlation is longer than the
    axial one, as the beam is wider than the pulse is long."""
    H, W = size
    gh, gw = max(2, int(round(H * density))), max(2, int(round(W * density)))
    looks = 1 if density > 1.0 else 2
    z = rng.standard_normal((2 * looks, gh, gw), dtype=np.float32)
    z = _smooth3(_smooth3(z, corr, 1), min(corr + 0.12, 0.33), 2)
    inten = z[0] * z[0]
    for k in range(1, len(z)):  # in order, as _product
        inten += z[k] * z[k]
    if (gh, gw) != (H, W):
        inten = _product(_resample_matrix(W, gw), _product(_resample_matrix(H, gh), inten).T).T
    return 10.0 * np.log10(np.maximum(inten * (1.0 / np.mean(inten)), 1e-6))


def _resample_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) weights that resample m samples to n: box averages when shrinking, linear interpolation when
    enlarging (sample centres aligned)."""
    w = np.zeros((n, m), np.float32)
    if m > n:
        edges = np.arange(n + 1) * (m / n)
        cells = np.arange(m)
        w[:] = np.clip(np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells), 0.0, None)
        return w / w.sum(axis=1, keepdims=True)
    g = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0.0, m - 1.0)
    i = np.minimum(g.astype(np.intp), m - 2)
    f = (g - i).astype(np.float32)
    w[np.arange(n), i] = 1 - f
    w[np.arange(n), i + 1] = f
    return w


def _unit(size: tuple[int, int]) -> float:
    """Pixels per unit length L."""
    return min(size[0], size[1] / 1.25)


def _pixel_polar(fan: _Fan, size: tuple[int, int], L: float):
    """Radius and angle of every pixel centre from the fan apex, and the field-of-view mask."""
    H, W = size
    px = ((np.arange(W) + 0.5 - W / 2) / L).astype(np.float32)
    py = ((np.arange(H) + 0.5) / L).astype(np.float32)
    pr, pphi = fan.polar(px[None, :], py[:, None])
    return pr, pphi, (pr >= fan.r0) & (pr <= fan.r1) & (np.abs(pphi) <= fan.half)


class _ScanConverter:
    """Bilinear lookup of polar-grid (scan line) arrays at the pixel centres; `fov` marks pixels in the sector."""

    def __init__(self, fan: _Fan, nr: int, nphi: int, size: tuple[int, int], L: float) -> None:
        pr, pphi, self.fov = _pixel_polar(fan, size, L)
        fi = np.clip((pr - fan.r0) * ((nr - 1) / (fan.r1 - fan.r0)), 0.0, nr - 1.0001)
        fj = np.clip((pphi + fan.half) * ((nphi - 1) / (2 * fan.half)), 0.0, nphi - 1.0001)
        i0, j0 = fi.astype(np.intp), fj.astype(np.intp)
        self.wi, self.wj = (fi - i0).astype(np.float32), (fj - j0).astype(np.float32)
        self.k = i0 * nphi + j0
        self.nphi = nphi

    def __call__(self, a):
        """a: (nr, nphi) or (nr, nphi, C) -> (H, W) or (H, W, C)."""
        f, k, n = a.reshape((-1,) + a.shape[2:]), self.k, self.nphi
        f00, f01 = np.take(f, k, axis=0), np.take(f, k + 1, axis=0)
        f10, f11 = np.take(f, k + n, axis=0), np.take(f, k + n + 1, axis=0)
        wi, wj = (self.wi, self.wj) if a.ndim == 2 else (self.wi[..., None], self.wj[..., None])
        top = f00 + (f01 - f00) * wj
        bot = f10 + (f11 - f10) * wj
        return top + (bot - top) * wi


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _render(rng: np.random.Generator, p: dict[str, Any], size: tuple[int, int]):
    """Image (1, H, W) float32 and masks (K, H, W) bool of the phantom with parameters p (p's head geometry is
    updated in place if it has to be pulled into the field of view)."""
    H, W = size
    L = _unit(size)  # pixels per unit length
    depth, half_width = H / L, W / (2 * L)
    fan = _Fan(p, depth)
    _fit_head(p, fan, depth, half_width)
    hd = _Head(p)
    a, b = hd.a, hd.b
    f32 = np.float32

    # ---- the scan lines: rows = samples along a line (depth), columns = lines ----
    g = min(L, _MAX_GRID)
    nr = int(math.ceil(g * (fan.r1 - fan.r0))) + 1
    nphi = int(math.ceil(0.7 * g * fan.half * (fan.r0 + fan.r1))) + 1
    r = np.linspace(fan.r0, fan.r1, nr, dtype=f32)[:, None]
    phi = np.linspace(-fan.half, fan.half, nphi, dtype=f32)[None, :]
    edge = 1.0 / g
    sin_phi, cos_phi = np.sin(phi), np.cos(phi)
    X = r * sin_phi
    Y = r * cos_phi - f32(fan.apex)
    s, t = hd.local(X, Y)
    sa, tb = s * f32(a), t * f32(b)  # local coordinates in world units
    arc = fan.half * (fan.r0 + fan.r1)  # length of the middle arc
    coarse = _polar_noise(rng, nr, nphi, fan.r1 - fan.r0, arc, 0.20)
    medium = _polar_noise(rng, nr, nphi, fan.r1 - fan.r0, arc, 0.08)
    fine = _polar_noise(rng, nr, nphi, fan.r1 - fan.r0, arc, 0.035)
    cover = {}  # coverage of each mask structure on the scan lines

    # maternal tissue, abdominal-wall layers near the probe
    Ldb = -25.0 + 4.5 * coarse + 2.0 * medium + 6.0 * np.clip(medium - 0.8, 0.0, 1.0)

    def paint(w, level):  # alpha-blend an echo level (dB) with coverage w
        nonlocal Ldb
        Ldb += w * (level - Ldb)

    for _ in range(3):
        rb, wid, amp, ph0 = (
            fan.r0 + 0.02 + 0.16 * rng.random(),
            0.004 + 0.010 * rng.random(),
            6.0 + 8.0 * rng.random(),
            6.0 * rng.random(),
        )
        Ldb += amp * np.exp(-0.5 * ((r - rb - 0.02 * np.sin(3 * phi + ph0)) * (1.0 / wid)) ** 2)
    # amniotic fluid: a wobbly ellipse around the head
    margin = float(p["fluid_margin"]) * (1.0 + 0.35 * coarse)
    sd_fluid = _ellipse_sd(sa, tb, a, b) - margin * b
    paint(_soft(sd_fluid, 2 * edge), -45.0 + 2.0 * medium)

    # skull: incidence of the beam on the bone decides its brightness; thicker on the probe side
    sd_in = _ellipse_sd(sa, tb, a, b)
    gs, gt = s * f32(1.0 / a), t * f32(1.0 / b)
    beam_m = sin_phi * f32(hd.m[0]) + cos_phi * f32(hd.m[1])
    beam_n = sin_phi * f32(hd.n[0]) + cos_phi * f32(hd.n[1])
    cos_inc = np.clip((gs * beam_m + gt * beam_n) / np.sqrt(gs * gs + gt * gt + 1e-12), -1.0, 1.0)  # < 0: probe side
    thick = float(p["skull_thickness"]) * (1.0 + 0.6 * np.clip(-cos_inc, 0.0, 1.0))
    paint(_soft(sd_in - thick - 0.015, edge), -21.0 + 2.0 * fine)  # scalp
    brain = _soft(sd_in, edge)
    paint(brain, float(p["brain_db"]) + 2.0 * medium + 1.0 * fine + 6.0 * np.exp(np.minimum(sd_in, 0.0) * (1.0 / 0.02)))

    # short bright sulcal / insular echoes, roughly parallel to the midline
    for _ in range(2 + int(rng.integers(0, 4))):
        s0, t0 = -0.5 + 1.0 * rng.random(), (0.35 + 0.45 * rng.random()) * (1 if rng.random() < 0.6 else -1)
        ang, half_len, lvl = rng.normal(0.0, 0.25), (0.06 + 0.12 * rng.random()) * a, -10.0 - 6.0 * rng.random()
        du, dv = sa - s0 * a, tb - t0 * b
        along = du * math.cos(ang) + dv * math.sin(ang)
        across = dv * math.cos(ang) - du * math.sin(ang)
        paint(_soft(np.hypot(np.maximum(np.abs(along) - half_len, 0.0), across) - 0.004, edge) * brain, lvl)
    # choroid plexus in the far atrium, inside a thin anechoic ventricle
    ch_s, ch_t = -0.45 + 0.1 * rng.random(), 0.42 + 0.1 * rng.random()
    paint(_soft(_ellipse_sd(sa - ch_s * a, tb - ch_t * b, 0.22 * a, 0.12 * b), edge) * brain, -40.0)
    paint(
        _soft(_ellipse_sd(sa - (ch_s + 0.02) * a, tb - ch_t * b, 0.17 * a, 0.085 * b), edge) * brain, -16.0 + 4.0 * fine
    )

    # midline echo (falx): slightly broken, interrupted where the CSP and the posterior fossa are visible
    mid_w = 0.005 + 0.003 * rng.random()
    mid = _soft(np.abs(tb) - mid_w, edge) * _soft(np.abs(s) - 0.93, 4 * edge) * brain
    # the mask is at least a pixel wide (connected at small sizes); the echo itself is thin and slightly broken
    mid_line = _soft(np.abs(tb) - max(mid_w, 0.6 / L), edge) * _soft(np.abs(s) - 0.93, 4 * edge) * brain
    mid = mid * np.clip(1.6 + fine, 0.0, 1.0)
    ts, tt = (float(v) for v in p["thalami_center"])
    tp, tq = (float(v) for v in p["thalami_size"])
    if p["FP"]:
        hemi = np.minimum(
            _ellipse_sd(sa + 0.58 * a, tb - 0.21 * b, 0.13 * a, 0.17 * b),
            _ellipse_sd(sa + 0.58 * a, tb + 0.21 * b, 0.13 * a, 0.17 * b),
        )
        vermis = _ellipse_sd(sa + 0.60 * a, tb, 0.10 * a, 0.08 * b)
        cist = np.maximum(_ellipse_sd(sa + 0.84 * a, tb, 0.13 * a, 0.30 * b), sd_in + 0.004)
        keep = (1 - _soft(np.minimum(hemi, vermis) - 0.02, edge)) * (1 - _soft(cist, edge))
        mid, mid_line = mid * keep, mid_line * keep
    paint(mid, -9.0 + 3.0 * fine)

    if p["TH"]:
        th_sd = np.minimum(
            _ellipse_sd(sa - ts * a, tb - tt * b, tp * a, tq * b), _ellipse_sd(sa - ts * a, tb + tt * b, tp * a, tq * b)
        )
        # brighter deep grey matter around them, a faint echogenic outline, the hypoechoic thalami
        paint(_soft(th_sd - 0.35 * tq * b, 3 * edge) * brain, float(p["brain_db"]) + 7.0 + 2.0 * fine)
        paint(_soft(np.abs(th_sd) - 0.004, edge) * brain, float(p["brain_db"]) + 11.0 + 3.0 * fine)
        cover["thalami"] = _soft(th_sd, 2 * edge) * brain
        paint(cover["thalami"], float(p["brain_db"]) + float(p["thalami_contrast_db"]) + 2.0 * fine)
        third = _soft(np.abs(tb) - 0.004, edge) * _soft(np.abs(sa - ts * a) - tp * a, edge)
        paint(third, -14.0)
    if p["CSP"]:
        cs, (hl, hw) = float(p["csp_center"]), (float(v) for v in p["csp_size"])
        P, Q = hl * a, hw * b
        x4, y4 = ((sa - cs * a) * (1.0 / P)) ** 2, (tb * (1.0 / Q)) ** 2
        csp_sd = (np.sqrt(np.sqrt(x4 * x4 + y4 * y4)) - 1.0) * min(P, Q)  # rounded box (order 4)
        paint(_soft(np.abs(csp_sd) - 0.006, edge) * brain, -12.0 + 3.0 * fine)  # its bright walls
        cover["csp"] = _soft(csp_sd, edge) * brain
        paint(cover["csp"], float(p["csp_db"]))
        mid_line = mid_line * (1 - _soft(csp_sd - 0.006, edge))
    if p["FP"]:
        cist_w = _soft(cist, edge) * brain
        paint(cist_w, -45.0)
        paint(_soft(hemi, edge), float(p["brain_db"]) + 4.0 + 3.0 * fine)
        paint(_soft(np.abs(hemi) - 0.005, edge), float(p["brain_db"]) + 9.0 + 3.0 * fine)  # brighter rims
        paint(_soft(vermis, edge), -10.0 + 2.0 * fine)
        cover["posterior_fossa"] = np.maximum(_soft(np.minimum(hemi, vermis), edge), cist_w)

    # bone last: it lies on top of everything
    bone = np.clip(np.minimum(sd_in, thick - sd_in) * (1.0 / edge) + 0.5, 0.0, 1.0)
    paint(bone, -1.0 - 28.0 * (1.0 - np.abs(cos_inc)) ** 1.2 + 3.0 * medium)
    cover["skull"] = bone
    cover["midline"] = mid_line
    cover["head"] = _soft(sd_in - thick, edge)

    # acoustic shadow: a loss proportional to the bone path travelled so far along each line
    dr = (fan.r1 - fan.r0) / (nr - 1)
    path = (np.cumsum(bone, axis=0) - 0.5 * bone) * dr
    Ldb -= np.minimum(float(p["shadow_db"]) * path, 20.0)
    # depth: net attenuation after TGC, time-gain variation (knots along depth), near-field haze
    knots = np.asarray(p["tgc_db"], float)
    tgc = np.interp(np.linspace(0, 1, nr), np.linspace(0, 1, len(knots)), knots).astype(f32)[:, None]
    Ldb += float(p["depth_slope_db"]) * (r - f32(fan.r0)) + tgc
    Ldb += float(p["haze_db"]) * np.exp((r - f32(fan.r0)) * f32(-1.0 / 0.06))
    # ---- scan conversion of the echo levels; speckle, log compression and blur on the pixel grid ----
    conv = _ScanConverter(fan, nr, nphi, size, L)
    level = conv(Ldb) + float(p["speckle"]) * _speckle_db(rng, size, _SPECKLE_GRAIN / L, float(p["speckle_corr"]))
    dyn = float(p["dynamic_range_db"])
    # the sonographer's gain: the mean parenchyma echo is displayed at `brightness`
    inside = brain > 0.5
    brain_mean = float(Ldb[inside].mean()) if inside.any() else float(p["brain_db"])
    offset = float(p["brightness"]) * dyn - brain_mean
    img = np.clip((level + offset) * (1.0 / dyn), 0.0, 1.0)
    img = _gaussian_blur(img, float(p["blur"]) * H / 64.0)
    # the separable blur's float32 sums can overshoot [0, 1] by an ulp or two
    image = np.where(conv.fov, np.clip(2.0 * img - 1.0, -1.0, 1.0), -1.0).astype(np.float32)[None]
    masks = np.zeros((len(STRUCTURES), H, W), bool)
    present = [ch for ch, name in enumerate(STRUCTURES) if name in cover]
    masks[present] = (
        np.moveaxis(conv(np.stack([cover[STRUCTURES[ch]] for ch in present], axis=-1)) >= 0.5, -1, 0) & conv.fov
    )
    centres = {"thalami": (ts, tt), "csp": (p["csp_center"], 0.0), "posterior_fossa": (-0.6, 0.0)}
    for name, (ss, tt_) in centres.items():
        ch = STRUCTURES.index(name)
        if name in cover and not masks[ch].any():  # sub-pixel structure at tiny sizes: keep its centre pixel
            cx, cy = hd.world(ss, tt_)
            masks[ch, min(int(cy * L), H - 1), min(max(int(cx * L + W / 2), 0), W - 1)] = True
    return image, masks


# ----------------------------------------------------------------------------------------------------------------
# Public API


def field_of_view(params: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels inside the fan of a phantom with these parameters (its ``params`` dict); the
    image is -1 outside it."""
    size = _check_size(size)
    L = _unit(size)
    return _pixel_polar(_Fan(params, size[0] / L), size, L)[2]


def generate_one(
    rng: np.random.Generator, size: tuple[int, int] = (64, 80), standard: bool | None = None, **params: Any
) -> Phantom:
    """One phantom drawn with `rng` (a ``numpy.random.Generator``).

    Args:
        rng: the generator; the phantom is a deterministic function of its state.
        size: (height, width), both >= 32; any aspect ratio (the geometry is in units of min(H, W / 1.25)).
        standard: True for a standard plane, False for a non-standard one (failure mode drawn with
            ``FAILURE_MODES``), None to draw either with probability 1/2.
        **params: fix any sampled parameter (see the module docstring), a concept (``TH``, ``CSP``, ``FP``,
            ``sharp``), ``failure_mode`` ("none" or a ``FAILURE_MODES`` key) or ``blur``. The label always
            follows ``standard_plane_rule`` of the final concepts.

    Returns:
        Phantom(image (1, H, W) float32 in [-1, 1], masks (K, H, W) bool in ``STRUCTURES`` order, concepts,
        label (1 = standard plane), params).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (numpy.random.default_rng), got {type(rng).__name__}")
    size = _check_size(size)
    p = _sample_params(rng, size, standard, params)
    image, masks = _render(rng, p, size)
    concepts = {k: bool(p[k]) for k in CONCEPTS}
    label = int(standard_plane_rule(**concepts))
    return Phantom(image=image, masks=masks, concepts=concepts, label=label, params=p)


def _check_n(n: Any, where: str = "") -> None:
    """ValueError "<where>n must be a positive integer, got <n>" unless n (how many images to make) is an int >= 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{where}n must be a positive integer, got {n!r}")
    if n <= 0:
        raise ValueError(f"{where}n must be a positive integer, got {n}")


def _check_seed(seed: Any, where: str = "") -> None:
    """ValueError unless seed is an integer in [0, 2**64), the rule of every command's seed (never taken modulo)."""
    from ..ops._diffusion import SEED_LIMIT

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(
            f"{where}seed must be a non-negative integer below 2**64 (seeds are never taken modulo 2**64), got {seed!r}"
        )


def _check_arguments(
    n: Any, size: Any, seed: Any, standard_fraction: Any, where: str = ""
) -> tuple[tuple[int, int], float]:
    """generate()'s arguments checked (ValueError "<where>..."): the size as (H, W) and the standard fraction."""
    _check_n(n, where)
    size = _check_size(size)
    _check_seed(seed, where)
    try:
        frac = float(standard_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"{where}standard_fraction must be a number in [0, 1], got {standard_fraction!r}") from None
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"{where}standard_fraction must be in [0, 1], got {standard_fraction!r}")
    return size, frac


def generate(
    n: int,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
    standard_fraction: float = 0.5,
    _first: int = 0,
    **params: Any,
) -> PhantomBatch:
    """n phantoms, fully determined by `seed`; image i depends only on (seed, i).

    Args:
        n: number of images (>= 1).
        size: (height, width), both >= 32, e.g. (64, 80) or (224, 288).
        seed: non-negative integer.
        standard_fraction: probability in [0, 1] that an image is a standard plane (drawn per image, so the
            realised fraction is approximate).
        **params: fixed parameters applied to every image (see ``generate_one``).

    Returns:
        PhantomBatch with images (n, 1, H, W) float32, masks (n, K, H, W) bool, concepts (n,) bool each,
        labels (n,) int64 and the per-image parameter dicts.
    """
    if "standard" in params:
        raise ValueError("generate() takes standard_fraction, not standard (use generate_one for one image)")
    size, frac = _check_arguments(n, size, seed, standard_fraction)
    H, W = size
    images = np.empty((n, 1, H, W), np.float32)
    masks = np.empty((n, len(STRUCTURES), H, W), bool)
    concepts = {k: np.empty(n, bool) for k in CONCEPTS}
    labels = np.empty(n, np.int64)
    plist: list[dict[str, Any]] = []
    # _first: images _first .. _first + n - 1 of the seed's sequence (write_dataset's chunks)
    for i, child in enumerate(np.random.SeedSequence(int(seed)).spawn(_first + n)[_first:]):
        rng = np.random.default_rng(child)
        standard = bool(rng.random() < frac)
        ph = (
            generate_one(rng, size, standard, **params)
            if "failure_mode" not in params
            else generate_one(rng, size, None, **params)
        )
        images[i], masks[i], labels[i] = ph.image, ph.masks, ph.label
        for k in CONCEPTS:
            concepts[k][i] = ph.concepts[k]
        plist.append(ph.params)
    return PhantomBatch(
        images=images, masks=masks, structure_names=STRUCTURES, concepts=concepts, labels=labels, params=plist
    )


SEGMENTATION_CLASSES: tuple[str, ...] = ("background", "skull", "thalami", "csp", "posterior_fossa")
LABELS_FIELDS: tuple[str, ...] = ("file", "label", "TH", "CSP", "FP", "sharp", "failure_mode")


def label_map(masks: np.ndarray, classes: tuple[str, ...] = SEGMENTATION_CLASSES) -> np.ndarray:
    """(n, len(STRUCTURES), H, W) structure masks -> (n, H, W) uint8 label maps over ``classes`` (index 0 is the
    background; later classes are painted over earlier ones)."""
    index = {name: i for i, name in enumerate(STRUCTURES)}
    unknown = [c for c in classes[1:] if c not in index]
    if unknown:
        raise ValueError(f"label_map: unknown structures {unknown}; known: {list(STRUCTURES)}")
    labels = np.zeros((masks.shape[0],) + masks.shape[2:], np.uint8)
    for c, name in enumerate(classes):
        if c:
            labels[masks[:, index[name]].astype(bool)] = c
    return labels


UNFINISHED_DATASET = ".diffice-phantoms.json"  # the settings of a dataset being written; removed with labels.csv


def _unfinished_dataset(out: Path, settings: dict[str, Any]) -> bool:
    """Whether out holds a dataset that write_dataset began with these settings and did not finish (stopped by
    Ctrl-C or killed before labels.csv): it is then finished, not refused. An unfinished one of other settings is a
    FileExistsError naming them."""
    import json

    marker = out / UNFINISHED_DATASET
    if not marker.is_file() or os.path.lexists(out / "labels.csv"):
        return False
    try:
        started = json.loads(marker.read_text())
    except (OSError, ValueError):
        started = None
    if started == settings:
        return True
    shown = "settings unreadable"
    if isinstance(started, dict):
        shown = ", ".join(f"{k} {'x'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in started.items())
    raise FileExistsError(
        f"{out} holds an unfinished dataset of other settings ({shown}; stopped before labels.csv): give those "
        "settings to finish it, or use another --out or delete it"
    )


def _check_dataset_folder(out: Path) -> None:
    """FileExistsError naming out when it is a file or already holds a dataset (writing over one would leave the
    old images without a row in the new labels.csv); a missing or empty folder is fine."""
    if os.path.lexists(out) and not out.is_dir():
        raise FileExistsError(f"cannot write the dataset to {out}: it is a file, not a folder")
    held = [
        name + ("/" if (out / name).is_dir() else "")
        for name in ("images", "masks", "labels.csv", "classes.txt")
        if os.path.lexists(out / name) and (not (out / name).is_dir() or any((out / name).iterdir()))
    ]
    if held:
        raise FileExistsError(
            f"{out} already holds a dataset ({', '.join(held)}); use another --out or delete it "
            f"(writing over it would leave its images without labels)"
        )


def write_dataset(
    out_dir,
    n: int,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
    standard_fraction: float = 0.5,
    progress: bool = False,
) -> dict[str, int]:
    """Writes n (>= 1) phantoms as a training set in the formats diffice's training commands read (and a researcher's
    own data would use):

    - ``images/NNNNNN.png``: 8-bit grayscale images;
    - ``masks/NNNNNN.png``: 8-bit label maps over :data:`SEGMENTATION_CLASSES` (0 background, 1 skull,
      2 thalami, 3 csp, 4 posterior_fossa); ``classes.txt`` names them, one per line;
    - ``labels.csv``: file, label (1 = standard plane), the concepts TH, CSP, FP, sharp (0/1), failure_mode.

    The images are those of ``generate(n, size, seed, standard_fraction)``. Every file is written atomically.
    out_dir may be missing or empty: a folder that already holds a dataset (images/ or masks/ with files,
    labels.csv, classes.txt) is a FileExistsError, and so is every bad argument a ValueError, before anything is
    written. A dataset this function began with the same arguments and did not finish (Ctrl-C, a killed job: no
    labels.csv yet; its settings are in :data:`UNFINISHED_DATASET`) is finished instead, the images written
    before kept.
    Returns the number of standard and non-standard planes.
    """
    import csv
    import io
    import json

    from ..progress import ProgressBar
    from .images import atomic_write_bytes, save_png

    # before anything is written: n = 0 would leave an empty dataset, a bad seed an empty folder
    size, frac = _check_arguments(n, size, seed, standard_fraction, "write_dataset: ")
    out = Path(out_dir)
    settings = dict(n=int(n), size=list(size), seed=int(seed), standard_fraction=frac)
    resumed = _unfinished_dataset(out, settings)
    if not resumed:
        _check_dataset_folder(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / UNFINISHED_DATASET, (json.dumps(settings) + "\n").encode())
    atomic_write_bytes(out / "classes.txt", ("\n".join(SEGMENTATION_CLASSES) + "\n").encode())
    width = max(6, len(str(n - 1)))
    rows: list[dict[str, Any]] = []
    bar = ProgressBar(n, label="phantoms", enabled=progress)
    for start in range(0, n, 256):  # generate() in chunks: memory stays small for any n
        batch = generate(min(256, n - start), size, seed, standard_fraction, _first=start)
        maps = label_map(batch.masks)
        for j in range(len(batch)):
            i = start + j
            name = f"{i:0{width}d}.png"
            if not (resumed and (out / "images" / name).is_file() and (out / "masks" / name).is_file()):
                save_png(out / "images" / name, batch.images[j])
                save_png(out / "masks" / name, maps[j])
            rows.append(
                dict(
                    file=name,
                    label=int(batch.labels[j]),
                    failure_mode=batch.params[j]["failure_mode"],
                    **{k: int(batch.concepts[k][j]) for k in CONCEPTS},
                )
            )
            bar.update(i + 1)
    bar.close()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(LABELS_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "labels.csv", buf.getvalue().encode())
    (out / UNFINISHED_DATASET).unlink()
    labels = np.array([r["label"] for r in rows])
    return {"standard": int(labels.sum()), "non_standard": int(len(labels) - labels.sum())}
