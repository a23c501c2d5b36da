"""The saturated-pixel artefacts of the demo's counterfactuals (docs/artefacts.md): Diff-ICE with the bundled demo
models on the demo's first phantoms under variations of the sampler, the rate of saturated pixels per iteration.

Conditions (the demo's settings, diffice.explain.demo.DEMO_METHOD, unless a condition changes them):

- ``default``: the demo (lambda_c searched in {40, 60, 80}, lambda_p 3000, x0_hat clipped to [-1, 1], beta~ as the
  step's variance); ``learned``: the same with the DDPM's learned variance (the demo before docs/artefacts.md's
  fix); the conditions below up to ``unconditional`` change ``learned``;
- ``no_clip``: x0_hat not clipped (in the step's mean and where the guidance is taken);
- ``unguided``: lambda_c = lambda_p = 0: the DDPM's own reconstruction from tau, five times over;
- ``lp_only`` / ``lc_only``: lambda_c = 0 / lambda_p = 0;
- ``lc_x5``: lambda_c searched in {200, 300, 400} (five times the demo's);
- ``lc_half``: lambda_c searched in {20, 30, 40};
- ``unconditional``: one unguided pass from tau = 99 of 100 (the input is all but gone: the DDPM's samples);
- ``py_learned`` / ``py_fixed_small`` / ``py_fixed_large``: the same Diff-ICE steps written in numpy here (the
  learned variance, or the UNet's eps with guided-diffusion's fixed small (beta~) or large (beta) variance); their
  noise is numpy's, not the C sampler's, so ``py_learned`` against ``learned`` shows what the noise alone changes;
  ``py_small_last4``: the learned variance, but beta~ (fixed small) for the last four steps (i < 4);
  ``py_clip_mean_only`` / ``py_clip_grad_only``: x0_hat clipped only in the step's mean / only where the guidance
  is taken;
- ``respaced_400`` / ``respaced_200``: ``learned`` at 400 (the paper's) / 200 of 1000 steps, tau 120 / 60 (the same
  noise level); ``fine_end_20`` / ``fine_end_10``: section counts with finer steps only below t = 100 / t = 20;
- ``fixed_small`` / ``fixed_large``: the C sampler with beta~ / beta for the learned-sigma DDPM (its v ignored).

    python benchmarks/artefacts.py --out /tmp/artefacts                  # every condition, 6 phantoms, seeds 0 1
    python benchmarks/artefacts.py --conditions default unguided --images 4 --seeds 0
    python benchmarks/artefacts.py --out /tmp/artefacts --table          # the table of the stored runs
    python benchmarks/artefacts.py --variance-head                       # the DDPM's learned variance per step
    python benchmarks/artefacts.py --refit-variance-head respaced --steps 300   # the head refit on the VB alone

Each condition's counterfactuals go to OUT/<condition>_seed<k>.npz (a rerun skips them); the table (markdown) is
printed: per iteration, the mean over images and seeds of the saturated-pixel rate and of the rate of pixels
saturated where the input is not (diffice.evaluation.metrics, on the values a PNG keeps), the flip ratio and the
paper's MQD with the demo's oracle.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from diffice.data.images import to_uint8
from diffice.evaluation.metrics import mqd, new_saturated_pixel_rate, saturated_pixel_rate
from diffice.explain.demo import DEMO_DIFFUSION, DEMO_METHOD, DemoModels, demo_phantoms, load_demo_models
from diffice.explain.explainer import PythonGuidance
from diffice.models.diffusion import GaussianDiffusion, diffusion_from_section

# The conditions measured before the fix ran on the DDPM's learned variance (the demo's then); "default" is the demo
# as it is (beta~, the fixed small variance, since docs/artefacts.md's fix). "diffusion": the demo's [diffusion]
# keys changed for the same DDPM (respacing, variance).
LEARNED = dict(variance="learned")
C_CONDITIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "learned": dict(diffusion=LEARNED),  # the demo before the fix
    "no_clip": dict(clip=False, diffusion=LEARNED),
    "unguided": dict(lambda_c=[0.0], lambda_p=0.0, diffusion=LEARNED),
    "lp_only": dict(lambda_c=[0.0], diffusion=LEARNED),
    "lc_only": dict(lambda_p=0.0, diffusion=LEARNED),
    "lc_x5": dict(lambda_c=[200.0, 300.0, 400.0], diffusion=LEARNED),
    "lc_half": dict(lambda_c=[20.0, 30.0, 40.0], diffusion=LEARNED),
    "unconditional": dict(lambda_c=[0.0], lambda_p=0.0, tau=99, iterations=1, diffusion=LEARNED),
    # the learned variance at the paper's respacing (1000 steps to 400, tau 120: the same t) and between; finer
    # steps only below t = 100 (section counts); the fixed variances with the demo's respacing (v ignored)
    "respaced_400": dict(diffusion=dict(LEARNED, respacing="400"), tau=120),
    "respaced_200": dict(diffusion=dict(LEARNED, respacing="200"), tau=60),
    "fine_end_20": dict(diffusion=dict(LEARNED, respacing="20," + ",".join(["10"] * 9)), tau=39),
    "fine_end_10": dict(diffusion=dict(LEARNED, respacing="10," + ",".join(["2"] * 49)), tau=37),
    "fixed_small": dict(diffusion=dict(variance="small")),
    "fixed_large": dict(diffusion=dict(variance="large")),
}
PY_CONDITIONS: dict[str, dict[str, Any]] = {
    "py_learned": {},
    "py_fixed_small": dict(fixed_variance="small"),
    "py_fixed_large": dict(fixed_variance="large"),
    "py_small_last4": dict(fixed_variance="last4"),
    "py_clip_mean_only": dict(clip_grad=False),
    "py_clip_grad_only": dict(clip_mean=False),
}


def demo_inputs(n: int) -> np.ndarray:
    """The demo's first n phantoms as `diffice demo` explains them: through an 8-bit PNG, (n, 1, 64, 80)."""
    images = demo_phantoms(n).images
    return np.stack([to_uint8(im)[None].astype(np.float32) / np.float32(127.5) - np.float32(1.0) for im in images])


