"""How far precisions "tf32" and "bf16" move Diff-ICE's counterfactuals from fp32 (the README's CUDA section): the same
networks, images and seed through `Explainer(..., precision=...)` on one device, in the paper's setting of
benchmarks/gpu.py (random weights).

    python benchmarks/precision.py                                   # on cuda: tau 1 (one guided step) and 20
    python benchmarks/precision.py --config small --device cuda_emulated --batch 2 --taus 1 2   # a smoke test

Per precision and tau, one markdown row: the largest absolute difference of the counterfactuals (images in [-1, 1]),
the difference's L2 norm relative to the change fp32 made (|cf_p - cf_fp32| / |cf_fp32 - x|), the largest
difference of p(target), and how many images flip to the target in each mode. On "cuda_emulated" every fp32 product
is exact, so the tf32 rows read 0 (the plumbing, not TF32); its bf16 rows round the operands exactly as the GPU does
and then sum exactly, so they measure bf16's rounding itself (a GPU sums in fp32 and differs by fp32's error more).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import CONFIGS, build_diffice  # noqa: E402


def deviation(config: str, device: str, batch: int, tau: int, precisions: tuple[str, ...] = ("tf32", "bf16")) -> list:
    """One row per precision of `precisions`, each against fp32 on the same networks, images and seed."""
    from diffice.explain.explainer import Explainer

    unet, diffusion, clf, perc = build_diffice(config, device)
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 1) + CONFIGS[config]["size"]).astype(np.float32)
    runs = {}
    for precision in ("fp32",) + tuple(precisions):
        ex = Explainer(unet, diffusion, clf, perc, backend=device, method="diff-ice-1", tau=tau, lambda_c=(60.0,),
                       lambda_p=30.0, precision=precision)  # fmt: skip
        runs[precision] = ex.explain(x, target=1, seed=0, warn=False)  # random weights: any class
    a = runs["fp32"]
    change = float(np.linalg.norm(a.counterfactuals - x))
    return [
        dict(
            precision=precision,
            tau=tau,
            max_abs=float(np.abs(b.counterfactuals - a.counterfactuals).max()),
            rel_to_change=float(np.linalg.norm(b.counterfactuals - a.counterfactuals)) / max(change, 1e-30),
            prob_max_abs=float(np.abs(b.prob_target - a.prob_target).max()),
            flipped_fp32=int(a.flipped[-1].sum()),  # flipped: (L, N), the last iteration's
            flipped=int(b.flipped[-1].sum()),
        )
        for precision, b in ((p, runs[p]) for p in precisions)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--taus", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--precisions", nargs="+", default=["tf32", "bf16"], choices=["tf32", "bf16"])
    parser.add_argument("--jsonl", help="also append each row as JSON here")
    args = parser.parse_args()
    print(f"config {args.config}, batch {args.batch}, Diff-ICE_1, one lambda_c, device {args.device}: vs fp32\n")
    print("| precision | tau | max abs diff | L2 diff / L2 change | max p(target) diff | flipped fp32 | flipped |")
    print("|---|---|---|---|---|---|---|")
    for tau in args.taus:
        for r in deviation(args.config, args.device, args.batch, tau, tuple(args.precisions)):
            print(
                f"| {r['precision']} | {tau} | {r['max_abs']:.2e} | {r['rel_to_change']:.2e} | "
                f"{r['prob_max_abs']:.2e} | {r['flipped_fp32']} / {args.batch} | {r['flipped']} / {args.batch} |",
                flush=True,
            )
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(dict(r, config=args.config, batch=args.batch, device=args.device)) + "\n")


if __name__ == "__main__":
    main()
