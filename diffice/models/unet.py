"""The guided-diffusion UNet (the Diff-ICE denoiser) on the C core.

Checkpoints trained with openai/guided-diffusion or DiME load unchanged: the structure (levels, channel
multipliers, res blocks, attention placement, learn_sigma, scale-shift, up/down res blocks) is inferred from the
tensor names and shapes; only the attention head layout, which no tensor shape reveals, is given by the caller.
Images are float32 (N, C, H, W); timesteps are the ORIGINAL (un-respaced) integer timesteps.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike

from .._native import _C
from ..ops._backend import get_backend
from .network import NetworkBase, config_bool, config_int, prefixed_key_hint

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_CONFIG = dict(
    in_channels=1,
    model_channels=128,
    out_channels=2,
    num_res_blocks=2,
    channel_mult=(1, 1, 2, 3, 4),
    attention_resolutions=(8, 16),
    num_heads=4,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_new_attention_order=False,
    use_scale_shift_norm=True,
    resblock_updown=True,
)


_INT_KEYS = (
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
)
_BOOL_KEYS = ("use_new_attention_order", "use_scale_shift_norm", "resblock_updown")


def _full_config(config: Mapping) -> dict:
    """DEFAULT_CONFIG updated by config, every integer and switch checked (config_int, config_bool: 32.7 channels
    or "false" are a ValueError naming the key, not 32 channels or on); ranges are checked in C."""
    unknown = set(config) - set(DEFAULT_CONFIG) - {"learn_sigma"}
    if unknown:
        raise ValueError(f"UNet config: unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    cfg: dict[str, Any] = dict(DEFAULT_CONFIG)
    cfg.update(config)
    for key in _INT_KEYS:
        cfg[key] = config_int(f"UNet config '{key}'", cfg[key])
    for key in _BOOL_KEYS:
        cfg[key] = config_bool(f"UNet config '{key}'", cfg[key])
    if "learn_sigma" in config:
        cfg["out_channels"] = cfg["in_channels"] * (
            2 if config_bool("UNet config 'learn_sigma'", config["learn_sigma"]) else 1
        )
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    _level_channels(cfg)  # checked now
    cfg["attention_resolutions"] = tuple(
        sorted(
            config_int(f"UNet config 'attention_resolutions[{i}]'", r)
            for i, r in enumerate(cfg["attention_resolutions"])
        )
    )
    cfg["learn_sigma"] = cfg["out_channels"] == 2 * cfg["in_channels"]
    return cfg


def _level_channels(cfg: dict) -> list:
    """channel_mult[l] * model_channels for every level. A multiplier may be fractional (a checkpoint whose level
    widths are not multiples of model_channels: 48 / 32 = 1.5), but the product must be a whole channel count:
    1.3 x 32 is a ValueError naming channel_mult[l], not 41 channels."""
    mc = cfg["model_channels"]
    out = []
    for i, m in enumerate(cfg["channel_mult"]):
        name = f"UNet config 'channel_mult[{i}]'"
        if isinstance(m, (bool, np.bool_)) or not isinstance(m, numbers.Real) or not math.isfinite(m):
            raise ValueError(f"{name}: expected a number, got {m!r}")
        if isinstance(m, numbers.Integral):
            out.append(int(m) * mc)
            continue
        channels = float(m) * mc
        whole = round(channels)
        if abs(channels - whole) > 1e-6 * max(1.0, abs(channels)):
            raise ValueError(f"{name}: {m!r} x model_channels {mc} = {channels:g} channels, not a whole number")
        out.append(int(whole))
    return out


def _c_config(cfg: dict) -> dict:
    """The C UNet's config from a checked _full_config."""
    mc = cfg["model_channels"]
    levels = len(cfg["channel_mult"])
    return dict(
        in_channels=cfg["in_channels"],
        model_channels=mc,
        out_channels=cfg["out_channels"],
        num_res_blocks=cfg["num_res_blocks"],
        level_channels=_level_channels(cfg),
        attention=[int(2**level in cfg["attention_resolutions"]) for level in range(levels)],
        num_heads=cfg["num_heads"],
        num_head_channels=cfg["num_head_channels"],
        num_heads_upsample=cfg["num_heads_upsample"],
        legacy_attention=int(not cfg["use_new_attention_order"]),
        use_scale_shift_norm=int(cfg["use_scale_shift_norm"]),
        resblock_updown=int(cfg["resblock_updown"]),
    )


