"""The common base of diffice's network wrappers: parameters by PyTorch state_dict name, strict loading, saving."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any, Union

import numpy as np

from ..ops._backend import check_backend_name

PathLike = Union[str, "os.PathLike[str]"]


def config_int(name: str, value: Any) -> int:
    """A user's integer setting as an int, before it reaches C: an int or a numpy integer as it is, a float only
    when integral (32.0). A bool, a non-integral or non-finite float (32.7 would silently build a 32-channel model)
    or anything else is a ValueError "<name>: expected an integer, got <value>"; name says what the value is, e.g.
    "UNet config 'model_channels'". The range is checked in C (dfc_py_int), naming it the same way."""
    if not isinstance(value, (bool, np.bool_)):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            return int(float(value))
    raise ValueError(f"{name}: expected an integer, got {value!r}")


def is_finite_nonnegative(value: Any) -> bool:
    """Whether a user's setting is a real number (not a bool), finite and >= 0 (an int past float's range is not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and number >= 0


def config_bool(name: str, value: Any) -> bool:
    """A user's on/off setting: a bool, a numpy bool, or the integers 0 and 1; anything else (the string "false",
    which bool() takes as true, or 2) is a ValueError "<name>: expected true or false, got <value>"."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def some_keys(keys: Iterable[str], shown: int = 3) -> str:
    """Keys for an error message, short whatever their number: all of them when at most `shown`, else the first
    `shown`, then "... (N in all)"."""
    keys = list(keys)
    return str(keys) if len(keys) <= shown else f"{keys[:shown]} ... ({len(keys)} in all)"


def prefixed_key_hint(keys: Iterable[str], key: str) -> str:
    """For a missing `key`: where the file has it under a prefix (a PyTorch Lightning checkpoint's 'model.', any
    module wrapping the network), "; it is there as 'model.<key>' ..." saying what to save instead; else ""."""
    prefixes = sorted({k[: -len(key)] for k in keys if k.endswith("." + key)})
    if not prefixes:
        return ""
    found = " and ".join(repr(p + key) for p in prefixes[:3]) + (" ..." if len(prefixes) > 3 else "")
    return (
        f"; the file has it as {found}: the network is saved inside another module (a PyTorch Lightning "
        f"checkpoint, a wrapper). Save the network's own state_dict, e.g. "
        f"torch.save(lightning_module.{prefixes[0].rstrip('.')}.state_dict(), path)"
    )


def _mismatch_error(what: str, params: Mapping[str, np.ndarray], state_dict: Mapping[str, Any]) -> str | None:
    """None when state_dict has exactly params' keys and shapes, else "<what> state_dict does not match the model: "
    and what is missing, unexpected or mis-shaped (counted, the first few named: a wrong checkpoint for a UNet would
    list hundreds of keys)."""
    missing = [k for k in params if k not in state_dict]
    unexpected = [k for k in state_dict if k not in params]
    misshaped = [
        f"{k}: checkpoint {tuple(np.shape(state_dict[k]))}, model {v.shape}"
        for k, v in params.items()
        if k in state_dict and tuple(np.shape(state_dict[k])) != v.shape
    ]
    if not (missing or unexpected or misshaped):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys: {some_keys(missing, 8)}")
    if unexpected:
        parts.append(f"unexpected keys: {some_keys(unexpected, 8)}")
    if misshaped:
        parts.append(f"mis-shaped keys: {some_keys(misshaped, 8)}")
    return f"{what} state_dict does not match the model: " + "; ".join(parts)


class NetworkBase:
    """Parameter handling shared by the Python wrappers of C networks (diffice._C.Network, the UNet's included):
    named parameter views, state_dict load/save with strict key checks, random initialisation for tests."""

    _what = "network"

    def __init__(self, c: Any, backend: str = "cpu") -> None:
        check_backend_name(backend)  # here, not at the first forward
        self._c = c
        self._params = c.parameters()
        self.backend = backend

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._params.items()}

    def num_parameters(self) -> int:
        return int(self._c.parameter_count())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, keyed by PyTorch state_dict names, in order."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copies weights in; any missing, unexpected or mis-shaped key is an error listing all of them."""
        message = _mismatch_error(self._what, self._params, state_dict)
        if message:
            raise ValueError(message)
        for k, v in self._params.items():
            value = np.asarray(state_dict[k], dtype=np.float32)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{self._what} state_dict: '{k}' contains non-finite values")
            v[...] = value

    def save(self, path: PathLike) -> None:
        """Writes the parameters as safetensors with PyTorch key names, and the description
        diffice.models.files.load_model
        rebuilds the network from (every setting, not only the shapes) where it has one."""
        from ..io import save_safetensors
        from .description import model_spec

        metadata = {"format": f"diffice {self._what}", "diffice_config": repr(self._config_repr())}
        try:
            metadata["diffice_model"] = json.dumps(model_spec(self))
        except TypeError:  # a network diffice.models.files cannot describe (the UNet: its diffice_config is enough)
            pass
        save_safetensors(path, self.state_dict(), metadata=metadata)

    def _config_repr(self) -> dict:
        return {}

    def _grads_dict(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        grads, offset = {}, 0
        for name, p in self._params.items():
            grads[name] = flat[offset : offset + p.size].reshape(p.shape)
            offset += p.size
        return grads

    def _randomize(self, seed: int) -> None:
        """Uniform +-1/sqrt(fan_in) weights, norm scales near 1, small biases: every path matters in tests."""
        rng = np.random.default_rng(seed)
        for name, p in self._params.items():
            if p.ndim == 1 and name.endswith(".weight"):  # GroupNorm / BatchNorm scale
                p[...] = 1.0 + 0.1 * rng.standard_normal(p.shape)
            elif name.endswith(".weight"):
                fan_in = int(np.prod(p.shape[1:]))
                p[...] = rng.uniform(-1, 1, p.shape) / np.sqrt(fan_in)
            elif name.endswith("running_var"):
                p[...] = rng.uniform(0.5, 1.5, p.shape)
            else:
                p[...] = 0.1 * rng.standard_normal(p.shape)

    def release_memory(self) -> None:
        """Frees the activation memory kept between calls (it is taken again by the next call)."""
        self._c.release_memory()

    @property
    def last_peak_bytes(self) -> int:
        """Activation memory (arena peak) of the last forward/vjp/gradients call."""
        return int(self._c.last_peak_bytes)

    @property
    def held_bytes(self) -> int:
        """Activation memory kept for the next call (bytes; the UNet's includes the memory of the Explainer calls
        that used it as their denoiser), until :meth:`release_memory` or the network is freed."""
        return int(self._c.held_bytes)
