"""Regression tests of explanation runs, for your own pytest suite.

Store a reference run of your models on a few images once (counterfactuals, target probabilities, lambda_c, flips
and non-finite steps in one safetensors file, with the settings and the machine that made it), then assert that
every later run matches it within stated tolerances::

    from diffice.testing import check_explainer_regression

    def test_my_models_have_not_changed():
        explainer = Explainer(unet, diffusion, classifier, perceptual, iterations=2, tau=10)
        check_explainer_regression(explainer, x, "tests/data/my_models.safetensors", target=1, seed=0)

The first run writes the file and fails, asking you to look at it and commit it; ``DIFFICE_UPDATE_REFERENCE=1``
(or ``update=True``) rewrites it and skips the test. A failure names the images, iterations and distances, worst
first::

    explanation run differs from the reference tests/data/my_models.safetensors in 7 places (...); worst first:
      image 3, iteration 2: counterfactual mean |diff| 0.0876 > mean_atol 0.005
      image 3, iteration 2: counterfactual |diff| 1.33 at pixel (0, 31, 42) (0.6028 vs reference -0.7320) >
        tolerance 0.1 (max |diff| 1.33, 1226 pixels over)
      image 3, iteration 2: p_target 0.9920 vs reference 0.9998 (|diff| 0.00778 > prob_atol 0.001)
      ...
    reference made with: diffice 0.1.0, numpy 2.4.6, x86_64 AMD EPYC (avx512f,avx512_bf16,avx2,fma), 2 threads
    this run:            diffice 0.1.0, numpy 2.4.6, x86_64 AMD EPYC (avx512f,avx512_bf16,avx2,fma), 2 threads

Lower level: :func:`save_reference`, :func:`load_reference`, :func:`assert_matches_reference` (for a result you
computed yourself: pass ``keys=ref.keys, seed=ref.seed`` to ``explain``), :func:`compare_runs` (every distance,
to measure your own machines), :func:`run_settings`. ``python -m diffice.testing show|compare`` prints a file or
the distances between two files.

Tolerances. A run is bitwise identical on the same machine with the same build (and on this project's 2-core
development machine, AVX-512, it was identical with 1, 2 and 4 threads). Other CPUs, thread counts (3 gave a
different run there) and oneDNN kernels (``ONEDNN_MAX_CPU_ISA=AVX2``/``SSE41``, the ``ref`` backend) round
differently in the last bits, and the sampling chain amplifies that: on the bundled demo models, 6 phantoms,
2 iterations, tau 10 of 100, one image in six drifted, by at most 0.032 per pixel, 0.0009 mean |diff|, 1.4e-5 in
p_target at iteration 2 (every other value within 1.4e-5). The defaults (:data:`DEFAULT_TOLERANCES`) leave a margin
of 3x (pixel), 5x (mean) and 70x (probability) over that, and still catch a 10% change of lambda_p (mean |diff| up
to 0.09, p_target 0.008) or another seed (0.2, 0.03). Longer runs drift much further between machines: with the
demo's 5 iterations at tau 30, pixels differ by up to 1.8 and p_target by 0.025 by iteration 4, as far as a real
change. Across machines, keep reference runs short or compare with ``level="probabilities"`` (and a looser
``prob_atol``) or ``level="flips"``; on one machine, ``**EXACT`` asks for bitwise equality.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from .progress import stdout_closed

__all__ = [
    "check_explainer_regression",
    "assert_matches_reference",
    "save_reference",
    "load_reference",
    "compare_runs",
    "run_settings",
    "settings_differences",
    "environment",
    "Reference",
    "Comparison",
    "Mismatch",
    "DEFAULT_TOLERANCES",
    "EXACT",
    "LEVELS",
    "UPDATE_ENV",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Defaults of every comparison (see the module docstring for how they were chosen).
DEFAULT_TOLERANCES: dict[str, float] = dict(
    atol=0.1,  # per pixel of a counterfactual: |new - ref| <= atol + rtol |ref|
    rtol=0.0,
    mean_atol=0.005,  # mean |new - ref| over one counterfactual's pixels
    prob_atol=1e-3,  # |new - ref| of the target probability, the input's (iteration 0) and every iteration's
    input_atol=1e-4,  # per pixel of the inputs given vs the stored ones
)
#: Bitwise equality (same machine and build; a float32 reference file).
EXACT: dict[str, float] = dict(atol=0.0, rtol=0.0, mean_atol=0.0, prob_atol=0.0, input_atol=0.0)
#: What each level compares: "pixels" everything, "probabilities" all but the counterfactuals' pixels, "flips" only
#: whether each image reached the target in each iteration and whether it stayed finite.
LEVELS = ("pixels", "probabilities", "flips")
#: Set to 1 to rewrite every reference that check_explainer_regression meets (the test is then skipped).
UPDATE_ENV = "DIFFICE_UPDATE_REFERENCE"

_FORMAT_KEY, _FORMAT_VERSION = "diffice_reference", "1"
_FIELDS = ("counterfactuals", "prob_target", "lambda_used", "flipped", "nonfinite_step")


# ---- the file ----


@dataclasses.dataclass
class Reference:
    """A stored run (:func:`load_reference`). counterfactuals (L, N, C, H, W), prob_target (L + 1, N), lambda_used,
    flipped, nonfinite_step (L, N) as in ExplanationResult; x the inputs (None if not stored); keys the noise keys
    the run used (pass them to ``explain(..., keys=)`` to draw the same noise); settings and environment as saved
    (what the run was, and the machine and versions that made it); dtype the storage dtype."""

    path: str
    counterfactuals: np.ndarray
    prob_target: np.ndarray
    lambda_used: np.ndarray
    flipped: np.ndarray
    nonfinite_step: np.ndarray
    x: np.ndarray | None
    keys: np.ndarray
    settings: dict[str, Any]
    environment: dict[str, Any]
    dtype: str

    @property
    def target(self) -> np.ndarray:
        return np.asarray(self.settings["target"], dtype=np.int64)

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])


def _json(value: Any) -> Any:
    """value as JSON would return it (tuples -> lists, numpy scalars -> Python), or TypeError naming it."""

    def default(o: object) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"settings must be JSON-serialisable, got {type(o).__name__}: {o!r}")

    return json.loads(json.dumps(value, default=default))


def _targets(target: Any, n: int) -> list[int]:
    t = np.asarray(target)
    if t.dtype == bool or not np.issubdtype(t.dtype, np.integer) or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise ValueError(f"target must be an int or {n} ints (one per image), got {target!r}")
    return [int(v) for v in np.broadcast_to(t, (n,))]


def run_settings(
    explainer: Any, x: np.ndarray, target: Any = 1, seed: int = 0, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What defines a run of `explainer` on x: the method's parameters (ExplainerConfig), the diffusion's schedule,
    the inputs' shape, target (one per image), seed, and `extra` (your own JSON-able entries: a model version, a
    preprocessing option). check_explainer_regression stores these and fails when any differs."""
    x = np.asarray(x)
    method = _json(dataclasses.asdict(explainer.config))
    method["perceptual"] = explainer.perceptual is not None
    d = explainer.diffusion
    settings: dict[str, Any] = dict(
        method=method,
        diffusion=dict(
            steps=int(d.steps), schedule=str(d.schedule), respacing=str(d.respacing), variance_type=str(d.variance_type)
        ),
        images=[int(s) for s in x.shape],
        target=_targets(target, len(x)),
        seed=int(seed),
    )
    if extra:
        settings["extra"] = _json(dict(extra))
    return settings


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [
                        f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2", "fma", "asimd", "sve") if f in have
                    ]
    except OSError:
        pass
    return []


