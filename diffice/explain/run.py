"""`diffice explain`: counterfactuals for a folder of images, resumable.

Every finished image gets its PNGs and a JSON record, each written atomically (temporary file + rename); the
results table (results.csv) is rebuilt from the records after every batch. A run stopped at any moment (Ctrl-C, a
crash, a killed job) restarts where it stopped: images with a record are skipped, nothing finished is redone or
lost, nothing half-written is left behind. Images that cannot be read are listed in errors.csv and skipped.

The run config (TOML sections [models], [diffusion], [method], [run]) is diffice.explain.config's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageReadError, atomic_write_bytes, list_images, load_image, save_png, strip
from ..io import file_digest, read_json
from .config import MODEL_FILE_KEYS, SECTIONS, check_lambda_p, check_sections
from .demo import MODELS_DIR, describe_record, models_folder, models_record, records_differ
from .explainer import ExplainerConfig, ModelSizeWarning, iterations_run


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """rows as CSV; an image name that is not UTF-8 (a Latin-1 name under LANG=C, which Python reads with
    surrogate escapes) is written as the bytes of the file's name, as os.fsencode gives them."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode(errors="surrogateescape"))


RESULT_FIELDS = ["image", "iteration", "lambda_c", "prob_target", "flipped", "nonfinite_step", "seconds"]


def rebuild_results(out_dir: Path) -> list[dict[str, Any]]:
    """results.csv from every finished image's record: one row per image and iteration (0 = the input)."""
    rows = []
    for record_path in sorted((out_dir / "records").glob("*.json")):
        record = read_json(record_path)
        for it in record["iterations"]:
            rows.append({"image": record["image"], **it})
    _write_csv(out_dir / "results.csv", rows, RESULT_FIELDS)
    return rows


def _settings(cfg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What decides a run's results (the batch size does not: each image's noise follows its pixels)."""
    run = {k: v for k, v in cfg["run"].items() if k != "batch_size"}
    return json.loads(
        json.dumps(dict(models=cfg["models"], diffusion=cfg["diffusion"], method=cfg["method"], run=run), default=list)
    )


def _same_path(old: Any, now: Any) -> bool:
    return isinstance(old, str) and isinstance(now, str) and bool(old) and os.path.abspath(old) == now


def changed_model_file(recorded: Any, now: dict[str, str] | None) -> tuple[str, str, str] | None:
    """(key, recorded sha256, sha256 now) of the first model file whose contents changed since a run recorded them
    (model_files_record; both a results folder and a sweep store keep one), None when none did."""
    now = now or {}
    for key, digest in recorded.items() if isinstance(recorded, dict) else ():
        if key in now and now[key] != digest:
            return key, str(digest), now[key]
    return None


def model_files_record(cfg: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What a run records of the model files it loads from its settings (run_settings.json "model_files"): the
    sha256 of each file [models] unet, classifier and perceptual name, so that a resumed run knows the files at
    those paths are still the ones that made its results."""
    models = cfg["models"]
    return {key: file_digest(models[key]) for key in MODEL_FILE_KEYS if models[key] and Path(models[key]).is_file()}


