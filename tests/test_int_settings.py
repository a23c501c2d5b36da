"""Integer settings crossing from Python into C (issue 14, item 4): every one goes through one checked reader
(dfc_py_int in csrc/python/pyutil.c), so a value past int32 or outside the setting's range is a ValueError naming
the key, never a silent wrap-around (iterations = 2**32 + 5 used to run 5 iterations)."""

import numpy as np
import pytest
from conftest import TINY_UNET_CONFIG, tiny_unet

from diffice import _C, GaussianDiffusion, ResNetFeatures, Segmenter, UNet, classification_loss, ops
from diffice.explain.explainer import Explainer
from diffice.models.classifier import SmallClassifier
from diffice.models.inception import InceptionV3
from diffice.train.ddpm import AdamW, DiffusionLoss, clip_grad_norm

H, W = 16, 24


class ZeroClassifier:
    def forward(self, x):
        return np.zeros((len(x), 2), np.float32)

    def vjp(self, x, dlogits):
        return np.zeros_like(x)


@pytest.fixture(scope="module")
def tiny():
    return tiny_unet(), GaussianDiffusion(1000, "linear", "40", learn_sigma=True)


def expected(name, lo, hi, got):
    return rf"{name}: expected an integer in \[{lo}, {hi}\], got {got}"


def test_iterations_past_int32_is_refused(tiny):
    unet, d = tiny
    ex = Explainer(unet, d, ZeroClassifier(), lambda_p=0.0, iterations=2**32 + 5, tau=2, lambda_c=(1.0,))
    with pytest.raises(ValueError, match=expected("sampler config 'iterations'", 1, 1000, 2**32 + 5)):
        ex.explain(np.full((1, 1, H, W), -0.5, np.float32))


@pytest.mark.parametrize(
    "key, value, lo, hi",
    [
        ("iterations", 2**32 + 1, 1, 1000),
        ("tau", 2**32 + 2, 1, 2**31 - 1),
        ("method", 2**32, 0, 3),
        ("clip", 2**32 + 1, 0, 1),
        ("grad_at_previous", 2**33, 0, 1),
        ("record_steps", -1, 0, 1),  # negative: no sense for a switch (it used to count as on)
        ("mask_warmup", -1, 0, 2**31 - 1),
        ("mask_dilation", -3, 0, 2**31 - 1),
    ],
)
def test_sampler_config_ints_are_checked(tiny, monkeypatch, key, value, lo, hi):
    unet, d = tiny
    ex = Explainer(unet, d, ZeroClassifier(), lambda_p=0.0, method="diff-ice", iterations=1, tau=2, lambda_c=(1.0,))
    c_config = ex.config.c_config
    monkeypatch.setattr(ex.config, "c_config", lambda seed, record: {**c_config(seed, record), key: value})
    with pytest.raises(ValueError, match=expected(f"sampler config '{key}'", lo, hi, value)):
        ex.explain(np.full((1, 1, H, W), -0.5, np.float32))


def test_fastdime_negative_mask_warmup_is_refused(tiny):
    unet, d = tiny
    ex = Explainer(unet, d, ZeroClassifier(), lambda_p=0.0, method="fastdime", tau=2, lambda_c=(1.0,), mask_warmup=-1)
    with pytest.raises(ValueError, match="sampler config 'mask_warmup'"):
        ex.explain(np.full((1, 1, H, W), -0.5, np.float32))


def test_unet_channel_mult_past_int32_is_refused():
    # 32 * (2**27 + 1) = 2**32 + 32 channels used to wrap to a valid 32-channel level
    with pytest.raises(ValueError, match=expected(r"UNet config 'level_channels\[1\]'", 1, 2**31 - 1, 2**32 + 32)):
        UNet(dict(TINY_UNET_CONFIG, channel_mult=(1, 2**27 + 1)))


