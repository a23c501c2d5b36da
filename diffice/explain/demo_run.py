"""`diffice demo`: Diff-ICE on the demo phantoms with the bundled models (diffice.explain.demo), the
per-iteration table with MQD's bootstrap interval, and the paper's Figure 3."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..data.images import atomic_write_bytes, list_images, load_image, save_png
from ..data.phantoms import MAX_PHANTOMS
from ..evaluation.figures import path_figure
from ..evaluation.metrics import (
    CI_LEVEL,
    CI_RESAMPLES,
    CI_SEED,
    l1_distance,
    new_saturated_pixel_rate,
    saturated_pixel_rate,
    went_nonfinite,
)
from .config import check_sections, load_config
from .demo import (
    DEMO_BATCH,
    DEMO_DIFFUSION,
    DEMO_FIGURE_ROWS,
    DEMO_METHOD,
    DEMO_N,
    DEMO_SIZE,
    DemoModels,
    PathLike,
    _mean,
    demo_phantoms,
    load_demo_models,
    mqd_interval,
)
from .run import run_explain


def _demo_config(images_batch: int, seed: int) -> dict[str, dict[str, Any]]:
    cfg = load_config(None, {})
    cfg["method"].update(DEMO_METHOD)
    cfg["diffusion"].update(DEMO_DIFFUSION)
    cfg["run"].update(image_size=list(DEMO_SIZE), batch_size=images_batch, seed=seed, target=1)
    return cfg


def _load_pngs(folder: Path, names: Sequence[str]) -> np.ndarray:
    return np.stack([load_image(folder / n, DEMO_SIZE) for n in names]).astype(np.float32)


def run_demo(
    out_dir: PathLike = "diffice-demo",
    images: PathLike | None = None,
    n: int = DEMO_N,
    seed: int = 0,
    models: DemoModels | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Explains n non-standard-plane phantoms (1 to MAX_PHANTOMS; all are made before the first is explained) or
    every image in `images` (resized to 64x80) towards the standard plane and writes, to out_dir: ``inputs/`` (the
    phantoms), one folder per image (input, iterations, strip), ``results.csv`` (per image and iteration),
    ``iterations.csv`` (the table), ``figure.png`` (the paper's Figure 3 for the first DEMO_FIGURE_ROWS images:
    input and each iteration, segmentation overlaid, p(SP) above) and ``summary.json``. Prints the per-iteration
    table to `stream`: f's p(SP) and flip ratio, the oracle's QS, the paper's MQD with its 95% percentile bootstrap
    interval (:func:`mqd_interval`), the L1 change, lambda_c.

    Resumable like ``diffice explain``: images are explained DEMO_BATCH at a time and every finished batch is
    kept. Returns the summary dict.
    """

    if images is None and not (isinstance(n, int) and n >= 1):
        raise ValueError(f"run_demo: n (how many phantoms) must be an int >= 1, got {n!r}")
    if images is None and n > MAX_PHANTOMS:  # all are made, and held, before the first is explained
        raise ValueError(
            f"run_demo: n (how many phantoms) must be at most MAX_PHANTOMS = {MAX_PHANTOMS}, got {n}; for more, write "
            "them with `diffice phantoms` and give the folder as images (--images)"
        )
    cfg = _demo_config(images_batch=DEMO_BATCH, seed=seed)
    if overrides:
        cfg["method"].update({k: v for k, v in overrides.items() if k in cfg["method"]})
    check_sections(cfg)  # a bad seed or override stops here, before anything is written
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
    explainer_models = (models.unet, models.diffusion, models.classifier, models.perceptual)
    summary_run = run_explain(
        cfg,
        str(folder),
        str(out),
        progress=progress,
        models=explainer_models,
        command="diffice demo",
        demo_models=models.record() if isinstance(models, DemoModels) else None,
    )

    # everything below reads the records: a resumed run reports the same as an uninterrupted one
    stems = [Path(nm).stem for nm in names]
    records = [
        json.loads((out / "records" / f"{s}.json").read_text())
        for s in stems
        if (out / "records" / f"{s}.json").exists()
    ]
    done = [r["image"] for r in records]
    stems = [Path(nm).stem for nm in done]
    L = len(records[0]["iterations"]) - 1 if records else 0
    x = _load_pngs(folder, done)
    cfs = (
        np.stack([_load_pngs(out / s, [f"iteration_{l + 1}.png" for l in range(L)]) for s in stems], axis=1)
        if records
        else np.zeros((0,) + x.shape)
    )
    prob = np.array([[r["iterations"][l]["prob_target"] for r in records] for l in range(L + 1)])
    lambdas = np.array([[r["iterations"][l + 1]["lambda_c"] for r in records] for l in range(L)])
    flipped = np.array([[bool(r["iterations"][l + 1]["flipped"]) for r in records] for l in range(L)])
    # counterfactuals whose step went non-finite (the sampler zeroed them) are left out of their iteration's row,
    # as diffice.evaluation.metrics does
    finite = ~np.array(
        [[went_nonfinite(r["iterations"][l + 1]) for r in records] for l in range(L)], dtype=bool
    ).reshape(L, len(records))
    # the oracle (and below, the figure's segmentation) are re-computed on the saved 8-bit PNGs
    qs = np.stack([models.oracle.quality_score(x)] + [models.oracle.quality_score(cfs[l]) for l in range(L)])
    distance = np.array([l1_distance(cfs[l], x) for l in range(L)])
    # pixels pinned at -1/+1 in the PNGs (docs/artefacts.md): all of them, and those the input has none of nearby
    if records:
        saturated = np.stack([saturated_pixel_rate(x)] + [saturated_pixel_rate(cfs[l]) for l in range(L)])
        new_saturated = np.stack([new_saturated_pixel_rate(cfs[l], x) for l in range(L)])

    rows = [
        dict(
            iteration=0,
            mean_p_sp=float(prob[0].mean()),
            flip_ratio=float(np.mean(prob[0] > 0.5)),
            lambda_c="",
            mean_oracle_qs=float(qs[0].mean()),
            mqd="",
            mqd_ci_low="",
            mqd_ci_high="",
            mean_l1_to_input=0.0,
            saturated_pct=100 * _mean(saturated[0]) if records else float("nan"),
            new_saturated_pct=0.0,
        )
    ]
    for l in range(L):
        keep = finite[l]
        used = {float(v): int(np.sum(lambdas[l, keep] == v)) for v in sorted(set(lambdas[l, keep].tolist()))}
        m, low, high = mqd_interval(qs[0, keep], qs[l + 1, keep]) if keep.any() else (np.nan,) * 3
        rows.append(
            dict(
                iteration=l + 1,
                mean_p_sp=_mean(prob[l + 1, keep]),
                flip_ratio=_mean(flipped[l, keep]),
                lambda_c=" ".join(f"{v:g}x{c}" for v, c in used.items()),
                mean_oracle_qs=_mean(qs[l + 1, keep]),
                mqd=m,
                mqd_ci_low=low,
                mqd_ci_high=high,
                mean_l1_to_input=_mean(distance[l, keep]),
                saturated_pct=100 * _mean(saturated[l + 1, keep]),
                new_saturated_pct=100 * _mean(new_saturated[l, keep]),
                excluded_nonfinite=int((~keep).sum()),
            )
        )
    rows[0]["excluded_nonfinite"] = 0
    print(
        f"Diff-ICE on {len(records)} image(s) towards the standard plane (class 1), "
        f"L={L}, tau={cfg['method']['tau']}/{cfg['diffusion']['respacing']}, lambda_p={cfg['method']['lambda_p']}",
        file=stream,
    )
    print(
        f"{'iteration':>9}  {'p(SP)':>6}  {'flip ratio':>10}  {'oracle QS':>9}  {'MQD [95% CI]':<23}  "
        f"{'L1 to x':>7}  lambda_c used",
        file=stream,
    )

    def num(v: Any) -> str:  # rounded first: a bound of -0.0002 prints as 0.000, not -0.000
        return f"{round(float(v), 3) + 0.0:6.3f}"

    for r in rows:
        interval = "" if r["mqd"] == "" else f"{num(r['mqd'])} [{num(r['mqd_ci_low'])}, {num(r['mqd_ci_high'])}]"
        print(
            f"{r['iteration']:>9}  {r['mean_p_sp']:6.3f}  {r['flip_ratio']:10.2f}  {r['mean_oracle_qs']:9.3f}  "
            f"{interval:<23}  {r['mean_l1_to_input']:7.3f}  {r['lambda_c']}",
            file=stream,
        )
    if records:
        print(
            "saturated pixels, % (within 1/255 of -1/+1; new: where the input has none within a pixel): "
            + ", ".join(
                f"{'input' if r['iteration'] == 0 else r['iteration']} {r['saturated_pct']:.2f}"
                + ("" if r["iteration"] == 0 else f" (new {r['new_saturated_pct']:.2f})")
                for r in rows
            ),
            file=stream,
        )
    excluded = [f"{r['iteration']}: {r['excluded_nonfinite']}" for r in rows if r["excluded_nonfinite"]]
    if excluded:
        print(
            f"left out of their iteration's row (the sampler's step went non-finite; iteration: images): "
            f"{', '.join(excluded)}",
            file=stream,
        )
    if records:
        print(
            f"MQD: the paper's, (1/N) sum 1[QS(x) < 0.5] (QS(cf) - QS(x)) over the N = {len(records)} images, "
            f"QS the oracle's;\n{CI_LEVEL:.0%} CI: percentile bootstrap over the images ({CI_RESAMPLES} resamples);\n"
            f"p(SP), flip ratio: f's on the run's float images, over all N images (iteration 0: the inputs f already "
            f"calls SP);\nthe paper's FR (only the inputs f calls NSP, judged on the PNGs): diffice metrics",
            file=stream,
        )
    with open(out / "iterations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    if records:
        k = min(DEMO_FIGURE_ROWS, len(records))  # the first k images: a rule, not a choice by hand
        seg = np.stack(
            [models.classifier.forward(x[:k]).segmentation_labels]
            + [models.classifier.forward(cfs[l, :k]).segmentation_labels for l in range(L)]
        )
        fig = path_figure(
            x[:k],
            cfs[:, :k],
            prob[:, :k],
            seg,
            row_titles=[s[:24] for s in stems[:k]],
            scale=2,
            class_names=models.segmentation_classes or None,
        )
        save_png(out / "figure.png", fig)
    summary = dict(
        images=len(records),
        explained_now=summary_run["explained"],
        iterations=rows,
        seconds=summary_run["seconds"],
        out=str(out),
        figure=str(out / "figure.png"),
        figure_rows=stems[:DEMO_FIGURE_ROWS],
        mqd_interval=f"{CI_LEVEL:.0%} percentile bootstrap over the images, {CI_RESAMPLES} resamples, seed {CI_SEED}",
    )

    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(
        f"wrote {out / 'figure.png'}, {out / 'results.csv'}, {out / 'iterations.csv'}, {out / 'summary.json'} "
        f"({summary_run['seconds']:.0f} s)",
        file=stream,
    )
    return summary
