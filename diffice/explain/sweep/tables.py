"""The paper's tables from a sweep's store: Table 1 (methods), Table 2 (Diff-ICE per iteration), Table S3
(ablation), with metric columns a user can add (register_column)."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from ...data.images import atomic_write_bytes
from ...evaluation.metrics import bkl, flip_ratio_of, mad
from ...progress import format_seconds
from ..explainer import METHODS, is_iterative
from .config import TABLE1_AXES
from .store import ConfigResults, SweepStore

# ---- the tables ----


@dataclasses.dataclass
class Column:
    """A metric column of the tables: compute(results, iteration) -> a number (or None: not available).
    `subset` names the images it is computed over (printed under the tables); a column leaves out the images
    whose counterfactual went non-finite (ConfigResults.finite)."""

    name: str
    compute: Callable[[ConfigResults, int], float | None]
    fmt: str = "{:.3f}"
    subset: str = ""


def _on_validity(fn: Callable[[ConfigResults, int, np.ndarray], float]) -> Callable[[ConfigResults, int], Any]:
    def compute(r: ConfigResults, l: int) -> float | None:
        s = r.validity & r.finite(l)
        return float(fn(r, l, s)) if s.any() else None

    return compute


VALIDITY = (
    "inputs f does not classify as the target (the paper's subset), less those whose counterfactual went non-finite"
)
TABLE_COLUMNS: list[Column] = [  # FR, MAD, BKL: diffice.evaluation.metrics' definitions, on f's recorded verdicts
    Column("FR", _on_validity(lambda r, l, s: flip_ratio_of(r.flipped[s, l - 1])), subset=VALIDITY),
    Column(
        "dp",
        _on_validity(lambda r, l, s: (r.prob_target[s, l] - r.prob_target[s, 0]).mean()),
        subset=VALIDITY + "; mean change of f's target probability",
    ),
    Column(
        "MAD",
        _on_validity(lambda r, l, s: mad(r.prob_target[s, 0], r.prob_target[s, l])),
        subset=VALIDITY + "; |p_target(x) - p_target(cf)| (= MAD for a two-class f)",
    ),
    Column("BKL", _on_validity(lambda r, l, s: bkl(r.prob_target[s, l])), subset=VALIDITY),
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


def _metrics(r: ConfigResults, l: int) -> list[str]:
    return [_fmt(c, c.compute(r, l) if len(r.image_ids) else None) for c in TABLE_COLUMNS]


def _efficiency(r: ConfigResults) -> list[str]:
    total = float(r.batch_seconds.sum())
    return [
        _mean_std(r.batch_seconds),
        format_seconds(total) if len(r.batch_seconds) else "-",
        f"{r.peak_bytes.max() / 2**20:.0f}" if len(r.peak_bytes) else "-",
    ]


def _lc(c: dict[str, Any]) -> str:
    return "/".join(f"{v:g}" for v in c["lambda_c"])


def _method(c: dict[str, Any]) -> str:
    return f"{c['method']} (L={c['iterations']})" if is_iterative(c["method"]) else c["method"]


def _n(r: ConfigResults, l: int) -> str:
    """validity subset (finite counterfactuals) / images done, and how many went non-finite at iteration l."""
    finite = r.finite(l) if len(r.image_ids) else np.zeros(0, bool)
    excluded = int((~finite).sum())
    return f"{int((r.validity & finite).sum())}/{len(r.image_ids)}" + (f" ({excluded} non-finite)" if excluded else "")


def compute_tables(store: SweepStore) -> list[dict[str, Any]]:
    """Table 1 (methods at the base setting), Table 2 (Diff-ICE per iteration), Table S3 (every configuration)
    as dicts: title, header (list), rows (lists of strings), notes."""
    base = store.meta("base") or {}
    configs = store.configs()
    results = {c["config_id"]: store.results(c) for c in configs}
    metric_names = [c.name for c in TABLE_COLUMNS]
    eff = ["Batch time (s)", "Total time", "Peak MB"]
    order = {m: i for i, m in enumerate(METHODS)}
    at_base = [c for c in configs if all(c[k] == base.get(k, c[k]) for k in TABLE1_AXES)]
    at_base.sort(key=lambda c: (order.get(c["method"], 99), c["iterations"]))
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
            [_method(c), _n(results[c["config_id"]], c["iterations"])]
            + _metrics(results[c["config_id"]], c["iterations"])
            + _efficiency(results[c["config_id"]])
            for c in at_base
        ],
    )
    tables = [t1]
    for c in at_base:
        if not is_iterative(c["method"]):
            continue
        r = results[c["config_id"]]
        rows = []
        for l in range(1, c["iterations"] + 1):
            its = r.iteration_seconds[:, l - 1] if len(r.iteration_seconds) else np.zeros(0)
            rows.append(
                [str(l), _n(r, l)]
                + _metrics(r, l)
                + [_mean_std(its), format_seconds(float(its.sum())) if len(its) else "-"]
            )
        tables.append(
            dict(
                title=f"Table 2: Diff-ICE per iteration (L={c['iterations']}, {base_text})",
                header=["Iteration", "n"] + metric_names + ["Batch time (s)", "Iteration time"],
                rows=rows,
            )
        )
    s3 = sorted(
        configs, key=lambda c: (order.get(c["method"], 99), c["iterations"], c["tau"], c["lambda_c"], -c["lambda_p"])
    )
    tables.append(
        dict(
            title="Table S3: ablation (every configuration, last iteration)",
            header=["Method", "tau", "Lp", "lambda_c", "n"] + metric_names + eff,
            rows=[
                [
                    _method(c),
                    str(c["tau"]),
                    f"yes ({c['lambda_p']:g})" if c["lambda_p"] else "no",
                    _lc(c),
                    _n(results[c["config_id"]], c["iterations"]),
                ]
                + _metrics(results[c["config_id"]], c["iterations"])
                + _efficiency(results[c["config_id"]])
                for c in s3
            ],
        )
    )
    notes = (
        [
            f"n: validity subset / images done, and (k non-finite): the images whose counterfactual went "
            f"non-finite in the sampler (zeroed), excluded from every column. {c.name}: {c.subset}"
            for c in TABLE_COLUMNS[:1]
        ]
        + [f"{c.name}: {c.subset}" for c in TABLE_COLUMNS[1:]]
        + [
            "Batch time: the sampler's wall time per unit (one batch), mean +- std over units; Total time: their "
            "sum; Peak MB: the sampler's memory peak (largest over units)."
        ]
    )
    for t in tables:
        t["notes"] = notes
    return tables


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


def print_tables(store_path: os.PathLike, stream: TextIO | None = None) -> str:
    """Prints the tables of a results store and writes them to tables.md beside it; returns the text."""
    with SweepStore(store_path) as store:
        text = format_tables(compute_tables(store))
        recorded = store.meta("warnings") or []
    if recorded:
        text += "\n" + "\n".join(f"- WARNING ({w['at']}): {w['message']}" for w in recorded) + "\n"
    atomic_write_bytes(Path(store_path).with_name("tables.md"), text.encode())
    print(text, file=stream or sys.stdout)
    return text