def environment(explainer: Any = None) -> dict[str, Any]:
    """The machine and versions a run was made with (stored with a reference and shown when a comparison fails:
    differences here explain differences in the last bits)."""
    from . import __version__, build_info

    try:
        cpus = len(os.sched_getaffinity(0))  # the C core runs one thread per CPU the process may use
    except AttributeError:
        cpus = os.cpu_count() or 1
    env: dict[str, Any] = dict(
        diffice=__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        system=platform.system(),
        machine=platform.machine(),
        cpu=_cpu_model(),
        cpu_flags=_cpu_flags(),
        threads=cpus,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"),
        ONEDNN_MAX_CPU_ISA=os.environ.get("ONEDNN_MAX_CPU_ISA"),
        build=dict(build_info()),
    )
    if explainer is not None:
        env.update(
            backend=getattr(explainer, "backend", None),
            guidance="native" if getattr(explainer, "_native", None) is not None else "python",
            models={k: type(getattr(explainer, k, None)).__name__ for k in ("unet", "classifier", "perceptual")},
        )
    return _json(env)


def _describe_environment(env: Mapping[str, Any]) -> str:
    flags = ",".join(env.get("cpu_flags") or []) or "-"
    text = (
        f"diffice {env.get('diffice')}, numpy {env.get('numpy')}, {env.get('machine')} {env.get('cpu')} "
        f"({flags}), {env.get('threads')} threads"
    )
    extra = [f"{k}={env[k]}" for k in ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA") if env.get(k)]
    if env.get("backend"):
        extra.append(f"backend {env['backend']}, {env.get('guidance')} guidance")
    return text + (", " + ", ".join(extra) if extra else "")


def _as_arrays(run: Any) -> dict[str, np.ndarray]:
    missing = [f for f in _FIELDS if getattr(run, f, None) is None]
    if missing:
        raise TypeError(
            f"expected an ExplanationResult (or a Reference), got {type(run).__name__} without {', '.join(missing)}"
        )
    out = {f: np.asarray(getattr(run, f)) for f in _FIELDS}
    cf = out["counterfactuals"]
    if cf.ndim != 5:
        raise ValueError(f"counterfactuals must be (L, N, C, H, W), got shape {cf.shape}")
    L, N = cf.shape[:2]
    want = dict(prob_target=(L + 1, N), lambda_used=(L, N), flipped=(L, N), nonfinite_step=(L, N))
    for f, shape in want.items():
        if out[f].shape != shape:
            raise ValueError(f"{f} must be {shape} for {L} iterations of {N} images, got {out[f].shape}")
    return out


def save_reference(
    path: PathLike,
    result: Any,
    x: np.ndarray,
    settings: Mapping[str, Any] | None = None,
    *,
    target: Any = 1,
    seed: int = 0,
    keys: np.ndarray | None = None,
    dtype: str = "float32",
    store_inputs: bool = True,
    explainer: Any = None,
) -> Path:
    """Writes `result` (an ExplanationResult of x) as a reference file (safetensors; parent folders are made, the
    file is replaced atomically) and returns its path.

    settings: what defines the run (usually :func:`run_settings`; stored and compared by name later); target, seed
    and keys (default: ``image_keys(x)``, what ``explain`` uses) are stored with it to rerun it the same way.
    dtype "float16" halves the file (comparisons then add half a float16 step of the stored value, at most
    0.00049 for |value| <= 1, to each tolerance). store_inputs=False leaves x out (the inputs are then not checked).
    explainer: recorded in the environment (backend, guidance, model classes).
    """
    from .explain.explainer import image_keys
    from .io import save_safetensors

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    arrays = _as_arrays(result)
    L, N = arrays["counterfactuals"].shape[:2]
    x = np.asarray(x, dtype=np.float32)
    if x.shape != arrays["counterfactuals"].shape[1:]:
        raise ValueError(f"x has shape {x.shape}, the counterfactuals' images {arrays['counterfactuals'].shape[1:]}")
    stored = dict(_json(dict(settings or {})))
    for name, value in (("target", _targets(target, N)), ("seed", int(seed)), ("images", list(x.shape))):
        if name in stored and stored[name] != value:
            raise ValueError(f"settings[{name!r}] is {stored[name]!r} but the run's {name} is {value!r}")
        stored[name] = value
    keys = image_keys(np.ascontiguousarray(x)) if keys is None else np.asarray(keys, dtype=np.uint64)
    if keys.shape != (N,):
        raise ValueError(f"keys must be {N} integers (one per image), got shape {keys.shape}")
    tensors = {
        "counterfactuals": arrays["counterfactuals"].reshape((L * N,) + x.shape[1:]),
        "prob_target": arrays["prob_target"],
        "lambda_used": arrays["lambda_used"],
        "flipped": arrays["flipped"].astype(np.float32),
        "nonfinite_step": arrays["nonfinite_step"],
    }
    if store_inputs:
        tensors["x"] = x
    meta = {
        _FORMAT_KEY: _FORMAT_VERSION,
        "iterations": str(L),
        "images": str(N),
        "dtype": dtype,
        "keys": json.dumps([str(int(k)) for k in keys]),
        "settings": json.dumps(stored, sort_keys=True),
        "environment": json.dumps(environment(explainer), sort_keys=True),
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(p, tensors, metadata=meta, dtype=dtype)
    return p


def load_reference(path: PathLike) -> Reference:
    """Reads a file written by :func:`save_reference` (ValueError naming the path when it is not one)."""
    from .io import load_safetensors, load_safetensors_metadata

    p = os.fspath(path)
    if os.path.isdir(p):
        raise IsADirectoryError(f"{p} is a folder, not a diffice reference run (the file save_reference wrote)")
    meta = load_safetensors_metadata(p)
    if meta.get(_FORMAT_KEY) != _FORMAT_VERSION:
        raise ValueError(
            f"{p}: not a diffice reference run (no '{_FORMAT_KEY}': '{_FORMAT_VERSION}' metadata; "
            f"write one with diffice.testing.save_reference)"
        )
    t = load_safetensors(p)
    try:
        L, N = int(meta["iterations"]), int(meta["images"])
        keys = np.array([int(k) for k in json.loads(meta["keys"])], dtype=np.uint64)
        settings, env = json.loads(meta["settings"]), json.loads(meta["environment"])
        cf = t["counterfactuals"]
        cf = cf.reshape((L, N) + cf.shape[1:])
        ref = Reference(
            path=p,
            counterfactuals=cf,
            prob_target=t["prob_target"],
            lambda_used=t["lambda_used"],
            flipped=t["flipped"] != 0,
            nonfinite_step=t["nonfinite_step"].astype(np.int64),
            x=t.get("x"),
            keys=keys,
            settings=settings,
            environment=env,
            dtype=meta.get("dtype", "float32"),
        )
        _as_arrays(ref)
        if keys.shape != (N,) or (ref.x is not None and ref.x.shape != cf.shape[1:]):
            raise ValueError(
                f"keys {keys.shape} / inputs {None if ref.x is None else ref.x.shape} do not match "
                f"{N} images of shape {cf.shape[2:]}"
            )
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{p}: malformed diffice reference run: {e}") from None
    return ref


# ---- comparing ----


def _quantum(ref: np.ndarray, dtype: str) -> np.ndarray:
    """Half a storage step of each stored value: what rounding to the file's dtype may have moved it."""
    if dtype != "float16":
        return np.zeros(ref.shape, np.float64)
    with np.errstate(invalid="ignore"):
        return np.spacing(np.abs(np.nan_to_num(ref)).astype(np.float16)).astype(np.float64) / 2


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float64; 0 where both hold the same non-finite value, inf where only one is non-finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    d[same] = 0.0
    d[np.isnan(d)] = np.inf
    return d


@dataclasses.dataclass
class Mismatch:
    image: int
    iteration: int  # 1..L; 0 for the input's probability
    what: str  # "pixel", "mean", "p_target", "lambda_c", "flipped", "nonfinite_step", "input"
    excess: float  # distance / tolerance (inf for discrete fields or a zero tolerance)
    text: str


@dataclasses.dataclass
class Comparison:
    """Every distance between a run and a reference (:func:`compare_runs`); mismatches those over the tolerances.

    pixel_max / pixel_mean: (L, N) max and mean |diff| of each counterfactual (None at levels without pixels);
    prob_diff: (L + 1, N); lambda_equal / flipped_equal / nonfinite_equal: (L, N) bool.
    """

    reference: Reference | None
    level: str
    tolerances: dict[str, float]
    pixel_max: np.ndarray | None
    pixel_mean: np.ndarray | None
    prob_diff: np.ndarray
    lambda_equal: np.ndarray
    flipped_equal: np.ndarray
    nonfinite_equal: np.ndarray
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def table(self) -> str:
        """One line per image and iteration: max and mean pixel |diff|, p_target |diff|, discrete fields."""

        def mark(ok: bool | np.bool_) -> str:
            return "same" if ok else "DIFF"

        L, N = self.lambda_equal.shape
        lines = [
            f"{'image':>5} {'iter':>4} {'max |diff|':>10} {'mean |diff|':>11} {'p |diff|':>9}  lambda flipped finite"
        ]
        for n in range(N):
            lines.append(f"{n:5d} {0:4d} {'':>10} {'':>11} {self.prob_diff[0, n]:9.2e}")
            for l in range(L):
                px = "" if self.pixel_max is None else f"{self.pixel_max[l, n]:10.2e}"
                pm = "" if self.pixel_mean is None else f"{self.pixel_mean[l, n]:11.2e}"
                lines.append(
                    f"{n:5d} {l + 1:4d} {px:>10} {pm:>11} {self.prob_diff[l + 1, n]:9.2e}  "
                    f"{mark(self.lambda_equal[l, n]):>6} {mark(self.flipped_equal[l, n]):>7} "
                    f"{mark(self.nonfinite_equal[l, n]):>6}"
                )
        return "\n".join(lines)


def _tolerances(overrides: Mapping[str, float | None]) -> dict[str, float]:
    tol = dict(DEFAULT_TOLERANCES)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in tol:
            raise TypeError(f"unknown tolerance {k!r} (known: {', '.join(tol)})")
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not (v >= 0) or math.isinf(v):
            raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
        tol[k] = float(v)
    return tol


def _g(v: float) -> str:
    return "never" if v < 0 else f"{v:.4g}"


def _input_mismatches(x: np.ndarray, ref: Reference, input_atol: float) -> list[Mismatch]:
    """One Mismatch per image of x that differs from the stored inputs by more than input_atol (+ rounding)."""
    if ref.x is None:
        return []
    x = np.asarray(x, np.float32)
    if x.shape != ref.x.shape:
        raise ValueError(f"the inputs have shape {x.shape}, those stored in {ref.path} {ref.x.shape}")
    d = _abs_diff(x, ref.x) - _quantum(ref.x, ref.dtype)
    out = []
    for n in range(len(x)):
        k = int(np.argmax(d[n]))
        if d[n].flat[k] > input_atol:
            pix = np.unravel_index(k, d[n].shape)
            out.append(
                Mismatch(
                    n,
                    0,
                    "input",
                    math.inf,
                    f"image {n}: input differs from the stored one by {d[n].flat[k]:.3g} at pixel "
                    f"{tuple(int(i) for i in pix)} ({x[n][pix]:.6g} vs {ref.x[n][pix]:.6g}) > "
                    f"input_atol {input_atol:g}",
                )
            )
    return out


def compare_runs(
    result: Any,
    reference: PathLike | Reference,
    *,
    level: str = "pixels",
    atol: float | None = None,
    rtol: float | None = None,
    mean_atol: float | None = None,
    prob_atol: float | None = None,
    x: np.ndarray | None = None,
    input_atol: float | None = None,
) -> Comparison:
    """Every distance between `result` (an ExplanationResult, or another Reference) and the reference, and the
    mismatches over the tolerances (defaults: DEFAULT_TOLERANCES). x: the inputs of `result`, checked against the
    stored ones. Raises nothing for a mismatch (see assert_matches_reference); ValueError when the shapes differ."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    tol = _tolerances(dict(atol=atol, rtol=rtol, mean_atol=mean_atol, prob_atol=prob_atol, input_atol=input_atol))
    new, old = _as_arrays(result), _as_arrays(ref)
    if new["counterfactuals"].shape != old["counterfactuals"].shape:
        L, N = old["counterfactuals"].shape[:2]
        raise ValueError(
            f"the run has counterfactuals of shape {new['counterfactuals'].shape} (L, N, C, H, W), the "
            f"reference {ref.path} {old['counterfactuals'].shape} ({L} iterations of {N} images)"
        )
    L, N = new["counterfactuals"].shape[:2]
    out: list[Mismatch] = []

    def excess(d: float, t: float) -> float:
        return d / t if t > 0 else (math.inf if d > 0 else 0.0)

    if x is not None:
        out += _input_mismatches(x, ref, tol["input_atol"])

    pixel_max = pixel_mean = None
    if level == "pixels":
        a, b = new["counterfactuals"], old["counterfactuals"]
        d = _abs_diff(a, b)
        q = _quantum(b, ref.dtype)
        allowed = tol["atol"] + tol["rtol"] * np.abs(np.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)) + q
        pixel_max = d.reshape(L, N, -1).max(axis=2)
        pixel_mean = d.reshape(L, N, -1).mean(axis=2)
        qmean = q.reshape(L, N, -1).mean(axis=2)
        for l in range(L):
            for n in range(N):
                over = (d[l, n] - allowed[l, n]).ravel()
                k = int(np.argmax(over))
                if over[k] > 0:
                    pix = tuple(int(i) for i in np.unravel_index(k, d[l, n].shape))
                    dk, tk = d[l, n].flat[k], allowed[l, n].flat[k]
                    out.append(
                        Mismatch(
                            n,
                            l + 1,
                            "pixel",
                            excess(dk, tk),
                            f"image {n}, iteration {l + 1}: counterfactual |diff| {dk:.3g} at pixel "
                            f"{pix} ({a[l, n][pix]:.4f} vs reference {b[l, n][pix]:.4f}) > tolerance "
                            f"{tk:.3g} (max |diff| {pixel_max[l, n]:.3g}, "
                            f"{int(np.sum(over > 0))} pixels over)",
                        )
                    )
                mt = tol["mean_atol"] + qmean[l, n]
                if pixel_mean[l, n] > mt:
                    out.append(
                        Mismatch(
                            n,
                            l + 1,
                            "mean",
                            excess(pixel_mean[l, n], mt),
                            f"image {n}, iteration {l + 1}: counterfactual mean |diff| "
                            f"{pixel_mean[l, n]:.3g} > mean_atol {mt:.3g}",
                        )
                    )

    pn, po = new["prob_target"], old["prob_target"]
    prob_diff = _abs_diff(pn, po)
    if level in ("pixels", "probabilities"):
        pt = tol["prob_atol"] + _quantum(po, ref.dtype)
        for l, n in zip(*np.nonzero(prob_diff > pt)):
            where = "input" if l == 0 else f"iteration {l}"
            out.append(
                Mismatch(
                    int(n),
                    int(l),
                    "p_target",
                    excess(prob_diff[l, n], pt[l, n]),
                    f"image {n}, {where}: p_target {pn[l, n]:.4f} vs reference {po[l, n]:.4f} "
                    f"(|diff| {prob_diff[l, n]:.3g} > prob_atol {pt[l, n]:.3g})",
                )
            )
    cast = np.float16 if ref.dtype == "float16" else np.float32
    lambda_equal = new["lambda_used"].astype(cast).astype(np.float64) == old["lambda_used"].astype(np.float64)
    flipped_equal = new["flipped"].astype(bool) == old["flipped"].astype(bool)
    nonfinite_equal = new["nonfinite_step"].astype(np.int64) == old["nonfinite_step"].astype(np.int64)
    for l, n in zip(*np.nonzero(~nonfinite_equal)):
        out.append(
            Mismatch(
                int(n),
                int(l) + 1,
                "nonfinite_step",
                math.inf,
                f"image {n}, iteration {l + 1}: non-finite from step "
                f"{_g(new['nonfinite_step'][l, n])} vs reference {_g(old['nonfinite_step'][l, n])}",
            )
        )
    for l, n in zip(*np.nonzero(~flipped_equal)):
        out.append(
            Mismatch(
                int(n),
                int(l) + 1,
                "flipped",
                math.inf,
                f"image {n}, iteration {l + 1}: flipped {bool(new['flipped'][l, n])} vs reference "
                f"{bool(old['flipped'][l, n])} (p_target {pn[l + 1, n]:.4f} vs {po[l + 1, n]:.4f})",
            )
        )
    if level in ("pixels", "probabilities"):
        for l, n in zip(*np.nonzero(~lambda_equal)):
            out.append(
                Mismatch(
                    int(n),
                    int(l) + 1,
                    "lambda_c",
                    math.inf,
                    f"image {n}, iteration {l + 1}: lambda_c {new['lambda_used'][l, n]:g} vs reference "
                    f"{old['lambda_used'][l, n]:g}",
                )
            )
    order = {"input": 0, "nonfinite_step": 1, "flipped": 2, "lambda_c": 3, "pixel": 4, "mean": 5, "p_target": 6}
    out.sort(key=lambda m: (-m.excess, order[m.what], m.image, m.iteration))
    return Comparison(
        ref, level, tol, pixel_max, pixel_mean, prob_diff, lambda_equal, flipped_equal, nonfinite_equal, out
    )


def _failure_message(c: Comparison, max_report: int, current_env: Mapping[str, Any] | None) -> str:
    ref = c.reference
    assert ref is not None, "a failure is reported against a reference"
    L, N = c.lambda_equal.shape
    t = c.tolerances
    kinds: dict[str, int] = {}
    for m in c.mismatches:
        kinds[m.what] = kinds.get(m.what, 0) + 1
    tol = {
        "pixels": f"atol {t['atol']:g} + rtol {t['rtol']:g} |ref| per pixel, mean_atol {t['mean_atol']:g}, "
        f"prob_atol {t['prob_atol']:g}",
        "probabilities": f"prob_atol {t['prob_atol']:g}, lambda_c, flips",
        "flips": "flips and non-finite steps",
    }[c.level]
    if ref.dtype == "float16":
        tol += ", each plus float16 rounding"
    lines = [
        f"explanation run differs from the reference {ref.path} in {len(c.mismatches)} place"
        f"{'s' if len(c.mismatches) != 1 else ''} ({', '.join(f'{v} {k}' for k, v in kinds.items())}; "
        f"{N} images, {L} iterations; level {c.level!r}: {tol}); worst first:"
    ]
    lines += ["  " + m.text for m in c.mismatches[:max_report]]
    if len(c.mismatches) > max_report:
        lines.append(f"  ... and {len(c.mismatches) - max_report} more")
    lines.append(f"reference made with: {_describe_environment(ref.environment)}")
    if current_env is not None:
        lines.append(f"this run:            {_describe_environment(current_env)}")
    lines.append(
        f"(results match bitwise only on the same machine and build; if the change is intended, rerun with "
        f"{UPDATE_ENV}=1 to rewrite the reference)"
    )
    return "\n".join(lines)


def assert_matches_reference(
    result: Any,
    reference: PathLike | Reference,
    *,
    level: str = "pixels",
    atol: float | None = None,
    rtol: float | None = None,
    mean_atol: float | None = None,
    prob_atol: float | None = None,
    x: np.ndarray | None = None,
    input_atol: float | None = None,
    settings: Mapping[str, Any] | None = None,
    max_report: int = 8,
) -> Comparison:
    """Raises AssertionError listing the worst differences (image, iteration, distance, tolerance) when `result`
    does not match the reference within the tolerances; returns the Comparison otherwise.

    level: "pixels" (default) compares the counterfactuals' pixels (each within atol + rtol |ref|, and each image's
    mean |diff| within mean_atol), the target probabilities (prob_atol), lambda_c, flips and non-finite steps;
    "probabilities" all but the pixels; "flips" only flips and non-finite steps. Tolerances left None take
    DEFAULT_TOLERANCES. settings (e.g. :func:`run_settings`): compared first with the stored ones. x: the inputs,
    compared with the stored ones (input_atol).

    The noise of each image follows its pixels: for a result you compute yourself, pass the stored keys and seed,
    ``explainer.explain(x, target=ref.target, seed=ref.seed, keys=ref.keys)``, so that inputs differing in the
    last bits still draw the reference's noise (check_explainer_regression does this).
    """
    __tracebackhide__ = True
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    if settings is not None:
        _assert_settings_match(settings, ref)
    c = compare_runs(
        result,
        ref,
        level=level,
        atol=atol,
        rtol=rtol,
        mean_atol=mean_atol,
        prob_atol=prob_atol,
        x=x,
        input_atol=input_atol,
    )
    if c.mismatches:
        raise AssertionError(_failure_message(c, max_report, environment()))
    return c


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def settings_differences(settings: Mapping[str, Any], reference: PathLike | Reference) -> list[str]:
    """'name: value (reference: value)' for every setting that differs from the stored ones."""
    from .explain.explainer import ExplainerConfig

    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    now, then = _flatten(_json(dict(settings))), _flatten(ref.settings)
    # a method setting newer than the reference (e.g. precision) counts as its default there
    defaults = _flatten(_json(dict(method=dataclasses.asdict(ExplainerConfig()))))
    missing = object()
    out = []
    for k in sorted(set(now) | set(then)):
        a, b = now.get(k, missing), then.get(k, defaults.get(k, missing))
        if a != b:
            out.append(
                f"{k}: {'(not set)' if a is missing else json.dumps(a)} "
                f"(reference: {'(not set)' if b is missing else json.dumps(b)})"
            )
    return out


def _assert_settings_match(settings: Mapping[str, Any], ref: Reference) -> None:
    __tracebackhide__ = True
    diffs = settings_differences(settings, ref)
    if diffs:
        raise AssertionError(
            f"the run's settings differ from those of the reference {ref.path}, so its results "
            f"cannot be compared:\n"
            + "\n".join("  " + d for d in diffs)
            + f"\n(if the change is intended, rerun with {UPDATE_ENV}=1 to rewrite the reference)"
        )


# ---- the one-call check ----


def _update_requested(update: bool | None) -> bool:
    if update is not None:
        return bool(update)
    return os.environ.get(UPDATE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def check_explainer_regression(
    explainer: Any,
    x: np.ndarray,
    reference: PathLike,
    *,
    target: Any = 1,
    seed: int = 0,
    level: str = "pixels",
    atol: float | None = None,
    rtol: float | None = None,
    mean_atol: float | None = None,
    prob_atol: float | None = None,
    input_atol: float | None = None,
    settings: Mapping[str, Any] | None = None,
    update: bool | None = None,
    dtype: str = "float32",
    store_inputs: bool = True,
    max_report: int = 8,
) -> Any:
    """Explains x with `explainer` and asserts the run matches the reference file; returns the ExplanationResult.

    - reference missing: the run is written there and the test fails ("wrote ...; look at it, commit it, run
      again"), so that a reference never silently goes missing in CI;
    - update=True, or the environment variable DIFFICE_UPDATE_REFERENCE=1 (when update is None): the run is
      written (replacing the file) and the test is skipped (pytest.skip; outside pytest, a warning);
    - otherwise the settings (run_settings(explainer, x, target, seed, settings): the method, diffusion, image
      shape, target, seed, and your own `settings` entries) are compared with the stored ones first (a clear
      failure, without running, when any differs), then x with the stored inputs (input_atol), then x is
      explained with the stored noise keys and compared (assert_matches_reference: level and tolerances).

    dtype / store_inputs: how a new reference is written (save_reference).
    """
    __tracebackhide__ = True
    path = Path(reference)
    x = np.asarray(x)
    current = run_settings(explainer, x, target, seed, settings)
    if _update_requested(update) or not path.exists():
        existed = path.exists()
        result = explainer.explain(x, target=target, seed=seed)
        save_reference(
            path,
            result,
            x,
            current,
            target=target,
            seed=seed,
            dtype=dtype,
            store_inputs=store_inputs,
            explainer=explainer,
        )
        L, N = result.counterfactuals.shape[:2]
        what = f"{N} images, {L} iterations, {path.stat().st_size} bytes"
        if _update_requested(update):
            msg = f"{'rewrote' if existed else 'wrote'} the reference run {path} ({what}); nothing was compared"
            _skip(msg)
            return result
        _fail(
            f"the reference run {path} did not exist; wrote it from this run ({what}): look at it "
            f"(python -m diffice.testing show {path}), commit it, and run the test again"
        )
        return result
    ref = load_reference(path)
    _assert_settings_match(current, ref)
    bad = _input_mismatches(x, ref, _tolerances(dict(input_atol=input_atol))["input_atol"])
    if bad:
        raise AssertionError(
            f"the inputs differ from those stored in the reference {path}:\n"
            + "\n".join("  " + m.text for m in bad[:max_report])
            + f"\n(if the change is intended, rerun with {UPDATE_ENV}=1 to rewrite the reference)"
        )
    result = explainer.explain(x, target=target, seed=seed, keys=ref.keys)
    c = compare_runs(result, ref, level=level, atol=atol, rtol=rtol, mean_atol=mean_atol, prob_atol=prob_atol)
    if c.mismatches:
        raise AssertionError(_failure_message(c, max_report, environment(explainer)))
    return result


def _skip(msg: str) -> None:
    try:
        import pytest
    except ImportError:
        import warnings

        warnings.warn(msg, stacklevel=3)
        return
    pytest.skip(msg)


def _fail(msg: str) -> None:
    __tracebackhide__ = True
    try:
        import pytest
    except ImportError:
        raise AssertionError(msg) from None
    pytest.fail(msg, pytrace=False)


# ---- python -m diffice.testing ----


def _show(ref: Reference) -> str:
    L, N = ref.counterfactuals.shape[:2]
    lines = [
        f"{ref.path}: {N} images {tuple(ref.counterfactuals.shape[2:])}, {L} iterations, {ref.dtype}"
        f"{', inputs stored' if ref.x is not None else ''}",
        f"made with: {_describe_environment(ref.environment)}",
        "settings: " + json.dumps(ref.settings, sort_keys=True),
        f"{'image':>5} {'iter':>4} {'p_target':>9} {'lambda_c':>8} {'flipped':>7} {'nonfinite':>9}",
    ]
    for n in range(N):
        lines.append(f"{n:5d} {0:4d} {ref.prob_target[0, n]:9.4f}")
        for l in range(L):
            lines.append(
                f"{n:5d} {l + 1:4d} {ref.prob_target[l + 1, n]:9.4f} {ref.lambda_used[l, n]:8g} "
                f"{str(bool(ref.flipped[l, n])):>7} {_g(ref.nonfinite_step[l, n]):>9}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m diffice.testing", description="Show a reference run, or the distances between two of them."
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("show", help="settings, machine and per-image results of a reference file")
    s.add_argument("reference")
    c = sub.add_parser(
        "compare", help="distances of RUN (another reference file) from REFERENCE; exit 1 when over the tolerances"
    )
    c.add_argument("run")
    c.add_argument("reference")
    c.add_argument("--level", choices=LEVELS, default="pixels")
    for k, v in DEFAULT_TOLERANCES.items():
        if k != "input_atol":
            c.add_argument("--" + k.replace("_", "-"), type=float, default=v)
    args = p.parse_args(argv)
    try:
        return _run_command(args)
    except BrokenPipeError as exc:
        if stdout_closed():  # the reader of the output went away (... show ref | head): stop quietly
            return 141
        print(f"python -m diffice.testing {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # a missing or malformed reference file: one line naming it
        print(f"python -m diffice.testing {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _run_command(args: Any) -> int:
    if args.command == "show":
        print(_show(load_reference(args.reference)))
        return 0
    run, ref = load_reference(args.run), load_reference(args.reference)
    for d in settings_differences(run.settings, ref):
        print("setting differs: " + d)
    comp = compare_runs(
        run,
        ref,
        level=args.level,
        atol=args.atol,
        rtol=args.rtol,
        mean_atol=args.mean_atol,
        prob_atol=args.prob_atol,
        x=run.x,
    )
    print(comp.table())
    if comp.mismatches:
        print(_failure_message(comp, 20, run.environment))
        return 1
    print(f"within the tolerances (level {args.level!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
