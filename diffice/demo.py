"""`diffice demo`: Diff-ICE on fetal-head phantoms with the models that ship in the package.

The bundled models (``diffice/demo_models/``, trained by diffice on phantoms at 64x80 with
``scripts/train_demo_models.sh``; validation numbers in ``demo.json`` and the README):

- ``ddpm.safetensors``: guided-diffusion UNet (EMA weights), learned sigma, 1000 linear steps;
- ``classifier.safetensors``: f = l(s(x), x), a Segmenter s (background, skull, thalami, csp, posterior_fossa) and
  l a SonoNet-8 on [x, s's probability maps], 2 logits (0 = non-standard plane, 1 = standard plane);
- ``oracle.safetensors``: an independently trained SonoNet-12 with one head per concept (TH, CSP, FP, sharp),
  the judge of the counterfactuals (its quality score QS, :class:`diffice.oracle.ConceptOracle`).

The demo's Diff-ICE settings are the paper's scaled to the small models: L = 5 iterations, tau = 30 of 100
respaced steps (the paper: 120 of 400, the same 30%), lambda_c searched in {40, 60, 80}, and -- no pretrained
perceptual network can ship -- Lp the mean squared pixel distance to the input with lambda_p = DEMO_LAMBDA_P
(3000; of 30, 300 and 3000 tried on the demo phantoms, the one that kept the anatomy: see the README).
By default DEMO_N = 24 phantoms, so that the per-iteration MQD (the paper's Table 2 column) comes with a 95%
interval narrow enough to read (:func:`mqd_interval`).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import numpy as np

from .diffusion import GaussianDiffusion
from .unet import UNet

PathLike = Union[str, "os.PathLike[str]"]

MODELS_DIR = Path(__file__).with_name("demo_models")
DEMO_SIZE = (64, 80)
DEMO_LAMBDA_P = 3000.0  # on the per-pixel mean squared distance: chosen on phantoms (README)
DEMO_METHOD: Dict[str, Any] = dict(method="diff-ice", iterations=5, tau=30, lambda_c=[40.0, 60.0, 80.0],
                                   lambda_p=DEMO_LAMBDA_P)
DEMO_DIFFUSION: Dict[str, Any] = dict(steps=1000, schedule="linear", respacing="100")
DEMO_PHANTOM_SEED = 20261125  # not a seed the models were trained on (training: seed 1)
DEMO_N = 24             # phantoms explained by default: enough for a per-iteration MQD interval (README), ~2 min
DEMO_BATCH = 8          # images per sampler call: a stopped demo keeps every finished batch (resumable)
DEMO_FIGURE_ROWS = 6    # figure.png shows the first 6 images (the phantoms cycle through the 4 failure modes)
CI_LEVEL = 0.95         # MQD's interval: percentile bootstrap over the images
CI_RESAMPLES = 10_000
CI_SEED = 0             # fixed: a resumed demo reports the same interval
FILES = ("ddpm.safetensors", "classifier.safetensors", "oracle.safetensors", "demo.json")

__all__ = ["DemoModels", "load_demo_models", "run_demo", "demo_phantoms", "mqd_interval", "DEMO_METHOD",
           "DEMO_DIFFUSION"]


@dataclass
class DemoModels:
    """What :func:`load_demo_models` returns. ``info``: how they were trained and their validation numbers."""

    unet: UNet
    diffusion: GaussianDiffusion
    classifier: Any          # diffice.PlaneClassifier (class 1 = standard plane)
    oracle: Any              # diffice.oracle.ConceptOracle
    perceptual: Any          # diffice.perceptual.PixelLoss (the demo's Lp)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def segmentation_classes(self) -> List[str]:
        return list(getattr(self.classifier.segmenter, "class_names", None) or [])

    def explainer(self, **overrides: Any):
        """A diffice.Explainer with the demo settings (DEMO_METHOD); keyword arguments override them."""
        from .explain import Explainer

        return Explainer(self.unet, self.diffusion, self.classifier, self.perceptual,
                         **dict(DEMO_METHOD, **overrides))


def load_demo_models(folder: Optional[PathLike] = None, backend: str = "cpu") -> DemoModels:
    """The bundled phantom models (or those in `folder`, or in $DIFFICE_DEMO_MODELS, with the same file names),
    ready for Explainer."""
    from .models import load_model, load_unet
    from .perceptual import PixelLoss

    root = Path(folder or os.environ.get("DIFFICE_DEMO_MODELS") or MODELS_DIR)
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"demo models missing in {root}: {missing} (train them with "
                                f"scripts/train_demo_models.sh WORKDIR, then 'python -m diffice.demo pack WORKDIR')")
    info = json.loads((root / "demo.json").read_text())
    unet = load_unet(root / "ddpm.safetensors", num_heads=int(info["ddpm"]["config"]["num_heads"]), backend=backend)
    diffusion = GaussianDiffusion(DEMO_DIFFUSION["steps"], DEMO_DIFFUSION["schedule"], DEMO_DIFFUSION["respacing"],
                                  learn_sigma=unet.config["learn_sigma"])
    classifier = load_model(root / "classifier.safetensors", backend, expect="PlaneClassifier",
                            what="the demo's classifier")
    oracle = load_model(root / "oracle.safetensors", backend, expect="ConceptOracle", what="the demo's oracle")
    return DemoModels(unet, diffusion, classifier, oracle, PixelLoss("l2", backend=backend), info)


def demo_phantoms(n: int = DEMO_N, seed: int = DEMO_PHANTOM_SEED):
    """n non-standard-plane phantoms (64x80), one of each failure mode in turn (tilted, no_csp, no_th, blurred)."""
    from .phantoms import FAILURE_MODES, PhantomBatch, generate

    modes = list(FAILURE_MODES)
    parts = [generate(1, DEMO_SIZE, seed + i, standard_fraction=0.0, failure_mode=modes[i % len(modes)])
             for i in range(n)]
    return PhantomBatch(images=np.concatenate([p.images for p in parts]),
                        masks=np.concatenate([p.masks for p in parts]), structure_names=parts[0].structure_names,
                        concepts={k: np.concatenate([p.concepts[k] for p in parts]) for k in parts[0].concepts},
                        labels=np.concatenate([p.labels for p in parts]), params=[p.params[0] for p in parts])


def _mean(values: np.ndarray) -> float:
    """The mean, NaN for no values (an iteration whose every counterfactual went non-finite)."""
    return float(np.mean(values)) if np.size(values) else float("nan")


def mqd_interval(qs_x: np.ndarray, qs_cf: np.ndarray, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES,
                 seed: int = CI_SEED) -> Tuple[float, float, float]:
    """(MQD, low, high): the paper's MQD of the N inputs (:func:`diffice.metrics.mqd`) and its percentile bootstrap
    interval at `level`: mqd of `resamples` resamples of the N images with replacement (each image's QS(x) and
    QS(cf) together), their (1 - level) / 2 and (1 + level) / 2 quantiles. Seeded: the same QS give the same
    interval."""
    from .metrics import mqd

    qs_x, qs_cf = np.asarray(qs_x, dtype=np.float64), np.asarray(qs_cf, dtype=np.float64)
    if qs_x.shape != qs_cf.shape or qs_x.ndim != 1 or len(qs_x) == 0:
        raise ValueError(f"mqd_interval: qs_x and qs_cf must be (N,) with N >= 1, got {qs_x.shape} and {qs_cf.shape}")
    idx = np.random.default_rng(seed).integers(0, len(qs_x), size=(resamples, len(qs_x)))
    boot = np.array([mqd(qs_x[i], qs_cf[i]) for i in idx])
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return mqd(qs_x, qs_cf), float(low), float(high)


def _demo_config(images_batch: int, seed: int) -> Dict[str, Dict[str, Any]]:
    from .run import load_config

    cfg = load_config(None, {})
    cfg["method"].update(DEMO_METHOD)
    cfg["diffusion"].update(DEMO_DIFFUSION)
    cfg["run"].update(image_size=list(DEMO_SIZE), batch_size=images_batch, seed=seed, target=1)
    return cfg


def _load_pngs(folder: Path, names: Sequence[str]) -> np.ndarray:
    from .data import load_image

    return np.stack([load_image(folder / n, DEMO_SIZE) for n in names]).astype(np.float32)


def run_demo(out_dir: PathLike = "diffice-demo", images: Optional[PathLike] = None, n: int = DEMO_N, seed: int = 0,
             models: Optional[DemoModels] = None, progress: bool = True, stream: Optional[TextIO] = None,
             overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Explains n non-standard-plane phantoms (or every image in `images`, resized to 64x80) towards the standard
    plane and writes, to out_dir: ``inputs/`` (the phantoms), one folder per image (input, iterations, strip),
    ``results.csv`` (per image and iteration), ``iterations.csv`` (the table), ``figure.png`` (the paper's
    Figure 3 for the first DEMO_FIGURE_ROWS images: input and each iteration, segmentation overlaid, p(SP) above)
    and ``summary.json``. Prints the per-iteration table to `stream`: f's p(SP) and flip ratio, the oracle's QS,
    the paper's MQD with its 95% percentile bootstrap interval (:func:`mqd_interval`), the L1 change, lambda_c.

    Resumable like ``diffice explain``: images are explained DEMO_BATCH at a time and every finished batch is
    kept. Returns the summary dict.
    """
    from .data import list_images, save_png
    from .metrics import went_nonfinite
    from .figures import path_figure
    from .run import run_explain

    stream = stream or sys.stdout
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = models or load_demo_models()
    if images is None:
        batch = demo_phantoms(n)
        folder = out / "inputs"
        names = []
        for i in range(len(batch)):
            name = f"phantom_{i:02d}_{batch.params[i]['failure_mode']}.png"
            if not (folder / name).exists():
                save_png(folder / name, batch.images[i])
            names.append(name)
    else:
        folder = Path(images)
        names = [p.name for p in list_images(folder)]
    cfg = _demo_config(images_batch=DEMO_BATCH, seed=seed)
    if overrides:
        cfg["method"].update({k: v for k, v in overrides.items() if k in cfg["method"]})
    explainer_models = (models.unet, models.diffusion, models.classifier, models.perceptual)
    summary_run = run_explain(cfg, str(folder), str(out), progress=progress, models=explainer_models)

    # everything below reads the records: a resumed run reports the same as an uninterrupted one
    stems = [Path(nm).stem for nm in names]
    records = [json.loads((out / "records" / f"{s}.json").read_text()) for s in stems
               if (out / "records" / f"{s}.json").exists()]
    done = [r["image"] for r in records]
    stems = [Path(nm).stem for nm in done]
    L = len(records[0]["iterations"]) - 1 if records else 0
    x = _load_pngs(folder, done)
    cfs = np.stack([_load_pngs(out / s, [f"iteration_{l + 1}.png" for l in range(L)]) for s in stems], axis=1) \
        if records else np.zeros((0,) + x.shape)
    prob = np.array([[r["iterations"][l]["prob_target"] for r in records] for l in range(L + 1)])
    lambdas = np.array([[r["iterations"][l + 1]["lambda_c"] for r in records] for l in range(L)])
    flipped = np.array([[bool(r["iterations"][l + 1]["flipped"]) for r in records] for l in range(L)])
    # counterfactuals whose step went non-finite (the sampler zeroed them) are left out of their iteration's row,
    # as diffice.metrics does
    finite = ~np.array([[went_nonfinite(r["iterations"][l + 1]) for r in records] for l in range(L)],
                       dtype=bool).reshape(L, len(records))
    # the oracle (and below, the figure's segmentation) are re-computed on the saved 8-bit PNGs
    qs = np.stack([models.oracle.quality_score(x)] + [models.oracle.quality_score(cfs[l]) for l in range(L)])
    distance = np.array([np.abs(cfs[l] - x).mean(axis=(1, 2, 3)) for l in range(L)])

    rows = [dict(iteration=0, mean_p_sp=float(prob[0].mean()), flip_ratio=float(np.mean(prob[0] > 0.5)),
                 lambda_c="", mean_oracle_qs=float(qs[0].mean()), mqd="", mqd_ci_low="", mqd_ci_high="",
                 mean_l1_to_input=0.0)]
    for l in range(L):
        keep = finite[l]
        used = {float(v): int(np.sum(lambdas[l, keep] == v)) for v in sorted(set(lambdas[l, keep].tolist()))}
        m, low, high = mqd_interval(qs[0, keep], qs[l + 1, keep]) if keep.any() else (np.nan,) * 3
        rows.append(dict(iteration=l + 1, mean_p_sp=_mean(prob[l + 1, keep]),
                         flip_ratio=_mean(flipped[l, keep]),
                         lambda_c=" ".join(f"{v:g}x{c}" for v, c in used.items()),
                         mean_oracle_qs=_mean(qs[l + 1, keep]), mqd=m, mqd_ci_low=low, mqd_ci_high=high,
                         mean_l1_to_input=_mean(distance[l, keep]), excluded_nonfinite=int((~keep).sum())))
    rows[0]["excluded_nonfinite"] = 0
    print(f"Diff-ICE on {len(records)} image(s) towards the standard plane (class 1), "
          f"L={L}, tau={cfg['method']['tau']}/{cfg['diffusion']['respacing']}, lambda_p={cfg['method']['lambda_p']}",
          file=stream)
    print(f"{'iteration':>9}  {'p(SP)':>6}  {'flip ratio':>10}  {'oracle QS':>9}  {'MQD [95% CI]':<23}  "
          f"{'L1 to x':>7}  lambda_c used", file=stream)
    for r in rows:
        interval = "" if r["mqd"] == "" else f"{r['mqd']:6.3f} [{r['mqd_ci_low']:6.3f}, {r['mqd_ci_high']:6.3f}]"
        print(f"{r['iteration']:>9}  {r['mean_p_sp']:6.3f}  {r['flip_ratio']:10.2f}  {r['mean_oracle_qs']:9.3f}  "
              f"{interval:<23}  {r['mean_l1_to_input']:7.3f}  {r['lambda_c']}", file=stream)
    excluded = [f"{r['iteration']}: {r['excluded_nonfinite']}" for r in rows if r["excluded_nonfinite"]]
    if excluded:
        print(f"left out of their iteration's row (the sampler's step went non-finite; iteration: images): "
              f"{', '.join(excluded)}", file=stream)
    if records:
        print(f"MQD: the paper's, (1/N) sum 1[QS(x) < 0.5] (QS(cf) - QS(x)) over the N = {len(records)} images, "
              f"QS the oracle's;\n{CI_LEVEL:.0%} CI: percentile bootstrap over the images ({CI_RESAMPLES} resamples)",
              file=stream)
    with open(out / "iterations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    if records:
        k = min(DEMO_FIGURE_ROWS, len(records))  # the first k images: a rule, not a choice by hand
        seg = np.stack([models.classifier.forward(x[:k]).segmentation_labels] +
                       [models.classifier.forward(cfs[l, :k]).segmentation_labels for l in range(L)])
        fig = path_figure(x[:k], cfs[:, :k], prob[:, :k], seg, row_titles=[s[:24] for s in stems[:k]],
                          scale=2, class_names=models.segmentation_classes or None)
        save_png(out / "figure.png", fig)
    summary = dict(images=len(records), explained_now=summary_run["explained"], iterations=rows,
                   seconds=summary_run["seconds"], out=str(out), figure=str(out / "figure.png"),
                   figure_rows=stems[:DEMO_FIGURE_ROWS],
                   mqd_interval=f"{CI_LEVEL:.0%} percentile bootstrap over the images, {CI_RESAMPLES} resamples, "
                                f"seed {CI_SEED}")
    from .data import atomic_write_bytes

    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(f"wrote {out / 'figure.png'}, {out / 'results.csv'}, {out / 'iterations.csv'} "
          f"({summary_run['seconds']:.0f} s)", file=stream)
    return summary


# ---- packing freshly trained models into the package ----

def pack(workdir: PathLike, dest: Optional[PathLike] = None) -> Dict[str, Any]:
    """Copies the models trained by scripts/train_demo_models.sh in workdir into diffice/demo_models (the DDPM's
    EMA weights), with demo.json: the training commands' settings and validation numbers."""
    from .io import load_safetensors, load_safetensors_metadata, save_safetensors

    work = Path(workdir)
    dest = Path(dest) if dest is not None else MODELS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    ema = work / "ddpm" / "ema.safetensors"
    meta = load_safetensors_metadata(ema)
    # float16 files: half the size; the networks compute in float32 (README: the shipped models' accuracy)
    save_safetensors(dest / "ddpm.safetensors", load_safetensors(ema),
                     metadata={k: v for k, v in meta.items() if k in ("format", "diffice_config", "step")},
                     dtype="float16")
    info: Dict[str, Any] = {"ddpm": dict(config=json.loads(meta["diffice_config"]), step=int(meta["step"]),
                                         ema_rate=meta.get("ema_rate"))}
    for part in ("classifier", "oracle", "segmenter", "oracle_segmenter"):
        metrics = json.loads((work / part / "metrics.json").read_text())
        info[part] = metrics
        if part in ("classifier", "oracle"):  # the segmenters are inside these files
            source = work / part / "model.safetensors"
            save_safetensors(dest / f"{part}.safetensors", load_safetensors(source),
                             metadata=load_safetensors_metadata(source), dtype="float16")
    info["trained_by"] = "scripts/train_demo_models.sh"
    (dest / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m diffice.demo")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("pack", help="copy trained demo models from WORKDIR into the package")
    q.add_argument("workdir")
    q.add_argument("--dest", default=None)
    args = p.parse_args(argv)
    print(json.dumps(pack(args.workdir, args.dest), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
