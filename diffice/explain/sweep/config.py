"""A sweep's config: the [sweep] section, the grid of method configurations (each with a stable id), Table 1's
base setting, the models and the [cluster] options (the file format: diffice.explain.sweep)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from ...data.phantoms import MAX_PHANTOMS  # [sweep] phantoms: at most this many (also in the store)
from ..cluster import cluster_options, models_spec
from ..config import check_lambda_p, check_seed_value, is_int, load_config, read_toml
from ..explainer import METHODS, ExplainerConfig, is_iterative, iterations_run

STORE_NAME = "results.sqlite"
SWEEP_DEFAULTS: dict[str, Any] = dict(
    models=None,
    demo_models=None,
    images=None,
    phantoms=None,
    phantom_seed=None,
    out="sweep-results",
    store_format="png",
)
# the tables' judges (diffice.explain.sweep.judges): the concept oracle, the realism feature network and reference
TABLES_KEYS = ("oracle", "features", "realism_reference")
REFERENCE_PHANTOMS = 100  # standard-plane phantoms in the realism reference ...
REFERENCE_SEED = 20261207  # ... drawn with a seed of their own (not training's 1 or 7, not the demo's or a sweep's)
METHOD_FIELDS = [f.name for f in dataclasses.fields(ExplainerConfig)]
# method settings added after stores first keyed configurations by config_id, with their defaults: left out of the id
# at the default, so the ids of stores made before them stay valid
LATER_FIELDS: dict[str, Any] = dict(precision="fp32")
TABLE1_AXES = ("tau", "lambda_c", "lambda_p")


def at_base(config: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether a configuration has Table 1's base setting (base: the store's meta "base", TABLE1_AXES' values)."""
    return all(config[k] == base[k] for k in TABLE1_AXES if k in base)


# the settings every table and strip shows of a configuration (its method, L, tau, lambda_c, Lp)
SHOWN_FIELDS = ("method", "iterations", "tau", "lambda_c", "lambda_p")


def _show_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "/".join(_show_value(v) for v in value)
    return str(value)


def distinguishing_settings(configs: list[dict[str, Any]]) -> dict[str, str]:
    """Per config_id, the settings outside SHOWN_FIELDS that set a configuration apart from the others, e.g.
    "mask_dilation=0" ("" for most): where the configurations disagree on such a setting (an ablation of
    mask_dilation, class_loss, precision, ...), each one whose value is not the most common one (ties: the first
    configuration's) names it, so that no two rows of a table read the same."""
    fields = sorted({k for c in configs for k in c} - set(SHOWN_FIELDS) - {"config_id", "label"})
    parts: dict[str, list[str]] = {c["config_id"]: [] for c in configs}
    for field in fields:
        values = [c.get(field, LATER_FIELDS.get(field)) for c in configs]
        keys = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(keys)) < 2:
            continue
        common = max(dict.fromkeys(keys), key=keys.count)  # the most common; ties: the first seen
        for c, key, value in zip(configs, keys, values):
            if key != common:
                parts[c["config_id"]].append(f"{field}={_show_value(value)}")
    return {cid: ", ".join(p) for cid, p in parts.items()}


