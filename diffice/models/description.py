"""The description a diffice model file carries (safetensors metadata ``diffice_model``, JSON) and the UNet's
attention layout (``diffice_config``): reading, checking and writing them.

This module knows no network class: each describable class says what it is (``describe()``) and builds itself from
its description (``from_description``); diffice.models.files dispatches over every class. So the classes, which
rebuild themselves from a described file in their ``from_file``, and the loaders above them depend on this module
only, never on each other in a circle.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]
Description = dict[str, Any]
Builder = Callable[[Description, str], Any]  # (description, backend) -> model, weights uninitialised

CLASSIFIER_KINDS = {"plane": "PlaneClassifier", "sononet": "SonoNet"}  # [models] classifier_kind -> type
#: the model types a 'diffice_model' description may name (diffice.models.files.build_model builds each)
DESCRIBED_TYPES = ("Segmenter", "SmallClassifier", "SonoNet", "PlaneClassifier", "ConceptOracle")


def model_spec(model: Any) -> Description:
    """A JSON-able description from which the model's class rebuilds its structure (TypeError: not describable)."""
    describe = getattr(model, "describe", None)
    if describe is None:
        raise TypeError(f"model_spec: cannot describe a {type(model).__name__}")
    return dict(describe())


def model_metadata(model: Any) -> dict[str, str]:
    return {"format": "diffice model", "diffice_model": json.dumps(model_spec(model))}


def weights_of(model: Any) -> Any:
    """The object holding the weights: a ConceptOracle's network, else the model."""
    return model.network if type(model).__name__ == "ConceptOracle" else model


def read_description(path: PathLike, meta: Mapping[str, str]) -> Description:
    """The parsed 'diffice_model' metadata of a file: a JSON object whose "type" is one of DESCRIBED_TYPES. Empty,
    unparsable or otherwise invalid metadata is a ValueError naming the file, what it holds and what is expected."""
    p = os.fspath(path)
    text = meta.get("diffice_model")
    expected = (
        f'expected a JSON object {{"type": one of {", ".join(DESCRIBED_TYPES)}, ...}} as diffice\'s save_model / '
        f".save() write it"
    )
    if text is None or not str(text).strip():
        raise ValueError(f"{p}: its 'diffice_model' metadata is empty; {expected}")
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{p}: its 'diffice_model' metadata is not valid JSON ({exc}); {expected}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{p}: its 'diffice_model' metadata is invalid: {_short(text)} ({expected})")
    if spec.get("type") not in DESCRIBED_TYPES:
        got = f"type {spec['type']!r}" if "type" in spec else "no 'type'"
        raise ValueError(f"{p}: its 'diffice_model' metadata is invalid: it has {got} ({expected})")
    return spec


def described_type(meta: Mapping[str, str]) -> Any:
    """The "type" of a file's diffice_model description (None without a readable one): for advice, where
    read_description's errors would be in the way."""
    try:
        spec = json.loads(meta.get("diffice_model") or "null")
    except ValueError:
        return None
    return spec.get("type") if isinstance(spec, dict) else None


def training_settings(meta: Mapping[str, str]) -> dict[str, Any]:
    """How a model file was trained: its 'diffice_training' metadata (diffice train ddpm's diffusion_steps,
    noise_schedule and size; the supervised commands' size, ...); {} without a readable one (a third-party
    checkpoint, .pt, .npz, an older diffice)."""
    try:
        record = json.loads(meta.get("diffice_training") or "null")
    except (ValueError, TypeError):
        return {}
    return record if isinstance(record, dict) else {}


def trained_size(meta: Mapping[str, str]) -> tuple[int, int] | None:
    """(height, width) the file's model was trained at (training_settings' size), None when it does not say."""
    size = training_settings(meta).get("size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return None


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def model_from_description(
    path: PathLike,
    state_dict: Mapping[str, Any],
    meta: Mapping[str, str],
    build: Builder,
    backend: str = "cpu",
    expect: None | str | Sequence[str] = None,
    what: str = "",
    advice: str | None = None,
) -> Any:
    """The model a file's 'diffice_model' metadata describes, built by `build`, with its weights. expect: the type
    name(s) the caller needs ("PlaneClassifier", "SonoNet", ...); another type is a ValueError naming the file (and
    `what` asked), ending with `advice` (default: the classifier_kind that takes the file, where one does)."""
    p = os.fspath(path)
    spec = read_description(p, meta)
    wanted = (expect,) if isinstance(expect, str) else tuple(expect or ())
    if wanted and spec["type"] not in wanted:
        hint = {v: k for k, v in CLASSIFIER_KINDS.items()}.get(spec["type"])
        for_kind = hint and all(w in CLASSIFIER_KINDS.values() for w in wanted)
        if advice is None:
            advice = (
                f"use classifier_kind = {hint!r} (--classifier-kind {hint}) for this file"
                if for_kind
                else "give the right file"
            )
        raise ValueError(
            f"{p}: the file holds a {spec['type']} (its diffice_model metadata), but "
            f"{what or 'the caller'} needs a {' or '.join(wanted)}; {advice}"
        )
    try:
        model = build(spec, backend)
        weights_of(model).load_state_dict(state_dict)
    except KeyError as exc:
        raise ValueError(
            f"{p}: its diffice_model description of a {spec['type']} lacks the setting {exc} (the metadata is "
            f"incomplete; save the model again with diffice's save_model or .save())"
        ) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{p}: {exc}") from None
    return model


def unet_layout(meta: Mapping[str, str], path: PathLike) -> dict[str, Any] | None:
    """The attention layout a UNet file records in 'diffice_config' (JSON from diffice train ddpm, a Python dict
    from UNet.save), or None."""
    text = meta.get("diffice_config")
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        try:
            config = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{os.fspath(path)}: unreadable 'diffice_config' in its metadata") from None
    keys = ("num_heads", "num_head_channels", "use_new_attention_order", "num_heads_upsample")
    return {k: config[k] for k in keys if isinstance(config, dict) and k in config}
