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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffice", description="Diffusion-based iterative counterfactual "
                                     "explanations (Diff-ICE) with a C core.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="how the C core was built")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("check", help="run every op on the fast CPU backend and the reference kernels, compare")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(func=_cmd_check)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
