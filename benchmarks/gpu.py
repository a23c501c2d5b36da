"""Diff-ICE and its baselines on a GPU, in the paper's setting (issue 8's benchmark): 224x288 grayscale images, the
DiME-size UNet (128 channels, channel_mult (1,1,2,3,4), learn_sigma), f = SonoNet-16 on [image, segmentation
probabilities], a ResNet-50 perceptual loss (layer4 tap, DiME's mean squared feature difference), 1000 training
steps respaced to 400, tau = 120, batch 10, one lambda_c value (so every method does exactly one guided pass per
iteration; random weights measure the work, not the explanations).

Each method runs in its own process (its own peak GPU memory): PyTorch eager (benchmarks/torch_sampler.py, as a
researcher writes it) with TF32 on (cuDNN's default) and diffice's CUDA backend (`backend="cuda"`, fp32 parity mode)
on the same networks; for Diff-ICE_1 also the other precisions of each: fp32 (TF32 off), tf32, and bf16 (PyTorch:
`torch.autocast(dtype=torch.bfloat16)` around the sampler; diffice: `precision="bf16"`).

DiME's nested loop costs tau guided steps plus tau (tau - 1) / 2 unguided UNet forwards; it is timed at a smaller
--dime-tau and, separately, the cost at tau is estimated from the measured guided-step and UNet-forward times
(labelled as an estimate).

    python benchmarks/gpu.py                              # every row, on cuda
    python benchmarks/gpu.py --config small --device cpu --batch 2 --tau 4 --dime-tau 3   # a smoke test
    python benchmarks/gpu.py --jsonl results.jsonl        # also append each row as JSON as soon as it is measured
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import in_subprocess, use_checkout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UNET_BASE = dict(
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_new_attention_order=False,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
    num_heads=4,
    in_channels=1,
    out_channels=2,
)
CONFIGS = {
    # docs/method.md 1.1-1.2; attention at 1/8 and 1/16 as benchmarks/unet.py's "paper" model
    "paper": dict(
        size=(224, 288),
        unet=dict(
            UNET_BASE, model_channels=128, num_res_blocks=2, channel_mult=(1, 1, 2, 3, 4), attention_resolutions=(8, 16)
        ),
        sononet_k=16,
        segmenter=dict(width=32, levels=4, groups=8),
        resnet_depth=50,
    ),
    "small": dict(
        size=(32, 48),
        unet=dict(UNET_BASE, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(2,)),
        sononet_k=4,
        segmenter=dict(width=8, levels=2, groups=4),
        resnet_depth=18,
    ),
}
SEG_CLASSES = 4
# method -> (torch_sampler method, iterations)
METHODS = {"diff-ice": ("diff-ice", 5), "diff-ice-1": ("diff-ice", 1), "diff-ice-1-xt": ("xt", 1), "dime": ("dime", 1)}


def build_torch(config: str, device: str):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from classifier_reference import Segmenter
    from gd_reference import UNetModel
    from resnet_reference import ResNet
    from sononet_reference import SonoNetReference

    cfg = CONFIGS[config]
    torch.manual_seed(0)
    unet = UNetModel(cfg["unet"])
    seg = Segmenter(classes=SEG_CLASSES, **cfg["segmenter"])
    sono = SonoNetReference(k=cfg["sononet_k"], in_channels=1 + SEG_CLASSES, num_classes=2)
    resnet = ResNet(depth=cfg["resnet_depth"], layout="torchvision", in_channels=1, taps=("layer4",))
    for m in (unet, seg, sono, resnet):
        m.to(device).eval()
        for p in m.parameters():
            p.requires_grad_(False)

    class PlaneClassifier(torch.nn.Module):
        def forward(self, x):
            return sono(torch.cat([x, torch.softmax(seg(x), dim=1)], dim=1))[0]

    def perceptual_loss(a, b):  # DiME's form: sum over the batch of the mean squared feature difference
        fa, fb = resnet(a)["layer4"], resnet(b)["layer4"]
        return ((fa - fb) ** 2).flatten(1).mean(dim=1).sum()

    return unet, PlaneClassifier(), perceptual_loss


def build_diffice(config: str, device: str):
    """The same networks in diffice, random weights, on `device` ("cuda", "cuda:N", or a CPU backend)."""
    use_checkout()
    import diffice
    from diffice.models.perceptual import PerceptualLoss
    from diffice.models.resnet import ResNetFeatures

    cfg = CONFIGS[config]
    unet = diffice.UNet.random(cfg["unet"], seed=0, backend=device)
    seg = diffice.Segmenter(classes=SEG_CLASSES, **cfg["segmenter"], backend=device)
    seg._randomize(1)
    sono = diffice.SonoNet.random(
        k=cfg["sononet_k"], in_channels=1 + SEG_CLASSES, num_classes=2, seed=2, backend=device
    )
    clf = diffice.PlaneClassifier(seg, sono, backend=device)
    feats = ResNetFeatures.random(
        depth=cfg["resnet_depth"], layout="torchvision", in_channels=1, taps=("layer4",), seed=3, backend=device
    )
    return unet, diffice.GaussianDiffusion(1000, "linear", "400"), clf, PerceptualLoss(feats, variant="mse")


def diffice_worker(config: str, method: str, batch: int, tau: int, device: str, precision: str = "fp32") -> dict:
    from diffice.explain.explainer import Explainer

    unet, diffusion, clf, perc = build_diffice(config, device)
    size = CONFIGS[config]["size"]
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 1) + size).astype(np.float32)
    kind, iterations = method, METHODS[method][1]

    def run(t: int):
        ex = Explainer(
            unet,
            diffusion,
            clf,
            perc,
            backend=device,
            method=kind,
            iterations=iterations,
            tau=t,
            lambda_c=(60.0,),
            lambda_p=30.0,
            precision=precision,
        )
        return ex.explain(x, target=1, seed=0, warn=False)  # random weights: only the time means something

    run(2)  # warm-up: handles, algorithm choices, the kept workspace
    t0 = time.perf_counter()
    res = run(tau)
    seconds = time.perf_counter() - t0
    if not np.isfinite(res.counterfactuals).all():
        return dict(error="non-finite output")
    return dict(seconds=seconds, arena_gb=res.peak_bytes / 1e9)


def worker(impl: str, config: str, method: str, batch: int, tau: int, precision: str, device: str) -> dict:
    if impl == "diffice":
        return diffice_worker(config, method, batch, tau, device, precision)
    import torch
    from torch_sampler import TorchDiffusion, explain

    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    cuda = device.startswith("cuda")
    # bf16: convolutions and matrix products on bf16 (autocast's list), everything else fp32, as diffice's bf16
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    unet, clf, perc = build_torch(config, device)
    diffusion = TorchDiffusion(1000, 400, device=device)
    size = CONFIGS[config]["size"]
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.rand((batch, 1) + size, generator=gen, device=device) * 2 - 1

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if method == "unet-forward":  # one no-grad UNet forward at batch size: DiME's inner-loop unit
        t = diffusion.timestep_map[0].repeat(batch)
        with torch.no_grad():
            for _ in range(3):
                unet(x, t)
            sync()
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                unet(x, t)
                sync()
                times.append(time.perf_counter() - t0)
        times.sort()
        seconds = times[len(times) // 2]
    else:
        kind, iterations = METHODS[method]
        # warm-up: cuDNN/cuBLAS handles and kernels, the allocator's pools (two steps of the same method)
        with autocast:
            explain(unet, diffusion, clf, perc, x, 1, iterations=1, tau=2, lambdas=(60.0,), lambda_p=30.0, method=kind)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with autocast:
            out = explain(
                unet,
                diffusion,
                clf,
                perc,
                x,
                1,
                iterations=iterations,
                tau=tau,
                lambdas=(60.0,),
                lambda_p=30.0,
                method=kind,
            )
        sync()
        seconds = time.perf_counter() - t0
        if not torch.isfinite(out[-1]).all():
            return dict(error="non-finite output")
    row = dict(seconds=seconds)
    if cuda:
        row.update(
            peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
            peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9,
            card=torch.cuda.get_device_name(),
            torch=torch.__version__,
        )
    return row


def measure(*args) -> dict:
    return in_subprocess(__file__, args, threads=os.cpu_count() or 1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, config, method, batch, tau, precision, device = sys.argv[2:9]
        print(json.dumps(worker(impl, config, method, int(batch), int(tau), precision, device)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--tau", type=int, default=120)
    parser.add_argument("--dime-tau", type=int, default=20, help="tau at which DiME is timed (see above)")
    parser.add_argument(
        "--methods", nargs="+", default=["diff-ice-1", "diff-ice-1-xt", "dime", "diff-ice"], choices=list(METHODS)
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "tf32", "bf16"],
        choices=["fp32", "tf32", "bf16"],
        help="Diff-ICE_1's rows of each implementation (the other methods: diffice fp32, PyTorch tf32)",
    )
    parser.add_argument("--jsonl", type=Path, help="append each row here as soon as it is measured")
    parser.add_argument("--no-diffice", action="store_true", help="PyTorch rows only")
    args = parser.parse_args()

    plan = []
    for m in args.methods:
        tau = args.dime_tau if m == "dime" else args.tau
        # each diffice row beside its PyTorch row, so a run cut short still compares what it measured
        pairs = [(p, p) for p in args.precisions] if m == "diff-ice-1" else [("fp32", "tf32")]
        for ours, theirs in pairs:
            if not args.no_diffice:
                plan.append(("diffice", m, tau, ours))
            plan.append(("torch", m, tau, theirs))
        if m == "dime":
            plan.append(("torch", "unet-forward", args.tau, "tf32"))

    size = CONFIGS[args.config]["size"]
    print(
        f"config {args.config} ({size[0]}x{size[1]}), batch {args.batch}, tau {args.tau} of 400 respaced steps "
        f"(DiME timed at tau {args.dime_tau}), one lambda_c, device {args.device}"
    )
    print(
        "diffice rows: fp32 = cuDNN FMA math, cuBLAS default math; tf32 = TF32 tensor cores; bf16 = bf16 operands, "
        "fp32 sums; peak = the sampler's arena\n"
    )
    print("| method | impl | precision | tau | batch time (s) | peak allocated (GB) | peak reserved (GB) |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for impl, method, tau, precision in plan:
        r = measure(impl, args.config, method, args.batch, tau, precision, args.device)
        r.update(impl=impl, method=method, tau=tau, precision=precision, config=args.config, batch=args.batch)
        rows[(impl, method, precision)] = r
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(r) + "\n")
        label = "torch eager" if impl == "torch" else "diffice"
        if "error" in r:
            print(f"| {method} | {label} | {precision} | {tau} | {r['error']} | | |", flush=True)
            continue
        if "peak_allocated_gb" in r:
            mem = f"{r['peak_allocated_gb']:.2f} | {r['peak_reserved_gb']:.2f}"
        else:
            mem = f"{r['arena_gb']:.2f} (arena) | -" if "arena_gb" in r else "- | -"
        print(f"| {method} | {label} | {precision} | {tau} | {r['seconds']:.2f} | {mem} |", flush=True)

    dime, fwd, one = (rows.get(("torch", k, "tf32")) for k in ("dime", "unet-forward", "diff-ice-1"))
    if dime and fwd and one and not any("error" in r for r in (dime, fwd, one)):
        guided_step = one["seconds"] / args.tau
        estimate = guided_step * args.tau + fwd["seconds"] * args.tau * (args.tau - 1) / 2
        print(
            f"\nDiME at tau {args.tau}, ESTIMATED from the measured parts: {args.tau} guided steps x "
            f"{guided_step:.3f} s + {args.tau * (args.tau - 1) // 2} UNet forwards x {fwd['seconds']:.4f} s "
            f"= {estimate:.0f} s per batch"
        )
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(dict(method="dime", impl="torch", estimate_seconds=estimate, tau=args.tau)) + "\n")


if __name__ == "__main__":
    main()