def python_diff_ice(
    models: DemoModels,
    x: np.ndarray,
    seed: int,
    log: list[dict[str, Any]],
    fixed_variance: str | None = None,
    clip_mean: bool = True,
    clip_grad: bool = True,
) -> np.ndarray:
    """Diff-ICE as the C sampler computes it (docs/method.md section 4), in numpy: L iterations, lambda_c searched
    per iteration over the images not yet flipped. fixed_variance None: the learned range; "last4": the learned
    range but beta~ for i < 4. clip_mean / clip_grad: x0_hat clipped in the step's mean / where the guidance is
    taken (the C sampler's clip does both). Appends per-step
    diagnostics to `log`. Returns the counterfactuals (L, N, 1, H, W)."""
    cfg = DEMO_METHOD
    unet = models.unet
    d = (
        diffusion_from_section(dict(DEMO_DIFFUSION, **LEARNED), learn_sigma=True)
        if fixed_variance in (None, "last4")
        else GaussianDiffusion(1000, "linear", "100", learn_sigma=False, fixed_variance=fixed_variance)
    )
    small = GaussianDiffusion(1000, "linear", "100", learn_sigma=False, fixed_variance="small")
    rng = np.random.default_rng(seed)
    n = len(x)
    targets = np.ones(n, dtype=np.int64)
    guidance = PythonGuidance(models.classifier, models.perceptual, x, targets, "ce")
    out = np.zeros((cfg["iterations"],) + x.shape, np.float32)
    current = x
    for it in range(cfg["iterations"]):
        active = np.arange(n)
        for lam in cfg["lambda_c"]:
            if len(active) == 0:
                break
            z = d.q_sample(current[active], cfg["tau"], rng.standard_normal(x[active].shape).astype(np.float32))
            for step in range(cfg["tau"]):
                i = cfg["tau"] - 1 - step
                model_out = unet.forward(z, d.timestep_map[i])
                if fixed_variance in ("small", "large"):
                    model_out = np.ascontiguousarray(model_out[:, :1])
                raw = d.p_mean_variance(model_out, z, i, clip=False)
                unclipped = raw.pred_xstart
                mv = d.p_mean_variance(model_out, z, i, clip=True)
                if fixed_variance == "last4" and i < 4:
                    mv = small.p_mean_variance(np.ascontiguousarray(model_out[:, :1]), z, i, clip=True)
                at = mv.pred_xstart if clip_grad else unclipped
                if not clip_mean:
                    mv = mv._replace(mean=raw.mean, pred_xstart=unclipped)
                lam_rows = np.full(len(active), lam, np.float32)
                grad = guidance.loss_and_grad(at, active, lam_rows, float(cfg["lambda_p"]))[0]
                kick = mv.variance * grad
                noise = rng.standard_normal(z.shape).astype(np.float32) if i > 0 else np.zeros_like(z)
                z = (mv.mean - kick + np.exp(0.5 * mv.log_variance) * noise).astype(np.float32)
                log.append(
                    dict(
                        iteration=it,
                        lambda_c=lam,
                        step=step,
                        x0_beyond=float(np.mean(np.abs(unclipped) > 1.0)),
                        kick_max=float(np.abs(kick).max()),
                        kick_p99=float(np.quantile(np.abs(kick), 0.99)),
                        sigma=float(np.exp(0.5 * mv.log_variance).mean()),
                    )
                )
            p, is_target = guidance.classify(z, active)
            out[it, active] = z
            active = active[~is_target.astype(bool)]
        current = out[it]
    return out


