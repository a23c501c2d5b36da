"""Which models judge a results folder for ``diffice metrics``: the ones the user names, else the demo's for a
``diffice demo`` folder, else the classifier a ``diffice explain`` folder's run_settings.json names. Apart from
diffice.evaluation.metrics because it loads the demo models (diffice.explain.demo), which use the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..explain import demo as demo_module  # looked up per call (tests replace load_demo_models)
from ..io import file_digest, read_json
from ..models.files import load_classifier
from .metrics import PathLike, load_metrics_classifier, load_metrics_oracle, run_settings_models

__all__ = ["load_metrics_models", "recorded_demo_models"]


def recorded_demo_models(settings: Path) -> dict[str, Any] | None:
    """The demo models a run recorded in its run_settings.json ("demo_models": folder, None for the bundled ones,
    and the sha256 of the classifier and oracle files; diffice.explain.demo.models_record); None for a run that
    recorded none (no demo models, or a folder of an older diffice)."""
    if not settings.is_file():
        return None
    data = read_json(settings)
    record = data.get("demo_models") if isinstance(data, dict) else None
    return record if isinstance(record, dict) else None


def _not_the_run_classifier(path: PathLike, settings: Path) -> str:
    """'' when the classifier file is the one that guided the run (the sha256 its run_settings.json records in
    model_files, or no record to compare with), else a note saying the metrics of f judge the run with another
    classifier than the one whose flips the records hold."""
    if not settings.is_file():
        return ""
    data = read_json(settings)
    files = data.get("model_files") if isinstance(data, dict) else None
    recorded = files.get("classifier") if isinstance(files, dict) else None
    if not isinstance(recorded, str) or not Path(path).is_file() or file_digest(path) == recorded:
        return ""
    return (
        f": NOT the classifier that guided the run (its sha256 differs from the {recorded[:12]}... that "
        f"{settings} records): FR, MAD, BKL and COUT judge the run with this file"
    )


def _demo_folder(root: Path, record: dict[str, Any] | None, given: PathLike | None, say: Any) -> PathLike | None:
    """The demo models folder that judges the run in root: `given` (--demo-models), else the one the run recorded
    (else None: load_demo_models' default, as for a folder of an older diffice). A ValueError when those models are
    gone or are not the ones that made the run (their recorded sha256), naming the run's models and the options."""
    if record is None:
        return given
    folder = given if given is not None else (record.get("folder") or demo_module.MODELS_DIR)
    why = demo_module.record_mismatch(record, folder)
    if why is not None:
        hashes = ", ".join(f"{k} {v[:12]}..." for k, v in record.items() if k.endswith("_sha256") and v)
        raise ValueError(
            f"{root} was made with {demo_module.describe_record(record)} ({hashes}), but {why}; give those models "
            f"with --demo-models FOLDER, or judge the run with other models with --classifier FILE --oracle FILE"
        )
    made = f"{demo_module.describe_record(record)} that made the run (from {root / 'run_settings.json'})"
    # models given with --demo-models are loaded from there: say so, not only where the run recorded them
    say(made if given is None else f"the demo models in {given}: the same files as {made}")
    return folder


def load_metrics_models(
    results_dir: PathLike,
    classifier: PathLike | None = None,
    oracle: PathLike | None = None,
    demo_models: PathLike | None = None,
    log: Any = None,
) -> tuple[Any, Any]:
    """(classifier f, oracle) that judge a results folder for ``diffice metrics`` (either may be None: its metrics
    are skipped). classifier / oracle: model files given by the user (checked: f must be a PlaneClassifier or a
    SonoNet, the oracle a ConceptOracle, else a ValueError naming the file); otherwise the demo's models judge a
    ``diffice demo`` folder, and a ``diffice explain`` folder's run_settings.json names its classifier (the demo's
    models for ``--models demo``). log(message): what was chosen, and why a model is missing."""

    say = log or (lambda message: None)
    root = Path(results_dir)
    f = judge = None
    settings = root / "run_settings.json"
    record = recorded_demo_models(settings)
    from_demo = (root / "summary.json").is_file() and (root / "inputs").is_dir()
    if from_demo and not (classifier and oracle):  # the demo's own models judge the demo's results
        folder = _demo_folder(root, record, demo_models, say)
        try:
            demo = demo_module.load_demo_models(folder)
            f, judge = demo.classifier, demo.oracle
        except FileNotFoundError as exc:
            say(f"{exc}; the metrics that need them are skipped")
    if not from_demo and not classifier and settings.is_file():  # the classifier that guided the run
        m = run_settings_models(settings)
        if m.get("preset") == "demo":  # diffice explain --models demo: the demo's classifier and oracle
            demo = demo_module.load_demo_models(_demo_folder(root, record, demo_models, say))
            f, judge = demo.classifier, demo.oracle
            say(f"the demo models (from {settings})")
        elif isinstance(m.get("classifier"), str) and m["classifier"] and Path(m["classifier"]).is_file():
            f = load_classifier(m.get("classifier_kind", "plane"), m["classifier"], m.get("target_class", 5))
            say(f"classifier {m['classifier']} (from {settings})" + _not_the_run_classifier(m["classifier"], settings))
        elif isinstance(m.get("classifier"), str) and m["classifier"]:  # moved, or a path relative to another folder
            where = "" if Path(m["classifier"]).is_absolute() else f" from {Path.cwd()}"
            say(
                f"the run's classifier {m['classifier']} (from {settings}) is not found{where}: the metrics of f "
                "are skipped; give it with --classifier FILE"
            )
    if classifier:
        f = load_metrics_classifier(classifier, settings)
        note = _not_the_run_classifier(classifier, settings)
        if note:
            say(f"classifier {classifier} (--classifier){note}")
    if oracle:
        judge = load_metrics_oracle(oracle)
    return f, judge
