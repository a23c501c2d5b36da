"""`diffice sweep`: every unit (one image batch x one configuration) not yet in the store, run on an executor
(this machine or a Dask cluster), each written to the store in one transaction as it finishes."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, TextIO

import numpy as np

from ...data.images import ImageReadError, list_images, load_image, resize
from ...progress import ProgressBar
from ..cluster import LocalExecutor, _load, batches, check_device_here, describe
from ..demo import DEMO_PHANTOM_SEED, demo_phantoms
from ..explainer import check_image_size
from ..run import WriterLock, check_run, model_files_record, warn_training_size
from .config import SweepSpec, config_id, config_label
from .store import SweepStore

# ---- images ----


def load_sweep_images(spec: SweepSpec, stream: TextIO | None = None) -> tuple[list[str], np.ndarray]:
    """The image set: names (sorted) and pixels (N, 1, H, W) float32 in [-1, 1] at [run] image_size. Unreadable
    files are reported on `stream` and left out."""
    height, width = (int(v) for v in spec.cfg["run"]["image_size"])
    size = (height, width)
    if spec.sweep["phantoms"] is not None:
        n = int(spec.sweep["phantoms"])
        if n < 1:
            raise ValueError(f"{spec.source}: [sweep] phantoms must be at least 1, got {n}")
        seed = DEMO_PHANTOM_SEED if spec.sweep["phantom_seed"] is None else int(spec.sweep["phantom_seed"])
        batch = demo_phantoms(n, seed)
        images = resize_phantoms(batch.images, size)
        names = [f"phantom_{i:03d}_{batch.params[i]['failure_mode']}" for i in range(n)]
        return names, np.ascontiguousarray(images, dtype=np.float32)
    files = list_images(spec.sweep["images"])
    names, pixels = [], []
    for f in files:
        try:
            pixels.append(load_image(f, size))
            names.append(f.name)
        except (ImageReadError, ValueError, OSError) as exc:
            print(f"diffice sweep: skipped {f.name}: {exc}", file=stream or sys.stderr)
    if not pixels:
        raise ValueError(f"{spec.sweep['images']}: no readable image")
    return names, np.stack(pixels).astype(np.float32)


def resize_phantoms(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Phantoms (N, 1, h, w) in [-1, 1] at `size` (H, W) (as they are when they already are that size)."""
    if images.shape[-2:] == tuple(size):
        return images
    unit = [np.clip(resize((im[0].astype(np.float64) + 1) / 2, size), 0, 1) for im in images]
    return np.stack([(u * 2 - 1).astype(np.float32)[None] for u in unit])


# ---- running ----


def plan_units(configs: Sequence[dict[str, Any]], n_images: int, batch_size: int) -> list[dict[str, Any]]:
    """Every unit of the sweep: per configuration (in order), consecutive batches of the sorted image set."""
    chunks = batches(list(range(n_images)), batch_size)
    return [
        dict(unit=f"{config_id(c)}-b{b:04d}", config_id=config_id(c), batch=b, image_ids=list(ids), method=c)
        for c in configs
        for b, ids in enumerate(chunks)
    ]


