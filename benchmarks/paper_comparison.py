"""The paper's claims checked on a sweep's store (issue 18, item 3): paired differences between configurations on
the same images, each a mean with its 95% percentile-bootstrap interval (diffice.evaluation.metrics.
mean_interval), so that "A beats B" is read from an interval that excludes 0, not from two overlapping ones.

    python benchmarks/paper_comparison.py --store paper-tables/results.sqlite
    python benchmarks/paper_comparison.py --store paper-tables/results.sqlite --before OTHER/results.sqlite

With --before: each configuration (and each Diff-ICE iteration) of the store against the same configuration in
another store of the same images (e.g. the same sweep run with other models or another step variance): this store
minus the other.

Per image: the MQD term 1[QS(x) < 0.5] (QS(cf) - QS(x)) (its mean is the paper's MQD), the BKL term 1 - p_target(cf)
(over the validity subset, as the tables), SonoSim (cosine of the oracle-network features of cf and x), L1 to the
input and the new-saturated pixel rate (%), with the oracle and realism network of the tables' defaults
(diffice.explain.sweep.tables.default_options). FSD per configuration is the tables'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, beside this script
from harness import use_checkout  # noqa: E402

use_checkout()

from diffice.evaluation.metrics import (  # noqa: E402
    cosine_similarity,
    l1_distance,
    mean_interval,
    mqd_terms,
    new_saturated_pixel_rate,
)
from diffice.explain.sweep import SweepStore  # noqa: E402
from diffice.explain.sweep.config import at_base  # noqa: E402
from diffice.explain.sweep.judges import Judges  # noqa: E402
from diffice.explain.sweep.tables import default_options  # noqa: E402

TERMS = ("MQD term", "BKL term", "SonoSim", "L1", "New sat %")


def per_image(results: Any, judges: Judges, iteration: int) -> dict[str, dict[int, float]]:
    """{term: {image_id: value}} of one configuration's iteration (finite counterfactuals; BKL: validity subset)."""
    cell = judges.cell(results, iteration)
    keep = results.finite(iteration)
    ids = results.image_ids[keep]
    valid = results.validity[keep]
    terms = {
        "MQD term": mqd_terms(cell["qs_x"], cell["qs_cf"]),
        "SonoSim": cosine_similarity(cell["features_cf"], cell["features_x"]),
        "L1": l1_distance(cell["cf"], cell["x"]),
        "New sat %": 100 * new_saturated_pixel_rate(cell["cf"], cell["x"]),
    }
    out = {name: dict(zip(ids.tolist(), v.tolist())) for name, v in terms.items()}
    bkl = 1.0 - results.prob_target[keep, iteration]
    out["BKL term"] = {int(i): float(b) for i, b, ok in zip(ids, bkl, valid) if ok}
    return out


def paired(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> list[str]:
    """Per term: mean of a - b over the images both have, [95% interval], n."""
    cells = []
    for name in TERMS:
        common = sorted(set(a[name]) & set(b[name]))
        d = np.array([a[name][i] - b[name][i] for i in common])
        low, high = mean_interval(d)
        mark = "" if low <= 0 <= high else " *"
        cells.append(f"{d.mean():+.3f} [{low:+.3f}, {high:+.3f}]{mark} (n={len(common)})")
    return cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="paper-tables/results.sqlite")
    p.add_argument("--before", help="another store of the same images: each configuration, this store minus that")
    args = p.parse_args(argv)
    if args.before:
        rows = against_before(Path(args.store), Path(args.before))
        title = f"Store {args.store} minus {args.before}, the same configuration and images"
    else:
        rows = within_store(Path(args.store))
        title = f"Store: {args.store}"
    print(f"Paired differences, mean [95% bootstrap interval] (n images); * the interval excludes 0. {title}")
    print("| comparison | " + " | ".join(TERMS) + " |")
    print("|---|" + "---|" * len(TERMS))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def against_before(path: Path, before_path: Path) -> list[tuple[str, list[str]]]:
    """Per configuration both stores finished (every iteration of an iterating one): this minus before."""
    with SweepStore(path) as store, SweepStore(before_path) as before:
        if store.image_names() != before.image_names() or not np.array_equal(store.inputs(), before.inputs()):
            raise SystemExit(f"{path} and {before_path} do not hold the same images")
        judges = Judges(store, default_options(store))
        judges_before = Judges(before, default_options(before))  # each store's images through its own judges
        rows: list[tuple[str, list[str]]] = []
        others = {c["config_id"]: c for c in before.configs()}
        for c in store.configs():
            now, then = store.results(c), before.results(others[c["config_id"]]) if c["config_id"] in others else None
            if then is None or not len(now.image_ids) or not len(then.image_ids):
                continue
            for l in range(1, c["iterations"] + 1):
                name = c["label"] + (f", iteration {l}" if c["iterations"] > 1 else "")
                rows.append((name, paired(per_image(now, judges, l), per_image(then, judges_before, l))))
        if not rows:
            raise SystemExit(f"{path} and {before_path} share no finished configuration")
        return rows


def within_store(path: Path) -> list[tuple[str, list[str]]]:
    """The paper's comparisons inside one store (Diff-ICE's iterations, the baselines, the ablation)."""
    with SweepStore(path) as store:
        judges = Judges(store, default_options(store))
        base = store.meta("base")
        results = {c["config_id"]: store.results(c) for c in store.configs()}
        done = [c for c in store.configs() if len(results[c["config_id"]].image_ids)]

        def find(method: str, **setting: Any) -> dict[str, Any] | None:
            """The configuration of `method` with `setting` (default: the base setting) that has results."""
            want = dict(base, **setting)
            return next((c for c in done if c["method"] == method and all(c[k] == v for k, v in want.items())), None)

        def terms(config: dict[str, Any], iteration: int | None = None) -> dict[str, dict[int, float]]:
            return per_image(results[config["config_id"]], judges, iteration or config["iterations"])

        rows: list[tuple[str, list[str]]] = []
        ice = find("diff-ice")
        if ice is None:
            raise SystemExit(f"{path}: no Diff-ICE configuration at the base setting {base} with results")
        iterations = ice["iterations"]
        one = find("diff-ice-1")
        # Diff-ICE_1 is Diff-ICE's iteration 1 (the same noise per image: the same bytes), where it was not run apart
        first = terms(one) if one is not None else terms(ice, 1)
        for l in range(2, iterations + 1):
            rows.append((f"Diff-ICE iteration {l} - Diff-ICE_1", paired(terms(ice, l), first)))
        for method in ("diff-ice-1-xt", "dime"):
            other = find(method)
            if other is not None:
                rows.append((f"Diff-ICE (L={iterations}) - {method}", paired(terms(ice), terms(other))))
        for c in done:  # the ablation: each Diff-ICE_1 change against the base Diff-ICE_1, Lp off against on
            if c["method"] != "diff-ice-1" or at_base(c, base):
                continue
            if c["lambda_p"] == 0:
                on = find("diff-ice-1", tau=c["tau"], lambda_c=c["lambda_c"])
                if on is not None:
                    rows.append((f"Lp off - on (Diff-ICE_1 tau={c['tau']})", paired(terms(c), terms(on))))
            else:
                rows.append((f"{c['label'].replace('diff-ice-1 ', 'Diff-ICE_1 ')} - base", paired(terms(c), first)))
        return rows


if __name__ == "__main__":
    sys.exit(main())
