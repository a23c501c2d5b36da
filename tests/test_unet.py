"""The C UNet against a PyTorch transcription of guided-diffusion's UNetModel with the same weights."""

import itertools

import numpy as np
import pytest
import torch
from conftest import randn, rel_err
from gd_reference import UNetModel

from diffice.models.unet import UNet, infer_config


def small_config(scale_shift=True, updown=True, new_order=False, learn_sigma=True, in_channels=1, **over):
    # 64 channels: with 32 (one channel per GroupNorm group) some gradients are exactly zero, which fp32 only
    # reproduces to round-off, so nothing could be said about their relative error
    cfg = dict(
        in_channels=in_channels,
        model_channels=64,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(2,),
        num_heads=2,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_new_attention_order=new_order,
        use_scale_shift_norm=scale_shift,
        resblock_updown=updown,
        learn_sigma=learn_sigma,
    )
    cfg.update(over)
    return cfg


def torch_model(unet: UNet) -> UNetModel:
    cfg = dict(unet.config)
    model = UNetModel(cfg).double()
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in unet.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model


FLAGS = list(itertools.product([True, False], repeat=4))  # scale_shift, updown, new_order, learn_sigma


@pytest.mark.parametrize("scale_shift, updown, new_order, learn_sigma", FLAGS)
def test_forward_vjp_and_weight_gradients_match_pytorch(rng, scale_shift, updown, new_order, learn_sigma):
    in_channels = 3 if (scale_shift ^ updown) else 1  # grayscale and RGB both covered
    cfg = small_config(scale_shift, updown, new_order, learn_sigma, in_channels)
    unet = UNet.random(cfg, seed=int(rng.integers(1 << 30)))
    model = torch_model(unet)
    x = randn(rng, 3, in_channels, 32, 40)
    t = np.array([0, 999, 298])
    v = randn(rng, 3, unet.config["out_channels"], 32, 40)

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y_ref = model(xt, torch.from_numpy(t))
    (y_ref * torch.from_numpy(v).double()).sum().backward()

    assert rel_err(unet.forward(x, t), y_ref) <= 1e-4
    dx, grads = unet.gradients(x, t, v)
    assert rel_err(dx, xt.grad) <= 1e-4
    assert rel_err(unet.vjp(x, t, v), xt.grad) <= 1e-4
    assert worst_module_gradient_error(grads, model) <= 1e-4


def worst_module_gradient_error(grads, model):
    """Largest relative error of a module's parameter gradients (weight and bias together).

    Per module rather than per tensor: a conv bias followed by a one-channel-per-group GroupNorm has an exactly
    zero gradient, which fp32 reproduces only to round-off relative to the module's other gradients.
    """
    modules = {}
    for name, p in model.named_parameters():
        modules.setdefault(name.rsplit(".", 1)[0], []).append((grads[name].ravel(), p.grad.numpy().ravel()))
    errors = []
    for module, pairs in modules.items():
        got = np.concatenate([g for g, _ in pairs])
        want = np.concatenate([w for _, w in pairs])
        errors.append((rel_err(got, want), module))
    worst = max(errors)
    assert worst[0] <= 1e-4, worst
    return worst[0]


def test_four_levels_non_square_and_head_channels(rng):
    cfg = small_config(
        model_channels=32,
        channel_mult=(2, 2, 4, 4),
        attention_resolutions=(4, 8),
        num_head_channels=32,
        num_res_blocks=2,
        in_channels=1,
    )
    unet = UNet.random(cfg, seed=3)
    model = torch_model(unet)
    x = randn(rng, 2, 1, 48, 64)
    t = np.array([5, 600])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y_ref = model(xt, torch.from_numpy(t))
    v = randn(rng, *y_ref.shape)
    (y_ref * torch.from_numpy(v).double()).sum().backward()
    assert rel_err(unet.forward(x, t), y_ref) <= 1e-4
    dx, grads = unet.gradients(x, t, v)
    assert rel_err(dx, xt.grad) <= 1e-4
    assert worst_module_gradient_error(grads, model) <= 1e-4


