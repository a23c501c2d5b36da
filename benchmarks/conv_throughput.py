"""What this processor can do: its measured fp32 3x3-convolution throughput, and how much of it the paper-size UNet
forward reaches in diffice and in PyTorch eager.

    python benchmarks/conv_throughput.py                        # batch 1, 3 repeats, all cores
    python benchmarks/conv_throughput.py --batches 1 4 --repeats 5 --threads 2

The machine's figure is the best GFLOP/s of one direct 3x3, stride-1 convolution over the shapes below (batch 1: the
paper-size UNet's five levels, 128 channels at 224x288 down to 512 at 14x18, and three deeper ones with 256-512
channels at 112x144-28x36 that reach more of the processor), each run four ways: diffice's conv2d op with
DIFFICE_NO_WINOGRAD=1 (oneDNN's direct kernel) on NCHW arrays (its reorders count) and on channels-last ones (NHWC
in and out, as the UNet runs it: no reorders), PyTorch's conv2d on NCHW tensors, and PyTorch's conv2d on
channels_last tensors (oneDNN's native layout on most CPUs). A convolution's FLOPs are
2 * N * Co * Ho * Wo * Ci * KH * KW. diffice's default conv2d (Winograd F(4x4, 3x3) where it applies,
csrc/ops/cpu_winograd.c: 32 or more channels and at least 60 4x4 tiles per image; elsewhere it is the direct
kernel) is shown beside them in the same unit: the direct convolution's FLOPs per second ("effective"), though its
products make 4x fewer multiplications.

The UNet's FLOPs per image are counted by PyTorch's FlopCounterMode on guided-diffusion's UNetModel (convolutions
and matrix products; the norms and elementwise ops are not counted), so "% of the machine" is the share of the
convolution throughput the whole forward reaches, its other work included. Every measurement is the median of
`--repeats` (a single convolution: `--conv-repeats`) calls after a warm-up, each implementation in its own process;
PyTorch runs with its own OpenMP settings, diffice with its default (GOMP_SPINCOUNT=1000, set when imported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import in_subprocess, timed_calls, use_checkout  # noqa: E402
from unet import CONFIGS  # noqa: E402
from unet import measure as measure_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# (channels, height, width) of the paper-size UNet's 3x3 convolutions with as many inputs as outputs, level by level,
# then deeper ones at the same sizes (the machine's figure is the best direct cell of all)
CONV_SHAPES = [
    (128, 224, 288),
    (128, 112, 144),
    (256, 56, 72),
    (384, 28, 36),
    (512, 14, 18),
    (256, 112, 144),
    (384, 56, 72),
    (512, 28, 36),
]
IMPLS = ("diffice", "diffice-direct", "diffice-direct-nhwc", "torch", "torch-channels-last")


def conv_flops(channels: int, h: int, w: int) -> float:
    return 2.0 * channels * h * w * channels * 9


def conv_worker(impl: str, channels: int, h: int, w: int, repeats: int, threads: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, channels, h, w)).astype(np.float32)
    weight = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    if impl.startswith("diffice"):
        if impl.startswith("diffice-direct"):
            os.environ["DIFFICE_NO_WINOGRAD"] = "1"  # read by the C core at each call
        use_checkout()
        from diffice.ops import conv2d

        if impl == "diffice-direct-nhwc":
            x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            return timed_calls(lambda: conv2d(x_nhwc, weight, padding=1, x_layout="nhwc", y_layout="nhwc"), repeats)
        return timed_calls(lambda: conv2d(x, weight, padding=1), repeats)
    import torch

    torch.set_num_threads(threads)
    xt, wt = torch.from_numpy(x), torch.from_numpy(weight)
    if impl == "torch-channels-last":
        xt, wt = xt.to(memory_format=torch.channels_last), wt.to(memory_format=torch.channels_last)
    with torch.no_grad():
        return timed_calls(lambda: torch.nn.functional.conv2d(xt, wt, padding=1), repeats)


def unet_flops_per_image() -> float:
    """FLOPs of one paper-size UNet forward on one image, counted by PyTorch on guided-diffusion's module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    use_checkout()
    sys.path.insert(0, str(ROOT / "tests"))
    from gd_reference import UNetModel

    from diffice.models.unet import UNet

    spec = CONFIGS["paper"]
    model = UNetModel(UNet.random(spec["unet"], seed=0).config).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros((1, 1) + spec["size"]), torch.full((1,), 300))
    return float(counter.get_total_flops())


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line for line in lines if line.startswith("model name")).split(":", 1)[1].strip()
        flags = next(line for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    return f"{name} ({isa}, {os.cpu_count()} logical CPUs)"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, impl, *rest = sys.argv[2:]
        values = [int(v) for v in rest]
        if kind == "conv":
            print(json.dumps(conv_worker(impl, *values)))
        else:
            print(json.dumps(dict(flops=unet_flops_per_image())))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conv-repeats", type=int, default=10, help="timed calls of each single convolution")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    print(f"machine: {cpu_name()}; threads {args.threads}\n")
    print(
        "| 3x3 conv, batch 1 | GFLOP | diffice (default) effective GFLOP/s | diffice direct GFLOP/s | "
        "diffice direct NHWC GFLOP/s | torch NCHW GFLOP/s | torch channels_last GFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|")
    best = 0.0
    for c, h, w in CONV_SHAPES:
        flops = conv_flops(c, h, w)
        rates = []
        for impl in IMPLS:
            r = in_subprocess(__file__, ["conv", impl, c, h, w, args.conv_repeats, args.threads], args.threads)
            rates.append(flops / r["seconds"] / 1e9 if "seconds" in r else float("nan"))
        best = max([best] + [r for r in rates[1:] if r == r])  # direct convolutions only
        print(f"| {c}->{c} at {h}x{w} | {flops / 1e9:.2f} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
    print(f"\nthe machine's measured fp32 direct 3x3-convolution throughput: **{best:.1f} GFLOP/s**\n")

    flops = in_subprocess(__file__, ["flops", "torch"], args.threads)["flops"]
    print(f"paper-size UNet forward: {flops / 1e9:.1f} GFLOP per image (PyTorch's FlopCounterMode)\n")
    print("| UNet forward | diffice s | diffice GFLOP/s | % of machine | torch s | torch GFLOP/s | % of machine |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:
        cells = []
        for impl in ("diffice", "torch"):
            r = measure_unet(impl, "paper", batch, "forward", args.repeats, args.threads)  # benchmarks/unet.py's worker
            if "seconds" not in r:
                cells += [r.get("error", "failed"), "-", "-"]
                continue
            rate = flops * batch / r["seconds"] / 1e9
            cells += [f"{r['seconds']:.3f}", f"{rate:.1f}", f"{100 * rate / best:.0f}%"]
        print(f"| batch {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