def _c_unet_config(**over):
    cfg = dict(
        in_channels=1,
        model_channels=32,
        out_channels=2,
        num_res_blocks=1,
        level_channels=[32, 32],
        attention=[0, 0],
        num_heads=1,
        num_head_channels=-1,
        num_heads_upsample=-1,
        legacy_attention=1,
        use_scale_shift_norm=1,
        resblock_updown=1,
    )
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("level_channels", [32, 2**32 + 32], expected(r"UNet config 'level_channels\[1\]'", 1, 2**31 - 1, 2**32 + 32)),
        ("level_channels", [2**64 + 32, 32], expected(r"UNet config 'level_channels\[0\]'", 1, 2**31 - 1, 2**64 + 32)),
        ("attention", [0, 2**32], expected(r"UNet config 'attention\[1\]'", 0, 1, 2**32)),
        ("attention", [-1, 0], expected(r"UNet config 'attention\[0\]'", 0, 1, -1)),
        ("legacy_attention", 2**32, expected("UNet config 'legacy_attention'", 0, 1, 2**32)),
        ("resblock_updown", -1, expected("UNet config 'resblock_updown'", 0, 1, -1)),
        ("num_heads_upsample", 2**32 - 1, expected("UNet config 'num_heads_upsample'", -1, 2**31 - 1, 2**32 - 1)),
    ],
)
def test_c_unet_config_ints_are_checked(key, value, match):
    _C.unet_create(_c_unet_config())  # the base config is valid
    with pytest.raises(ValueError, match=match):
        _C.unet_create(_c_unet_config(**{key: value}))


def test_classifier_config_reader():
    # the classifier bindings had a reader of their own (limit 2**30, another message): now the shared one
    with pytest.raises(ValueError, match=expected("Segmenter config 'width'", 1, 2**31 - 1, 2**32 + 8)):
        Segmenter(classes=3, width=2**32 + 8, levels=2, groups=4)
    with pytest.raises(ValueError, match=expected("Segmenter config 'in_channels'", 1, 2**31 - 1, -1)):
        _C.segmenter_create(dict(classes=3, width=8, levels=2, groups=4, in_channels=-1))
    with pytest.raises(ValueError, match=expected("SmallClassifier config 'num_classes'", 1, 2**31 - 1, 2**40)):
        _C.small_classifier_create(dict(in_channels=4, width=8, num_classes=2**40))
    with pytest.raises(TypeError, match="Segmenter config 'classes': expected an integer, got float"):
        _C.segmenter_create(dict(classes=3.0, width=8, levels=2, groups=4))
    seg = _C.segmenter_create(dict(classes=3, width=8, levels=2, groups=4))
    cls = _C.small_classifier_create(dict(in_channels=4, width=8, num_classes=2))
    for value in (-1, 2):  # a switch: -1 and 2 used to count as on
        with pytest.raises(ValueError, match=expected("PlaneClassifier config 'grad_through_segmenter'", 0, 1, value)):
            _C.plane_classifier_create(seg, cls, dict(grad_through_segmenter=value))


def test_other_network_configs():
    with pytest.raises(ValueError, match=expected("SonoNet config 'standardize'", 0, 1, -1)):
        _C.sononet_create(dict(k=4, in_channels=1, num_classes=2, standardize=-1))
    with pytest.raises(ValueError, match=expected(r"ResNet config 'taps\[0\]'", 0, 4, 2**32 + 1)):
        _C.resnet_create(dict(depth=18, layout=0, in_channels=1, taps=[2**32 + 1]))
    with pytest.raises(ValueError, match=expected("ResNet config 'layout'", 0, 1, 2**32)):
        _C.resnet_create(dict(depth=18, layout=2**32, in_channels=1, taps=[4]))


