"""The fixed cost of an `explain` call: several consecutive calls of one Explainer (and then of a second Explainer
on the same models, as a sweep makes one per unit) in one process, each with its wall time, system time, minor
page faults (fresh memory touched) and the resident memory after it. Memory kept between calls shows as calls
after the first faulting (almost) nothing and spending (almost) no system time.

Configurations: "small" is benchmarks/explain.py's (64-channel UNet at 56x72, SonoNet-8(segmenter) f, ResNet-18
layer2 Lp, 100 respaced steps); "paper" the paper-size setting of issue 17 (the 128-channel (1,1,2,3,4) UNet at
224x288, f = SonoNet-16 on [image, segmenter probabilities], ResNet-50 layer4 Lp; 1000 steps respaced to 100 here:
only tau steps run).

    python benchmarks/explain_calls.py --config small --batch 4 --tau 5 --calls 3
    python benchmarks/explain_calls.py --config paper --batch 1 --tau 1 --calls 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import use_checkout  # noqa: E402

use_checkout()


def build(config: str):
    """(unet, diffusion, classifier, perceptual, image size) with random weights: benchmarks/explain.py's networks."""
    from explain import build_diffice, config_of

    cfg = config_of(config)
    return (*build_diffice(cfg=cfg), tuple(cfg["size"]))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("small", "paper"), default="small")
    parser.add_argument("--method", default="diff-ice-1")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tau", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="calls of the first Explainer")
    parser.add_argument("--second", type=int, default=1, help="calls of a second Explainer on the same models")
    args = parser.parse_args()
    from diffice.explain.explainer import Explainer

    unet, diffusion, clf, perceptual, size = build(args.config)
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 1) + tuple(size)).astype(np.float32)
    settings = dict(method=args.method, iterations=1, tau=args.tau, lambda_c=(60.0,), lambda_p=30.0)
    explainers = [Explainer(unet, diffusion, clf, perceptual, **settings)]
    plan = [0] * args.calls
    if args.second:
        explainers.append(Explainer(unet, diffusion, clf, perceptual, **settings))
        plan += [1] * args.second
    print(f"{args.config}, {args.method}, batch {args.batch}, tau {args.tau}, {os.cpu_count()} CPUs")
    print("| call | explainer | wall (s) | user (s) | system (s) | minor faults | RSS after (MB) | arena peak (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    reference = None
    for call, which in enumerate(plan, 1):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        res = explainers[which].explain(x, target=1, seed=0, warn=False)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        if reference is None:
            reference = res.counterfactuals
        same = np.array_equal(reference, res.counterfactuals)
        row = dict(
            call=call,
            explainer=which + 1,
            wall=wall,
            user=r1.ru_utime - r0.ru_utime,
            system=r1.ru_stime - r0.ru_stime,
            minflt=r1.ru_minflt - r0.ru_minflt,
            rss_mb=rss_mb(),
            arena_mb=res.peak_bytes / 2**20,
            same_as_first=same,
        )
        print(
            f"| {call} | {which + 1} | {wall:.2f} | {row['user']:.2f} | {row['system']:.2f} | {row['minflt']} | "
            f"{row['rss_mb']:.0f} | {row['arena_mb']:.0f} |" + ("" if same else " DIFFERS from call 1"),
            flush=True,
        )
        print("#", json.dumps(row), file=sys.stderr)
    huge = [line.split()[1] for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages:")]
    print(
        f"\npeak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
        f"in transparent huge pages now: {int(huge[0]) / 1024 if huge else 0:.0f} MB"
    )


if __name__ == "__main__":
    main()