def run_condition(models: DemoModels, name: str, x: np.ndarray, seed: int) -> dict[str, Any]:
    t0 = time.time()
    log: list[dict[str, Any]] = []
    if name in PY_CONDITIONS:
        cf = python_diff_ice(models, x, seed, log, **PY_CONDITIONS[name])
        prob = models.classifier.forward(cf.reshape((-1,) + x.shape[1:])).logits  # type: ignore[union-attr]
        flipped = (np.argmax(prob, axis=1) == 1).reshape(cf.shape[:2])
    else:
        overrides = dict(C_CONDITIONS[name])
        if "diffusion" in overrides:
            section = dict(DEMO_DIFFUSION, **overrides.pop("diffusion"))
            models = replace(models, diffusion=diffusion_from_section(section, learn_sigma=True))
        result = models.explainer(**overrides).explain(x, target=1, seed=seed, warn=False)
        cf, flipped = result.counterfactuals, result.flipped
    return dict(cf=cf, flipped=flipped, seconds=time.time() - t0, log=np.array([list(r.values()) for r in log]))


def _png_values(images: np.ndarray) -> np.ndarray:
    """What a PNG keeps of [-1, 1] images (the demo's table and figure are computed from its PNGs)."""
    flat = images.reshape((-1,) + images.shape[-3:])
    u8 = np.stack([to_uint8(im)[None] for im in flat]).astype(np.float32)
    return (u8 / np.float32(127.5) - np.float32(1.0)).reshape(images.shape)


def variance_head(models: DemoModels, x: np.ndarray, seed: int = 0) -> str:
    """What the DDPM's learned variance does at the sampler's steps: (v + 1) / 2 (0: log beta~, 1: log beta) over the
    pixels of x noised to respaced index i, and the variance it gives against beta~."""
    d, rng = diffusion_from_section(dict(DEMO_DIFFUSION, **LEARNED), learn_sigma=True), np.random.default_rng(seed)
    lines = [
        "| i | t | beta~ | beta | (v + 1) / 2 mean [5%, 95%] | learned variance / beta~ |",
        "|---|---|---|---|---|---|",
    ]
    for i in (0, 1, 2, 3, 5, 8, 12, 20, 29):
        z = d.q_sample(x, i, rng.standard_normal(x.shape).astype(np.float32))
        out = models.unet.forward(z, d.timestep_map[i])
        frac = (out[:, x.shape[1] :] + 1.0) / 2.0
        small = d.posterior_variance[max(i, 1)]  # beta~_0 = 0: index 0 uses beta~_1 (docs/method.md section 2.3)
        variance = d.p_mean_variance(out, z, i).variance
        lines.append(
            f"| {i} | {d.timestep_map[i]} | {small:.2e} | {d.betas[i]:.2e} | {frac.mean():.3f} "
            f"[{np.quantile(frac, 0.05):.2f}, {np.quantile(frac, 0.95):.2f}] | {variance.mean() / small:.2f} |"
        )
    return "\n".join(lines)