def _check_same_settings(
    out: Path,
    cfg: dict[str, dict[str, Any]],
    demo_models: dict[str, Any] | None = None,
    model_files: dict[str, str] | None = None,
) -> bool:
    """A resumed run must use the settings of the records already there (run_settings.json), and the same demo
    models or model files where it recorded them. Returns whether there is no run_settings.json yet (the caller
    writes it once the run has started: :func:`_write_settings`)."""
    path = out / "run_settings.json"
    now = _settings(cfg)
    if path.exists():
        before = read_json(path)
        old_models = before.get("demo_models") if isinstance(before, dict) else None
        if isinstance(old_models, dict) and demo_models is not None:
            why = records_differ(old_models, demo_models, demo_models["folder"] or MODELS_DIR)
            if why is not None or old_models.get("folder") != demo_models["folder"]:
                raise ValueError(
                    f"{out} holds results made with {describe_record(old_models)}, not {describe_record(demo_models)}"
                    f"{f' ({why})' if why else ''}; use another output folder, or the same models to resume"
                )
        # a key newer than the folder's settings counts as its default; a model path recorded relative (by an older
        # diffice, from a flag) is the file it names from here, where the resume runs
        diff = [
            f"{section}.{key}: {old!r} -> {value!r}"
            for section, values in now.items()
            for key, value in values.items()
            if (old := before.get(section, {}).get(key, SECTIONS[section].get(key))) != value
            and not (section == "models" and key in MODEL_FILE_KEYS and _same_path(old, value))
        ]
        if diff:
            raise ValueError(
                f"{out} holds results made with other settings ({'; '.join(diff)}); use another "
                f"output folder, or the same settings to resume"
            )
        changed = changed_model_file(before.get("model_files"), model_files)
        if changed is not None:
            key, then, digest = changed
            raise ValueError(
                f"{out} holds results made with another {key} file: {cfg['models'][key]} has changed since "
                f"(sha256 {digest[:12]}..., the run's {then[:12]}...); use another output folder, or the same model "
                "file to resume"
            )
        return False
    return True


def _write_settings(
    out: Path,
    cfg: dict[str, dict[str, Any]],
    demo_models: dict[str, Any] | None,
    model_files: dict[str, str] | None,
    images_given: int,
    new: bool,
) -> None:
    """Writes run_settings.json: the settings (new: a run's first), the demo models that made it (demo_models:
    diffice.explain.demo.models_record, where the run used demo models) or the model files' sha256 (model_files:
    :func:`model_files_record`, where the run loaded them from its settings) and how many images this run was given
    (images_given: a later `diffice metrics` / `pairs` says when fewer are explained)."""
    path = out / "run_settings.json"
    data = _settings(cfg) if new or not path.is_file() else read_json(path)
    if demo_models is not None and new:  # a folder of an older diffice: which models made it is not known
        data["demo_models"] = demo_models
    if model_files is not None and new:
        data["model_files"] = model_files
    data["images_given"] = images_given
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


class OutputFolderError(OSError):
    """The output folder cannot be created or written (the message names it and the system's reason)."""


def output_folder_error(out: Path, exc: OSError) -> OutputFolderError:
    reason = exc.strerror or str(exc)
    if exc.filename is not None and Path(exc.filename) != out:
        reason += f" ({exc.filename})"
    return OutputFolderError(f"cannot write the output folder {out}: {reason}")


def _make_output_folder(out: Path) -> list[Path]:
    """Creates out/records (and out, and its missing parents); returns the folders created, outermost first.
    OutputFolderError naming out and the reason when it cannot."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"cannot write the output folder {out}: it is a file, not a folder")
    created: list[Path] = []
    missing, p = [], out / "records"
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    except OSError as exc:
        _remove_created(created)
        raise output_folder_error(out, exc) from None
    return created


def _remove_created(created: list[Path]) -> None:
    """Removes the folders this run created, innermost first, where they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


class RunBusyError(BlockingIOError):
    """Another process is writing the same results (a run folder, a sweep's store): the lock is taken. An OSError, so
    every command reports it as one line."""


class WriterLock:
    """`with WriterLock(lock_path, busy):` holds an exclusive lock on lock_path (created if missing) while one process
    writes a run's outputs: a second writer gets RunBusyError(busy) at once instead of redoing the same work beside
    it. The system releases the lock when the process ends, however it ends; the file stays."""

    def __init__(self, path: Path, busy: str) -> None:
        self.path, self.busy = path, busy
        self.fd: int | None = None

    def __enter__(self) -> WriterLock:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise RunBusyError(self.busy) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


LOCK_FILE = ".diffice-explain.lock"


