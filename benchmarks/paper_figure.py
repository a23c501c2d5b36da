"""The paper's Figure 3 / S1 strips from a sweep's store (diffice.evaluation.figures.strip_figure): rows chosen by
a stated rule (per failure mode, the image of median oracle-quality gain; and the largest and smallest gain),
columns the input, Diff-ICE's iterations and the other methods; a second figure (NAME_ablation.png) for the
configurations off the base setting. The oracle is the bundled demo's (or that of --models).

    python benchmarks/paper_figure.py --store paper-tables/results.sqlite --out paper-tables/strip.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, beside this script
from harness import use_checkout  # noqa: E402

use_checkout()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="the sweep's results.sqlite")
    p.add_argument("--out", required=True, help="the PNG to write (the ablation strip goes beside it)")
    p.add_argument("--models", default=None, help="demo models folder whose oracle scores the tiles (default: bundled)")
    p.add_argument(
        "--config",
        default=None,
        help="the reference configuration's id or label (default: Diff-ICE at the base setting)",
    )
    p.add_argument("--differences", action="store_true", help="a row of difference maps cf - input under each image")
    p.add_argument("--no-extremes", action="store_true", help="only the per-failure-mode medians")
    p.add_argument("--no-ablation", action="store_true", help="no second figure for the ablation configurations")
    args = p.parse_args(argv)

    import diffice
    from diffice.evaluation.figures import strip_figure
    from diffice.explain.sweep import SweepStore

    oracle = diffice.load_demo_models(args.models).oracle
    try:
        with SweepStore(args.store) as store:
            fig = strip_figure(
                store,
                oracle,
                args.out,
                config=args.config,
                extremes=not args.no_extremes,
                differences=args.differences,
                ablation=not args.no_ablation,
            )
    except (FileNotFoundError, ValueError) as exc:
        print(f"paper_figure: {exc}", file=sys.stderr)
        return 2
    print(f"rule: {fig.rule}")
    for pick in fig.picks:
        print(json.dumps(pick))
    print(f"wrote {fig.path}" + (f" and {fig.ablation_path}" if fig.ablation_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
