"""DDPM training: the loss and its gradient vs a PyTorch transcription of guided-diffusion's training_losses,
one step's parameter gradients vs PyTorch autograd through the reference UNet, AdamW / EMA / clipping vs torch,
and the training loop (the loss falls, resume is bitwise, Ctrl-C saves, the CLI)."""

import csv
import signal

import numpy as np
import pytest
import torch
from conftest import interrupt_training_step, randn, rel_err, t64
from test_unet import small_config, torch_model, worst_module_gradient_error
from train_reference import GaussianDiffusion as RefDiffusion

import diffice.train.ddpm as train_mod
from diffice.cli import main
from diffice.io import load_safetensors, load_safetensors_metadata
from diffice.models.unet import UNet
from diffice.train.ddpm import (
    EMA,
    AdamW,
    DiffusionLoss,
    clip_grad_norm,
    init_guided_diffusion,
    loss_and_gradients,
    train_ddpm,
)

# the smallest UNet the loop tests train: one 32-channel level pair, no attention
TINY = dict(model_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_resolutions=(), num_heads=1)


def images_in_range(rng, *shape):
    """Values in [-1, 1], with some exactly at the ends (the decoder NLL's open-ended bins)."""
    x = np.clip(rng.standard_normal(shape) * 0.7, -1, 1).astype(np.float32)
    x.reshape(-1)[:4] = [-1.0, 1.0, -0.9995, 0.9995]
    return x


# ---- the loss ----


