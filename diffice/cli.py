"""The `diffice` command line (also `python -m diffice`)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


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


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (e.g. --lambda-c 40 60 80, --tau 120), documented with its default."""
    from .run import SECTIONS

    for section, defaults in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}] (config file section; flags override it)")
        for key, default in defaults.items():
            flag = "--" + key.replace("_", "-")
            kwargs = dict(dest=key, default=None, help=f"default: {default!r}")
            if isinstance(default, bool):
                kwargs["type"] = lambda v: v.lower() in ("1", "true", "yes", "on")
                kwargs["metavar"] = "BOOL"
            elif isinstance(default, (list, tuple)):
                kwargs["nargs"] = "+"
                kwargs["type"] = type(default[0]) if default else str
            elif isinstance(default, (int, float)):
                kwargs["type"] = type(default)
            group.add_argument(flag, **kwargs)


def _cmd_explain(args: argparse.Namespace) -> int:
    from .run import SECTIONS, load_config, run_explain

    keys = {k for defaults in SECTIONS.values() for k in defaults}
    overrides = {k: v for k, v in vars(args).items() if k in keys and v is not None}
    cfg = load_config(args.config, overrides)
    summary = run_explain(cfg, args.images, args.out, progress=not args.quiet)
    print(f"diffice explain: {summary['explained']} explained, {summary['skipped_done']} already done, "
          f"{summary['failed']} failed; results in {args.out}/results.csv")
    return 0 if summary["failed"] == 0 or summary["explained"] > 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffice", description="Diffusion-based iterative counterfactual "
                                     "explanations (Diff-ICE) with a C core.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="how the C core was built")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("check", help="run every op on the fast CPU backend and the reference kernels, compare")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("explain", help="counterfactual explanations for a folder of images (resumable)",
                       description="Generates Diff-ICE counterfactuals (or a baseline) for every image in --images "
                       "and writes PNGs, per-image records and results.csv to --out. Stopped runs resume.")
    p.add_argument("--config", help="TOML config (sections [models], [diffusion], [method], [run])")
    p.add_argument("--images", required=True, help="folder of PNG/JPEG/TIFF (DICOM with pydicom) images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_explain)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"diffice {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
