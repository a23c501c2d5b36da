"""Explanation: the Explainer (Diff-ICE and its baselines) and what runs it: the run config (config), folders of
images (run: ``diffice explain``), sweeps (sweep: ``diffice sweep``), the executors (cluster), the bundled demo
(demo, demo_run: ``diffice demo``). The Explainer's API is re-exported here (``from diffice.explain.explainer import
Explainer``, where it was before the subpackages).

Layers, each using only those before it: explainer -> demo (the demo's models and settings) -> config -> cluster
-> run -> sweep, demo_run.
"""

from .explainer import (
    METHODS,
    Explainer,
    ExplainerConfig,
    ExplanationResult,
    SuspiciousRunWarning,
    image_keys,
    is_iterative,
    iterations_run,
    suspicious_run_message,
)

__all__ = [
    "Explainer",
    "ExplainerConfig",
    "ExplanationResult",
    "METHODS",
    "SuspiciousRunWarning",
    "suspicious_run_message",
    "image_keys",
    "is_iterative",
    "iterations_run",
]
