"""`diffice sweep` on this machine vs a LocalCluster of 1 and 2 worker processes: the same sweep each time, wall
time of the units (cluster start-up timed separately), and a check that every store holds the same bytes.

    python benchmarks/sweep.py [--models DEMO_MODELS_DIR] [--phantoms 8] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, beside this script
from harness import use_checkout  # noqa: E402

use_checkout()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=None, help="demo models folder (default: the bundled ones)")
    p.add_argument("--phantoms", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", default=["diff-ice", "diff-ice-1", "diff-ice-1-xt", "dime"])
    p.add_argument("--no-local", action="store_true", help="skip the run in this process (compare the clusters)")
    args = p.parse_args()

    from diffice.explain.cluster import open_executor
    from diffice.explain.sweep import SweepStore, load_sweep, run_sweep

    work = Path(tempfile.mkdtemp(prefix="diffice-sweep-bench-"))
    models = f'demo_models = "{Path(args.models).resolve()}"' if args.models else ""
    (work / "sweep.toml").write_text(f"""
[sweep]
models = "demo"
{models}
phantoms = {args.phantoms}
method = {json.dumps(args.methods)}
iterations = [2]
tau = [3]
[run]
batch_size = {args.batch_size}
""")
    rows, blobs = [], {}
    local = [] if args.no_local else [("this process", None)]
    for label, cluster in local + [(f"local:{n}", f"local:{n}") for n in args.workers]:
        spec = load_sweep(str(work / "sweep.toml"), dict(out=str(work / label.replace(":", "-").replace(" ", "-"))))
        t0 = time.perf_counter()
        executor = open_executor(cluster=cluster, options=dict(dashboard_address=":0")) if cluster else None
        if executor is not None:
            executor.client.wait_for_workers(int(cluster.split(":")[1]), timeout=120)
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = run_sweep(spec, executor=executor, progress=False)
        seconds = time.perf_counter() - t0
        if executor is not None:
            executor.close()
        with SweepStore(spec.store_path) as store:
            blobs[label] = store.counterfactual_blobs()
        rows.append((label, summary["ran"], started, seconds))
        print(f"{label:>14}: {summary['ran']} units in {seconds:.1f} s (+{started:.1f} s start-up)", flush=True)
    first = next(iter(blobs.values()))
    same = all(b == first for b in blobs.values())
    print(f"identical counterfactual bytes in every store: {same}")
    base = rows[0][3]
    print(f"| run | units | start-up (s) | units wall time (s) | speed-up vs {rows[0][0]} |")
    print("|---|---:|---:|---:|---:|")
    for label, n, started, seconds in rows:
        print(f"| {label} | {n} | {started:.1f} | {seconds:.1f} | {base / seconds:.2f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
