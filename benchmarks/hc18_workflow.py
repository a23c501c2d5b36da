"""The real-ultrasound workflow (not part of CI): train a small DDPM on HC18 with diffice, then explain images that
SonoNet-16 does not see as a transventricular brain plane, towards SonoNet-16's Brain (Tv.) class.

    python benchmarks/hc18_workflow.py --work /tmp/hc18 [--hc18 DIR] [--sononet FILE] [--steps 3000] [--size 56 72]
        [--n 8]

Data (neither is committed): --hc18, a folder with the HC18 images in images/ or the images themselves (999 real
fetal head images, HC18 challenge, van den Heuvel et al., PLoS ONE 2018, CC BY 4.0; default
../shared/data/hc18 beside the repository), and --sononet, SonoNet-16's weights (Baumgartner et al., TMI 2017; the
authors' SonoNet16.npz or a state_dict; default ../shared/weights/sononet/SonoNet16.npz). Both are checked before
anything is trained or written.

What it does:
1. trains guided-diffusion's UNet (the demo's small configuration) on all 999 images resized to --size
   (default 56x72, a quarter of 224x288: a CPU-sized DDPM);
2. the guiding classifier is SonoNet-16 seen as binary "Brain (Tv.) or not" (diffice.TargetClassView), applied to
   the image upsampled 4x (nearest) to the 224x288 it was trained on; its VJP is the adjoint of that upsampling;
3. picks --n images spread evenly (by rank of their Brain (Tv.) probability) over those whose (upsampled,
   downsized) version SonoNet-16 does not classify as Brain (Tv.), and explains them with Diff-ICE (L=5, tau=30
   of 100 respaced steps, lambda_c in {40, 60, 80}; Lp = mean squared pixel distance, --lambda-p (30): no
   RadImageNet weights);
4. reports per iteration the flip ratio and the mean change of the Brain (Tv.) probability, writes
   WORK/hc18_figure.png and WORK/hc18_results.json.

Resumable: the DDPM training resumes from WORK/ddpm (--steps is the total).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, beside this script
from harness import use_checkout  # noqa: E402

use_checkout()

from diffice import GaussianDiffusion, SonoNet, TargetClassView, UNet, train_ddpm  # noqa: E402
from diffice.data.images import save_png  # noqa: E402
from diffice.evaluation.figures import path_figure  # noqa: E402
from diffice.explain.explainer import Explainer  # noqa: E402
from diffice.models.perceptual import PixelLoss  # noqa: E402
from diffice.train.ddpm import load_images  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_HC18 = SHARED / "data" / "hc18"
DEFAULT_SONONET = SHARED / "weights" / "sononet" / "SonoNet16.npz"
BRAIN_TV = 5


def hc18_images_folder(hc18: Path) -> Path:
    """The folder of HC18 images: hc18/images where it exists (the challenge's layout), else hc18 itself.
    SystemExit naming the option and the path when neither exists."""
    if (hc18 / "images").is_dir():
        return hc18 / "images"
    if hc18.is_dir():
        return hc18
    raise SystemExit(
        f"--hc18 {hc18}: not found (give the folder of the HC18 images, or one holding them in images/; the data are "
        "not part of diffice: README, 'Real ultrasound: the HC18 workflow')"
    )


def check_sononet(path: Path) -> Path:
    """SystemExit naming the option and the path unless the SonoNet-16 weights file exists."""
    if not path.is_file():
        raise SystemExit(
            f"--sononet {path}: not found (give SonoNet-16's weights, e.g. the authors' SonoNet16.npz; they are not "
            "part of diffice: README, 'Real ultrasound: the HC18 workflow')"
        )
    return path


class UpsampledClassifier:
    """f(x) = g(up(x)), up = nearest-neighbour upsampling by an integer factor; vjp = up^T (sum over each block)."""

    num_classes = 2

    def __init__(self, classifier, factor: int) -> None:
        self.classifier, self.factor = classifier, int(factor)

    def _up(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.repeat(self.factor, axis=2).repeat(self.factor, axis=3))

    def forward(self, x: np.ndarray):
        return self.classifier.forward(self._up(x))

    def vjp(self, x: np.ndarray, dlogits: np.ndarray) -> np.ndarray:
        g = self.classifier.vjp(self._up(x), dlogits)
        n, c, h, w = x.shape
        f = self.factor
        return np.ascontiguousarray(g.reshape(n, c, h, f, w, f).sum(axis=(3, 5)), dtype=np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--hc18", type=Path, default=DEFAULT_HC18, help="HC18 images: a folder, or one with images/")
    p.add_argument("--sononet", type=Path, default=DEFAULT_SONONET, help="SonoNet-16 weights (SonoNet16.npz)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--size", type=int, nargs=2, default=[56, 72])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda-p", type=float, default=30.0, help="weight of Lp (mean squared pixel distance)")
    p.add_argument("--tag", default="", help="suffix of the figure and results file names")
    args = p.parse_args()
    image_folder = hc18_images_folder(args.hc18)
    sononet_file = check_sononet(args.sononet)
    size = tuple(args.size)
    factor = 224 // size[0]
    if (size[0] * factor, size[1] * factor) != (224, 288):
        raise SystemExit(f"--size must divide 224x288 by an integer factor, got {size}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    images = load_images(image_folder, size)
    print(f"HC18: {len(images)} images at {size[0]}x{size[1]}", flush=True)
    t0 = time.time()
    resume = (work / "ddpm" / "train_state.npz").exists()
    config = dict(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_heads=4,
        learn_sigma=True,
    )
    result = train_ddpm(
        images,
        work / "ddpm",
        config,
        steps=args.steps,
        batch_size=8,
        lr=2e-4,
        weight_decay=0.05,
        ema_rate=0.999,
        checkpoint_every=250,
        resume=resume,
        seed=args.seed,
    )
    train_seconds = time.time() - t0
    if result.interrupted:
        return 130
    unet = UNet.from_file(work / "ddpm" / "ema.safetensors", num_heads=4)
    diffusion = GaussianDiffusion(1000, "linear", "100", learn_sigma=True)

    sononet = SonoNet.from_file(sononet_file)
    view = UpsampledClassifier(TargetClassView(sononet, BRAIN_TV), factor)
    probs = np.concatenate([view.forward(images[i : i + 32]).probabilities[:, 1] for i in range(0, len(images), 32)])
    candidates = np.where(probs < 0.5)[0]
    order = candidates[np.argsort(probs[candidates])]
    pick = np.sort(order[np.linspace(0, len(order) - 1, args.n).round().astype(int)]) if len(order) else order
    print(
        f"SonoNet-16 on the downsized images: {np.mean(probs >= 0.5):.2%} classified Brain (Tv.); "
        f"explaining {len(pick)} of the {len(candidates)} others",
        flush=True,
    )
    x = np.ascontiguousarray(images[pick])
    explainer = Explainer(
        unet,
        diffusion,
        view,
        PixelLoss("l2"),
        method="diff-ice",
        iterations=5,
        tau=30,
        lambda_c=(40.0, 60.0, 80.0),
        lambda_p=args.lambda_p,
    )
    t1 = time.time()
    res = explainer.explain(x, target=1, seed=args.seed)
    explain_seconds = time.time() - t1
    rows = []
    for l in range(res.counterfactuals.shape[0]):
        rows.append(
            dict(
                iteration=l + 1,
                flip_ratio=float(res.flipped[l].mean()),
                mean_prob=float(res.prob_target[l + 1].mean()),
                mean_prob_change=float((res.prob_target[l + 1] - res.prob_target[0]).mean()),
                mean_l1_to_input=float(np.abs(res.counterfactuals[l] - x).mean()),
            )
        )
    print(f"{'iteration':>9} {'flip ratio':>10} {'p(Brain Tv.)':>12} {'change':>8} {'L1 to x':>8}")
    print(f"{0:>9} {'':>10} {res.prob_target[0].mean():12.3f}")
    for r in rows:
        print(
            f"{r['iteration']:>9} {r['flip_ratio']:10.2f} {r['mean_prob']:12.3f} {r['mean_prob_change']:+8.3f} "
            f"{r['mean_l1_to_input']:8.3f}"
        )
    fig = path_figure(x, res.counterfactuals, res.prob_target, None, row_titles=[f"HC18 #{i}" for i in pick], scale=3)
    save_png(work / f"hc18_figure{args.tag}.png", fig)
    summary = dict(
        images=len(images),
        size=list(size),
        ddpm_steps=result.step,
        train_seconds=train_seconds,
        explain_seconds=explain_seconds,
        explained=[int(i) for i in pick],
        input_prob=float(res.prob_target[0].mean()),
        iterations=rows,
        classified_brain_tv=float(np.mean(probs >= 0.5)),
        lambda_p=args.lambda_p,
    )
    (work / f"hc18_results{args.tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {work / f'hc18_figure{args.tag}.png'} and {work / f'hc18_results{args.tag}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
