"""What every network benchmark shares: each measurement runs in a fresh process (its own peak RSS, its own
thread count), timed calls after a warm-up; diffice's and PyTorch's processes alternate over several rounds (the
order flips each round, so the drift of a shared machine falls on both), and the tables give the minimum and the
median of every timed call of an implementation."""

from __future__ import annotations

import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_checkout() -> None:
    """Imports diffice from this checkout where it is built in place (`pip install -e .`, `python setup.py
    build_ext --inplace`); else the diffice installed in the environment (`pip install .`) is the one used."""
    if glob.glob(os.path.join(ROOT, "diffice", "_C*.so")) and ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_calls(run: Callable[[], object], repeats: int) -> dict:
    """{"times": seconds of `repeats` timed calls after one warm-up (oneDNN kernel generation, first touch of
    memory), "seconds": their median, "peak_rss_mb": this process's peak RSS}."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return dict(times=times, seconds=statistics.median(times), peak_rss_mb=peak_rss_mb())


def in_subprocess(script: str, args: Sequence[object], threads: int) -> dict:
    """Runs `python script --worker *args` with OMP_NUM_THREADS=threads; its last stdout line is a JSON dict.
    A failed worker (e.g. killed for memory) gives {"error": "exit N: last line"}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, script, "--worker"] + [str(a) for a in args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["killed"]
        return dict(error=f"exit {done.returncode}: {tail[0][:160]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


IMPLS = ("diffice", "torch")


def alternating(measure: Callable[[str], dict], rounds: int) -> dict[str, dict]:
    """Calls measure(impl) (one fresh process, returning {"times": [...], "peak_rss_mb", ...}) `rounds` times for
    each implementation, diffice first in even rounds and PyTorch first in odd ones. Per implementation: {"min",
    "median" (over the timed calls of all its processes), "calls", "peak_rss_mb" (its largest process), and the
    other keys of its first process}, or {"error"} if any of its processes failed."""
    runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    for r in range(rounds):
        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
            runs[impl].append(measure(impl))
    pooled = {}
    for impl, results in runs.items():
        failed = [x for x in results if "error" in x]
        if failed:
            pooled[impl] = failed[0]
            continue
        times = sorted(t for x in results for t in x["times"])
        pooled[impl] = dict(
            results[0],
            min=times[0],
            median=statistics.median(times),
            calls=len(times),
            peak_rss_mb=max(x["peak_rss_mb"] for x in results),
        )
    return pooled


COMPARISON_HEAD = (
    "diffice s (min / median) | PyTorch s (min / median) | speed-up PyTorch/diffice (min / median) | "
    "diffice RSS MB | PyTorch RSS MB"
)


def comparison_cells(d: dict, t: dict, digits: int = 3) -> str:
    """The COMPARISON_HEAD cells of one row of alternating()'s results."""

    def seconds(r: dict) -> str:
        return r["error"] if "error" in r else f"{r['min']:.{digits}f} / {r['median']:.{digits}f}"

    def rss(r: dict) -> str:
        return "-" if "error" in r else f"{r['peak_rss_mb']:.0f}"

    speedup = "-"
    if "error" not in d and "error" not in t:
        speedup = f"{t['min'] / d['min']:.2f}x / {t['median'] / d['median']:.2f}x"
    return f"{seconds(d)} | {seconds(t)} | {speedup} | {rss(d)} | {rss(t)}"


def table_head(label_columns: Sequence[str], extra_columns: Sequence[str] = ()) -> str:
    """Markdown head: the row's labels, COMPARISON_HEAD, then extra columns."""
    columns = [*label_columns, COMPARISON_HEAD, *extra_columns]
    n = len(label_columns) + 5 + len(extra_columns)
    return "| " + " | ".join(columns) + " |\n" + "|---" * n + "|"