def test_keyword_settings():
    # these raised OverflowError without the name before; now a ValueError naming the argument
    with pytest.raises(ValueError, match=expected("Diffusion: steps", 1, 2**31 - 1, 2**32 + 100)):
        _C.Diffusion(2**32 + 100)
    with pytest.raises(ValueError, match=expected("Diffusion: variance_type", 0, 4, 2**32)):
        _C.Diffusion(100, variance_type=2**32)
    # the training loss is Python over the ops: its loss type is a name, and a number is refused naming it
    with pytest.raises(ValueError, match=r"loss_type must be one of \['mse', 'rescaled_mse'\], got 4294967296"):
        DiffusionLoss(100, loss_type=2**32)
    with pytest.raises(ValueError, match="Backend: num_threads: expected an integer"):
        _C.Backend("cpu", 2**40)
    # the optimisers are Python over the optimizer ops: num_threads reaches the Backend, which names it
    with pytest.raises(ValueError, match="Backend: num_threads: expected an integer"):
        AdamW([np.zeros(4, np.float32)], num_threads=2**32)
    opt = AdamW([np.zeros(4, np.float32)])
    with pytest.raises(ValueError, match=expected("AdamW: num_steps", 0, 2**63 - 1, 2**64)):
        opt.num_steps = 2**64
    with pytest.raises(ValueError, match="Backend: num_threads: expected an integer"):
        clip_grad_norm(np.ones(4, np.float32), 1.0, num_threads=-(2**40))
    features = _C.resnet_create(dict(depth=18, layout=0, in_channels=1, taps=[1]))
    with pytest.raises(ValueError, match=r"PerceptualLoss: variant \(0 mse, 1 normalized\): expected an integer"):
        _C.PerceptualLoss(features, 2**32, 1.0)


def test_gaussian_noise_counters_do_not_wrap():
    keys = np.array([7], np.uint64)
    # stream 2**32 + 1 used to give stream 1's noise
    with pytest.raises(ValueError, match=expected("gaussian_noise: stream", 0, 2**32 - 1, 2**32 + 1)):
        ops.gaussian_noise((2, 2), 1, keys, 2**32 + 1)
    with pytest.raises(ValueError, match=expected("gaussian_noise: step", 0, 2**32 - 1, -1)):
        ops.gaussian_noise((2, 2), 1, keys, 1, 0, -1)
    with pytest.raises(ValueError, match=r"gaussian_noise: shape\[1\] must be positive, got 0"):
        ops.gaussian_noise((2, 0), 1, keys, 1)
    assert ops.gaussian_noise((2, 2), 1, keys, 2**32 - 1).shape == (1, 2, 2)


def test_integer_arrays_are_not_truncated():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="cross_entropy: targets must be a 1-D array of integers"):
        classification_loss(logits, [0.5, 1.7], "ce")  # used to be read as [0, 1]
    with pytest.raises(ValueError, match=r"cross_entropy: targets\[0\] = 9223372036854775808 is out of range"):
        classification_loss(logits, np.array([2**63, 1], np.uint64), "ce")
    loss, _ = classification_loss(logits, np.array([2, 1], np.uint8), "ce")
    assert loss.shape == (2,)


# ---- the Python side: settings converted before they reach C (issue 14: a float is not silently truncated) ----


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("model_channels", 32.7, r"UNet config 'model_channels': expected an integer, got 32\.7"),  # was 32 channels
        ("num_res_blocks", 1.5, r"UNet config 'num_res_blocks': expected an integer, got 1\.5"),
        ("num_heads", True, r"UNet config 'num_heads': expected an integer, got True"),
        ("in_channels", "1", r"UNet config 'in_channels': expected an integer, got '1'"),
        ("num_head_channels", float("nan"), r"UNet config 'num_head_channels': expected an integer, got nan"),
        ("attention_resolutions", (2.5,), r"UNet config 'attention_resolutions\[0\]': expected an integer, got 2\.5"),
        (
            "channel_mult",
            (1, 1.3),
            r"UNet config 'channel_mult\[1\]': 1\.3 x model_channels 32 = 41\.6 channels, not a "
            r"whole number",
        ),
        ("channel_mult", (1, None), r"UNet config 'channel_mult\[1\]': expected a number, got None"),
        ("use_scale_shift_norm", "false", r"UNet config 'use_scale_shift_norm': expected true or false, got 'false'"),
        ("resblock_updown", 2, r"UNet config 'resblock_updown': expected true or false, got 2"),
        ("learn_sigma", "no", r"UNet config 'learn_sigma': expected true or false, got 'no'"),
    ],
)
def test_unet_python_config_is_not_truncated(key, value, match):
    with pytest.raises(ValueError, match=match):
        UNet(dict(TINY_UNET_CONFIG, **{key: value}))


