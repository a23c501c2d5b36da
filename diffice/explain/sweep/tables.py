"""The paper's tables from a sweep's store: Table 1 (methods), Table 2 (Diff-ICE per iteration), Table S3
(ablation), with metric columns a user can add (register_column).

Columns: FR, dp, MAD, BKL on f's recorded verdicts over the validity subset; MQD, QS (the concept oracle), FSD
and SonoSim (realism: a feature network against a reference of standard-plane images, and each counterfactual
against its input), L1, L2 (distance to the input), Sat % and New sat % (saturated pixels) over every finite
counterfactual, from the stored images (diffice.explain.sweep.judges); each mean with its 95% interval."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, TextIO

import numpy as np

from ...data.images import atomic_write_bytes
from ...evaluation.metrics import (
    CI_LEVEL,
    CI_RESAMPLES,
    CI_SEED,
    QS_THRESHOLD,
    _fd_of_features,
    bkl,
    cosine_similarity,
    flip_ratio_of,
    l1_distance,
    l2_distance,
    mad,
    mean_interval,
    new_saturated_pixel_rate,
    saturated_pixel_rate,
)
from ...progress import format_seconds
from ..demo import mqd_interval
from ..explainer import is_iterative
from .config import at_base, config_id, config_order, distinguishing_settings, tables_options
from .judges import Judges
from .store import ConfigResults, SweepStore

Z_95 = 1.959963984540054  # the standard normal's 0.975 quantile: FR's 95% Wilson interval (CI_LEVEL)


# ---- intervals ----


class Estimate(NamedTuple):
    """A column's number with its 95% interval [low, high]."""

    value: float
    low: float
    high: float


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (n >= 1), at the level of z (95%: Z_95)."""
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return float(centre - half), float(centre + half)


def _mean(values: np.ndarray, value: float | None = None) -> Estimate:
    """The mean of per-image values (or a metric function's value of them) with mean_interval."""
    v = np.asarray(values, dtype=np.float64)
    return Estimate(float(v.mean()) if value is None else float(value), *mean_interval(v))


# ---- the columns ----


@dataclasses.dataclass
class Column:
    """A metric column of the tables: compute(results, iteration) -> a number, an Estimate (value and 95% interval)
    or None (not available). `subset` names the images it is computed over (printed under the tables); a column
    leaves out the images whose counterfactual went non-finite (ConfigResults.finite). `interval`: how its 95%
    interval is computed; a column with one has a "<name> CI" column beside it."""

    name: str
    compute: Callable[[ConfigResults, int], Any]
    fmt: str = "{:.3f}"
    subset: str = ""
    interval: str = ""


def _on_validity(fn: Callable[[ConfigResults, int, np.ndarray], Any]) -> Callable[[ConfigResults, int], Any]:
    def compute(r: ConfigResults, l: int) -> Any:
        s = r.validity & r.finite(l)
        return fn(r, l, s) if s.any() else None

    return compute


def _on_images(fn: Callable[[dict[str, Any], Judges], Any], needs: str = "") -> Callable[[ConfigResults, int], Any]:
    """A column of the finite counterfactuals' images (Judges.cell); needs: "oracle" or "realism" (or nothing)."""

    def compute(r: ConfigResults, l: int) -> Any:
        j = r.judges
        if j is None or (needs == "oracle" and j.qs_oracle is None) or (needs == "realism" and not j.realism):
            return None
        cell = j.cell(r, l)
        return fn(cell, j) if cell["n"] else None

    return compute


def _fr(r: ConfigResults, l: int, s: np.ndarray) -> Estimate:
    flipped = r.flipped[s, l - 1]
    return Estimate(flip_ratio_of(flipped), *wilson_interval(int(flipped.sum()), len(flipped)))


def _fsd(c: dict[str, Any], j: Judges) -> float | None:
    reference = j.reference_features()
    return _fd_of_features(reference, c["features_cf"]) if c["n"] >= 2 and reference is not None else None


VALIDITY = (
    "inputs f does not classify as the target (the paper's subset), less those whose counterfactual went non-finite"
)
FINITE = "every finite counterfactual"
BOOTSTRAP = f"percentile bootstrap over the images ({CI_RESAMPLES} resamples, seed {CI_SEED})"
TABLE_COLUMNS: list[Column] = [  # FR, MAD, BKL: diffice.evaluation.metrics' definitions, on f's recorded verdicts
    Column("FR", _on_validity(_fr), subset=VALIDITY, interval="Wilson score interval (a proportion)"),
    Column(
        "dp",
        _on_validity(lambda r, l, s: _mean(r.prob_target[s, l] - r.prob_target[s, 0])),
        subset=VALIDITY + "; mean change of f's target probability",
        interval=BOOTSTRAP,
    ),
    Column(
        "MAD",
        _on_validity(
            lambda r, l, s: _mean(
                np.abs(r.prob_target[s, 0] - r.prob_target[s, l]), mad(r.prob_target[s, 0], r.prob_target[s, l])
            )
        ),
        subset=VALIDITY + "; |p_target(x) - p_target(cf)| (= MAD for a two-class f)",
        interval=BOOTSTRAP,
    ),
    Column(
        "BKL",
        _on_validity(lambda r, l, s: _mean(1.0 - r.prob_target[s, l], bkl(r.prob_target[s, l]))),
        subset=VALIDITY,
        interval=BOOTSTRAP,
    ),
    Column(
        "MQD",
        _on_images(lambda c, j: Estimate(*mqd_interval(c["qs_x"], c["qs_cf"])), "oracle"),
        subset=FINITE + f": the paper's MQD, (1/n) sum 1[QS(x) < {QS_THRESHOLD}] (QS(cf) - QS(x)) "
        "(diffice.evaluation.metrics.mqd) with the oracle's quality scores",
        interval=BOOTSTRAP + " (diffice.explain.demo.mqd_interval)",
    ),
    Column(
        "QS",
        _on_images(lambda c, j: _mean(c["qs_cf"]), "oracle"),
        subset=FINITE + ": the oracle's mean quality score of the counterfactuals",
        interval=BOOTSTRAP,
    ),
    Column(
        "FSD",
        _on_images(_fsd, "realism"),
        fmt="{:.2f}",
        subset=FINITE + ": Fréchet distance (diffice.evaluation.metrics, FSD-style) between the counterfactuals' "
        "realism features and the reference's: no interval (not a mean); its n: the counterfactuals and the reference "
        "(a Fréchet distance grows as its sets shrink: compare rows of equal n)",
    ),
    Column(
        "SonoSim",
        _on_images(lambda c, j: _mean(cosine_similarity(c["features_x"], c["features_cf"])), "realism"),
        subset=FINITE + ": cosine similarity of each counterfactual's realism features to its input's (SonoSim-style)",
        interval=BOOTSTRAP,
    ),
    Column(
        "L1",
        _on_images(lambda c, j: _mean(l1_distance(c["cf"], c["x"]))),
        subset=FINITE + ": per image mean |cf - x| (images in [-1, 1], as stored), mean over images",
        interval=BOOTSTRAP,
    ),
    Column(
        "L2",
        _on_images(lambda c, j: _mean(l2_distance(c["cf"], c["x"]))),
        subset=FINITE + ": per image root mean square of cf - x, mean over images",
        interval=BOOTSTRAP,
    ),
    Column(
        "Sat %",
        _on_images(lambda c, j: _mean(100 * saturated_pixel_rate(c["cf"]))),
        fmt="{:.2f}",
        subset=FINITE + ": per image % of pixels stored as 0 or 255 (diffice.evaluation.metrics.saturated_pixel_rate)",
        interval=BOOTSTRAP,
    ),
    Column(
        "New sat %",
        _on_images(lambda c, j: _mean(100 * new_saturated_pixel_rate(c["cf"], c["x"]))),
        fmt="{:.2f}",
        subset=FINITE + ": per image % of saturated pixels with none in the input within one pixel "
        "(diffice.evaluation.metrics.new_saturated_pixel_rate)",
        interval=BOOTSTRAP,
    ),
]


def register_column(column: Column, position: int | None = None) -> None:
    """Adds a metric column to every table (e.g. FID from diffice.evaluation.metrics); replaces one of the same name."""
    for i, c in enumerate(TABLE_COLUMNS):
        if c.name == column.name:
            TABLE_COLUMNS[i] = column
            return
    TABLE_COLUMNS.insert(len(TABLE_COLUMNS) if position is None else position, column)


def _mean_std(a: np.ndarray) -> str:
    return f"{a.mean():.2f} +- {a.std():.2f}" if len(a) else "-"


def _fmt(column: Column, value: float | None) -> str:
    return "-" if value is None or value != value else column.fmt.format(value)


def _cells(column: Column, value: Any) -> list[str]:
    """A column's cells: its value, and its interval "[low, high]" when it has an interval column."""
    estimate = value if isinstance(value, Estimate) else None
    cells = [_fmt(column, estimate.value if estimate is not None else value)]
    if column.interval:
        cells.append("-" if estimate is None else f"[{_fmt(column, estimate.low)}, {_fmt(column, estimate.high)}]")
    return cells


def _metric_header() -> list[str]:
    return [h for c in TABLE_COLUMNS for h in ([c.name, f"{c.name} CI"] if c.interval else [c.name])]


def _metrics(r: ConfigResults, l: int) -> list[str]:
    return [cell for c in TABLE_COLUMNS for cell in _cells(c, c.compute(r, l) if len(r.image_ids) else None)]


def _efficiency(r: ConfigResults) -> list[str]:
    total = float(r.batch_seconds.sum())
    return [
        _mean_std(r.batch_seconds),
        format_seconds(total) if len(r.batch_seconds) else "-",
        f"{r.peak_bytes.max() / 2**20:.0f}" if len(r.peak_bytes) else "-",
    ]


def _lc(c: dict[str, Any]) -> str:
    return "/".join(f"{v:g}" for v in c["lambda_c"])


def _method(c: dict[str, Any], extra: str = "") -> str:
    """The Method cell: the method, Diff-ICE's L, and the settings that set it apart (distinguishing_settings)."""
    inside = ([f"L={c['iterations']}"] if is_iterative(c["method"]) else []) + ([extra] if extra else [])
    return f"{c['method']} ({', '.join(inside)})" if inside else c["method"]


def _n(r: ConfigResults, l: int) -> str:
    """validity subset (finite counterfactuals) / images done, and how many went non-finite at iteration l."""
    finite = r.finite(l) if len(r.image_ids) else np.zeros(0, bool)
    excluded = int((~finite).sum())
    return f"{int((r.validity & finite).sum())}/{len(r.image_ids)}" + (f" ({excluded} non-finite)" if excluded else "")


def default_options(store: Any) -> dict[str, Any]:
    """The [tables] defaults for a store read without its config: the demo's oracle and a standard-plane phantom
    reference for a sweep of the demo models, no oracle and no reference otherwise."""
    demo = ((store.meta("models") or {}).get("source")) == "demo"
    return tables_options(None, demo, demo)


def compute_tables(
    store: SweepStore, options: dict[str, Any] | None = None, configs: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Table 1 (methods at the base setting), Table 2 (Diff-ICE per iteration), Table S3 (every configuration)
    as dicts: title, header (list), rows (lists of strings), notes. options: the [tables] options
    (diffice.explain.sweep.config.tables_options; default: default_options of the store). configs: the
    configurations to tabulate (a sweep config's SweepSpec.configs; default: every configuration in the store);
    the store's others are left out and named in the notes (a configuration changed or removed since they ran)."""
    base = store.meta("base") or {}
    stored = store.configs()
    left_out: list[dict[str, Any]] = []
    if configs is not None:
        wanted = {config_id(c) for c in configs}
        left_out = [c for c in stored if c["config_id"] not in wanted]
        stored = [c for c in stored if c["config_id"] in wanted]
    configs = stored
    extras = distinguishing_settings(configs)
    # the image columns read the stored images: a SweepStore's (a stand-in without images gets "-")
    judges = (
        Judges(store, default_options(store) if options is None else options)
        if configs and isinstance(store, SweepStore)
        else None
    )
    results = {c["config_id"]: store.results(c) for c in configs}
    for r in results.values():
        r.judges = judges
    cells: dict[tuple[str, int], list[str]] = {}  # a configuration's cells serve Table 1 and Table S3 alike

    def metrics(c: dict[str, Any], l: int) -> list[str]:
        key = (c["config_id"], l)
        if key not in cells:
            cells[key] = _metrics(results[c["config_id"]], l)
        return cells[key]

    metric_names = _metric_header()
    eff = ["Batch time (s)", "Total time", "Peak MB"]
    table1 = sorted((c for c in configs if at_base(c, base)), key=config_order)
    base_text = (
        f"tau={base.get('tau')}, lambda_c={'/'.join(f'{v:g}' for v in base.get('lambda_c', []))}, "
        f"lambda_p={base.get('lambda_p', 0):g}"
        if base
        else ""
    )
    t1 = dict(
        title="Table 1: methods" + (f" ({base_text})" if base_text else ""),
        header=["Method", "n"] + metric_names + eff,
        rows=[
            [_method(c, extras[c["config_id"]]), _n(results[c["config_id"]], c["iterations"])]
            + metrics(c, c["iterations"])
            + _efficiency(results[c["config_id"]])
            for c in table1
        ],
    )
    tables = [t1]
    for c in table1:
        if not is_iterative(c["method"]):
            continue
        r = results[c["config_id"]]
        rows = []
        for l in range(1, c["iterations"] + 1):
            its = r.iteration_seconds[:, l - 1] if len(r.iteration_seconds) else np.zeros(0)
            rows.append(
                [str(l), _n(r, l)]
                + metrics(c, l)
                + [_mean_std(its), format_seconds(float(its.sum())) if len(its) else "-"]
            )
        tables.append(
            dict(
                title=f"Table 2: Diff-ICE per iteration (L={c['iterations']}, {base_text}"
                + (f", {extras[c['config_id']]})" if extras[c["config_id"]] else ")"),
                header=["Iteration", "n"] + metric_names + ["Batch time (s)", "Iteration time"],
                rows=rows,
            )
        )
    s3 = sorted(configs, key=config_order)
    tables.append(
        dict(
            title="Table S3: ablation (every configuration, last iteration)",
            header=["Method", "tau", "Lp", "lambda_c", "n"] + metric_names + eff,
            rows=[
                [
                    _method(c, extras[c["config_id"]]),
                    str(c["tau"]),
                    f"yes ({c['lambda_p']:g})" if c["lambda_p"] else "no",
                    _lc(c),
                    _n(results[c["config_id"]], c["iterations"]),
                ]
                + metrics(c, c["iterations"])
                + _efficiency(results[c["config_id"]])
                for c in s3
            ],
        )
    )
    notes = _notes(store, judges)
    if left_out:
        notes.append(
            f"Left out: {len(left_out)} configuration(s) of the store that the sweep config no longer has (changed "
            f"or removed since they ran; their results stay in the store): "
            + "; ".join(c["label"] for c in left_out)
            + "."
        )
    for t in tables:
        t["notes"] = notes
    return tables


def _notes(store: Any, judges: Judges | None) -> list[str]:
    """What every column is computed over, its interval, what judged it, and the inputs' own values."""
    notes = [
        "n: validity subset / images done, and (k non-finite): the images whose counterfactual went non-finite in "
        "the sampler (zeroed), excluded from every column. FR, dp, MAD, BKL use the validity subset; MQD, QS, FSD, "
        "SonoSim, L1, L2, Sat %, New sat % every finite counterfactual (images done less the non-finite ones)."
    ]
    notes += [f"{c.name}: {c.subset}" for c in TABLE_COLUMNS if c.subset]
    intervals: dict[str, list[str]] = {}
    for c in TABLE_COLUMNS:
        if c.interval:
            intervals.setdefault(c.interval, []).append(c.name)
    notes += [f"CI: {CI_LEVEL:.0%} interval; " + "; ".join(f"{', '.join(n)}: {how}" for how, n in intervals.items())]
    if judges is not None:
        about = judges.about
        if "oracle" in about:
            notes.append(f"Oracle (MQD, QS): {about['oracle']}.")
        if "oracle-missing" in about:
            notes.append(f"MQD, QS shown as -: {about['oracle-missing']}.")
        if "features" in about:
            notes.append(f"Realism network (FSD, SonoSim): {about['features']}.")
        if "reference" in about:
            notes.append(f"Realism reference (FSD): {about['reference']}.")
        if "realism-missing" in about:
            notes.append(f"FSD, SonoSim shown as -: {about['realism-missing']}.")
        notes.append(_inputs_note(store, judges))
    else:
        notes.append("MQD, QS, FSD, SonoSim, L1, L2, Sat %, New sat %: - (no stored images to judge).")
    notes.append(
        "Batch time: the sampler's wall time per unit (one batch), mean +- std over units; Total time: their "
        "sum; Peak MB: the sampler's memory peak (largest over units)."
    )
    return notes


def _inputs_note(store: Any, judges: Judges) -> str:
    """The inputs' own QS, FSD to the reference and saturated pixels (what the counterfactuals start from)."""
    ids = np.arange(len(store.image_names()))
    if not len(ids):
        return "Inputs: none stored."
    inputs = judges.inputs(ids)
    parts = [f"Inputs (all {len(ids)})"]
    if inputs["qs"] is not None:
        qs = _mean(inputs["qs"])
        parts.append(f"QS {qs.value:.3f} [{qs.low:.3f}, {qs.high:.3f}]")
    reference = judges.reference_features()
    if reference is not None and inputs["features"] is not None and len(ids) >= 2:
        parts.append(
            f"FSD to the reference {_fd_of_features(reference, inputs['features']):.2f} "
            f"({len(ids)} vs {len(reference)} images)"
        )
    sat = _mean(100 * saturated_pixel_rate(inputs["x"]))
    parts.append(f"Sat % {sat.value:.2f} [{sat.low:.2f}, {sat.high:.2f}] (New sat % is 0 by definition)")
    return ": ".join(parts[:1]) + ": " + ", ".join(parts[1:]) + "."


def format_tables(tables: list[dict[str, Any]]) -> str:
    """The tables as Markdown (aligned, readable as plain text)."""
    out = []
    for t in tables:
        widths = [max(len(str(v)) for v in [h] + [row[i] for row in t["rows"]]) for i, h in enumerate(t["header"])]
        out.append(f"### {t['title']}\n")
        out.append("| " + " | ".join(h.ljust(w) for h, w in zip(t["header"], widths)) + " |")
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in t["rows"]:
            out.append("| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |")
        if not t["rows"]:
            out.append("(no configuration)")
        out.append("")
    if tables:
        out += [f"- {n}" for n in tables[0]["notes"]] + [""]
    return "\n".join(out)


def print_tables(
    store_path: os.PathLike,
    stream: TextIO | None = None,
    options: dict[str, Any] | None = None,
    configs: list[dict[str, Any]] | None = None,
) -> str:
    """Prints the tables of a results store and writes them to tables.md beside it; returns the text. options: the
    sweep config's [tables] (SweepSpec.tables; default: default_options of the store); configs: the sweep config's
    configurations (SweepSpec.configs; default: every configuration in the store), as compute_tables."""
    with SweepStore(store_path) as store:
        text = format_tables(compute_tables(store, options, configs))
        recorded = store.meta("warnings") or []
    if recorded:
        text += "\n" + "\n".join(f"- WARNING ({w['at']}): {w['message']}" for w in recorded) + "\n"
    atomic_write_bytes(Path(store_path).with_name("tables.md"), text.encode())
    print(text, file=stream or sys.stdout)
    return text
