"""Where Winograd F(4x4, 3x3) pays on this machine: diffice's 3x3 / stride 1 / padding 1 convolution over a grid
of channel counts and image sizes, timed with oneDNN's direct kernel (DIFFICE_NO_WINOGRAD=1) and with the
Winograd kernel forced (DIFFICE_WINOGRAD_ALWAYS=1, wherever the geometry allows it), and which one diffice's
default rule picks (csrc/ops/cpu_winograd.c: 32 or more channels in and out, at least 60 4x4 tiles per image).

    python benchmarks/winograd.py                      # all cores, batch 1
    python benchmarks/winograd.py --threads 2 --repeats 9 --channels 32 64 128
    python benchmarks/winograd.py --batch 4 --sizes 7x9 14x18 28x36   # the small UNet's lower levels, batch 4

Batch 1 unless `--batch`, channels-last input and output (the UNet's layout between its norms and convolutions), as
many input as output channels, the minimum of `--repeats` calls after a warm-up; both variants alternate in one
process (the switches are read at each call). Also prints each variant's error against a float64 convolution
(max |error| / max |reference|) for the first image size of each channel count.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import timed_calls, use_checkout  # noqa: E402

use_checkout()

SIZES = [(28, 36), (36, 44), (44, 56), (48, 64), (56, 72), (112, 144), (224, 288)]


def tiles(h: int, w: int) -> int:
    return ((h + 3) // 4) * ((w + 3) // 4)


def with_env(name: str, run):
    os.environ[name] = "1"
    try:
        return run()
    finally:
        del os.environ[name]


def best_seconds(run, repeats: int) -> float:
    return min(timed_calls(run, repeats)["times"])


def reference_error(x: np.ndarray, weight: np.ndarray, y: np.ndarray) -> float:
    """max |y - conv(x, weight)| / max |conv|, the convolution in float64 (x NHWC, y NHWC)."""
    h, w = x.shape[1:3]
    padded = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    want = np.zeros((h, w, weight.shape[0]))
    for r in range(3):
        for c in range(3):
            want += padded[r : r + h, c : c + w] @ weight[:, :, r, c].T.astype(np.float64)
    return float(np.abs(y[0] - want).max() / np.abs(want).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 48, 64, 96, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], help="images, HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--max-mb", type=float, default=40.0, help="skip inputs larger than this (MB)")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from diffice.ops import conv2d

    print(f"threads: {args.threads}; batch {args.batch}, NHWC in and out, minimum of {args.repeats} calls\n")
    print("| channels | image | 4x4 tiles | direct ms | Winograd ms | Winograd / direct | default |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    errors = []
    for channels in args.channels:
        for n, (h, w) in enumerate(sizes):
            if args.batch * channels * h * w * 4 / 1e6 > args.max_mb:
                continue
            x = rng.standard_normal((args.batch, h, w, channels)).astype(np.float32)
            weight = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)

            def conv(x=x, weight=weight):
                return conv2d(x, weight, padding=1, x_layout="nhwc", y_layout="nhwc")

            direct = with_env("DIFFICE_NO_WINOGRAD", lambda: best_seconds(conv, args.repeats))
            winograd = with_env("DIFFICE_WINOGRAD_ALWAYS", lambda: best_seconds(conv, args.repeats))
            direct_y = with_env("DIFFICE_NO_WINOGRAD", conv)
            # the rule's choice, read from the bits: the default's result is the direct kernel's or not
            picked = "direct" if np.array_equal(conv(), direct_y) else "Winograd"
            print(
                f"| {channels} | {h}x{w} | {tiles(h, w)} | {1e3 * direct:.2f} | {1e3 * winograd:.2f} | "
                f"{winograd / direct:.2f} | {picked} |",
                flush=True,
            )
            if n == 0:
                errors.append(
                    (
                        channels,
                        reference_error(x, weight, direct_y),
                        reference_error(x, weight, with_env("DIFFICE_WINOGRAD_ALWAYS", conv)),
                    )
                )
    print("\n| channels | direct error | Winograd error |\n|---|---|---|")
    for channels, direct_error, winograd_error in errors:
        print(f"| {channels} | {direct_error:.1e} | {winograd_error:.1e} |")


if __name__ == "__main__":
    main()
