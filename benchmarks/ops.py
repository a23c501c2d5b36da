"""Times diffice ops (backend "cpu") against PyTorch CPU on the same inputs, in the same process, and prints a
markdown table: median milliseconds, the ratio diffice / torch (below 1: diffice is faster) and GFLOP/s.

Each row is a Case: a name, the shape it runs, its FLOP count and two zero-argument callables (diffice and torch)
over inputs built once. Add an op by writing a function that returns Cases and listing it in SUITES.

    python benchmarks/ops.py                  # every suite, batch 1 and 10
    python benchmarks/ops.py --only conv2d --batches 1 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the in-place build in this checkout
from diffice import ops  # noqa: E402


@dataclass
class Case:
    op: str                              # "conv2d forward"
    shape: str                           # "128->128 112x144 3x3"
    batch: int
    flops: float                         # floating-point operations of one call (multiply-add = 2)
    diffice: Callable[[], object]
    torch: Callable[[], object]


def _inputs(rng: np.random.Generator, *shape: int) -> tuple:
    """A float32 numpy array and a torch tensor sharing its memory: both libraries see the same data."""
    a = rng.standard_normal(shape, dtype=np.float32)
    return a, torch.from_numpy(a)


# guided-diffusion's 3x3, pad 1 convolutions at the 256x256 model's inner resolutions (input 112x144 crops)
CONV_SHAPES = [(128, 128, 112, 144), (256, 256, 56, 72), (512, 512, 28, 36)]


def conv2d_cases(batch: int, rng: np.random.Generator) -> List[Case]:
    cases = []
    for ci, co, h, w in CONV_SHAPES:
        x, xt = _inputs(rng, batch, ci, h, w)
        wgt, wt = _inputs(rng, co, ci, 3, 3)
        b, bt = _inputs(rng, co)
        dy, dyt = _inputs(rng, batch, co, h, w)
        flops = 2.0 * batch * co * ci * 9 * h * w
        shape = f"{ci}->{co} {h}x{w} 3x3"
        cases.append(Case("conv2d forward", shape, batch, flops,
                          lambda x=x, wgt=wgt, b=b: ops.conv2d(x, wgt, b, padding=1),
                          lambda xt=xt, wt=wt, bt=bt: F.conv2d(xt, wt, bt, padding=1)))
        cases.append(Case("conv2d backward_input", shape, batch, flops,
                          lambda dy=dy, wgt=wgt, s=x.shape: ops.conv2d_backward_input(dy, wgt, s, padding=1),
                          lambda dyt=dyt, xt=xt, wt=wt: torch.ops.aten.convolution_backward(
                              dyt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])))
    return cases


# (rows per batch item, In, Out): the timestep-embedding MLP and a ResBlock's emb_layers (one row per sample),
# and a token-wise projection over a 28x36 feature map.
LINEAR_SHAPES = [(1, 256, 1024), (1, 1024, 2048), (28 * 36, 512, 1536)]


def linear_cases(batch: int, rng: np.random.Generator) -> List[Case]:
    cases = []
    for rows, fin, fout in LINEAR_SHAPES:
        m = rows * batch
        x, xt = _inputs(rng, m, fin)
        wgt, wt = _inputs(rng, fout, fin)
        b, bt = _inputs(rng, fout)
        dy, dyt = _inputs(rng, m, fout)
        flops = 2.0 * m * fin * fout
        shape = f"({m}, {fin}) -> {fout}"
        cases.append(Case("linear forward", shape, batch, flops,
                          lambda x=x, wgt=wgt, b=b: ops.linear(x, wgt, b),
                          lambda xt=xt, wt=wt, bt=bt: F.linear(xt, wt, bt)))
        cases.append(Case("linear backward_input", shape, batch, flops,
                          lambda dy=dy, wgt=wgt: ops.linear_backward_input(dy, wgt),
                          lambda dyt=dyt, wt=wt: torch.matmul(dyt, wt)))
    return cases


SUITES = {"conv2d": conv2d_cases, "linear": linear_cases}


def time_case(case: Case, repeats: int, warmup: int) -> tuple:
    """Median seconds of diffice and torch; the two alternate so load from other processes hits both alike."""
    for _ in range(warmup):
        case.diffice()
        case.torch()
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        case.diffice()
        t1 = time.perf_counter()
        case.torch()
        t2 = time.perf_counter()
        ours.append(t1 - t0)
        theirs.append(t2 - t1)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run only these suites")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    threads = ops.get_backend("cpu").num_threads
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    print(f"diffice cpu backend: {threads} threads; torch {torch.__version__}: {torch.get_num_threads()} threads; "
          f"median of {args.repeats} after {args.warmup} warm-up calls\n")
    print("| op | shape | batch | diffice ms | torch ms | diffice/torch | diffice GFLOP/s | torch GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for suite in args.only or list(SUITES):
        for batch in args.batches:
            for case in SUITES[suite](batch, rng):
                ours, theirs = time_case(case, args.repeats, args.warmup)
                print(f"| {case.op} | {case.shape} | {case.batch} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | "
                      f"{ours / theirs:.2f} | {case.flops / ours / 1e9:.1f} | {case.flops / theirs / 1e9:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
