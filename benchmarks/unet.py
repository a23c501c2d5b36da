"""UNet forward and input-VJP: diffice vs PyTorch eager on the CPU, same weights, same threads, same run.

Every measurement runs in its own subprocess so that its peak memory (RSS) is its own.

    python benchmarks/unet.py                      # paper-size model at 224x288 and the small 64-channel model
    python benchmarks/unet.py --configs small --batches 1 10 --repeats 3 --rounds 3

Prints a markdown table: minimum and median seconds per call over the rounds (diffice's and PyTorch's processes
alternate), the speed-up, the peak RSS of each implementation's largest process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import alternating, comparison_cells, in_subprocess, table_head, timed_calls, use_checkout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    # the DiME-size denoiser at the paper's image size (docs/method.md 1.1-1.2)
    "paper": dict(
        size=(224, 288),
        unet=dict(
            in_channels=1,
            model_channels=128,
            num_res_blocks=2,
            channel_mult=(1, 1, 2, 3, 4),
            attention_resolutions=(8, 16),
            learn_sigma=True,
            num_heads=4,
        ),
    ),
    # what a sampler test can afford
    "small": dict(
        size=(56, 72),
        unet=dict(
            in_channels=1,
            model_channels=64,
            num_res_blocks=2,
            channel_mult=(1, 2, 2, 2),
            attention_resolutions=(4, 8),
            learn_sigma=True,
            num_heads=4,
        ),
    ),
}


def worker(impl: str, config: str, batch: int, mode: str, repeats: int, threads: int) -> dict:
    import numpy as np

    # a run too large for the machine fails with an allocation error instead of waking the kernel's OOM killer
    limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 9 // 10
    resource.setrlimit(resource.RLIMIT_AS, (limit + (8 << 30), limit + (8 << 30)))

    use_checkout()
    sys.path.insert(0, str(ROOT / "tests"))
    from diffice.models.unet import UNet

    spec = CONFIGS[config]
    h, w = spec["size"]
    unet = UNet.random(spec["unet"], seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, h, w)).astype(np.float32)
    t = np.full(batch, 300)
    v = rng.standard_normal((batch, unet.config["out_channels"], h, w)).astype(np.float32)
    if impl == "torch":
        import torch
        from gd_reference import UNetModel

        torch.set_num_threads(threads)
        model = UNetModel(unet.config)
        model.load_state_dict({k: torch.from_numpy(a) for k, a in unet.state_dict().items()})
        model.eval()
        del unet
        xt, tt, vt = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(v)

        def run():
            if mode == "forward":
                with torch.no_grad():
                    return model(xt, tt)
            xg = xt.clone().requires_grad_(True)
            (model(xg, tt) * vt).sum().backward()
            return xg.grad
    else:

        def run():
            return unet.forward(x, t) if mode == "forward" else unet.vjp(x, t, v)

    return timed_calls(run, repeats)


def measure(impl, config, batch, mode, repeats, threads) -> dict:
    return in_subprocess(__file__, [impl, config, batch, mode, repeats, threads], threads)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, config, batch, mode, repeats, threads = sys.argv[2:8]
        print(json.dumps(worker(impl, config, int(batch), mode, int(repeats), int(threads))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=sorted(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--modes", nargs="+", default=["forward", "vjp"], choices=["forward", "vjp"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process, after one warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="processes per implementation, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(
        f"threads: {args.threads}; {args.rounds} alternating processes per implementation, {args.repeats} timed calls "
        "each after a warm-up; peak RSS of the largest process\n"
    )
    print(table_head(["model", "batch", "call"]))
    for config in args.configs:
        for batch in args.batches:
            for mode in args.modes:
                r = alternating(
                    lambda impl: measure(impl, config, batch, mode, args.repeats, args.threads),  # noqa: B023
                    args.rounds,
                )
                h, w = CONFIGS[config]["size"]
                cells = comparison_cells(r["diffice"], r["torch"])
                print(f"| {config} {h}x{w} | {batch} | {mode} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