@pytest.mark.parametrize(
    "learn_sigma, loss_type, steps",
    [(True, "mse", 1000), (False, "mse", 1000), (True, "rescaled_mse", 500), (False, "rescaled_mse", 1000)],
)
def test_training_loss_and_output_gradient_match_guided_diffusion(rng, learn_sigma, loss_type, steps):
    n, c, h, w = 6, 3, 7, 5
    x0 = images_in_range(rng, n, c, h, w)
    noise = randn(rng, n, c, h, w)
    t = np.array([0, 0, 1, 17, steps // 2, steps - 1])
    loss_fn = DiffusionLoss(steps=steps, learn_sigma=learn_sigma, loss_type=loss_type)
    x_t = loss_fn.diffusion.q_sample(x0, t, noise)
    out = randn(rng, n, 2 * c if learn_sigma else c, h, w)
    weights = rng.uniform(0.5, 1.5, n).astype(np.float32)
    terms = loss_fn(x0, x_t, noise, t, out, weights)

    ref = RefDiffusion(steps, learn_sigma, loss_type)
    out_ref = t64(out, requires_grad=True)
    want = ref.training_losses(out_ref, t64(x0), torch.from_numpy(t), t64(noise), x_t=t64(x_t))
    (want["loss"] * t64(weights)).sum().backward()
    assert rel_err(terms.loss, want["loss"]) <= 1e-4
    assert rel_err(terms.mse, want["mse"]) <= 1e-4
    if learn_sigma:
        assert rel_err(terms.vb, want["vb"]) <= 1e-4
        assert np.all(terms.vb[2:] >= 0)  # a KL
    else:
        assert np.all(terms.vb == 0)
    assert rel_err(terms.grad, out_ref.grad) <= 1e-4
    if learn_sigma:  # the frozen mean: vb sends nothing to the eps channels
        eps_grad = 2 * (out[:, :c] - noise) / (c * h * w) * weights[:, None, None, None]
        assert rel_err(terms.grad[:, :c], eps_grad) <= 1e-5


def test_q_sample_matches_reference(rng):
    x0, noise = images_in_range(rng, 3, 1, 5, 4), randn(rng, 3, 1, 5, 4)
    t = np.array([0, 321, 999])
    got = DiffusionLoss().diffusion.q_sample(x0, t, noise)
    assert rel_err(got, RefDiffusion().q_sample(t64(x0), torch.from_numpy(t), t64(noise))) <= 1e-6


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_training_step_gradients_match_pytorch(rng, learn_sigma):
    unet = UNet.random(small_config(learn_sigma=learn_sigma), seed=int(rng.integers(1 << 30)))
    model = torch_model(unet)
    x0, noise = images_in_range(rng, 3, 1, 8, 12), randn(rng, 3, 1, 8, 12)
    t = np.array([0, 1, 600])
    loss_fn = DiffusionLoss(learn_sigma=learn_sigma)
    terms, grads = loss_and_gradients(unet, loss_fn, x0, t, noise)

    ref = RefDiffusion(1000, learn_sigma)
    x_t = t64(loss_fn.diffusion.q_sample(x0, t, noise))
    want = ref.training_losses(model(x_t, torch.from_numpy(t)), t64(x0), torch.from_numpy(t), t64(noise), x_t=x_t)
    want["loss"].mean().backward()
    assert rel_err(terms.loss, want["loss"]) <= 1e-4
    named = {}
    offset = 0
    for name, p in unet._params.items():
        named[name] = grads[offset : offset + p.size].reshape(p.shape)
        offset += p.size
    assert worst_module_gradient_error(named, model) <= 1e-4


def test_loss_bad_inputs(rng):
    loss_fn = DiffusionLoss()
    x = images_in_range(rng, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="model_output"):
        loss_fn(x, x, x, [0, 1], np.zeros((2, 1, 4, 4), np.float32))  # learned sigma needs 2C channels
    with pytest.raises(ValueError, match="training_losses.*noise"):
        loss_fn(x, x, x[:, :, :3], [0, 1], np.zeros((2, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="outside"):
        loss_fn(x, x, x, [0, 1000], np.zeros((2, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="model_output"):
        loss_fn(x, x, x, [0, 1], np.zeros((2, 2, 4, 4), np.float64))
    with pytest.raises(ValueError, match="loss_type"):
        DiffusionLoss(loss_type="kl")


# ---- optimiser ----


def _params_in_one_buffer(rng):
    """Views of one buffer (merged into one segment) plus a separate array (a second segment)."""
    shapes = [(5, 7), (11,), (3, 4, 2)]
    buf = randn(rng, sum(int(np.prod(s)) for s in shapes))
    views, offset = [], 0
    for s in shapes:
        views.append(buf[offset : offset + int(np.prod(s))].reshape(s))
        offset += int(np.prod(s))
    return views + [randn(rng, 13)]


def test_adamw_matches_torch(rng):
    params = _params_in_one_buffer(rng)
    start = [p.copy() for p in params]
    ref64 = [t64(p, requires_grad=True) for p in params]
    ref32 = [torch.tensor(p, requires_grad=True) for p in params]  # the same float32 storage as ours
    kw = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05)
    opt = AdamW(params, **kw)
    topts = [torch.optim.AdamW(ref64, **kw), torch.optim.AdamW(ref32, foreach=False, **kw)]
    for step in range(6):
        grads = [randn(rng, *p.shape, scale=10.0 ** (step % 3 - 1)) for p in params]
        for r64, r32, g in zip(ref64, ref32, grads):
            r64.grad, r32.grad = t64(g), torch.from_numpy(g)
        for topt in topts:
            topt.step()
        opt.step(np.concatenate([g.ravel() for g in grads]))
    # updates relative to their size: float32 rounding of parameters near 1 is ~1e-5 of an update of 1e-2
    for p, p0, r64, r32 in zip(params, start, ref64, ref32):
        assert rel_err(p - p0, r32.detach().numpy() - p0) <= 1e-5
        assert rel_err(p - p0, r64.detach().numpy() - p0) <= 1e-4
    state = [topts[0].state[r] for r in ref64]
    assert rel_err(opt.exp_avg, np.concatenate([s["exp_avg"].numpy().ravel() for s in state])) <= 1e-6
    assert rel_err(opt.exp_avg_sq, np.concatenate([s["exp_avg_sq"].numpy().ravel() for s in state])) <= 1e-6
    assert opt.num_steps == 6

    # the state round-trips: a copy continues exactly as the original
    twin_params = [p.copy() for p in params]
    twin = AdamW(twin_params, **kw)
    twin.load_state_dict(opt.state_dict())
    g = randn(rng, sum(p.size for p in params))
    opt.step(g)
    twin.step(g)
    for a, b in zip(params, twin_params):
        np.testing.assert_array_equal(a, b)


def test_ema_matches_torch(rng):
    params = _params_in_one_buffer(rng)
    ema = EMA(params, rate=0.9)
    ref = [t64(p) for p in params]
    for _ in range(5):
        for p in params:
            p += randn(rng, *p.shape)
        ema.update()
        for targ, src in zip(ref, params):  # guided-diffusion's update_ema
            targ.mul_(0.9).add_(t64(src), alpha=1 - 0.9)
    assert rel_err(ema.values, np.concatenate([r.numpy().ravel() for r in ref])) <= 1e-6


@pytest.mark.parametrize("max_norm", [0.0, 0.5, 1e6])
def test_clip_grad_norm_matches_torch(rng, max_norm):
    g = randn(rng, 100_003)
    ref = t64(g, requires_grad=True)
    ref.grad = t64(g)
    want_norm = float(torch.nn.utils.clip_grad_norm_([ref], max_norm if max_norm > 0 else float("inf")))
    got = g.copy()
    norm = clip_grad_norm(got, max_norm)
    assert abs(norm - want_norm) <= 1e-6 * want_norm
    assert rel_err(got, ref.grad) <= 1e-6
    if max_norm == 0.5:
        assert abs(np.linalg.norm(got.astype(np.float64)) - 0.5) <= 1e-5


def test_optimiser_bad_inputs(rng):
    params = _params_in_one_buffer(rng)
    opt = AdamW(params)
    with pytest.raises(ValueError, match="grads"):
        opt.step(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="grads"):
        opt.step(np.zeros(sum(p.size for p in params), np.float64))
    with pytest.raises(TypeError, match=r"params\[0\]"):
        AdamW([np.zeros(3)]).step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="betas"):
        AdamW(params, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="rate"):
        EMA(params, rate=1.5)
    frozen = np.zeros(4, np.float32)
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        AdamW([frozen]).step(np.zeros(4, np.float32))


def test_init_guided_diffusion_zeroes_the_output_layers():
    unet = UNet(dict(TINY, attention_resolutions=(2,), channel_mult=(1, 2)))
    init_guided_diffusion(unet, seed=1)
    p = unet._params
    assert not p["out.2.weight"].any() and not p["input_blocks.1.0.out_layers.3.weight"].any()
    assert not p["middle_block.1.proj_out.weight"].any()
    assert np.all(p["out.0.weight"] == 1) and np.all(p["input_blocks.1.0.in_layers.0.bias"] == 0)
    w = p["input_blocks.1.0.in_layers.2.weight"]
    assert 0 < np.abs(w).max() <= 1 / np.sqrt(32 * 9)
    # zero output: eps_hat = 0, so the first loss is about E[noise^2] = 1 (+ vb)
    x = np.zeros((2, 1, 16, 16), np.float32)
    assert not unet.forward(x, [3, 700]).any()


# ---- the loop ----


def blobs(n=16, size=16, seed=0):
    """n images of two Gaussian blobs each, in [-1, 1]."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        img = np.zeros((size, size))
        for _ in range(2):
            cy, cx = r.uniform(3, size - 3, 2)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r.uniform(1.0, 2.0) ** 2))
        out[i, 0] = np.clip(img, 0, 1) * 2 - 1
    return out


def log_losses(path):
    with open(path, newline="") as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f)])


def test_loss_falls_on_blobs(tmp_path):
    # 30 steps (seconds on a shared 2-core machine): from about 1 (a zero output) to well under half of it
    result = train_ddpm(
        blobs(),
        tmp_path,
        TINY,
        steps=30,
        batch_size=4,
        lr=3e-3,
        ema_rate=0.99,
        checkpoint_every=1000,
        log_every=10,
        progress=False,
    )
    losses = log_losses(result.log_path)
    assert result.step == 30 and len(losses) == 30
    assert losses[-10:].mean() < 0.5 * losses[:5].mean(), (losses[:5].mean(), losses[-10:].mean())
    assert result.plot_path is not None and result.plot_path.exists()
    ema = load_safetensors(result.ema_path)
    assert set(ema) == set(load_safetensors(result.model_path))
    assert load_safetensors_metadata(result.ema_path)["step"] == "30"


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    kw = dict(config=TINY, batch_size=3, lr=1e-3, ema_rate=0.9, checkpoint_every=2, progress=False)
    data = blobs(n=5)
    whole = train_ddpm(data, tmp_path / "whole", steps=4, **kw)
    train_ddpm(data, tmp_path / "parts", steps=2, **kw)
    with pytest.raises(FileExistsError):
        train_ddpm(data, tmp_path / "parts", steps=4, **kw)
    parts = train_ddpm(data, tmp_path / "parts", steps=4, resume=True, **kw)  # crosses an epoch of 5 images
    assert parts.step == whole.step == 4
    for name in ("model_path", "ema_path"):
        a, b = load_safetensors(getattr(whole, name)), load_safetensors(getattr(parts, name))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    sa, sb = np.load(whole.state_path), np.load(parts.state_path)
    for k in ("exp_avg", "exp_avg_sq", "num_steps", "step", "perm", "pos", "rng_state"):
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    np.testing.assert_array_equal(log_losses(whole.log_path), log_losses(parts.log_path))


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path, monkeypatch):
    interrupt_training_step(monkeypatch, train_mod, step=2)
    result = train_ddpm(blobs(n=4), tmp_path, TINY, steps=50, batch_size=2, progress=False)
    assert result.interrupted and result.step == 2
    assert int(np.load(result.state_path)["step"]) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    resumed = train_ddpm(blobs(n=4), tmp_path, TINY, steps=3, batch_size=2, progress=False, resume=True)
    assert not resumed.interrupted and resumed.step == 3 and len(log_losses(resumed.log_path)) == 3


def test_train_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="multiple of 2"):
        train_ddpm(blobs(n=2, size=15), tmp_path / "a", TINY, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train_ddpm(blobs(n=2) * 3, tmp_path / "b", TINY, steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="resume"):
        train_ddpm(blobs(n=2), tmp_path / "c", TINY, steps=1, progress=False, resume=True)


# the PNGs are resized to another shape on purpose
@pytest.mark.filterwarnings("ignore::diffice.data.images.AspectRatioWarning")
def test_cli_trains_on_a_folder_of_pngs(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    r = np.random.default_rng(0)
    for i in range(3):  # RGB, odd sizes: converted to grayscale and resized
        Image.fromarray(r.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    args = [
        "train",
        "ddpm",
        "--images",
        str(folder),
        "--out",
        str(out),
        "--size",
        "16",
        "16",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--model-channels",
        "32",
        "--channel-mult",
        "1,1",
        "--num-res-blocks",
        "1",
        "--attention-ds",
        "",
        "--num-heads",
        "1",
        "--checkpoint-every",
        "1",
        "--quiet",
    ]
    assert main(args) == 0
    # -q drops the progress bar, not the closing line (it printed nothing, the supervised commands their metrics)
    assert capsys.readouterr().out.startswith("step 2: last step's loss ")
    for name in ("model.safetensors", "ema.safetensors", "train_state.npz", "loss.csv", "loss.png"):
        assert (out / name).exists(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    unet = UNet.from_file(out / "model.safetensors", num_heads=1)
    assert unet.config["learn_sigma"] and unet.config["in_channels"] == 1
    UNet.from_file(out / "ema.safetensors", num_heads=1)
    assert main(args[:-1] + ["--resume", "--steps", "3"]) == 0
    assert int(np.load(out / "train_state.npz")["step"]) == 3
    assert "step 3" in capsys.readouterr().out


def test_resume_of_a_finished_run_does_nothing_and_reports(tmp_path, capsys):
    """A resumed run that is already at its last step saves nothing new and closes its progress bar cleanly."""
    kw = dict(config=TINY, batch_size=2, checkpoint_every=2, progress=True)
    done = train_ddpm(blobs(n=3), tmp_path, steps=2, **kw)
    again = train_ddpm(blobs(n=3), tmp_path, steps=2, resume=True, **kw)
    assert again.step == done.step == 2 and not again.interrupted
    assert "train" in capsys.readouterr().err
