"""The demo's models, settings and phantoms: Diff-ICE on fetal-head phantoms with the models that ship in the
package (`diffice demo` runs it: diffice.explain.demo_run).

The bundled models (``diffice/demo_models/``, trained by diffice on phantoms at 64x80 with
``scripts/train_demo_models.sh``; validation numbers in ``demo.json`` and the README):

- ``ddpm.safetensors``: guided-diffusion UNet (EMA weights), learned sigma, 1000 linear steps;
- ``classifier.safetensors``: f = l(s(x), x), a Segmenter s (background, skull, thalami, csp, posterior_fossa) and
  l a SonoNet-8 on [x, s's probability maps], 2 logits (0 = non-standard plane, 1 = standard plane);
- ``oracle.safetensors``: an independently trained SonoNet-12 with one head per concept (TH, CSP, FP, sharp),
  the judge of the counterfactuals (its quality score QS, :class:`diffice.models.oracle.ConceptOracle`).

The demo's Diff-ICE settings are the paper's scaled to the small models: L = 5 iterations, tau = 30 of 100
respaced steps (the paper: 120 of 400, the same 30%), lambda_c searched in {40, 60, 80}, and -- no pretrained
perceptual network can ship -- Lp the mean squared pixel distance to the input with lambda_p = DEMO_LAMBDA_P
(3000; of 30, 300 and 3000 tried on the demo phantoms, the one that kept the anatomy: see the README).
By default DEMO_N = 24 phantoms, so that the per-iteration MQD (the paper's Table 2 column) comes with a 95%
interval narrow enough to read (:func:`mqd_interval`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..data.phantoms import FAILURE_MODES, PhantomBatch, generate
from ..evaluation.metrics import CI_LEVEL, CI_RESAMPLES, CI_SEED, mean_interval, mqd, mqd_terms
from ..io import file_digest
from ..models.diffusion import GaussianDiffusion, diffusion_from_section
from ..models.unet import UNet
from ..ops._backend import check_backend_name
from .explainer import Explainer

PathLike = Union[str, "os.PathLike[str]"]

MODELS_DIR = Path(__file__).resolve().parents[1] / "demo_models"
DEMO_SIZE = (64, 80)
DEMO_LAMBDA_P = 3000.0  # on the per-pixel mean squared distance: chosen on phantoms (README)
DEMO_METHOD: dict[str, Any] = dict(
    method="diff-ice", iterations=5, tau=30, lambda_c=[40.0, 60.0, 80.0], lambda_p=DEMO_LAMBDA_P
)
# variance "small" (beta~), not the DDPM's learned range: at 100 of 1000 steps the learned variance of the last
# steps is up to 9x beta~ and the guided counterfactuals get saturated blotches (docs/artefacts.md)
DEMO_DIFFUSION: dict[str, Any] = dict(steps=1000, schedule="linear", respacing="100", variance="small")
DEMO_PHANTOM_SEED = 20261125  # not a seed the models were trained on (training: seed 1)
DEMO_N = 24  # phantoms explained by default: enough for a per-iteration MQD interval (README), ~2 min
DEMO_BATCH = 8  # images per sampler call: a stopped demo keeps every finished batch (resumable)
DEMO_FIGURE_ROWS = 6  # figure.png shows the first 6 images (the phantoms cycle through the 4 failure modes)
FILES = ("ddpm.safetensors", "classifier.safetensors", "oracle.safetensors", "demo.json")

__all__ = ["DemoModels", "load_demo_models", "demo_phantoms", "mqd_interval", "DEMO_METHOD", "DEMO_DIFFUSION"]


@dataclass
class DemoModels:
    """What :func:`load_demo_models` returns. ``info``: how they were trained and their validation numbers."""

    unet: UNet
    diffusion: GaussianDiffusion
    classifier: Any  # diffice.PlaneClassifier (class 1 = standard plane)
    oracle: Any  # diffice.models.oracle.ConceptOracle
    perceptual: Any  # diffice.models.perceptual.PixelLoss (the demo's Lp)
    info: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # where they were loaded from (absolute); None: not from a folder

    def __repr__(self) -> str:
        """One line per model and the keys of ``info`` (the dataclass's repr printed every training record)."""
        where = "not from a folder" if self.folder is None else str(self.folder)
        lines = [f"DemoModels({where}; info: {', '.join(self.info)})"]
        lines += [f"  {name}: {getattr(self, name)!r}" for name in ("unet", "diffusion", "classifier", "oracle")]
        lines.append(f"  perceptual: {self.perceptual!r}")
        return "\n".join(lines)

    def record(self) -> dict[str, Any] | None:
        """What a run records of these models (:func:`models_record`); None when they were not loaded from a
        folder."""
        return models_record(self.folder) if self.folder is not None else None

    @property
    def segmentation_classes(self) -> list[str]:
        return list(getattr(self.classifier.segmenter, "class_names", None) or [])

    def explainer(self, **overrides: Any) -> Explainer:
        """A diffice.Explainer with the demo settings (DEMO_METHOD); keyword arguments override them."""
        return Explainer(self.unet, self.diffusion, self.classifier, self.perceptual, **dict(DEMO_METHOD, **overrides))


def load_demo_models(folder: PathLike | None = None, backend: str = "cpu") -> DemoModels:
    """The bundled phantom models (or those in `folder`, or in $DIFFICE_DEMO_MODELS, with the same file names),
    ready for Explainer."""
    from ..models.files import load_model, load_unet
    from ..models.perceptual import PixelLoss

    root = models_folder(folder)
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"demo models missing in {root}: {missing} (train them with "
            f"scripts/train_demo_models.sh WORKDIR, then "
            f"'python -m diffice.explain.demo_pack WORKDIR --dest {root}')"
        )
    info = json.loads((root / "demo.json").read_text())
    check_backend_name(backend)  # before reading any file
    unet = load_unet(root / "ddpm.safetensors", num_heads=int(info["ddpm"]["config"]["num_heads"]), backend=backend)
    diffusion = diffusion_from_section(DEMO_DIFFUSION, unet.config["learn_sigma"])
    classifier = load_model(
        root / "classifier.safetensors", backend, expect="PlaneClassifier", what="the demo's classifier"
    )
    oracle = load_model(root / "oracle.safetensors", backend, expect="ConceptOracle", what="the demo's oracle")
    return DemoModels(
        unet, diffusion, classifier, oracle, PixelLoss("l2", backend=backend), info, folder=root.resolve()
    )


