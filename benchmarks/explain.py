"""Diff-ICE and its baselines: diffice (the C sampler with diffice's networks) vs the PyTorch eager implementation
in benchmarks/torch_sampler.py, same weights, same threads, same run. The paper's Table 1 columns: batch time,
total time for the image set, peak memory.

Small configuration for the CPU (random weights: this measures the work, not the explanations): the 64-channel
UNet at 56x72, a plane classifier f = SonoNet-8(segmenter), a ResNet-18 perceptual loss, 1000 training steps
respaced to 100, tau 20. One lambda_c value so both implementations do exactly one pass per iteration.

    python benchmarks/explain.py                      # every method, batch 4
    python benchmarks/explain.py --methods diff-ice-1 --batch 10 --images 40

`--config paper` runs the paper-size networks of benchmarks/explain_calls.py instead (the 128-channel UNet at
224x288, f = SonoNet-16 on [image, 4-class segmenter probabilities], ResNet-50 layer4 Lp), both sides built from
the same random weights:

    python benchmarks/explain.py --config paper --methods diff-ice-1 --batch 4 --tau 2
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
from harness import alternating, comparison_cells, in_subprocess, peak_rss_mb, table_head, use_checkout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (56, 72)
UNET = dict(
    in_channels=1,
    model_channels=64,
    num_res_blocks=2,
    channel_mult=(1, 2, 2, 2),
    attention_resolutions=(4, 8),
    learn_sigma=True,
    num_heads=4,
)
CLASSES = 4  # segmentation classes
METHODS = {
    "diff-ice": ("diff-ice", 5),
    "diff-ice-1": ("diff-ice-1", 1),
    "diff-ice-1-xt": ("diff-ice-1-xt", 1),
    "dime": ("dime", 1),
}


# the networks of each configuration: UNet, image size, segmenter, SonoNet width, ResNet depth and tap
SMALL = dict(unet=UNET, size=SIZE, seg=dict(width=16, levels=3, groups=8), k=8, depth=18, tap="layer2")


def paper_config() -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from unet import CONFIGS  # benchmarks/unet.py's paper-size denoiser, as benchmarks/explain_calls.py uses

    return dict(
        unet=CONFIGS["paper"]["unet"],
        size=CONFIGS["paper"]["size"],
        seg=dict(width=32, levels=4, groups=8),
        k=16,
        depth=50,
        tap="layer4",
    )


def config_of(name: str) -> dict:
    """The networks of configuration `name` ("small" or "paper")."""
    return paper_config() if name == "paper" else SMALL


def build_diffice(seed: int = 0, cfg: dict = SMALL):
    use_checkout()
    import diffice
    from diffice.models.perceptual import PerceptualLoss
    from diffice.models.resnet import ResNetFeatures

    unet = diffice.UNet.random(cfg["unet"], seed=seed)
    diffusion = diffice.GaussianDiffusion(1000, "linear", "100")
    seg = diffice.Segmenter(classes=CLASSES, **cfg["seg"])
    seg._randomize(seed + 1)
    l = diffice.SonoNet.random(k=cfg["k"], in_channels=1 + CLASSES, num_classes=2, seed=seed + 2)
    clf = diffice.PlaneClassifier(seg, l)
    feats = ResNetFeatures.random(
        depth=cfg["depth"], layout="torchvision", in_channels=1, taps=(cfg["tap"],), seed=seed + 3
    )
    perceptual = PerceptualLoss(feats, variant="mse")
    return unet, diffusion, clf, perceptual


def build_torch(unet, clf, perceptual, cfg: dict = SMALL):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from classifier_reference import Segmenter as TorchSegmenter
    from gd_reference import UNetModel
    from resnet_reference import ResNet
    from sononet_reference import SonoNetReference

    def load(module, state):
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
        return module.eval()

    model = load(UNetModel(unet.config), unet.state_dict())
    seg = load(TorchSegmenter(**{k: v for k, v in clf.segmenter.config.items()}), clf.segmenter.state_dict())
    l = load(SonoNetReference(k=cfg["k"], in_channels=1 + CLASSES, num_classes=2), clf.classifier.state_dict())
    tap = cfg["tap"]
    resnet = load(
        ResNet(depth=cfg["depth"], layout="torchvision", in_channels=1, taps=(tap,)), perceptual.features.state_dict()
    )

    class PlaneClassifier(torch.nn.Module):
        def forward(self, x):
            maps = torch.softmax(seg(x), dim=1)
            return l(torch.cat([x, maps], dim=1))[0]

    def perceptual_loss(a, b):  # DiME's form: sum over the batch of the mean squared feature difference
        fa, fb = resnet(a)[tap], resnet(b)[tap]
        return ((fa - fb) ** 2).flatten(1).mean(dim=1).sum()

    for p in list(model.parameters()) + list(seg.parameters()) + list(l.parameters()) + list(resnet.parameters()):
        p.requires_grad_(False)
    return model, PlaneClassifier(), perceptual_loss


def worker(impl: str, method: str, batch: int, tau: int, threads: int, config: str = "small") -> dict:
    name, iterations = METHODS[method]
    cfg = config_of(config)
    unet, diffusion, clf, perceptual = build_diffice(cfg=cfg)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 1) + tuple(cfg["size"])).astype(np.float32)
    if impl == "diffice":
        from diffice.explain.explainer import Explainer

        ex = Explainer(
            unet,
            diffusion,
            clf,
            perceptual,
            method=name,
            iterations=iterations,
            tau=tau,
            lambda_c=(60.0,),
            lambda_p=30.0,
        )
        t0 = time.perf_counter()
        res = ex.explain(x, target=1, seed=0, warn=False)  # random weights: only the time means something
        seconds = time.perf_counter() - t0
        arena = res.peak_bytes
    else:
        import torch

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from torch_sampler import TorchDiffusion, explain

        torch.set_num_threads(threads)
        model, tclf, tperc = build_torch(unet, clf, perceptual, cfg)
        td = TorchDiffusion(1000, 100)
        xt = torch.from_numpy(x)
        kind = {"diff-ice": "diff-ice", "diff-ice-1": "diff-ice", "diff-ice-1-xt": "xt", "dime": "dime"}[method]
        t0 = time.perf_counter()
        explain(
            model, td, tclf, tperc, xt, 1, iterations=iterations, tau=tau, lambdas=(60.0,), lambda_p=30.0, method=kind
        )
        seconds = time.perf_counter() - t0
        arena = 0
    return dict(times=[seconds], peak_rss_mb=peak_rss_mb(), arena_mb=arena / 2**20)


def measure(impl, method, batch, tau, threads, config="small") -> dict:
    return in_subprocess(__file__, [impl, method, batch, tau, threads, config], threads)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, method, batch, tau, threads, config = sys.argv[2:8]
        print(json.dumps(worker(impl, method, int(batch), int(tau), int(threads), config)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tau", type=int, default=20)
    parser.add_argument("--images", type=int, default=423, help="image-set size for the total-time column")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--config", choices=("small", "paper"), default="small")
    parser.add_argument("--rounds", type=int, default=1, help="processes (whole calls) per implementation, alternating")
    args = parser.parse_args()
    size = config_of(args.config)["size"]
    print(
        f"{args.config}, {size[0]}x{size[1]}, batch {args.batch}, tau {args.tau} of 100 respaced steps, one lambda_c, "
        f"{args.threads} threads; each time is one process's whole first call (fixed costs included); "
        f"{args.rounds} alternating processes per implementation; total time = diffice's median batch time x "
        f"{args.images} / batch\n"
    )
    print(table_head(["method"], ["diffice sampler arena MB", "diffice total h"]))
    for method in args.methods:
        r = alternating(
            lambda impl: measure(impl, method, args.batch, args.tau, args.threads, args.config),  # noqa: B023
            args.rounds,
        )
        d = r["diffice"]
        hours = "-" if "error" in d else f"{d['median'] * args.images / args.batch / 3600:.2f}"
        extra = "-" if "error" in d else f"{d['arena_mb']:.0f}"
        extra += f" | {hours}"
        print(f"| {method} | {comparison_cells(d, r['torch'], digits=2)} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
