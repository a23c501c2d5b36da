"""SonoNet-16 forward and input gradient: diffice vs PyTorch eager on the CPU, same weights, same threads, same run.

Every measurement runs in its own subprocess so that its peak memory (RSS) is its own.

    python benchmarks/sononet.py                       # SonoNet-16 at 224x288, batch 10
    python benchmarks/sononet.py --k 16 32 --batches 1 10 --repeats 5

The input gradient is the sampler's call: d sum(dlogits * logits) / dx through the standardisation.
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
SIZE = (224, 288)


def worker(impl: str, k: int, batch: int, mode: str, repeats: int, threads: int) -> dict:
    import numpy as np

    use_checkout()
    sys.path.insert(0, str(ROOT / "tests"))
    from diffice.models.sononet import SonoNet

    h, w = SIZE
    net = SonoNet.random(k, seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 1, h, w)).astype(np.float32)
    dlogits = rng.standard_normal((batch, 14)).astype(np.float32)
    if impl == "torch":
        import torch
        from sononet_reference import SonoNetReference

        torch.set_num_threads(threads)
        model = SonoNetReference(k)
        model.load_state_dict({n: torch.from_numpy(a) for n, a in net.state_dict().items()}, strict=False)
        model.eval()
        del net
        xt, dt = torch.from_numpy(x), torch.from_numpy(dlogits)

        def run():
            if mode == "forward":
                with torch.no_grad():
                    return model(xt)
            xg = xt.clone().requires_grad_(True)
            (model(xg)[0] * dt).sum().backward()
            return xg.grad
    else:

        def run():
            return net.forward(x) if mode == "forward" else net.vjp(x, dlogits=dlogits)

    return timed_calls(run, repeats)


def measure(impl, k, batch, mode, repeats, threads) -> dict:
    return in_subprocess(__file__, [impl, k, batch, mode, repeats, threads], threads)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, k, batch, mode, repeats, threads = sys.argv[2:8]
        print(json.dumps(worker(impl, int(k), int(batch), mode, int(repeats), int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", nargs="+", type=int, default=[16])
    parser.add_argument("--batches", nargs="+", type=int, default=[10])
    parser.add_argument("--modes", nargs="+", default=["forward", "vjp"], choices=["forward", "vjp"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process, after one warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="processes per implementation, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(
        f"threads: {args.threads}; {args.rounds} alternating processes per implementation, {args.repeats} timed calls "
        "each after a warm-up; peak RSS of the largest process\n"
    )
    print(table_head(["model", "batch", "call"]))
    for k in args.k:
        for batch in args.batches:
            for mode in args.modes:
                r = alternating(
                    lambda impl: measure(impl, k, batch, mode, args.repeats, args.threads),  # noqa: B023
                    args.rounds,
                )
                call = "forward" if mode == "forward" else "input gradient"
                cells = comparison_cells(r["diffice"], r["torch"])
                print(f"| SonoNet-{k} {SIZE[0]}x{SIZE[1]} | {batch} | {call} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