def test_unet_integral_floats_are_taken():
    unet = UNet(
        dict(
            TINY_UNET_CONFIG,
            model_channels=64.0,
            num_res_blocks=np.float32(1),
            channel_mult=(1, 1.5),
            attention_resolutions=(2.0,),
            num_heads=np.int64(1),
            use_scale_shift_norm=np.bool_(False),
        )
    )
    cfg = unet.config
    assert cfg["model_channels"] == 64 and type(cfg["model_channels"]) is int
    assert type(cfg["num_res_blocks"]) is int and cfg["attention_resolutions"] == (2,)
    assert cfg["use_scale_shift_norm"] is False
    assert unet.state_dict()["input_blocks.3.0.out_layers.3.weight"].shape[0] == 96  # 1.5 x 64 channels


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: Segmenter(classes=3, width=8.5, levels=2, groups=4),
            r"Segmenter config 'width': expected an integer, "
            r"got 8\.5",
        ),
        (
            lambda: Segmenter(classes=3, width=8, levels=True, groups=4),
            "Segmenter config 'levels': expected an integer",
        ),
        (lambda: SmallClassifier(4.2), r"SmallClassifier config 'in_channels': expected an integer, got 4\.2"),
        (lambda: InceptionV3(resize=299.5), r"Inception config 'resize': expected an integer, got 299\.5"),
        (lambda: InceptionV3(in_channels=True), "InceptionV3: in_channels must be 1 or 3, got True"),
        (lambda: ResNetFeatures(depth=18.5), r"ResNet depth must be one of .*, got 18\.5"),
        (lambda: GaussianDiffusion(100.5, "linear", "10"), r"Diffusion: steps: expected an integer, got 100\.5"),
    ],
)
def test_network_python_configs_are_not_truncated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_network_integral_floats_are_taken():
    seg = Segmenter(classes=3.0, width=np.float64(8), levels=2, groups=np.int32(4))
    assert seg.config == dict(classes=3, width=8, levels=2, groups=4, in_channels=1)
    assert all(type(v) is int for v in seg.config.values())
    assert SmallClassifier(4.0).config["in_channels"] == 4
    assert GaussianDiffusion(100.0, "linear", "10").steps == 100


# ---- integer arguments of the ops: past int32 a ValueError naming the argument and its range (was OverflowError) ----

