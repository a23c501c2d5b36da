"""The `diffice` command line (also `python -m diffice`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

from .models.unet import DEFAULT_CONFIG as UNET_DEFAULTS
from .progress import pipe_closed, stdout_closed
from .train.ddpm import DDPM_DEFAULTS
from .train.networks import SUPERVISED_DEFAULTS

# the UNet flags of `diffice train ddpm` (their config keys; --attention-ds is attention_resolutions)
_UNET_FLAG_KEYS = (
    "model_channels",
    "num_res_blocks",
    "channel_mult",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
)
_DDPM_FLAG_DEFAULTS: dict[str, Any] = {
    **DDPM_DEFAULTS,
    **{k: UNET_DEFAULTS[k] for k in _UNET_FLAG_KEYS},
    "attention_ds": UNET_DEFAULTS["attention_resolutions"],
}


def _cmd_info(args: argparse.Namespace) -> int:
    import diffice

    info = diffice.build_info()
    print(f"diffice {diffice.__version__}")
    for key, value in info.items():
        print(f"  {key}: {value}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .selfcheck import run_selfcheck

    return 0 if run_selfcheck(seed=args.seed, verbose=True) else 1


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# flags named apart from their config key
_FILE_KEYS = ("unet", "classifier", "perceptual")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (e.g. --lambda-c 40 60 80, --tau 120), with its description, allowed values and
    default (diffice.explain.config: CONFIG_HELP, CONFIG_CHOICES, SECTIONS)."""
    from .explain.config import CONFIG_CHOICES, CONFIG_HELP, SECTIONS, config_flags

    for section, defaults in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}] (config file section; flags override it)")
        for key, default in defaults.items():
            flags = config_flags(key)
            text = CONFIG_HELP[key].replace("%", "%%")
            if default is None:
                shown = "none"
            elif isinstance(default, (list, tuple)):
                shown = " ".join(str(v) for v in default)
            else:
                shown = str(default).lower() if isinstance(default, bool) else default
            kwargs: dict[str, Any] = dict(dest=key, default=None, help=f"{text} (default: {shown}; [{section}] {key})")
            if isinstance(default, bool):
                kwargs["type"] = _bool
                kwargs["metavar"] = "{true,false}"
            elif isinstance(default, (list, tuple)):
                kwargs["nargs"] = "+"
                kwargs["type"] = type(default[0]) if default else str
                kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
            elif isinstance(default, (int, float)):
                kwargs["type"] = type(default)
                kwargs["metavar"] = "N" if kwargs["type"] is int else "X"
            if key in _FILE_KEYS:
                kwargs["metavar"] = "FILE"
            if key == "image_size":
                kwargs.update(nargs=2, metavar=("H", "W"))
            if key in CONFIG_CHOICES:
                kwargs["choices"] = CONFIG_CHOICES[key]
                kwargs.pop("metavar", None)
            group.add_argument(*flags, **kwargs)