def refit_variance_head(models: DemoModels, respacing: str, steps: int, lr: float = 3e-3, seed: int = 0) -> str:
    """Refits only the variance half of the DDPM's output conv (out.2's v row: 32 x 3 x 3 weights and a bias) on the
    variational-bound term, the rest of the network frozen: is the learned variance where the loss that trains it
    wants it, given the trunk? respacing: "" (the 1000-step process training uses) or "100" (the demo sampler's).

    The trunk's last features are read through a copy of the UNet whose output conv extracts every 3 x 3 patch
    (out_channels = 32 * 9, identity weights), so the head is a linear map of them and one forward serves a step.
    Returns (v + 1) / 2 per respaced index before and after, and the VB every 50 steps (Adam, batch 16)."""
    from diffice.data import phantoms
    from diffice.models.unet import UNet
    from diffice.train.ddpm import DiffusionLoss

    state = {k: v.copy() for k, v in models.unet.state_dict().items()}
    weight, bias = state["out.2.weight"], state["out.2.bias"]  # (2, C, 3, 3): rows eps, v
    c = weight.shape[1]
    config = {k: v for k, v in models.unet.config.items() if k != "learn_sigma"}
    patches_net = UNet(dict(config, out_channels=c * 9))
    extract = np.zeros((c * 9, c, 3, 3), np.float32)
    for k in range(c * 9):
        extract[k, k // 9, (k % 9) // 3, k % 3] = 1.0
    patches_net.load_state_dict(dict(state, **{"out.2.weight": extract, "out.2.bias": np.zeros(c * 9, np.float32)}))
    loss = DiffusionLoss(1000, "linear", respacing, learn_sigma=True)
    d = loss.diffusion
    data = phantoms.generate(1016, (64, 80), seed=1).images  # the DDPM's training phantoms (seed 1)
    train, held = data[:1000], data[1000:]
    rng = np.random.default_rng(seed)
    indices = [int(f * d.num_timesteps) for f in (0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 0.9)]

    def patches(x_t: np.ndarray, i: np.ndarray) -> np.ndarray:
        return patches_net.forward(x_t, d.model_timesteps(i))  # (N, C*9, H, W)

    def frac_by_index(w: np.ndarray, b: float) -> list[float]:
        r, out = np.random.default_rng(seed + 1), []
        for index in indices:
            i = np.full(len(held), index)
            x_t = d.q_sample(held, i, r.standard_normal(held.shape).astype(np.float32))
            out.append(float(((np.einsum("nkhw,k->nhw", patches(x_t, i), w) + b + 1) / 2).mean()))
        return out

    w, b = weight[1].reshape(-1).copy(), float(bias[1])
    before = frac_by_index(w, b)
    m_w, v_w, m_b, v_b, trace, vbs = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0, [], []
    for step in range(1, steps + 1):
        x0 = train[rng.integers(0, len(train), 16)]
        i = rng.integers(0, d.num_timesteps, 16)
        noise = rng.standard_normal(x0.shape).astype(np.float32)
        x_t = d.q_sample(x0, i, noise)
        p = patches(x_t, i)
        eps = np.einsum("nkhw,k->nhw", p, weight[0].reshape(-1)) + bias[0]
        v = np.einsum("nkhw,k->nhw", p, w) + b
        terms = loss(x0, x_t, noise, i, np.ascontiguousarray(np.stack([eps, v], 1), dtype=np.float32))
        d_v = terms.grad[:, 1] / len(x0)
        g_w, g_b = np.einsum("nhw,nkhw->k", d_v, p), float(d_v.sum())
        m_w, v_w = 0.9 * m_w + 0.1 * g_w, 0.999 * v_w + 0.001 * g_w * g_w
        m_b, v_b = 0.9 * m_b + 0.1 * g_b, 0.999 * v_b + 0.001 * g_b * g_b
        c1, c2 = 1 - 0.9**step, 1 - 0.999**step
        w -= lr * (m_w / c1) / (np.sqrt(v_w / c2) + 1e-8)
        b -= lr * (m_b / c1) / (np.sqrt(v_b / c2) + 1e-8)
        vbs.append(float(terms.vb.mean()))
        if step % 50 == 0:
            trace.append(f"{step}: {np.mean(vbs[-50:]):.4f}")
    after = frac_by_index(w, b)
    lines = [
        f"variance head refit on the VB ({'respaced ' + respacing if respacing else '1000 steps'}), {steps} steps",
        f"| index i (of {d.num_timesteps}) | " + " | ".join(str(i) for i in indices) + " |",
        "|---|" + "---|" * len(indices),
        "| (v + 1) / 2 bundled | " + " | ".join(f"{v:.3f}" for v in before) + " |",
        "| (v + 1) / 2 refit | " + " | ".join(f"{v:.3f}" for v in after) + " |",
        "VB (bits/dim, mean of 50 steps): " + ", ".join(trace),
    ]
    return "\n".join(lines)


def table(out: Path, conditions: list[str], x: np.ndarray, oracle: Any) -> str:
    rows = [
        "| condition | runs | "
        + " | ".join(f"it {k}" for k in range(1, 6))
        + " | flip ratio (it 1..5) | MQD (it 1..5) |",
        "| --- | --- | " + " | ".join("---" for _ in range(5)) + " | --- | --- |",
    ]
    qs_x = oracle.quality_score(x)
    rate_x = saturated_pixel_rate(x)
    rows.append(
        f"| inputs | {len(x)} images | saturated {100 * rate_x.mean():.2f}% (per image "
        f"{100 * rate_x.min():.1f}-{100 * rate_x.max():.1f}%) | | | | | | |"
    )
    for name in conditions:
        files = sorted(out.glob(f"{name}_seed*.npz"))
        if not files:
            continue
        sat, new, flip, mqds = [], [], [], []
        for f in files:
            d = np.load(f)
            cf = _png_values(d["cf"])
            sat.append([saturated_pixel_rate(c) for c in cf])
            new.append([new_saturated_pixel_rate(c, x) for c in cf])
            flip.append(d["flipped"])
            mqds.append([mqd(qs_x, oracle.quality_score(c)) for c in cf])
        s, nw = np.concatenate(sat, axis=1), np.concatenate(new, axis=1)  # (L, images x seeds)
        fr = np.concatenate(flip, axis=1).mean(axis=1)
        cells = [
            f"{100 * a:.2f} / **{100 * b:.2f}** ({100 * c:.1f})" for a, b, c in zip(s.mean(1), nw.mean(1), nw.max(1))
        ]
        cells += [""] * (5 - len(cells))
        rows.append(
            f"| {name} | {len(files)} seeds x {s.shape[1] // len(files)} | "
            + " | ".join(cells)
            + " | "
            + " ".join(f"{v:.2f}" for v in fr)
            + " | "
            + " ".join(f"{v:.2f}" for v in np.mean(mqds, axis=0))
            + " |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/diffice-artefacts")
    p.add_argument("--conditions", nargs="*", default=list(C_CONDITIONS) + list(PY_CONDITIONS))
    p.add_argument("--images", type=int, default=6, help="the demo's first N phantoms (default: the figure's 6)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--table", action="store_true", help="only print the table of the stored runs")
    p.add_argument("--variance-head", action="store_true", help="only print what the DDPM's learned variance does")
    p.add_argument(
        "--refit-variance-head",
        choices=["full", "respaced"],
        help="only refit the DDPM's variance head on the VB (the 1000-step process or the demo's 100 steps)",
    )
    p.add_argument("--steps", type=int, default=300, help="--refit-variance-head's Adam steps")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = demo_inputs(args.images)
    models = load_demo_models()
    if args.variance_head:
        print(variance_head(models, x))
        return 0
    if args.refit_variance_head:
        print(refit_variance_head(models, "100" if args.refit_variance_head == "respaced" else "", args.steps))
        return 0
    if not args.table:
        for name in args.conditions:
            for seed in args.seeds:
                path = out / f"{name}_seed{seed}.npz"
                if path.exists():
                    continue
                r = run_condition(models, name, x, seed)
                np.savez_compressed(path, **r)
                print(f"{name} seed {seed}: {r['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(
        f"saturated: within 1/255 of -1 or +1; cell: mean saturated % / **mean new-saturated %** (max over "
        f"images); {args.images} images, seeds {args.seeds}, out {out}"
    )
    print(table(out, args.conditions, x, models.oracle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