def models_folder(folder: PathLike | None = None) -> Path:
    """The folder :func:`load_demo_models` reads: `folder`, else $DIFFICE_DEMO_MODELS, else the bundled models."""
    return Path(folder or os.environ.get("DIFFICE_DEMO_MODELS") or MODELS_DIR)


# the demo models a run records (run_settings.json "demo_models"): the judges of `diffice metrics`, and the classifier
RECORDED_FILES = ("classifier.safetensors", "oracle.safetensors")


def models_record(folder: PathLike) -> dict[str, Any]:
    """What a run records of the demo models in `folder` (run_settings.json "demo_models"): folder (its absolute
    path; None for the models bundled with diffice) and the sha256 of classifier.safetensors and
    oracle.safetensors (None for a missing file)."""
    root = Path(folder).resolve()
    bundled = root == MODELS_DIR.resolve()
    record: dict[str, Any] = dict(folder=None if bundled else str(root))
    for name in RECORDED_FILES:
        record[_digest_key(name)] = file_digest(root / name) if (root / name).is_file() else None
    return record


def _digest_key(name: str) -> str:
    """The record's key for a file's sha256: "classifier_sha256" for classifier.safetensors."""
    return name.split(".")[0] + "_sha256"


def describe_record(record: dict[str, Any]) -> str:
    """'the bundled demo models' or 'the demo models in FOLDER' (a run_settings.json "demo_models" record)."""
    return "the bundled demo models" if record.get("folder") is None else f"the demo models in {record['folder']}"


def record_mismatch(record: dict[str, Any], folder: PathLike) -> str | None:
    """Why the demo models in `folder` are not those of `record` (run_settings.json "demo_models"): which file is
    missing or differs; None when they are the same."""
    return records_differ(record, models_record(folder), folder)


def records_differ(record: dict[str, Any], now: dict[str, Any], folder: PathLike) -> str | None:
    """Why the models recorded in `now` (:func:`models_record` of `folder`) are not those of `record`: which file is
    missing or differs; None when they are the same."""
    for name in RECORDED_FILES:
        key = _digest_key(name)
        if record.get(key) is None:
            continue
        if now[key] is None:
            return f"{Path(folder) / name} is missing"
        if now[key] != record[key]:
            return f"{Path(folder) / name} differs (sha256 {now[key][:12]}..., the run's {record[key][:12]}...)"
    return None


