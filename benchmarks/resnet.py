"""ResNet-50 features (layer4 tap) forward and input gradient: diffice vs PyTorch eager on the CPU, same weights,
same threads, same run. The perceptual loss's cost per guidance step is one forward + input gradient.

Every measurement runs in its own subprocess so that its peak memory (RSS) is its own.

    python benchmarks/resnet.py                          # 224x288, batch 10, both layouts
    python benchmarks/resnet.py --batches 1 10 --repeats 5

Prints a markdown table: minimum and median seconds per call over the rounds (diffice's and PyTorch's processes
alternate), the speed-up, the peak RSS of each implementation's largest process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import alternating, comparison_cells, in_subprocess, table_head, timed_calls, use_checkout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def worker(impl: str, layout: str, batch: int, size: tuple, mode: str, repeats: int, threads: int) -> dict:
    import numpy as np

    use_checkout()
    sys.path.insert(0, str(ROOT / "tests"))
    from diffice import ResNetFeatures

    h, w = size
    net = ResNetFeatures.random(50, layout, 1, ("layer4",), seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 1, h, w)).astype(np.float32)
    feat = net.forward(x)["layer4"]
    v = rng.standard_normal(feat.shape).astype(np.float32)
    if impl == "torch":
        import torch
        from resnet_reference import ResNet

        torch.set_num_threads(threads)
        model = ResNet(50, layout, 1, ("layer4",)).eval()
        model.load_state_dict({k: torch.from_numpy(a) for k, a in net.state_dict().items()}, strict=False)
        del net
        xt, vt = torch.from_numpy(x), torch.from_numpy(v)

        def run():
            if mode == "forward":
                with torch.no_grad():
                    return model(xt)["layer4"]
            xg = xt.clone().requires_grad_(True)
            (model(xg)["layer4"] * vt).sum().backward()
            return xg.grad
    else:

        def run():
            return net.forward(x) if mode == "forward" else net.vjp(x, {"layer4": v})

    return timed_calls(run, repeats)


def measure(impl, layout, batch, size, mode, repeats, threads) -> dict:
    return in_subprocess(__file__, [impl, layout, batch, f"{size[0]}x{size[1]}", mode, repeats, threads], threads)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, layout, batch, size, mode, repeats, threads = sys.argv[2:9]
        h, w = (int(s) for s in size.split("x"))
        print(json.dumps(worker(impl, layout, int(batch), (h, w), mode, int(repeats), int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=["radimagenet"], choices=["torchvision", "radimagenet"])
    parser.add_argument("--batches", nargs="+", type=int, default=[10])
    parser.add_argument("--size", default="224x288", help="HxW")
    parser.add_argument("--modes", nargs="+", default=["forward", "vjp"], choices=["forward", "vjp"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process, after one warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="processes per implementation, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    size = tuple(int(s) for s in args.size.split("x"))
    print(
        f"ResNet-50, layer4 tap, grayscale {size[0]}x{size[1]}; threads: {args.threads}; {args.rounds} alternating "
        f"processes per implementation, {args.repeats} timed calls each after a warm-up; peak RSS of the largest "
        "process\n"
    )
    print(table_head(["layout", "batch", "call"]))
    for layout in args.layouts:
        for batch in args.batches:
            for mode in args.modes:
                r = alternating(
                    lambda impl: measure(impl, layout, batch, size, mode, args.repeats, args.threads),  # noqa: B023
                    args.rounds,
                )
                print(f"| {layout} | {batch} | {mode} | {comparison_cells(r['diffice'], r['torch'])} |", flush=True)


if __name__ == "__main__":
    main()