def _finished(out: Path, files: list[Path], digests: dict[str, str]) -> set[str]:
    """The stems of the images out already holds complete results of: a record and every PNG it implies. An image
    whose PNGs went missing is redone; one whose file is not the one explained (another file name or other bytes
    under the same stem) is a ValueError: its results would be another image's. digests: the files' file_digest by
    stem, filled here and reused (a file is hashed once per run)."""
    by_stem = {f.stem: f for f in files}
    done = set()
    for record_path in (out / "records").glob("*.json"):
        f = by_stem.get(record_path.stem)
        if f is None:
            continue
        record = read_json(record_path)
        same_name = record.get("image") == f.name
        if not same_name or ("input_sha256" in record and record["input_sha256"] != _digest(f, digests)):
            what = f"was {record.get('image')!r}" if not same_name else "has other bytes"
            raise ValueError(
                f"{f}: {out / f.stem} holds the results of another image ({what}); explain into another output "
                f"folder, or delete {record_path} to explain this one there"
            )
        iterations = len(record.get("iterations", [])) - 1
        pngs = ["input.png", "strip.png"] + [f"iteration_{k}.png" for k in range(1, iterations + 1)]
        if iterations >= 1 and all((out / f.stem / name).is_file() for name in pngs):
            done.add(f.stem)
    return done


def _digest(f: Path, digests: dict[str, str]) -> str:
    if f.stem not in digests:
        digests[f.stem] = file_digest(f)
    return digests[f.stem]


def _classifier_outputs(classifier: Any) -> int | None:
    """The number of logits of a loaded guiding classifier f where it says so without a forward (num_classes of a
    SonoNet, TargetClassView or ConceptOracle-like network; a PlaneClassifier's head), else None."""
    n = getattr(classifier, "num_classes", None)
    if n is None:
        n = getattr(getattr(classifier, "classifier", None), "num_classes", None)
    return int(n) if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 else None


def check_run_target(target: int, classifier: Any, models: dict[str, Any]) -> None:
    """ValueError naming [run] target (--target) and the classes of f when target is not one of them, at start-up
    (the sampler's own check names neither the option nor, with SonoNet, the --target-class it is mixed up with)."""
    outputs = _classifier_outputs(classifier)
    if outputs is None:
        return
    classes = max(outputs, 2)  # a single logit is binary
    if 0 <= target < classes:
        return
    message = (
        f"run.target (--target) {target} is not a class of the guiding classifier f ({classes} classes, "
        f"0..{classes - 1}); --target is the class the counterfactuals move towards"
    )
    if models.get("classifier_kind") == "sononet":
        message += (
            f" (1 = the standard plane, 0 = any other class); which of SonoNet's classes is the standard plane is "
            f"--target-class ([models] target_class, now {models.get('target_class')})"
        )
    raise ValueError(message)


class SonoNetSizeWarning(UserWarning):
    """The released SonoNet weights (a file without diffice's description: the authors' .npz or a port of it) run
    at another image size than the 224 x 288 they were trained on: their probabilities there are not SonoNet's."""


SONONET_SIZE = (224, 288)


def warn_sononet_size(models: dict[str, Any], size: tuple[int, ...]) -> None:
    """SonoNetSizeWarning when [models] classifier_kind = "sononet" names a third-party SonoNet file (no diffice_model
    metadata: the authors' weights, trained on 224 x 288 frames) and the run's image size is another: SonoNet is
    convolutional and runs at any size, but at 64 x 80 the real SonoNet-16 calls 3 of 4 HC18 heads Brain (Tv.)."""
    from ..models.files import read_model_file

    path = models.get("classifier")
    if models.get("classifier_kind") != "sononet" or not path or tuple(size) == SONONET_SIZE:
        return
    try:
        metadata = read_model_file(path)[1]
    except (ValueError, OSError):
        return
    if "diffice_model" in metadata:
        return  # a SonoNet trained or saved by diffice: its size is its own
    warnings.warn(
        f"{path}: SonoNet weights without a diffice description (the authors' release, trained on "
        f"{SONONET_SIZE[0]} x {SONONET_SIZE[1]} frames) run at --image-size {size[0]} {size[1]}; their probabilities "
        f"at that size are not SonoNet's (the README's SonoNet section: explain at 224 288, or upsample as "
        f"benchmarks/hc18_workflow.py does)",
        SonoNetSizeWarning,
        stacklevel=3,
    )


