"""``python -m diffice.explain.demo_pack WORKDIR --dest FOLDER``: copies the demo models trained by
scripts/train_demo_models.sh in WORKDIR into FOLDER (:func:`diffice.explain.demo.pack`); ``--replace-bundled``
(without --dest) replaces the models bundled with diffice instead. A module of its own: ``python -m`` on
diffice.explain.demo, which ``import diffice`` already imports, would run it twice (runpy's RuntimeWarning)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .demo import pack

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["pack"]:  # the old command's form: python -m diffice.explain.demo pack WORKDIR
        args_in = args_in[1:]
    p = argparse.ArgumentParser(
        prog="python -m diffice.explain.demo_pack",
        description="Copy demo models trained by scripts/train_demo_models.sh from WORKDIR into --dest "
        "(then: diffice demo --models FOLDER).",
    )
    p.add_argument("workdir", help="the WORKDIR of scripts/train_demo_models.sh")
    p.add_argument("--dest", default=None, help="the folder to write the demo models to")
    p.add_argument(
        "--replace-bundled",
        action="store_true",
        help="write them into the package's own demo_models folder, replacing the models bundled with diffice",
    )
    args = p.parse_args(args_in)
    if args.dest is None and not args.replace_bundled:
        p.error("give --dest FOLDER (your own demo models folder), or --replace-bundled to overwrite the bundled ones")
    try:
        info = pack(args.workdir, args.dest, replace_bundled=args.replace_bundled)
    except (ValueError, OSError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