@pytest.mark.parametrize(
    "attention, tensors, params", [((4, 8, 16), 492, 105_198_598), ((8, 16), 462, 103_880_198), ((), 402, 95_661_318)]
)
def test_method_md_tensor_counts(attention, tensors, params):
    cfg = dict(
        in_channels=3,
        model_channels=128,
        num_res_blocks=2,
        channel_mult=(1, 1, 2, 3, 4),
        attention_resolutions=attention,
        learn_sigma=True,
    )
    unet = UNet(cfg)
    assert len(unet.parameter_shapes()) == tensors
    assert unet.num_parameters() == params


def test_six_level_count_and_keys_match_pytorch():
    cfg = dict(
        in_channels=3,
        model_channels=128,
        num_res_blocks=2,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(8, 16, 32),
        learn_sigma=True,
    )
    unet = UNet(cfg)
    assert (len(unet.parameter_shapes()), unet.num_parameters()) == (566, 138_289_926)
    ref = UNetModel(unet.config).state_dict()
    assert list(ref.keys()) == list(unet.parameter_shapes().keys())
    assert all(tuple(ref[k].shape) == s for k, s in unet.parameter_shapes().items())


@pytest.mark.parametrize("flags", FLAGS[::3])
def test_infer_config_roundtrip(flags):
    cfg = small_config(
        *flags, channel_mult=(1, 2, 3), attention_resolutions=(1, 4), num_res_blocks=2, model_channels=32
    )
    unet = UNet(cfg)
    inferred = infer_config(unet.state_dict(), num_heads=2, use_new_attention_order=flags[2])
    assert inferred == unet.config


def test_state_dict_mismatch_lists_keys():
    unet = UNet(small_config())
    sd = unet.state_dict()
    sd.pop("out.2.bias")
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["out.0.weight"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as info:
        unet.load_state_dict(sd)
    msg = str(info.value)
    assert "out.2.bias" in msg and "extra.weight" in msg and "out.0.weight" in msg


def test_bad_inputs():
    unet = UNet.random(small_config(), seed=0)
    with pytest.raises(ValueError, match="channels"):
        unet.forward(np.zeros((1, 3, 16, 16), np.float32), [0])
    with pytest.raises(ValueError, match="multiples"):
        unet.forward(np.zeros((1, 1, 17, 16), np.float32), [0])
    with pytest.raises(ValueError, match="timesteps|shape"):
        unet.forward(np.zeros((2, 1, 16, 16), np.float32), [0, 1, 2])
    with pytest.raises(ValueError, match="GroupNorm32"):
        UNet(small_config(model_channels=40))
    # past int32 the C config would wrap around: refused, naming the key
    with pytest.raises(ValueError, match=r"UNet config 'model_channels': expected an integer in \[1, 2147483647\]"):
        UNet(small_config(model_channels=2**32 + 32))


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_files_give_identical_outputs(tmp_path, rng, legacy):
    """A torch-saved .pt (zip or legacy, as guided-diffusion writes them) and our safetensors agree bit for bit."""
    cfg = small_config(in_channels=3, learn_sigma=False, resblock_updown=False)
    unet = UNet.random(cfg, seed=11)
    model = UNetModel(unet.config)  # float32, as a researcher's checkpoint
    model.load_state_dict({k: torch.from_numpy(v) for k, v in unet.state_dict().items()})
    pt = tmp_path / "model.pt"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, pt, _use_new_zipfile_serialization=not legacy)
    st = tmp_path / "model.safetensors"
    unet.save(st)

    from_pt = UNet.from_file(pt, num_heads=2)
    from_st = UNet.from_file(st, num_heads=2)
    assert from_pt.config == unet.config == from_st.config
    x, t = randn(rng, 2, 3, 32, 40), np.array([0, 500])
    want = unet.forward(x, t)
    np.testing.assert_array_equal(from_pt.forward(x, t), want)
    np.testing.assert_array_equal(from_st.forward(x, t), want)


def test_saved_file_loads_into_pytorch_unetmodel(tmp_path, rng):
    from diffice.io import load_safetensors

    unet = UNet.random(small_config(), seed=5)
    path = tmp_path / "unet.safetensors"
    unet.save(path)
    model = UNetModel(unet.config).double()
    state = {k: torch.from_numpy(v).double() for k, v in load_safetensors(path).items()}
    model.load_state_dict(state, strict=True)
    x, t = randn(rng, 1, 1, 32, 40), np.array([120])
    with torch.no_grad():
        want = model(torch.from_numpy(x).double(), torch.from_numpy(t))
    assert rel_err(unet.forward(x, t), want) <= 1e-4
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    assert set(safetensors_numpy.load_file(str(path))) == set(unet.state_dict())