def demo_phantoms(n: int = DEMO_N, seed: int = DEMO_PHANTOM_SEED) -> PhantomBatch:
    """n non-standard-plane phantoms (64x80), one of each failure mode in turn (tilted, no_csp, no_th, blurred)."""
    modes = list(FAILURE_MODES)
    parts = [
        generate(1, DEMO_SIZE, seed + i, standard_fraction=0.0, failure_mode=modes[i % len(modes)]) for i in range(n)
    ]
    return PhantomBatch(
        images=np.concatenate([p.images for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
        structure_names=parts[0].structure_names,
        concepts={k: np.concatenate([p.concepts[k] for p in parts]) for k in parts[0].concepts},
        labels=np.concatenate([p.labels for p in parts]),
        params=[p.params[0] for p in parts],
    )


def _mean(values: np.ndarray) -> float:
    """The mean, NaN for no values (an iteration whose every counterfactual went non-finite)."""
    return float(np.mean(values)) if np.size(values) else float("nan")


def mqd_interval(
    qs_x: np.ndarray, qs_cf: np.ndarray, level: float = CI_LEVEL, resamples: int = CI_RESAMPLES, seed: int = CI_SEED
) -> tuple[float, float, float]:
    """(MQD, low, high): the paper's MQD of the N inputs (:func:`diffice.evaluation.metrics.mqd`) and its percentile
    bootstrap
    interval at `level`: mqd of `resamples` resamples of the N images with replacement (each image's QS(x) and
    QS(cf) together), their (1 - level) / 2 and (1 + level) / 2 quantiles. Seeded: the same QS give the same
    interval."""
    qs_x, qs_cf = np.asarray(qs_x, dtype=np.float64), np.asarray(qs_cf, dtype=np.float64)
    if qs_x.shape != qs_cf.shape or qs_x.ndim != 1 or len(qs_x) == 0:
        raise ValueError(f"mqd_interval: qs_x and qs_cf must be (N,) with N >= 1, got {qs_x.shape} and {qs_cf.shape}")
    return (mqd(qs_x, qs_cf), *mean_interval(mqd_terms(qs_x, qs_cf), level, resamples, seed))


# ---- packing freshly trained models into the package ----


def pack(workdir: PathLike, dest: PathLike | None = None, replace_bundled: bool = False) -> dict[str, Any]:
    """Copies the models trained by scripts/train_demo_models.sh in workdir into `dest` (the DDPM's EMA weights),
    with demo.json: the training commands' settings and validation numbers. `dest` None is the package's own
    diffice/demo_models: replacing the bundled models needs replace_bundled=True (a ValueError otherwise, before
    anything is written)."""
    from ..io import load_safetensors, load_safetensors_metadata, save_safetensors

    work = Path(workdir)
    dest = Path(dest) if dest is not None else MODELS_DIR
    if dest.resolve() == MODELS_DIR.resolve() and not replace_bundled:
        raise ValueError(
            f"{dest} holds the demo models bundled with diffice; give your own folder with --dest FOLDER (then "
            f"diffice demo --models FOLDER), or --replace-bundled to overwrite the bundled models"
        )
    dest.mkdir(parents=True, exist_ok=True)
    ema = work / "ddpm" / "ema.safetensors"
    meta = load_safetensors_metadata(ema)
    # float16 files: half the size; the networks compute in float32 (README: the shipped models' accuracy)
    save_safetensors(
        dest / "ddpm.safetensors",
        load_safetensors(ema),
        metadata={k: v for k, v in meta.items() if k in ("format", "diffice_config", "step")},
        dtype="float16",
    )
    info: dict[str, Any] = {
        "ddpm": dict(config=json.loads(meta["diffice_config"]), step=int(meta["step"]), ema_rate=meta.get("ema_rate"))
    }
    for part in ("classifier", "oracle", "segmenter", "oracle_segmenter"):
        metrics = json.loads((work / part / "metrics.json").read_text())
        info[part] = metrics
        if part in ("classifier", "oracle"):  # the segmenters are inside these files
            source = work / part / "model.safetensors"
            save_safetensors(
                dest / f"{part}.safetensors",
                load_safetensors(source),
                metadata=load_safetensors_metadata(source),
                dtype="float16",
            )
    info["trained_by"] = "scripts/train_demo_models.sh"
    (dest / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


if __name__ == "__main__":  # the old packing command: run as a module that `import diffice` has already imported
    print(
        "python -m diffice.explain.demo: the packing command is now 'python -m diffice.explain.demo_pack WORKDIR "
        "--dest FOLDER'",
        file=sys.stderr,
    )
    sys.exit(2)