def infer_config(
    state_dict: Mapping[str, np.ndarray],
    num_heads: int = 4,
    num_head_channels: int = -1,
    use_new_attention_order: bool = False,
    num_heads_upsample: int = -1,
) -> dict:
    """The UNet config a guided-diffusion state_dict was built with (docs/method.md 1.2-1.5).

    Every tensor the config is read from is checked against the shape the architecture gives it (its ndim and the
    dimensions the other tensors fix) first: a flattened or mis-shaped one is a ValueError naming it, its shape and
    the expected one, never an IndexError or a model of absurd size allocated from a wrong dimension."""

    def shape(key: str, expected: tuple[int | None, ...]) -> tuple[int, ...]:
        """key's shape, checked against expected (None: any size; the ndim is always checked)."""
        if key not in state_dict:
            raise ValueError(
                f"not a guided-diffusion UNet checkpoint: missing '{key}'" + prefixed_key_hint(state_dict, key)
            )
        got = tuple(int(d) for d in np.shape(state_dict[key]))
        if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
            want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "")
            raise ValueError(
                f"tensor '{key}' has shape {got} (ndim {len(got)}), but a guided-diffusion UNet needs "
                f"{want}) (ndim {len(expected)}) there"
            )
        return got

    def block_count(prefix: str) -> int:
        found = [int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", k))]
        if not found:
            raise ValueError(f"not a guided-diffusion UNet checkpoint: no '{prefix}.*' tensors")
        return 1 + max(found)

    mc = shape("time_embed.0.weight", (None, None))[1]
    emb = 4 * mc  # guided-diffusion's time_embed_dim
    shape("time_embed.0.weight", (emb, mc))
    ch0, in_channels = shape("input_blocks.0.0.weight", (None, None, 3, 3))[:2]
    out_channels = shape("out.2.weight", (None, ch0, 3, 3))[0]
    n_in = block_count("input_blocks")
    n_out = block_count("output_blocks")

    def has_up_layer(b: int) -> bool:  # an Upsample conv, or a second ResBlock (up-ResBlock) in output block b
        return any(re.match(rf"output_blocks\.{b}\.[12]\.(conv|in_layers)\.", k) for k in state_dict)

    up_blocks = [b for b in range(n_out) if has_up_layer(b)]
    if up_blocks:
        nrb = up_blocks[0]
    else:  # a single level: n_out = nrb + 1
        nrb = n_out - 1
    levels = n_out // (nrb + 1)
    if levels * (nrb + 1) != n_out or levels * (nrb + 1) != n_in:
        raise ValueError(f"cannot infer the UNet layout: {n_in} input and {n_out} output blocks")
    level_channels, attention = [], []
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        key = f"input_blocks.{first}.0.out_layers.3.weight"
        c = shape(key, (None, None, 3, 3))[0]
        level_channels.append(shape(key, (c, c, 3, 3))[0])
        if f"input_blocks.{first}.1.qkv.weight" in state_dict:
            attention.append(2**level)
    resblock_updown = bool(up_blocks) and any(
        re.match(rf"output_blocks\.{up_blocks[0]}\.[12]\.in_layers\.", k) for k in state_dict
    )
    emb_out = shape("input_blocks.1.0.emb_layers.1.weight", (None, emb))[0]
    if emb_out not in (level_channels[0], 2 * level_channels[0]):
        raise ValueError(
            f"tensor 'input_blocks.1.0.emb_layers.1.weight' has shape ({emb_out}, {emb}), but a guided-diffusion "
            f"UNet needs ({level_channels[0]}, {emb}) or, with scale-shift norm, ({2 * level_channels[0]}, {emb}) there"
        )
    scale_shift = emb_out == 2 * level_channels[0]
    mult = tuple(c // mc if c % mc == 0 else c / mc for c in level_channels)
    if ch0 != level_channels[0]:
        raise ValueError(f"stem has {ch0} channels but level 0 has {level_channels[0]}")
    return _full_config(
        dict(
            in_channels=in_channels,
            model_channels=mc,
            out_channels=out_channels,
            num_res_blocks=nrb,
            channel_mult=mult,
            attention_resolutions=tuple(attention),
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            num_heads_upsample=num_heads_upsample,
            use_new_attention_order=use_new_attention_order,
            use_scale_shift_norm=scale_shift,
            resblock_updown=resblock_updown,
        )
    )


class UNet(NetworkBase):
    """guided-diffusion's UNetModel (unconditional), computed by the C core: a diffice._C.Network conditioned on
    the timesteps (its one output, "model_output", is what forward returns).

    Attributes:
        config: dict with in_channels, model_channels, out_channels, num_res_blocks, channel_mult,
            attention_resolutions (downsample factors ds), num_heads, num_head_channels, num_heads_upsample,
            use_new_attention_order, use_scale_shift_norm, resblock_updown, learn_sigma.
    """

    _what = "UNet"

    def __init__(self, config: Mapping | None = None, backend: str = "cpu") -> None:
        self.config = _full_config(config or {})
        super().__init__(_C.unet_create(_c_config(self.config)), backend)
        #: (height, width) the weights were trained at, from a file diffice train ddpm wrote (from_file); else None
        self.trained_size: tuple[int, int] | None = None

    # ---- construction ----
    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, np.ndarray],
        num_heads: int = 4,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
        num_heads_upsample: int = -1,
        backend: str = "cpu",
    ) -> UNet:
        cfg = infer_config(state_dict, num_heads, num_head_channels, use_new_attention_order, num_heads_upsample)
        try:
            unet = cls(cfg, backend=backend)
        except MemoryError as exc:
            raise ValueError(
                f"the tensor shapes describe a UNet too large to allocate (level channels "
                f"{_level_channels(cfg)}, model_channels {cfg['model_channels']}): {exc}"
            ) from None
        unet.load_state_dict(state_dict)
        return unet

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        num_heads: int = 4,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
        num_heads_upsample: int = -1,
        backend: str = "cpu",
    ) -> UNet:
        """Loads a .safetensors, .pt/.pth (zip or legacy, no torch needed) or .npz checkpoint.

        The attention layout arguments are for checkpoints that do not record one (guided-diffusion, DiME); a file
        from diffice train ddpm or UNet.save records its own in 'diffice_config', which wins."""
        from ..io import _load
        from .description import described_type, trained_size, unet_layout

        state_dict, meta = _load(path, "auto")
        held = described_type(meta)
        if held is not None:  # a diffice model of another kind (diffice's UNet files have no diffice_model)
            raise ValueError(
                f"{os.fspath(path)}: the file holds a {held} (its diffice_model metadata), not a UNet; give the DDPM "
                "(diffice train ddpm's model.safetensors or ema.safetensors, or a guided-diffusion checkpoint)"
            )
        layout: dict[str, Any] = dict(
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_new_attention_order=use_new_attention_order,
            num_heads_upsample=num_heads_upsample,
        )
        layout.update(unet_layout(meta, path) or {})
        try:
            unet = cls.from_state_dict(state_dict, backend=backend, **layout)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None
        unet.trained_size = trained_size(meta)
        return unet

    @classmethod
    def random(cls, config: Mapping | None = None, seed: int = 0, backend: str = "cpu") -> UNet:
        """Random weights (uniform +-1/sqrt(fan_in), norms near 1): for tests and benchmarks.

        Unlike guided-diffusion's zero-initialised output convs, every weight is non-zero, so every path matters.
        """
        unet = cls(config, backend=backend)
        unet._randomize(seed)
        return unet

    def _config_repr(self) -> dict:
        return dict(self.config)

    # ---- computation ----
    def _timesteps(self, t: ArrayLike, n: int) -> np.ndarray:
        t = np.asarray(t)
        if t.ndim == 0:
            t = np.full(n, t)
        if t.shape != (n,):
            raise ValueError(f"t must be a scalar or have shape ({n},), got {t.shape}")
        return np.ascontiguousarray(t, dtype=np.float32)

    def forward(self, x: np.ndarray, t: ArrayLike) -> np.ndarray:
        """x (N, in_channels, H, W) float32, H and W divisible by 2^(levels-1); t original timesteps (N,).

        Returns (N, out_channels, H, W): eps (and the variance interpolation v with learn_sigma).
        """
        return self._c.forward(get_backend(self.backend), x, self._timesteps(t, len(x)))[0]

    __call__ = forward

    def vjp(self, x: np.ndarray, t: ArrayLike, v: np.ndarray) -> np.ndarray:
        """d sum(v * forward(x, t)) / dx, shape of x (no gradient through t)."""
        return self._c.vjp(get_backend(self.backend), x, (v,), self._timesteps(t, len(x)))

    def gradients(self, x: np.ndarray, t: ArrayLike, v: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(dx, {name: d sum(v * forward) / d param}) for training."""
        dx, flat = self._c.gradients(get_backend(self.backend), x, (v,), self._timesteps(t, len(x)))
        return dx, self._grads_dict(flat)

    def __repr__(self) -> str:
        return f"UNet({self.config}, parameters={self.num_parameters():,})"