def warn_training_size(models: dict[str, Any], size: tuple[int, ...], option: str = "--image-size") -> None:
    """ModelSizeWarning for each [models] unet / classifier file whose diffice training record
    (diffice.models.files.training_record: diffice train ddpm | classifier record the size they trained at) names
    another size than the run's (option: the setting that gave it, for the message)."""
    from ..io import peek_safetensors_metadata
    from ..models.description import trained_size

    for key in ("unet", "classifier"):
        path = models.get(key)
        trained = trained_size(peek_safetensors_metadata(path)) if path else None
        if trained is None or trained == tuple(size):
            continue
        warnings.warn(
            f"{path}: [models] {key} was trained at {trained[0]} x {trained[1]} pixels (its diffice_training "
            f"metadata), but runs at {option} {size[0]} {size[1]}: at a size it never saw its results are not the "
            f"ones it learned; give {option} {trained[0]} {trained[1]}",
            ModelSizeWarning,
            stacklevel=3,
        )


def _remove_stale_temporaries(out: Path) -> None:
    """Deletes the '.<name>*.tmp' files atomic_write_bytes leaves when a run is killed (SIGKILL, power loss) between
    writing a temporary file and renaming it: never an output, only litter."""
    for tmp in list(out.glob(".*.tmp")) + list(out.glob("*/.*.tmp")):
        try:
            tmp.unlink()
        except OSError:
            pass