X4 = np.zeros((1, 2, 8, 8), np.float32)
W4 = np.zeros((3, 2, 3, 3), np.float32)
BIG = 2**40


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.conv2d(X4, W4, stride=BIG), expected(r"conv2d_forward: stride\[0\]", 1, 2**31 - 1, BIG)),
        (lambda: ops.conv2d(X4, W4, padding=(0, BIG)), expected(r"conv2d_forward: padding\[1\]", 0, 2**31 - 1, BIG)),
        (
            lambda: ops.conv2d(X4, W4, padding=(-(2**63), 0)),
            expected(r"conv2d_forward: padding\[0\]", 0, 2**31 - 1, -(2**63)),
        ),
        (
            lambda: ops.conv2d_backward_input(np.zeros((1, 3, 6, 6), np.float32), W4, X4.shape, stride=(1, 2**32 + 1)),
            expected(r"conv2d_backward_input: stride\[1\]", 1, 2**31 - 1, 2**32 + 1),
        ),  # +1 used to be a wrap-around risk
        (
            lambda: ops.conv2d_backward_weight(np.zeros((1, 3, 6, 6), np.float32), X4, W4.shape, padding=2**64),
            expected(r"conv2d_backward_weight: padding\[0\]", 0, 2**31 - 1, 2**64),
        ),
        (lambda: ops.group_norm(X4, 2**33), expected("group_norm: groups", 1, 2**31 - 1, 2**33)),
        (lambda: ops.group_norm_backward(X4, X4, 2**33), expected("group_norm_backward: groups", 1, 2**31 - 1, 2**33)),
        (
            lambda: ops.attention(np.zeros((1, 6, 4), np.float32), 2**40),
            expected("attention: heads", 1, 2**31 - 1, 2**40),
        ),
        (
            lambda: ops.attention_backward(np.zeros((1, 2, 4), np.float32), np.zeros((1, 6, 4), np.float32), -(2**40)),
            expected("attention_backward: heads", 1, 2**31 - 1, -(2**40)),
        ),
        (lambda: ops.timestep_embedding([1.0], 2**40), expected("timestep_embedding: dim", 2, 2**31 - 1, 2**40)),
        (lambda: ops.avg_pool2d(X4, (2, BIG)), expected(r"avg_pool2d: kernel\[1\]", 1, 2**31 - 1, BIG)),
        (lambda: ops.avg_pool2d(X4, 2, 2, BIG), expected(r"avg_pool2d: padding\[0\]", 0, 2**31 - 1, BIG)),
        (
            lambda: ops.avg_pool2d_backward(np.zeros((1, 2, 4, 4), np.float32), X4.shape, 2, BIG),
            expected(r"avg_pool2d_backward: stride\[0\]", 1, 2**31 - 1, BIG),
        ),
        (lambda: ops.max_pool2d(X4, BIG), expected(r"max_pool2d: kernel\[0\]", 1, 2**31 - 1, BIG)),
        (
            lambda: ops.max_pool2d_backward(np.zeros((1, 2, 4, 4), np.float32), X4, 2, 2, (0, BIG)),
            expected(r"max_pool2d_backward: padding\[1\]", 0, 2**31 - 1, BIG),
        ),
        (lambda: ops.resize_bilinear(X4, (BIG, 4)), expected(r"resize_bilinear: size\[0\]", 1, 2**31 - 1, BIG)),
        (
            lambda: _C.adamw_step(ops.get_backend(), *np.zeros((4, 3), np.float32), 2**64, 0.1, 0.9, 0.99, 0.0, 0.0),
            expected("adamw_step: step", 1, 2**63 - 1, 2**64),
        ),
        (
            lambda: _C.adamw_step(ops.get_backend(), *np.zeros((4, 3), np.float32), 0, 0.1, 0.9, 0.99, 0.0, 0.0),
            expected("adamw_step: step", 1, 2**63 - 1, 0),
        ),
    ],
)
def test_op_int_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_op_int_arguments_take_no_floats():
    with pytest.raises(TypeError, match="group_norm: groups: expected an integer, got float"):
        ops.group_norm(X4, 2.5)  # int(2.5) in the wrapper used to run 2 groups
    assert ops.group_norm(X4, np.int64(2)).shape == X4.shape
    # the largest padding a pooling takes (half its kernel) with a huge kernel: no 2 * padding overflow in the check
    with pytest.raises(ValueError, match="max_pool2d: padding"):
        ops.max_pool2d(X4, 3, 1, 2**30 + 1)


def test_model_loading_settings_are_not_truncated(tmp_path):
    """diffice.models.files: [models]/[diffusion] integers and a file's SonoNet description go through config_int."""
    from diffice.explain.config import load_config
    from diffice.models.files import build_model, load_run_models

    with pytest.raises(ValueError, match=r"SonoNet description 'k': expected an integer, got 8\.5"):
        build_model(dict(type="SonoNet", k=8.5, in_channels=1, num_classes=2, standardize=False))
    with pytest.raises(ValueError, match=r"SonoNet description 'standardize': expected true or false"):
        build_model(dict(type="SonoNet", k=8, in_channels=1, num_classes=2, standardize="false"))
    unet = tmp_path / "ddpm.safetensors"
    unet.write_bytes(b"")  # never read: the settings are checked first
    for section, key, value, match in [
        ("models", "num_heads", 1.5, r"models\.num_heads: expected an integer, got 1\.5"),
        ("diffusion", "steps", 1000.5, r"diffusion\.steps: expected an integer, got 1000\.5"),
    ]:
        # the config loader refuses them first (tests/test_setting_values.py) ...
        flag = "--" + key.replace("_", "-")
        with pytest.raises(ValueError, match=rf"{section}\.{key} \({flag}\) must be an integer >= 1, got {value}"):
            load_config(None, {key: value})
        # ... and the model loader still does for a config built or changed in code
        cfg = load_config(None, {})
        cfg[section][key] = value
        cfg["models"]["unet"] = str(unet)
        with pytest.raises(ValueError, match=match):
            load_run_models(cfg)