def run_sweep(
    spec: SweepSpec,
    executor: Any = None,
    progress: bool = True,
    models: Any = None,
    stream: TextIO | None = None,
    on_unit: Callable[[int, int, Any], None] | None = None,
) -> dict[str, Any]:
    """Runs every unit of the sweep not yet in the store (spec.store_path) and returns a summary dict.

    executor: where units run (diffice.explain.cluster.open_executor; default: this process, with `models` -- a loaded
    (unet, diffusion, classifier, perceptual) -- or the spec's models loaded once). on_unit(done, total,
    executor) is called after each unit is written (tests, notebooks).

    When the units run now look like a broken setup (diffice.explain.explainer.suspicious_run_message: every input
    already
    the target, or, per configuration, every image the target at the first guided step), a SuspiciousRunWarning is
    emitted, stored in the store's meta 'warnings' (printed with the tables) and listed in the summary's "warnings".
    """
    stream = stream or sys.stderr
    if executor is None and models is None:
        check_device_here(spec.models)  # before the store is made: a device this machine lacks writes nothing
    executor = executor or LocalExecutor(models)
    names, x = load_sweep_images(spec, stream)
    run = spec.cfg["run"]
    if models is None and spec.models.get("source") == "files":
        warn_training_size(spec.models["models"], tuple(run["image_size"]), "[run] image_size")
    meta = dict(
        run=dict(
            image_size=[int(v) for v in run["image_size"]],
            batch_size=int(run["batch_size"]),
            seed=int(run["seed"]),
            target=int(run["target"]),
        ),
        diffusion=spec.cfg["diffusion"],
        models=spec.models,
        store_format=spec.sweep["store_format"],
        image_shape=list(x.shape[1:]),
        base=spec.base,
    )
    if spec.models.get("source") == "files":  # the sha256 of the model files: a resume checks they are the same
        meta["model_files"] = model_files_record(dict(models=spec.models["models"]))
    spec.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    busy = f"{spec.store_path}: another diffice sweep is writing this store"
    lock = spec.store_path.with_name(spec.store_path.name + ".lock")
    with WriterLock(lock, busy), SweepStore(spec.store_path, create=True) as store:
        store.initialise(meta, names, x, spec.configs)
        units = plan_units(spec.configs, len(names), int(run["batch_size"]))
        done = store.finished_units()
        todo = [u for u in units if u["unit"] not in done]
        if todo and isinstance(executor, LocalExecutor):  # the models here and now: a size they cannot take fails now
            if executor.models is None:
                executor.models = _load(spec.models)
            unet, _, classifier, perceptual = executor.models
            try:
                check_image_size(unet, classifier, perceptual, *meta["run"]["image_size"])
            except ValueError as exc:
                raise ValueError(f"{spec.source}: [run] image_size: {exc}") from None
        by_id = {u["unit"]: u for u in todo}
        tasks = (
            dict(
                unit=u["unit"],
                models=spec.models,
                method=u["method"],
                x=x[u["image_ids"]],
                target=int(run["target"]),
                seed=int(run["seed"]),
            )
            for u in todo
        )
        if todo and executor.description != "this machine":
            describe(executor, stream)
        bar = ProgressBar(len(todo), label="sweep", enabled=progress, stream=stream)
        finished = 0
        checks: dict[str, list[dict[str, Any]]] = {}

        def on_step(task, iteration, lambda_index, step, steps, active):
            u = by_id[task["unit"]]
            bar.update(
                finished, note=f"{u['method']['method']} batch {u['batch'] + 1} it {iteration + 1} step {step}/{steps}"
            )

        for result in executor.run(tasks, progress=on_step if progress else None):
            store.write_unit(by_id[result["unit"]], result)
            checks.setdefault(by_id[result["unit"]]["config_id"], []).append(
                {k: result.get(k) for k in ("input_is_target", "first_step_target")}
            )
            finished += 1
            bar.update(finished, note=f"units (last: {result['worker']})", force=True)
            if on_unit is not None:
                on_unit(finished, len(todo), executor)
        bar.close()
        first_steps = {config_id(c): store.first_step_verdicts(config_id(c)) for c in spec.configs}
        found = _check_sweep(checks, spec.configs, int(run["target"]), store.input_verdicts(), first_steps)
        for message in found:
            store.add_warning(message)
    return dict(
        units=len(units),
        ran=finished,
        skipped_done=len(units) - len(todo),
        images=len(names),
        configs=len(spec.configs),
        seconds=time.monotonic() - t_start,
        store=str(spec.store_path),
        warnings=found,
    )


def _check_sweep(
    checks: dict[str, list[dict[str, Any]]],
    configs: Sequence[dict[str, Any]],
    target: int,
    input_verdicts: np.ndarray | None = None,
    first_steps: dict[str, dict[str, np.ndarray] | None] | None = None,
) -> list[str]:
    """The SuspiciousRunWarning checks: every input already the target (once, over the distinct images the store
    holds results of, `input_verdicts`: f's verdict per image, whichever run made them; else over the units run
    now), else every image the target at the first guided step (per configuration, over every finished unit that
    recorded it, `first_steps` (SweepStore.first_step_verdicts), so a resumed sweep is judged whole; else over the
    units run now)."""
    if input_verdicts is not None and len(input_verdicts):
        everything = [dict(input_is_target=input_verdicts)]
    else:
        everything = [dict(input_is_target=r["input_is_target"]) for rs in checks.values() for r in rs]
    message = check_run(everything, target, None, stacklevel=4)
    if message:
        return [message]
    found = []
    for c in configs:
        stored = (first_steps or {}).get(config_id(c))
        rs = [stored] if stored is not None else checks.get(config_id(c))
        message = check_run(rs or [], target, float(c["lambda_c"][0]), label=config_label(c), stacklevel=4)
        if message:
            found.append(message)
    return found