def config_order(config: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of configurations in the tables' order: METHODS' order (unknown methods last), iterations, tau,
    lambda_c, then Lp on before off."""
    method = list(METHODS).index(config["method"]) if config["method"] in METHODS else len(METHODS)
    return method, config["iterations"], config["tau"], config["lambda_c"], -config["lambda_p"]


# ---- the config ----


@dataclasses.dataclass
class SweepSpec:
    """A loaded sweep config. cfg: the run config sections (diffice.explain.config.load_config); configs: every method
    configuration (ExplainerConfig fields, deduplicated, in grid order); base: Table 1's (tau, lambda_c,
    lambda_p); models: a diffice.explain.cluster.models_spec; cluster: the [cluster] options."""

    cfg: dict[str, dict[str, Any]]
    sweep: dict[str, Any]
    configs: list[dict[str, Any]]
    base: dict[str, Any]
    models: dict[str, Any]
    out: Path
    cluster: dict[str, Any]
    source: str = "config"
    tables: dict[str, Any] | None = None  # the [tables] options (tables_options); None: the store's defaults

    @property
    def store_path(self) -> Path:
        return self.out / STORE_NAME

    def __repr__(self) -> str:  # the dataclass's repr printed every configuration's settings
        source = self.models.get("source")
        return f"SweepSpec({self.source}: {len(self.configs)} configurations, models {source}, out {self.out})"


def _canonical(params: dict[str, Any]) -> dict[str, Any]:
    p = {k: params[k] for k in METHOD_FIELDS if k not in LATER_FIELDS}
    p.update({k: params[k] for k, default in LATER_FIELDS.items() if params.get(k, default) != default})
    p["lambda_c"] = [float(v) for v in p["lambda_c"]]
    p["lambda_p"] = float(p["lambda_p"])
    p["tau"] = int(p["tau"])
    p["iterations"] = iterations_run(p["method"], p["iterations"])
    return p


def config_id(params: dict[str, Any]) -> str:
    """A stable id of a configuration: a hash of its canonical parameters."""
    text = json.dumps(_canonical(params), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def config_label(p: dict[str, Any]) -> str:
    lc = "/".join(f"{v:g}" for v in p["lambda_c"])
    it = f" L={p['iterations']}" if is_iterative(p["method"]) else ""
    return f"{p['method']}{it} tau={p['tau']} lc={lc} lp={p['lambda_p']:g}"


def _axis(name: str, value: Any, where: str) -> list[Any]:
    if name not in METHOD_FIELDS:
        raise ValueError(f"{where}: {name!r} is not a method setting; axes: {METHOD_FIELDS}")
    if name == "lambda_c":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}: lambda_c must be a list of numbers or a list of such lists, got {value!r}")
        if all(isinstance(v, (int, float)) for v in value):
            return [list(value)]
        if not all(isinstance(v, list) and v and all(isinstance(u, (int, float)) for u in v) for v in value):
            raise ValueError(f"{where}: lambda_c must be a list of numbers or a list of such lists, got {value!r}")
        return [list(v) for v in value]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{where}: {name} lists no value")
    return values


def _expand(axes: dict[str, list[Any]], method: dict[str, Any], where: str) -> list[dict[str, Any]]:
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        params = dict(method, **dict(zip(names, combo)))
        try:
            ExplainerConfig(**params).validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        out.append(_canonical(params))
    return out


def _check_sweep_value(key: str, value: Any, source: str | None = None) -> None:
    """ValueError "<source>: [sweep] key must be ..., got ..." (an override: "sweep.key must be ...") unless
    [sweep] key takes value (None: the key is unset)."""
    if value is None:
        return
    if key == "phantoms":
        ok, what = is_int(value) and 1 <= value <= MAX_PHANTOMS, f"an integer in [1, {MAX_PHANTOMS}]"
    elif key == "phantom_seed":
        seed_rule = check_seed_value(value)
        ok, what = seed_rule is None, seed_rule or ""
    elif key == "models":
        ok, what = isinstance(value, str) and value == "demo", '"demo" (or leave it out and use [models])'
    elif key == "store_format":
        ok, what = isinstance(value, str) and value in ("png", "float16"), '"png" or "float16"'
    else:  # demo_models, images, out: folders
        ok, what = isinstance(value, str) and value != "", "a folder (a non-empty string)"
    if not ok:
        where = f"{source}: [sweep] {key}" if source else f"sweep.{key}"
        raise ValueError(f"{where} must be {what}, got {value!r}")


def load_sweep(
    path: str | None, overrides: dict[str, Any] | None = None, data: dict[str, Any] | None = None
) -> SweepSpec:
    """Reads a sweep config (the module docstring). overrides: flat keys over [sweep] and the run config (e.g.
    out, batch_size); data: the parsed TOML instead of reading path (relative paths: from the working folder)."""

    source = str(path) if path else "sweep config"
    if data is None and not path:
        raise ValueError("load_sweep: give the config's path or its parsed TOML (data)")
    data = dict(read_toml(str(path)) if data is None else data)
    sweep = dict(SWEEP_DEFAULTS)
    axes_main: dict[str, list[Any]] = {}
    section = data.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{source}: [sweep] must be a table, got {section!r}")
    for key, value in section.items():
        if key in SWEEP_DEFAULTS:
            _check_sweep_value(key, value, source)
            sweep[key] = value
        else:
            axes_main[key] = _axis(key, value, f"{source} [sweep]")
    tables_section = data.pop("tables", None)
    grids = data.pop("grid", None) or []
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ValueError(f"{source}: grid must be an array of tables ([[grid]])")
    overrides = dict(overrides or {})
    out_given = overrides.get("out") is not None
    for key in list(overrides):
        if key in SWEEP_DEFAULTS:
            value = overrides.pop(key)
            if value is not None:
                _check_sweep_value(key, value)
                sweep[key] = value
    base_dir = Path(path).resolve().parent if path else Path.cwd()
    demo = None
    if sweep["models"] is not None:
        demo = str(base_dir / sweep["demo_models"]) if sweep["demo_models"] else "bundled"
        # the demo models choose the model files: other [models] keys would be ignored, so they are refused; the
        # device they run on is the user's (diffice sweep --device)
        models = dict(data.get("models") or {})
        chosen = sorted(k for k in models if k != "device")
        if chosen:
            raise ValueError(
                f'{source}: [sweep] models = "demo" chooses every model; remove models.'
                f'{", models.".join(chosen)} (only models.device may stay), or models = "demo"'
            )
        # as diffice explain --models demo: the demo's [method], [diffusion] and image size are the defaults, and
        # [diffusion] values other than the bundled DDPM's are refused (diffice.explain.config.load_config)
        data["models"] = dict(models, preset="demo")
    cfg = load_config(path, overrides, data=data)
    method = cfg["method"]
    configs: list[dict[str, Any]] = []
    configs += _expand(axes_main, method, f"{source} [sweep]")
    for i, grid in enumerate(grids):
        configs += _expand(
            {k: _axis(k, v, f"{source} [[grid]] {i + 1}") for k, v in grid.items()},
            method,
            f"{source} [[grid]] {i + 1}",
        )
    unique: dict[str, dict[str, Any]] = {}
    for c in configs:
        unique.setdefault(config_id(c), c)
    if demo is None:  # the demo models bring their pixel Lp
        check_lambda_p(cfg["models"], max((float(c["lambda_p"]) for c in configs), default=0.0), source)
    base = {}
    for name in TABLE1_AXES:
        value = _canonical(method)[name]
        main = [_canonical(dict(method, **{name: v}))[name] for v in axes_main.get(name, [])]
        base[name] = value if not main or value in main else main[0]
    if sweep["images"] is None and sweep["phantoms"] is None:
        raise ValueError(f'{source}: [sweep] needs images = "FOLDER" or phantoms = N')
    if sweep["images"] is not None and sweep["phantoms"] is not None:
        raise ValueError(f"{source}: [sweep] takes images or phantoms, not both")
    if sweep["images"] is not None:
        sweep["images"] = str(base_dir / sweep["images"])

    out = Path(sweep["out"])
    out = out if out.is_absolute() or out_given else base_dir / out
    if out.exists() and not out.is_dir():  # not "[Errno 17] File exists" when the sweep makes its folder
        where = f"--out {sweep['out']}" if out_given else f"{source}: [sweep] out = {str(out)!r}"
        raise ValueError(f"{where} is a file, not a folder")
    return SweepSpec(
        cfg=cfg,
        sweep=sweep,
        configs=list(unique.values()),
        base=base,
        models=models_spec(cfg, demo),
        out=out,
        cluster=cluster_options(data, source),
        source=source,
        tables=tables_options(tables_section, demo is not None, sweep["phantoms"] is not None, base_dir, source),
    )


def tables_options(
    section: Any, demo_models: bool, phantom_images: bool, base_dir: Path | None = None, source: str = "sweep config"
) -> dict[str, Any]:
    """The [tables] section with its defaults, paths resolved from base_dir (ValueError naming the key, what it
    takes and what it got):

        oracle = "demo"        # the concept oracle for MQD and QS: "demo" (default with [sweep] models = "demo"),
                               # a model file (a ConceptOracle), or "none" (default otherwise)
        features = "oracle"    # the realism network: "oracle" (the oracle's own SonoNet, default) or a model file
                               # whose forward gives .features (a SonoNet, or a PlaneClassifier: its SonoNet)
        realism_reference = {phantoms = 100, seed = 20261207}   # standard-plane phantoms (the default for
                               # phantom sweeps and the demo models), {images = "FOLDER"}, or "none"

    Returns dict(oracle="demo" | path | None, features="oracle" | path, reference=dict(phantoms, seed) |
    dict(images=folder) | None)."""
    where = f"{source} [tables]"
    base = base_dir or Path.cwd()
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ValueError(f"{source}: [tables] must be a table, got {section!r}")
    unknown = sorted(set(section) - set(TABLES_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {list(TABLES_KEYS)}")

    def model_file(key: str, value: Any, words: tuple[str, ...]) -> str | None:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{where} {key}: expected {' or '.join(repr(w) for w in words)} or a model file, got {value!r}"
            )
        if value in words:
            return None if value == "none" else value
        path = base / value
        if not path.is_file():
            raise ValueError(
                f"{where} {key}: expected {' or '.join(repr(w) for w in words)} or a model file, got "
                f"{value!r} ({path} is not a file)"
            )
        return str(path)

    oracle = model_file("oracle", section.get("oracle", "demo" if demo_models else "none"), ("demo", "none"))
    features = model_file("features", section.get("features", "oracle"), ("oracle",))
    default_reference: Any = (
        dict(phantoms=REFERENCE_PHANTOMS, seed=REFERENCE_SEED) if demo_models or phantom_images else "none"
    )
    ref = section.get("realism_reference", default_reference)
    takes = 'expected {phantoms = N (>= 2), seed = S (>= 0)}, {images = "FOLDER"} or "none"'
    reference: dict[str, Any] | None
    if ref == "none":
        reference = None
    elif isinstance(ref, dict) and set(ref) <= {"phantoms", "seed"} and "phantoms" in ref:
        n, seed = ref["phantoms"], ref.get("seed", REFERENCE_SEED)
        for key, value, low in (("phantoms", n, 2), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{where} realism_reference.{key}: expected an integer >= {low}, got {value!r}")
        reference = dict(phantoms=n, seed=seed)
    elif isinstance(ref, dict) and set(ref) == {"images"}:
        folder = ref["images"]
        if not isinstance(folder, str) or not (base / folder).is_dir():
            raise ValueError(f"{where} realism_reference.images: expected an image folder, got {folder!r}")
        reference = dict(images=str(base / folder))
    else:
        raise ValueError(f"{where} realism_reference: {takes}, got {ref!r}")
    return dict(oracle=oracle, features=features, reference=reference)