def run_explain(
    cfg: dict[str, dict[str, Any]],
    images_dir: str,
    out_dir: str,
    progress: bool = True,
    models: Any = None,
    executor: Any = None,
    command: str = "diffice explain",
    demo_models: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Explains every image in images_dir into out_dir (see the module docstring). Returns a summary dict.

    command: what the lines printed about skipped images start with (the CLI command that runs this).
    demo_models: what run_settings.json records of the demo models given as `models`
    (diffice.explain.demo.DemoModels.record(); with [models] preset = "demo" and no `models` it is found here).

    models: optional (unet, diffusion, classifier, perceptual) already loaded (tests, notebooks, the demo).
    executor: where the batches run (diffice.explain.cluster.open_executor: a Dask cluster); default this process.
    Whatever runs them, only this process writes the outputs, one finished batch at a time.

    When the images explained now look like a broken setup (every input already the target, or every image the
    target at the first guided step: diffice.explain.explainer.suspicious_run_message), a SuspiciousRunWarning is
    emitted,
    appended to out_dir/warnings.json and listed in the summary's "warnings".
    """
    from .cluster import LocalExecutor, _load, check_device_here, models_spec
    from .explainer import Explainer

    # start-up: everything is checked (images, settings, models) before anything is written to out
    out = Path(out_dir)
    check_sections(cfg)  # a config built or changed in code gets load_config's checks
    files = list_images(images_dir)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ValueError(
                f"{images_dir}: {stems[f.stem].name} and {f.name} share the file name stem {f.stem!r}; rename one "
                "(outputs are named by stem)"
            )
        stems[f.stem] = f
    run = cfg["run"]
    size = tuple(int(v) for v in run["image_size"])
    method = {k: v for k, v in cfg["method"].items()}
    config = ExplainerConfig(**method)
    config.validate()
    if executor is not None and models is not None:
        raise ValueError("run_explain: give models (loaded here) or an executor (models from cfg), not both")
    if models is None:
        check_lambda_p(cfg["models"], config.lambda_p)
    if demo_models is None and models is None and cfg["models"].get("preset") == "demo":
        demo_models = models_record(models_folder(None))  # what load_demo_models(None) reads
    # models loaded here from the settings' files: their sha256 is recorded (a resume checks the files are the same)
    model_files = model_files_record(cfg) if models is None and demo_models is None else None
    new_settings = _check_same_settings(out, cfg, demo_models, model_files) if out.is_dir() else True
    digests: dict[str, str] = {}  # each image's file_digest, for the resume checks and its record
    todo = [f for f in files if f.stem not in _finished(out, files, digests)]
    spec = models_spec(cfg)
    executor = executor or LocalExecutor(models)
    if todo and isinstance(executor, LocalExecutor):  # load the models here and now: a bad file fails now
        if executor.models is None:
            check_device_here(spec)
            executor.models = _load(spec)
        explainer = Explainer(*executor.models, **method)  # checks the models against the settings (e.g. tau)
        try:
            explainer.check_image_size(*size)
        except ValueError as exc:
            raise ValueError(f"run.image_size (--image-size): {exc}") from None
        check_run_target(int(run["target"]), executor.models[2], cfg["models"])
    if models is None:
        warn_sononet_size(cfg["models"], size)
        warn_training_size(cfg["models"], size)
    created = _make_output_folder(out)
    busy = f"{out}: another diffice run is writing this folder; wait for it to finish, or use another output folder"
    try:
        with WriterLock(out / LOCK_FILE, busy):
            todo = [f for f in files if f.stem not in _finished(out, files, digests)]  # what a writer before left
            return _run(
                cfg,
                out,
                files,
                todo,
                method,
                config,
                size,
                spec,
                executor,
                progress,
                new_settings,
                command,
                digests,
                demo_models,
                model_files,
            )
    except BaseException as exc:
        # a run that failed before finishing any image leaves nothing of its own behind (never a previous run's)
        if not isinstance(exc, RunBusyError) and not any((out / "records").glob("*.json")):
            if new_settings:
                try:
                    (out / "run_settings.json").unlink()
                except OSError:
                    pass
            if created:
                try:
                    (out / LOCK_FILE).unlink()
                except OSError:
                    pass
            _remove_created(created)
        raise


def _run(
    cfg: dict[str, dict[str, Any]],
    out: Path,
    files: list[Path],
    todo: list[Path],
    method: dict[str, Any],
    config: ExplainerConfig,
    size: Any,
    spec: dict[str, Any],
    executor: Any,
    progress: bool,
    new_settings: bool,
    command: str,
    digests: dict[str, str],
    demo_models: dict[str, Any] | None = None,
    model_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    from ..progress import ProgressBar
    from .cluster import batches, describe

    try:
        _write_settings(out, cfg, demo_models, model_files, len(files), new_settings)
    except OSError as exc:
        raise output_folder_error(out, exc) from None
    _remove_stale_temporaries(out)
    run = cfg["run"]
    iterations = iterations_run(config.method, config.iterations)
    steps_per_image = iterations * config.tau
    batch_size = int(run["batch_size"])  # >= 1: check_sections
    errors: list[dict[str, Any]] = []
    bar = ProgressBar(len(todo) * steps_per_image, label="explain", enabled=progress)
    finished = 0
    skipped = len(files) - len(todo)
    t_start = time.monotonic()
    pending: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []

    def tasks():
        for b, chunk in enumerate(batches(todo, batch_size)):
            batch_files, batch = [], []
            for f in chunk:
                try:
                    batch.append(load_image(f, size))
                    batch_files.append(f)
                    _digest(f, digests)
                except (ImageReadError, ValueError, OSError) as exc:
                    errors.append({"image": f.name, "error": str(exc)})
            if not batch:
                continue
            x = np.stack(batch).astype(np.float32)
            pending[f"batch{b:05d}"] = (batch_files, x)
            yield dict(
                unit=f"batch{b:05d}", models=spec, method=method, x=x, target=int(run["target"]), seed=int(run["seed"])
            )

    def on_step(task, iteration, lambda_index, step, steps, active):
        n = len(task["x"])
        bar.update(
            finished * steps_per_image + n * (iteration * steps + step),
            note=f"images {finished}/{len(todo)} it {iteration + 1} lambda#{lambda_index + 1} "
            f"step {step}/{steps} active {active}",
        )

    if todo and executor.description != "this machine":
        describe(executor)
    for result in executor.run(tasks(), progress=on_step if progress else None):
        batch_files, x = pending.pop(result["unit"])
        _write_batch(out, batch_files, x, result, int(run["target"]), digests)
        checks.append({k: result.get(k) for k in ("input_is_target", "first_step_target")})
        finished += len(batch_files)
        bar.update(finished * steps_per_image, note=f"images {finished}/{len(todo)}", force=True)
        rebuild_results(out)
    bar.close()
    rows = rebuild_results(out)
    if errors:
        _write_csv(out / "errors.csv", errors, ["image", "error"])
        for e in errors:
            print(f"{command}: skipped {e['image']}: {e['error']}", file=sys.stderr)
    # stacklevel 4: the warning names the line that called run_explain (a notebook cell), not run_explain's own
    found = check_run(checks, int(run["target"]), float(tuple(config.lambda_c)[0]), stacklevel=4)
    if found:
        record_warning(out / WARNINGS_FILE, found, images=finished)
    return dict(
        images=len(files),
        explained=finished,
        skipped_done=skipped,
        failed=len(errors),
        rows=len(rows),
        seconds=time.monotonic() - t_start,
        warnings=[found] if found else [],
    )


WARNINGS_FILE = "warnings.json"


def check_run(
    results: list[dict[str, Any]], target: int, lambda_c: float | None, label: str = "", stacklevel: int = 3
) -> str | None:
    """diffice.explain.explainer.suspicious_run_message over every image of these unit results
    (diffice.explain.cluster.compute_unit:
    their input_is_target and first_step_target); emits it as a SuspiciousRunWarning (prefixed with label) and
    returns it (None: nothing suspicious)."""
    import warnings

    from .explainer import SuspiciousRunWarning, suspicious_run_message

    if not results:
        return None
    inputs = np.concatenate([np.asarray(r["input_is_target"], bool).ravel() for r in results])
    first = None
    if all(r.get("first_step_target") is not None for r in results):
        first = np.concatenate([np.asarray(r["first_step_target"], bool).ravel() for r in results])
    message = suspicious_run_message(inputs, first, target=target, lambda_c=lambda_c)
    if message and label:
        message = f"{label}: {message}"
    if message:
        warnings.warn(message, SuspiciousRunWarning, stacklevel=stacklevel)
    return message


def warning_entry(message: str, **details: Any) -> dict[str, Any]:
    """A SuspiciousRunWarning as recorded with a run's results (warnings.json, the sweep store's meta)."""
    return dict(
        warning="SuspiciousRunWarning",
        message=message,
        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **details,
    )


def record_warning(path: Path, message: str, **details: Any) -> None:
    """Appends a warning to a JSON list file (the run's warnings.json), atomically."""
    entries = read_json(path) if path.is_file() else []
    entries.append(warning_entry(message, **details))
    atomic_write_bytes(path, (json.dumps(entries, indent=1) + "\n").encode())


def _write_batch(
    out: Path, batch_files: list[Path], x: np.ndarray, result: dict[str, Any], target: int, digests: dict[str, str]
) -> None:
    """Every image's PNGs, then its record (its presence means every file of this image is complete); the record
    keeps the sha256 of the image file (digests, by stem), so a resumed run knows the file is still the same."""
    seconds = float(result["batch_seconds"])
    for b, f in enumerate(batch_files):
        img_dir = out / f.stem
        cfs = result["counterfactuals"][:, b]
        for l in range(len(cfs)):
            save_png(img_dir / f"iteration_{l + 1}.png", cfs[l])
        save_png(img_dir / "input.png", x[b])
        save_png(img_dir / "strip.png", strip([x[b]] + list(cfs)))
        iterations_rows = [
            dict(
                iteration=0,
                lambda_c="",
                prob_target=float(result["prob_target"][0, b]),
                flipped="",
                nonfinite_step="",
                seconds="",
            )
        ]
        for l in range(len(cfs)):
            iterations_rows.append(
                dict(
                    iteration=l + 1,
                    lambda_c=float(result["lambda_used"][l, b]),
                    prob_target=float(result["prob_target"][l + 1, b]),
                    flipped=bool(result["flipped"][l, b]),
                    nonfinite_step=int(result["nonfinite_step"][l, b]),
                    seconds=round(seconds / len(batch_files), 3),
                )
            )
        record = dict(image=f.name, input_sha256=digests[f.stem], target=target, iterations=iterations_rows)
        atomic_write_bytes(out / "records" / f"{f.stem}.json", json.dumps(record, indent=1).encode())
