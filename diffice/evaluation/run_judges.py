"""Which models judge a results folder for ``diffice metrics``: the ones the user names, else the demo's for a
``diffice demo`` folder, else the classifier a ``diffice explain`` folder's run_settings.json names. Apart from
diffice.evaluation.metrics because it loads the demo models (diffice.explain.demo), which use the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..explain import demo as demo_module  # looked up per call (tests replace load_demo_models)
from ..models.files import load_classifier
from .metrics import PathLike, load_metrics_classifier, load_metrics_oracle, run_settings_models

__all__ = ["load_metrics_models"]


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
    from_demo = (root / "summary.json").is_file() and (root / "inputs").is_dir()
    if from_demo and not (classifier and oracle):  # the demo's own models judge the demo's results
        try:
            demo = demo_module.load_demo_models(demo_models)
            f, judge = demo.classifier, demo.oracle
        except FileNotFoundError as exc:
            say(f"{exc}; the metrics that need them are skipped")
    settings = root / "run_settings.json"
    if not from_demo and not classifier and settings.is_file():  # the classifier that guided the run
        m = run_settings_models(settings)
        if m.get("preset") == "demo":  # diffice explain --models demo: the demo's classifier and oracle
            demo = demo_module.load_demo_models(demo_models)
            f, judge = demo.classifier, demo.oracle
            say(f"the demo models (from {settings})")
        elif isinstance(m.get("classifier"), str) and m["classifier"] and Path(m["classifier"]).is_file():
            f = load_classifier(m.get("classifier_kind", "plane"), m["classifier"], m.get("target_class", 5))
            say(f"classifier {m['classifier']} (from {settings})")
    if classifier:
        f = load_metrics_classifier(classifier, settings)
    if oracle:
        judge = load_metrics_oracle(oracle)
    return f, judge