class _run_warnings:
    """`with _run_warnings("explain"):` prints diffice's warnings on stderr as they are raised, one plain line each:
    a SuspiciousRunWarning as "diffice explain: WARNING: ..." (every one, whatever the warning filters say), the
    others (an AspectRatioWarning naming the file, ...) as "diffice explain: warning: ...", each message once (a
    message says where, so a repeat says nothing new); warnings of other packages show as usual."""

    def __init__(self, command: str) -> None:
        import warnings

        self.command, self._catch, self._shown = command, warnings.catch_warnings(), set[str]()

    def __enter__(self) -> _run_warnings:
        import warnings

        from .explain.explainer import SuspiciousRunWarning

        self._catch.__enter__()  # restores the filters and showwarning on exit
        warnings.simplefilter("always", SuspiciousRunWarning)
        self._python_show = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        from .explain.explainer import SuspiciousRunWarning

        if issubclass(category, SuspiciousRunWarning):
            print(f"diffice {self.command}: WARNING: {message}", file=sys.stderr, flush=True)
        elif category.__module__.split(".")[0] == "diffice":
            if str(message) not in self._shown:
                self._shown.add(str(message))
                print(f"diffice {self.command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            self._python_show(message, category, filename, lineno, file, line)

    def __exit__(self, *exc) -> None:
        self._catch.__exit__(*exc)


def _cmd_explain(args: argparse.Namespace) -> int:
    from .explain.cluster import DistributedUnavailable, cluster_options
    from .explain.config import SECTIONS, load_config, read_toml
    from .explain.run import run_explain

    if not args.out.strip():
        raise ValueError("--out is empty; name the output folder (it is created if missing)")
    keys = {k for defaults in SECTIONS.values() for k in defaults}
    overrides = {k: v for k, v in vars(args).items() if k in keys and v is not None}
    cfg = load_config(args.config, overrides)
    try:
        options = cluster_options(read_toml(args.config) if args.config else None, args.config or "config")
        with _run_warnings("explain"), _executor(args, options) as executor:
            summary = run_explain(cfg, args.images, args.out, progress=not args.quiet, executor=executor)
    except DistributedUnavailable as exc:
        print(f"diffice explain: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(
        f"diffice explain: {summary['explained']} explained, {summary['skipped_done']} already done, "
        f"{summary['failed']} failed; results in {out / 'results.csv'}"
        + (f", the failures and why in {out / 'errors.csv'}" if summary["failed"] else "")
        + (f" (WARNING above, recorded in {out / 'warnings.json'})" if summary.get("warnings") else "")
    )
    return 0 if summary["failed"] == 0 or summary["explained"] > 0 else 1


class _executor:
    """`with _executor(args, cluster_options) as ex`: the executor for --scheduler / --cluster (None: this machine)."""

    def __init__(self, args: argparse.Namespace, options) -> None:
        self.args, self.options, self.ex = args, options, None

    def __enter__(self):
        from .explain.cluster import open_executor

        if not (self.args.scheduler or self.args.cluster):
            return None
        self.ex = open_executor(self.args.scheduler, self.args.cluster, self.options)
        return self.ex

    def __exit__(self, *exc) -> None:
        if self.ex is not None:
            self.ex.close()


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("running on a Dask cluster (pip install 'diffice[distributed]')")
    g.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    g.add_argument(
        "--cluster",
        metavar="KIND",
        help="local:N (N worker processes here), slurm or pbs "
        "(dask-jobqueue; jobs, cores, memory, gpus, queue, walltime from the config's [cluster])",
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .explain.cluster import DistributedUnavailable
    from .explain.sweep import load_sweep, print_tables, run_sweep

    spec = load_sweep(args.config, dict(out=args.out, batch_size=args.batch_size, device=args.device))
    try:
        if not args.tables_only:
            with _run_warnings("sweep"), _executor(args, spec.cluster) as executor:
                summary = run_sweep(spec, executor=executor, progress=not args.quiet)
            print(
                f"diffice sweep: {summary['ran']} units run, {summary['skipped_done']} already done "
                f"({summary['configs']} configurations x {summary['images']} images); store {summary['store']}",
                file=sys.stderr,
            )
        print_tables(spec.store_path, options=spec.tables, configs=spec.configs)
    except (DistributedUnavailable, RuntimeError) as exc:
        print(f"diffice sweep: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .explain.demo import DEMO_N, load_demo_models
    from .explain.demo_run import run_demo

    if args.images is not None and args.n is not None:
        raise ValueError("--n is how many phantoms to make; with --images every image of the folder is explained")
    models = load_demo_models(args.models)
    overrides = {k: getattr(args, k) for k in ("iterations", "tau") if getattr(args, k) is not None}
    with _run_warnings("demo"):
        run_demo(
            args.out,
            images=args.images,
            n=DEMO_N if args.n is None else args.n,
            seed=args.seed,
            models=models,
            progress=not args.quiet,
            overrides=overrides,
        )
    return 0


def _cmd_pairs(args: argparse.Namespace) -> int:
    from .evaluation.metrics import images_given, unfinished_note
    from .evaluation.pairs import key_path, make_sheet, score_answers

    if args.score:
        if not args.key:
            raise ValueError("--score needs --key SHEET.key.json (written beside the sheet)")
        r = score_answers(args.score, args.key)
        print(
            f"counterfactual preferred in {r['counterfactual_preferred']} of {r['answered']} answered pairs "
            f"({r['unanswered']} unanswered); exact binomial p = {r['p_value']:.3g} against chance; "
            f"readers: {', '.join(x or '(unnamed)' for x in r['readers'])}"
        )
        return 0
    if not args.results or not args.out:
        raise ValueError("give RESULTS_DIR and --out SHEET.html (or --score ANSWERS.csv --key KEY.json)")
    key = make_sheet(
        args.results, args.out, n=args.n, seed=args.seed, iteration=args.iteration, flipped_only=args.flipped_only
    )
    explained = len(list((Path(args.results) / "records").glob("*.json")))
    print(
        f"wrote {args.out} ({len(key['pairs'])} pairs; give it to the reader) and {key_path(args.out)} "
        f"(the key: keep it)" + unfinished_note(explained, images_given(args.results))
    )
    return 0


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from .data.phantoms import write_dataset

    counts = write_dataset(
        args.out, args.n, tuple(args.size), args.seed, args.standard_fraction, progress=not args.quiet
    )
    print(
        f"diffice phantoms: {counts['standard']} standard and {counts['non_standard']} non-standard planes in "
        f"{args.out} (images/, masks/, classes.txt, labels.csv)"
    )
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    import json

    from .data.images import atomic_write_bytes, check_writable_file
    from .evaluation.metrics import check_results_folder, evaluate_results, format_report, recorded_warnings
    from .evaluation.run_judges import load_metrics_models

    root = Path(args.results_dir)
    check_results_folder(root)
    if args.json:  # before minutes of work, not after
        check_writable_file(args.json)
    inception = sononet = None
    for w in recorded_warnings(root):  # diffice.explain.run.record_warning: the run itself looked wrong
        print(f"diffice metrics: WARNING recorded by the run ({w.get('at')}): {w.get('message')}", file=sys.stderr)
    classifier, oracle = load_metrics_models(
        root,
        args.classifier,
        args.oracle,
        args.demo_models,
        log=lambda message: print(f"diffice metrics: {message}", file=sys.stderr),
    )
    if args.inception:
        from .models.inception import InceptionV3

        inception = InceptionV3.from_file(args.inception)
    if args.sononet:
        from .models.sononet import SonoNet

        try:
            sononet = SonoNet.from_file(args.sononet)
        except ValueError as exc:  # FSD and SonoSim's network: say which flag gave the file
            raise ValueError(f"--sononet (for FSD and SonoSim): {exc}") from None
    report = evaluate_results(root, classifier, oracle, inception, sononet, with_cout=not args.no_cout)
    print(format_report(report))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(report, indent=1) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    """Comma-separated integers; ValueError naming the option otherwise."""
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None


# `diffice train ddpm`'s UNet when not given: the UNet's own defaults (guided-diffusion's flags'; --help shows them)
_DDPM_UNET_DEFAULTS: dict[str, Any] = {
    **{k: UNET_DEFAULTS[k] for k in _UNET_FLAG_KEYS},
    "learn_sigma": UNET_DEFAULTS["out_channels"] == 2 * cast(int, UNET_DEFAULTS["in_channels"]),
    "use_scale_shift_norm": UNET_DEFAULTS["use_scale_shift_norm"],
    "resblock_updown": UNET_DEFAULTS["resblock_updown"],
}


def _cmd_train_ddpm(args: argparse.Namespace) -> int:
    from .train.ddpm import train_ddpm

    given = dict(
        model_channels=args.model_channels,
        num_res_blocks=args.num_res_blocks,
        channel_mult=None if args.channel_mult is None else tuple(_int_list(args.channel_mult, "--channel-mult")),
        attention_resolutions=None
        if args.attention_ds is None
        else tuple(_int_list(args.attention_ds, "--attention-ds")),
        num_heads=args.num_heads,
        num_head_channels=args.num_head_channels,
        learn_sigma=args.learn_sigma,
    )
    # a new run: the defaults for what is not given; --resume: only what is given (checked against the run's)
    config = {k: v for k, v in given.items() if v is not None}
    if not args.resume:
        config = dict(_DDPM_UNET_DEFAULTS, **config)
    with _run_warnings("train ddpm"):
        result = train_ddpm(
            args.images,
            args.out,
            config,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            ema_rate=args.ema_rate,
            grad_clip=args.grad_clip,
            seed=args.seed,
            augment=args.augment,
            checkpoint_every=args.checkpoint_every,
            log_every=args.log_every,
            resume=args.resume,
            progress=not args.quiet,
            size=tuple(args.size) if args.size else None,
            diffusion_steps=args.diffusion_steps,
            loss_type=args.loss_type,
        )
    # the closing line is printed with -q too (-q drops the progress bar), as the supervised commands print theirs
    if result.mean_steps == 0:  # a resume of a finished run: no step, no loss (was "loss nan")
        print(
            f"step {result.step}: the run in {args.out} already has {result.step} steps, nothing to train (give a "
            "larger --steps to go on)"
        )
    else:
        print(
            f"step {result.step}: last step's loss {result.last_loss:.4g}, mean of the last {result.mean_steps} "
            f"steps {result.mean_loss:.4g}; wrote {result.model_path}, {result.ema_path}, "
            f"{result.log_path}" + (f", {result.plot_path}" if result.plot_path else "")
        )
    return 130 if result.interrupted else 0


def _names(text: str | None, flag: str, allow_empty: bool = True) -> list[str] | None:
    """A comma-separated list of names (None: not given); ValueError naming the option for an empty one unless
    allow_empty."""
    if text is None:
        return None
    names = [c for c in text.split(",") if c]
    if not names and not allow_empty:
        raise ValueError(f"{flag}: expected at least one comma-separated name, got {text!r}")
    return names


def _cmd_train_supervised(args: argparse.Namespace) -> int:
    import json

    from .train.networks import train_supervised

    with _run_warnings(f"train {args.model}"):
        metrics = train_supervised(
            args.model,
            args.images,
            args.out,
            masks=getattr(args, "masks", None),
            labels=getattr(args, "labels", None),
            size=tuple(args.size) if args.size else None,
            segmenter=getattr(args, "segmenter", None),
            concepts=_names(getattr(args, "concepts", None), "--concepts", allow_empty=False),
            negative=_names(getattr(args, "negative", None), "--negative"),
            width=getattr(args, "width", None),
            levels=getattr(args, "levels", None),
            groups=getattr(args, "groups", None),
            k=getattr(args, "k", None),
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            seed=args.seed,
            augment=args.augment,
            val_fraction=args.val_fraction,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=not args.quiet,
        )
    print(json.dumps(metrics["validation"], indent=2))
    print(f"wrote {args.out}/model.safetensors, metrics.json, loss.csv, loss.png")
    return 130 if metrics["interrupted"] else 0


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr, `diffice explain: error: ... (diffice explain --help lists the
    options)`, exit 2: argparse's own printed the whole usage first (25 lines for explain) into a job's log."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help gives each option's default, except for switches and options without one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        shown = getattr(action, "shown_default", None)  # _tracked: default None, so a given value is told apart
        if shown is not None:
            return f"{action.help or ''} (default: {str(shown).replace('%', '%%')})".lstrip()
        if action.nargs == 0 or action.default is None or action.help is None:
            return action.help
        return super()._get_help_string(action)


def _tracked(parser: Any, *flags: str, defaults: dict[str, Any], **kwargs: Any) -> argparse.Action:
    """An option whose parsed value is None when it is not given (the training functions then take their default
    for a new run and the run's own value on --resume); --help still shows the default, ``defaults[dest]`` (the
    training function's own table, so the two cannot differ)."""
    action = parser.add_argument(*flags, default=None, **kwargs)
    value = defaults[action.dest]
    vars(action)["shown_default"] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return action


def _augment_flags(parser: argparse.ArgumentParser) -> None:
    """--augment / --no-augment (None when neither is given: a new run's default, on; a resumed run's own)."""
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random flips and shifts (a new run: on; --resume: the run's own, which either flag changes)",
    )


def _add_supervised_parser(train, kind: str, help_text: str) -> argparse.ArgumentParser:
    p = train.add_parser(kind, help=help_text, description=help_text, formatter_class=_DefaultsFormatter)
    p.add_argument("--images", required=True, help="folder of images (PNG/JPEG/TIFF/BMP)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, metrics.json, loss.csv/png)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images (and masks) to H x W")
    p.add_argument("--steps", type=int, default=2000, help="AdamW steps")
    _tracked(p, "--batch-size", type=int, defaults=SUPERVISED_DEFAULTS, help="images per step")
    _tracked(p, "--lr", type=float, defaults=SUPERVISED_DEFAULTS, help="initial learning rate (cosine decay to 10%%)")
    _tracked(p, "--weight-decay", type=float, defaults=SUPERVISED_DEFAULTS, help="AdamW weight decay")
    _tracked(
        p,
        "--grad-clip",
        type=float,
        defaults=SUPERVISED_DEFAULTS,
        help="clip the global gradient norm to this (>= 0; 0: off)",
    )
    _tracked(
        p,
        "--seed",
        type=int,
        defaults=SUPERVISED_DEFAULTS,
        help="random seed (>= 0): the same seed and settings, the same run",
    )
    _augment_flags(p)
    _tracked(p, "--val-fraction", type=float, defaults=SUPERVISED_DEFAULTS, help="held-out fraction for metrics.json")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (settings not given are the run's; see README's Training)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_supervised)
    return p


def build_parser() -> argparse.ArgumentParser:
    from .data.phantoms import MAX_PHANTOMS

    parser: argparse.ArgumentParser = _Parser(
        prog="diffice", description="Diffusion-based iterative counterfactual explanations (Diff-ICE) with a C core."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="how the C core was built")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("check", help="run every op on the fast CPU backend and the reference kernels, compare")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser(
        "explain",
        help="counterfactual explanations for a folder of images (resumable)",
        description="Generates Diff-ICE counterfactuals (or a baseline) for every image in --images "
        "and writes PNGs, per-image records and results.csv to --out. Stopped runs resume. The "
        "models: --unet FILE --classifier FILE and an Lp (--perceptual FILE, or --perceptual-kind "
        "pixel-l2), or [models] in --config; or --models demo for the models bundled with diffice "
        "(64x80 fetal-head phantoms). Every config key is a flag below; flags win over the file.",
        epilog="--target vs --target-class: --target is the class the counterfactuals move towards, "
        "an index of f's outputs (1 = standard plane); --target-class is only for --classifier-kind "
        "sononet and picks which of SonoNet's 14 classes is the standard plane, which makes f a "
        "2-output classifier. Example: diffice explain --models demo --images scans/ --out results/",
    )
    p.add_argument(
        "--config", help="TOML config (sections [models], [diffusion], [method], [run]; see diffice/explain/config.py)"
    )
    p.add_argument("--images", required=True, help="folder of PNG/JPEG/TIFF/BMP/.npy images (DICOM with pydicom)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_cluster_flags(p)
    _add_config_flags(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "sweep",
        help="a grid of methods and settings over an image set, with the paper's tables",
        description="Runs every configuration of the grid in --config ([sweep], [[grid]]; see "
        "diffice.explain.sweep) over its image set into one SQLite results store (OUT/results.sqlite), "
        "resumably, then prints Table 1 (methods), Table 2 (Diff-ICE per iteration) and Table S3 "
        "(ablation) and writes them to OUT/tables.md.",
    )
    p.add_argument("--config", required=True, help="TOML sweep config")
    p.add_argument("--out", help="output folder (default: [sweep] out, relative to the config file)")
    p.add_argument("--batch-size", type=int, default=None, help="images per unit (default: [run] batch_size)")
    p.add_argument(
        "--device",
        default=None,
        help="where the models and the sampler run: cpu, cuda, cuda:N (default: [models] device, else cpu)",
    )
    p.add_argument("--tables-only", action="store_true", help="print the tables of the store; run nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_cluster_flags(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "demo",
        help="Diff-ICE on non-standard-plane phantoms with the bundled models (minutes)",
        description="Explains non-standard-plane fetal-head phantoms (or your --images, resized to "
        "64x80) towards the standard plane with Diff-ICE and the models bundled in "
        "the package; prints a per-iteration table (p(SP), flip ratio, oracle QS, "
        "MQD with a 95% bootstrap interval) and writes to --out: figure.png (the paper's Figure "
        "3, first 6 images), results.csv (per image and iteration), iterations.csv (the table), "
        "summary.json, inputs/ (the phantoms) and one folder per image (its input, iterations and strip). "
        "Resumable.",
    )
    p.add_argument("--out", default="diffice-demo", help="output folder (default: ./diffice-demo)")
    p.add_argument("--images", default=None, help="explain the images in this folder instead of phantoms")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"number of phantoms, 1 to {MAX_PHANTOMS} (default 24: diffice.explain.demo.DEMO_N; for more, write "
        "them with diffice phantoms and give --images)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--models", default=None, help="a folder with demo models of your own (same file names)")
    p.add_argument("--iterations", type=int, default=None, help="Diff-ICE iterations L (default 5)")
    p.add_argument("--tau", type=int, default=None, help="noise level, of 100 respaced steps (default 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "metrics",
        help="evaluation metrics (FID, FSD, SonoSim, MQD, BKL, MAD, FR, COUT) of a results folder, per iteration",
        description="Computes the paper's metrics (docs/method.md section 7) for every iteration of a "
        "folder written by 'diffice explain' or 'diffice demo', from its saved PNGs. "
        "Each number is printed with the subset it was computed on; metrics whose "
        "network is not given are reported as skipped, with the reason.",
    )
    p.add_argument("results_dir", help="the --out folder of 'diffice explain' / 'diffice demo'")
    p.add_argument(
        "--classifier",
        help="the guiding classifier f (a diffice model file; default: the demo "
        "classifier for demo results, else the run's own from run_settings.json)",
    )
    p.add_argument(
        "--oracle", help="the concept oracle (a diffice model file; default for demo results: the demo oracle)"
    )
    p.add_argument(
        "--demo-models",
        default=None,
        help="the demo models folder (default: those that made the run, as run_settings.json records them; the "
        "bundled models for a folder of a diffice that did not record them)",
    )
    p.add_argument("--inception", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (for FID)")
    p.add_argument("--sononet", help="SonoNet weights (SonoNet-k state_dict or the authors' npz; for FSD and SonoSim)")
    p.add_argument("--no-cout", action="store_true", help="skip COUT (about 50 classifier calls per image)")
    p.add_argument("--json", help="also write the metrics, with their subsets, to this JSON file")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser(
        "pairs",
        help="blinded (input, counterfactual) reading sheet as HTML; --score tallies answers",
        description="Makes a self-contained HTML page of randomised (input, counterfactual) pairs "
        "from a results folder (diffice explain / demo) where a reader clicks the "
        "better image and downloads the answers as CSV; the key is written beside it. "
        "--score ANSWERS.csv --key SHEET.key.json tallies the answers.",
    )
    p.add_argument("results", nargs="?", help="results folder of diffice explain or diffice demo")
    p.add_argument(
        "--out", help="the sheet to write (e.g. sheet.html); the key goes to sheet.key.json (neither may exist)"
    )
    p.add_argument("--n", type=int, default=50, help="number of pairs (default 50; all images if fewer)")
    p.add_argument("--seed", type=int, default=None, help="seed of the draw and the sides (default: random)")
    p.add_argument("--iteration", type=int, default=None, help="which iteration's counterfactual (default: last)")
    p.add_argument("--flipped-only", action="store_true", help="only counterfactuals classified as the target")
    p.add_argument("--score", metavar="ANSWERS.csv", help="tally a reader's downloaded answers")
    p.add_argument("--key", metavar="KEY.json", help="the sheet's key (with --score)")
    p.set_defaults(func=_cmd_pairs)

    p = sub.add_parser(
        "phantoms",
        help="write a training set of fetal-head phantoms (images, masks, labels.csv)",
        description="Seeded procedural fetal-head phantoms (diffice.data.phantoms) written as 8-bit PNG "
        "images, PNG label maps (classes.txt) and labels.csv with the SP/NSP label and "
        "the concepts TH, CSP, FP, sharp.",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: missing or empty (a dataset there is refused; one this command began and did not "
        "finish, with the same settings, is finished)",
    )
    p.add_argument(
        "--n",
        type=int,
        default=1000,
        help="number of images, >= 1 (written one at a time: no upper bound; default 1000)",
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[64, 80], help="image size (default 64 80)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed in [0, 2**64): image i depends only on (seed, i) (default 0)"
    )
    p.add_argument("--standard-fraction", type=float, default=0.5, help="probability of a standard plane (default 0.5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_phantoms)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    p = train.add_parser(
        "ddpm",
        formatter_class=_DefaultsFormatter,
        help="the guided-diffusion UNet as an unconditional DDPM (the Diff-ICE denoiser)",
        description="Trains guided-diffusion's UNet on grayscale images (resized to --size, scaled "
        "to [-1, 1]). Writes model.safetensors, ema.safetensors, train_state.npz, loss.csv and "
        "loss.png into --out; Ctrl-C saves a checkpoint, --resume continues it.",
    )
    p.add_argument("--images", required=True, help="folder of PNG/JPEG images, or a .npy array (N, H, W) in [-1, 1]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize images to H x W")
    p.add_argument("--steps", type=int, default=300_000, help="total training steps (paper: 300K)")
    _tracked(
        p,
        "--batch-size",
        type=int,
        defaults=_DDPM_FLAG_DEFAULTS,
        help="batch size (paper: 16); at most the number of images",
    )
    _tracked(p, "--lr", type=float, defaults=_DDPM_FLAG_DEFAULTS, help="AdamW learning rate (paper: 1e-4)")
    _tracked(p, "--weight-decay", type=float, defaults=_DDPM_FLAG_DEFAULTS, help="AdamW weight decay (paper: 0.05)")
    _tracked(p, "--ema-rate", type=float, defaults=_DDPM_FLAG_DEFAULTS, help="EMA rate (guided-diffusion: 0.9999)")
    _tracked(
        p,
        "--grad-clip",
        type=float,
        defaults=_DDPM_FLAG_DEFAULTS,
        help="clip the global gradient norm to this (>= 0; 0: off)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0): the same seed and settings, the same run")
    _augment_flags(p)
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="steps the progress bar's mean loss spans, and between flushes of loss.csv",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (its model config; settings not given are the run's)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _tracked(p, "--diffusion-steps", type=int, defaults=_DDPM_FLAG_DEFAULTS, help="diffusion steps T (linear schedule)")
    _tracked(
        p,
        "--loss-type",
        choices=["mse", "rescaled_mse"],
        defaults=_DDPM_FLAG_DEFAULTS,
        help="mse: eps MSE plus the VB term as is (guided-diffusion's default); rescaled_mse: the VB term x T / 1000",
    )
    g = p.add_argument_group("UNet (guided-diffusion flags)")
    _tracked(g, "--model-channels", type=int, defaults=_DDPM_FLAG_DEFAULTS, help="channels of the first level")
    _tracked(g, "--num-res-blocks", type=int, defaults=_DDPM_FLAG_DEFAULTS, help="residual blocks per level")
    _tracked(g, "--channel-mult", defaults=_DDPM_FLAG_DEFAULTS, help="comma-separated level multipliers")
    _tracked(
        g,
        "--attention-ds",
        defaults=_DDPM_FLAG_DEFAULTS,
        help="downsample factors with attention, comma-separated, each one the levels reach (1, 2, 4, ... "
        "2**(levels - 1); '' for the middle block only; guided-diffusion's image_size // attention_resolutions)",
    )
    _tracked(g, "--num-heads", type=int, defaults=_DDPM_FLAG_DEFAULTS, help="attention heads")
    _tracked(
        g,
        "--num-head-channels",
        type=int,
        defaults=_DDPM_FLAG_DEFAULTS,
        help="channels per attention head (-1: --num-heads sets the heads)",
    )
    g.add_argument(
        "--no-learn-sigma",
        dest="learn_sigma",
        action="store_false",
        default=None,
        help="fixed variance: the model predicts eps only and the loss is the mse",
    )
    p.set_defaults(func=_cmd_train_ddpm)

    p = _add_supervised_parser(train, "segmenter", "the segmentation network s (per-pixel cross-entropy)")
    p.add_argument(
        "--masks",
        required=True,
        help="folder of label maps with the images' file names (PNG, values "
        "= class indices; names from classes.txt beside it)",
    )
    _tracked(p, "--width", type=int, defaults=SUPERVISED_DEFAULTS, help="channels of the first level")
    _tracked(p, "--levels", type=int, defaults=SUPERVISED_DEFAULTS, help="resolution levels")
    _tracked(p, "--groups", type=int, defaults=SUPERVISED_DEFAULTS, help="GroupNorm groups (must divide --width)")
    p = _add_supervised_parser(
        train,
        "classifier",
        "the standard-plane classifier f = l(s(x), x): s frozen, "
        "l a SonoNet-k on [x, s's maps] (cross-entropy on 'label')",
    )
    p.add_argument("--labels", required=True, help="CSV with 'file' and 'label' (1 = standard plane) columns")
    p.add_argument("--segmenter", required=True, help="a segmenter from 'diffice train segmenter'")
    _tracked(p, "--k", type=int, defaults=SUPERVISED_DEFAULTS, help="SonoNet width k")
    p = _add_supervised_parser(train, "oracle", "the concept oracle: a SonoNet-k with one binary head per concept")
    p.add_argument("--labels", required=True, help="CSV with 'file', the concept columns and 'label'")
    _tracked(p, "--concepts", defaults=SUPERVISED_DEFAULTS, help="comma-separated 0/1 concept columns")
    _tracked(p, "--negative", defaults=SUPERVISED_DEFAULTS, help="concepts that must be absent in a standard plane")
    p.add_argument(
        "--segmenter",
        default=None,
        help="optional: a segmenter (trained apart from f's) whose maps the oracle sees beside the image; frozen",
    )
    _tracked(p, "--k", type=int, defaults=SUPERVISED_DEFAULTS, help="SonoNet width k")
    return parser


def _new_empty_folder(path: str | None, existed: bool) -> Path | None:
    """path when this run created it and left it empty (a refused run leaves nothing behind), else None."""
    if not path or existed:
        return None
    folder = Path(path)
    try:
        return folder if folder.is_dir() and not any(folder.iterdir()) else None
    except OSError:
        return None


# what a command stopped by Ctrl-C keeps, and how it goes on ({out}: its --out); the others write nothing before
# they finish (metrics' --json, pairs' sheet) or nothing at all
_KEPT_AFTER_INTERRUPT = {
    "explain": "the finished images are kept in {out}; run the same command again to resume",
    "demo": "the finished images are kept in {out}; run the same command again to resume",
    "sweep": "the finished units are kept in the sweep's results.sqlite; run the same command again to resume",
    "phantoms": "the phantoms written so far are kept in {out}; run the same command again to finish the dataset",
}


def _interrupted_note(command: str, out: str | None) -> str:
    """After Ctrl-C: what was kept and how to resume, or that nothing was written (also where a run stopped before
    its first result removed the --out it made)."""
    if out is not None and not os.path.isdir(out):
        return "nothing was written"
    return _KEPT_AFTER_INTERRUPT.get(command, "nothing was written").format(out=out)


def _error_text(exc: BaseException, out: str | None) -> str:
    """An error's line: an OSError of the system's own form ("[Errno 20] Not a directory: 'x/y'") says which file,
    and names --out when it is the output folder (or inside it), as diffice explain's own message does."""
    if not isinstance(exc, OSError) or not exc.strerror or exc.filename is None:
        return str(exc)
    name = os.fspath(exc.filename)
    if out is not None and (name == out or name.startswith(out.rstrip(os.sep) + os.sep)):
        from .explain.run import output_folder_error

        return str(output_folder_error(Path(out), exc))
    return f"{name}: {exc.strerror}"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command began (the parser imports the training modules)
        print(f"interrupted: {_interrupted_note('', None)}", file=sys.stderr)
        return 130
    out = getattr(args, "out", None)  # the output folder of the commands that have one
    out = out if isinstance(out, str) else None
    out_existed = out is not None and os.path.lexists(out)
    command = f"train {args.model}" if args.command == "train" else args.command  # as its warnings are prefixed
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.command == "train":  # a second Ctrl-C: stopped mid-step, without a checkpoint of its own
            print(
                "interrupted: stopped without saving; the run's last checkpoint, if one was saved, goes on with "
                "--resume (the same command again without --resume refuses a folder holding a run)",
                file=sys.stderr,
            )
        else:
            print(f"interrupted: {_interrupted_note(args.command, out)}", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        # the reader of the output or of the progress bar went away (diffice metrics ... | head): stop quietly
        if stdout_closed() or pipe_closed(sys.stderr):
            return 141  # 128 + SIGPIPE, what the shell reports for a command stopped this way
        print(f"diffice {command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError, NotImplementedError, MemoryError, FloatingPointError) as exc:
        # NotImplementedError: a device this install cannot run on here (--device cuda without a GPU, ...);
        # FloatingPointError: a training run whose loss went non-finite (stopped, its last checkpoint kept)
        print(f"diffice {command}: error: {_error_text(exc, out)}", file=sys.stderr)
        empty = _new_empty_folder(out, out_existed)
        if empty is not None:
            empty.rmdir()
        return 2


if __name__ == "__main__":
    sys.exit(main())