def test_from_file_errors_name_the_file(tmp_path):
    from diffice.io import save_safetensors

    path = tmp_path / "not_a_unet.safetensors"
    save_safetensors(path, {"weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="not_a_unet.safetensors"):
        UNet.from_file(path)
    with pytest.raises(FileNotFoundError):
        UNet.from_file(tmp_path / "missing.pt")


def test_one_network_interface_with_a_conditioning_input(rng):
    """The UNet is a diffice._C.Network conditioned on its timesteps; the classifiers take no conditioning input,
    and the sampler takes only a conditioned network as its denoiser."""
    from conftest import tiny_plane_classifier

    from diffice import _C, Explainer, GaussianDiffusion, PixelLoss
    from diffice.ops import get_backend

    unet = UNet.random(small_config(), seed=3)
    be = get_backend("cpu")
    x = randn(rng, 2, 1, 16, 16)
    assert isinstance(unet._c, _C.Network) and unet._c.conditioned and unet._c.kind == "unet"
    assert unet._c.output_names == ("model_output",)
    # timesteps of any numeric dtype are the same float32 timesteps
    y = unet._c.forward(be, x, np.array([3, 999], np.int64))[0]
    assert np.array_equal(y, unet.forward(x, [3.0, 999.0]))
    with pytest.raises(ValueError, match="unet.forward: the network needs its conditioning input"):
        unet._c.forward(be, x)
    with pytest.raises(ValueError, match=r"conditioning input must have shape \(2,\)"):
        unet._c.forward(be, x, np.zeros(3, np.float32))
    clf = tiny_plane_classifier()
    assert not clf._c.conditioned
    with pytest.raises(ValueError, match="plane_classifier.forward: got a conditioning input"):
        clf._c.forward(be, randn(rng, 1, 1, 16, 16), np.zeros(1, np.float32))
    d = GaussianDiffusion(1000, "linear", "10", learn_sigma=True)
    cfg = Explainer(unet, d, clf, PixelLoss("l2"), iterations=1, tau=1, lambda_c=(1.0,)).config.c_config(0, False)

    class NoGuidance:
        def loss_and_grad(self, x0, rows, lambda_c, lambda_p):
            return np.zeros_like(x0), np.zeros(len(rows), np.float32), np.zeros(len(rows), np.float32)

        def classify(self, x, rows):
            return np.zeros(len(rows), np.float32), np.zeros(len(rows), np.int32)

    with pytest.raises(ValueError, match=r"the denoiser \(plane_classifier\) must take timesteps"):
        _C.sample(cfg, clf._c, d._c, NoGuidance(), be, np.clip(x, -1, 1), np.arange(2, dtype=np.uint64))


@pytest.mark.parametrize("updown", [True, False])
def test_forward_holds_the_skips_and_one_blocks_working_memory(rng, updown):
    """Without a tape each activation is released after its last reader: the forward's workspace peak is the skips
    (about 4.7 full-resolution activations of this model) and one block's working memory: 9.0 activations without and
    11.3 with resampling ResBlocks, where keeping every block's output, concatenation and intermediates to the end of
    the call (the design before) held 36.4 and 44.4."""
    cfg = dict(small_config(updown=updown), num_res_blocks=2, channel_mult=(1, 2, 2, 2), attention_resolutions=(4, 8))
    unet = UNet.random(cfg, seed=3)
    n, h, w = 3, 40, 56
    x = randn(rng, n, 1, h, w)
    y = unet.forward(x, np.full(n, 7))
    activation = n * cfg["model_channels"] * h * w * 4  # bytes of one model_channels activation at full resolution
    assert unet.last_peak_bytes < 13 * activation, unet.last_peak_bytes / activation
    assert rel_err(y, torch_model(unet)(torch.from_numpy(x).double(), torch.full((n,), 7)).detach().numpy()) < 1e-5
