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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, beside this script
from harness import use_checkout  # noqa: E402

use_checkout()
from diffice import ops  # noqa: E402


@dataclass
class Case:
    op: str  # "conv2d forward"
    shape: str  # "128->128 112x144 3x3"
    batch: int
    flops: float  # floating-point operations of one call (multiply-add = 2)
    diffice: Callable[[], object]
    torch: Callable[[], object]


def _inputs(rng: np.random.Generator, *shape: int) -> tuple:
    """A float32 numpy array and a torch tensor sharing its memory: both libraries see the same data."""
    a = rng.standard_normal(shape, dtype=np.float32)
    return a, torch.from_numpy(a)


# guided-diffusion's 3x3, pad 1 convolutions at the 256x256 model's inner resolutions (input 112x144 crops)
CONV_SHAPES = [(128, 128, 112, 144), (256, 256, 56, 72), (512, 512, 28, 36)]


def conv2d_cases(batch: int, rng: np.random.Generator) -> list[Case]:
    cases = []
    for ci, co, h, w in CONV_SHAPES:
        x, xt = _inputs(rng, batch, ci, h, w)
        wgt, wt = _inputs(rng, co, ci, 3, 3)
        b, bt = _inputs(rng, co)
        dy, dyt = _inputs(rng, batch, co, h, w)
        flops = 2.0 * batch * co * ci * 9 * h * w
        shape = f"{ci}->{co} {h}x{w} 3x3"
        cases.append(
            Case(
                "conv2d forward",
                shape,
                batch,
                flops,
                lambda x=x, wgt=wgt, b=b: ops.conv2d(x, wgt, b, padding=1),
                lambda xt=xt, wt=wt, bt=bt: F.conv2d(xt, wt, bt, padding=1),
            )
        )
        cases.append(
            Case(
                "conv2d backward_input",
                shape,
                batch,
                flops,
                lambda dy=dy, wgt=wgt, s=x.shape: ops.conv2d_backward_input(dy, wgt, s, padding=1),
                lambda dyt=dyt, xt=xt, wt=wt: torch.ops.aten.convolution_backward(
                    dyt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
                ),
            )
        )
    return cases


# (rows per batch item, In, Out): the timestep-embedding MLP and a ResBlock's emb_layers (one row per sample),
# and a token-wise projection over a 28x36 feature map.
LINEAR_SHAPES = [(1, 256, 1024), (1, 1024, 2048), (28 * 36, 512, 1536)]


def linear_cases(batch: int, rng: np.random.Generator) -> list[Case]:
    cases = []
    for rows, fin, fout in LINEAR_SHAPES:
        m = rows * batch
        x, xt = _inputs(rng, m, fin)
        wgt, wt = _inputs(rng, fout, fin)
        b, bt = _inputs(rng, fout)
        dy, dyt = _inputs(rng, m, fout)
        flops = 2.0 * m * fin * fout
        shape = f"({m}, {fin}) -> {fout}"
        cases.append(
            Case(
                "linear forward",
                shape,
                batch,
                flops,
                lambda x=x, wgt=wgt, b=b: ops.linear(x, wgt, b),
                lambda xt=xt, wt=wt, bt=bt: F.linear(xt, wt, bt),
            )
        )
        cases.append(
            Case(
                "linear backward_input",
                shape,
                batch,
                flops,
                lambda dy=dy, wgt=wgt: ops.linear_backward_input(dy, wgt),
                lambda dyt=dyt, wt=wt: torch.matmul(dyt, wt),
            )
        )
    return cases


# guided-diffusion's GroupNorm32 at the UNet's first and deepest levels
GROUP_NORM_SHAPES = [(128, 112, 144), (512, 28, 36)]


def group_norm_cases(batch: int, rng: np.random.Generator) -> list[Case]:
    cases = []
    for c, h, w in GROUP_NORM_SHAPES:
        x, xt = _inputs(rng, batch, c, h, w)
        g, gt = _inputs(rng, c)
        b, bt = _inputs(rng, c)
        dy, dyt = _inputs(rng, batch, c, h, w)
        _, mean, rstd = torch.ops.aten.native_group_norm(xt, gt, bt, batch, c, h * w, 32, 1e-5)
        flops = 8.0 * batch * c * h * w  # nominal: a few passes over the data; the op is memory bound
        shape = f"{c}x{h}x{w}, 32 groups"
        cases.append(
            Case(
                "group_norm forward",
                shape,
                batch,
                flops,
                lambda x=x, g=g, b=b: ops.group_norm(x, 32, g, b),
                lambda xt=xt, gt=gt, bt=bt: F.group_norm(xt, 32, gt, bt),
            )
        )
        cases.append(
            Case(
                "group_norm backward",
                shape,
                batch,
                flops,
                lambda dy=dy, x=x, g=g: ops.group_norm_backward(dy, x, 32, g),
                lambda dyt=dyt, xt=xt, gt=gt, mean=mean, rstd=rstd, c=c, hw=h * w: (
                    torch.ops.aten.native_group_norm_backward(
                        dyt, xt, mean, rstd, gt, batch, c, hw, 32, [True, True, True]
                    )
                ),
            )
        )
    return cases


def _torch_legacy_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """guided-diffusion's QKVAttentionLegacy, as a researcher runs it in PyTorch eager."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / ch**0.25
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def attention_cases(batch: int, rng: np.random.Generator) -> list[Case]:
    c, h, w, heads = 512, 28, 36, 4
    t = h * w
    qkv, qkvt = _inputs(rng, batch, 3 * c, t)
    dy, dyt = _inputs(rng, batch, c, t)
    flops = 4.0 * batch * t * t * c  # QK^T and WV
    shape = f"C={c}, T={h}x{w}, {heads} heads"

    def torch_backward(qkvt=qkvt, dyt=dyt):
        with torch.enable_grad():
            q = qkvt.clone().requires_grad_(True)
            _torch_legacy_attention(q, heads).backward(dyt)
            return q.grad

    return [
        Case(
            "attention forward",
            shape,
            batch,
            flops,
            lambda: ops.attention(qkv, heads),
            lambda: _torch_legacy_attention(qkvt, heads),
        ),
        Case(
            "attention backward",
            shape,
            batch,
            2 * flops,
            lambda: ops.attention_backward(dy, qkv, heads),
            torch_backward,
        ),
    ]


SUITES = {"conv2d": conv2d_cases, "linear": linear_cases, "group_norm": group_norm_cases, "attention": attention_cases}


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
    print(
        f"diffice cpu backend: {threads} threads; torch {torch.__version__}: {torch.get_num_threads()} threads; "
        f"median of {args.repeats} after {args.warmup} warm-up calls\n"
    )
    print("| op | shape | batch | diffice ms | torch ms | diffice/torch | diffice GFLOP/s | torch GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for suite in args.only or list(SUITES):
        for batch in args.batches:
            for case in SUITES[suite](batch, rng):
                ours, theirs = time_case(case, args.repeats, args.warmup)
                print(
                    f"| {case.op} | {case.shape} | {case.batch} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | "
                    f"{ours / theirs:.2f} | {case.flops / ours / 1e9:.1f} | {case.flops / theirs / 1e9:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
