"""How far precision "tf32" moves Diff-ICE's counterfactuals from fp32 (the README's CUDA section): the same
networks, images and seed through `Explainer(..., precision=...)` on one device, in the paper's setting of
benchmarks/gpu.py (random weights).

    python benchmarks/precision.py                                   # on cuda: tau 1 (one guided step) and 20
    python benchmarks/precision.py --config small --device cuda_emulated --batch 2 --taus 1 2   # a smoke test

Per tau, one markdown row: the largest absolute difference of the counterfactuals (images in [-1, 1]), the
difference's L2 norm relative to the change fp32 made (|cf_tf32 - cf_fp32| / |cf_fp32 - x|), the largest difference
of p(target), and how many images flip to the target in each mode. On "cuda_emulated" every product is exact in
both modes, so the rows read 0: the smoke test checks the plumbing, a GPU gives the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import CONFIGS, build_diffice  # noqa: E402


def deviation(config: str, device: str, batch: int, tau: int) -> dict:
    from diffice.explain.explainer import Explainer

    unet, diffusion, clf, perc = build_diffice(config, device)
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 1) + CONFIGS[config]["size"]).astype(np.float32)
    runs = {}
    for precision in ("fp32", "tf32"):
        ex = Explainer(unet, diffusion, clf, perc, backend=device, method="diff-ice-1", tau=tau, lambda_c=(60.0,),
                       lambda_p=30.0, precision=precision)  # fmt: skip
        runs[precision] = ex.explain(x, target=1, seed=0, warn=False)  # random weights: any class
    a, b = runs["fp32"], runs["tf32"]
    change = float(np.linalg.norm(a.counterfactuals - x))
    return dict(
        tau=tau,
        max_abs=float(np.abs(b.counterfactuals - a.counterfactuals).max()),
        rel_to_change=float(np.linalg.norm(b.counterfactuals - a.counterfactuals)) / max(change, 1e-30),
        prob_max_abs=float(np.abs(b.prob_target - a.prob_target).max()),
        flipped_fp32=int(a.flipped[-1].sum()),  # flipped: (L, N), the last iteration's
        flipped_tf32=int(b.flipped[-1].sum()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--taus", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--jsonl", help="also append each row as JSON here")
    args = parser.parse_args()
    print(f"config {args.config}, batch {args.batch}, Diff-ICE_1, one lambda_c, device {args.device}: tf32 vs fp32\n")
    print("| tau | max abs diff | L2 diff / L2 change | max p(target) diff | flipped fp32 | flipped tf32 |")
    print("|---|---|---|---|---|---|")
    for tau in args.taus:
        r = deviation(args.config, args.device, args.batch, tau)
        print(
            f"| {tau} | {r['max_abs']:.2e} | {r['rel_to_change']:.2e} | {r['prob_max_abs']:.2e} | "
            f"{r['flipped_fp32']} / {args.batch} | {r['flipped_tf32']} / {args.batch} |",
            flush=True,
        )
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(dict(r, config=args.config, batch=args.batch, device=args.device)) + "\n")


if __name__ == "__main__":
    main()
