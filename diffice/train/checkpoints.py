"""The checkpoint and resume bookkeeping shared by the training loops (:func:`diffice.train.ddpm.train_ddpm`,
:func:`diffice.train.networks.train_network`).

A run folder holds the model file(s) (safetensors, ``step`` in their metadata), ``train_state.npz`` (``step`` and
whatever else a loop needs to continue bit for bit), ``loss.csv`` (one row per step) and ``loss.png``. A checkpoint
writes the model files and the state under temporary names, then renames them together, so they stay consistent;
a resume checks that they are from the same step and cuts the log back to it. Ctrl-C sets a flag the loops poll
(the step in flight finishes, a checkpoint is saved); a non-finite loss stops a run with the last checkpoint kept.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TextIO, Union

import numpy as np

from ..io import load_safetensors_metadata, save_safetensors
from ..models.network import is_finite_nonnegative

PathLike = Union[str, "os.PathLike[str]"]

# what a model file of a checkpoint holds: its tensors and its safetensors metadata (built only when written)
ModelContents = Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, str]]]

__all__ = [
    "StopFlag",
    "TrainingRun",
    "setting",
    "check_positive",
    "check_optimizer",
    "check_fraction",
    "check_out_dir",
    "check_grad_clip",
    "check_seed",
    "check_finite",
    "run_kind",
    "check_resumable",
    "resume_settings",
    "read_log",
    "plot_loss",
]


def setting(name: str) -> str:
    """A training setting as both its keyword and the flag that sets it, ``"batch_size (--batch-size)"``: an error
    then names what the user typed, on the command line or in Python."""
    return f"{name} (--{name.replace('_', '-')})"


def check_positive(who: str, **values: int) -> None:
    """Raises ValueError ("who: name (--name) must be >= 1, got value") for the first value below 1, in the given
    order."""
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{who}: {setting(name)} must be >= 1, got {value}")


def check_optimizer(who: str, lr: Any, weight_decay: Any, ema_rate: Any = None) -> None:
    """The optimiser's settings before any image is read: lr and weight_decay finite numbers >= 0, ema_rate (when
    given) in [0, 1]; otherwise a ValueError naming the setting and its flag."""
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not is_finite_nonnegative(value):
            raise ValueError(f"{who}: {setting(name)} must be a finite number >= 0, got {value!r}")
    if ema_rate is not None and not (_real(ema_rate) and 0.0 <= float(ema_rate) <= 1.0):
        raise ValueError(f"{who}: {setting('ema_rate')} must be in [0, 1], got {ema_rate!r}")


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_fraction(who: str, name: str, value: Any) -> float:
    """value as a float strictly between 0 and 1, else a ValueError naming the setting and its flag."""
    if _real(value) and 0.0 < float(value) < 1.0:
        return float(value)
    raise ValueError(f"{who}: {setting(name)} must be in (0, 1), got {value!r}")


def check_out_dir(who: str, out_dir: PathLike) -> None:
    """NotADirectoryError naming ``out_dir`` when it is a file (mkdir's own error said "[Errno 17] File exists")."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(
            f"{who}: the output folder {os.fspath(out_dir)} is a file, not a folder; give another --out"
        )


def check_grad_clip(who: str, grad_clip: Any, name: str = setting("grad_clip")) -> float:
    """grad_clip as a float: a finite number >= 0 (0 turns clipping off). A negative, NaN or infinite value (which
    would silently clip nothing) or a non-number is a ValueError naming the setting (``name``)."""
    if is_finite_nonnegative(grad_clip):
        return float(grad_clip)
    raise ValueError(f"{who}: {name} must be a finite number >= 0 (0: no clipping), got {grad_clip!r}")


def check_seed(who: str, seed: Any) -> int:
    """seed as an int: what numpy.random.default_rng takes, an integer >= 0 (any size); anything else (-1, 1.5, a
    bool) is a ValueError naming the setting, not numpy's "expected non-negative integer"."""
    if not isinstance(seed, (bool, np.bool_)) and isinstance(seed, numbers.Integral) and int(seed) >= 0:
        return int(seed)
    raise ValueError(
        f"{who}: {setting('seed')} must be an integer >= 0 (numpy's default_rng takes any of them), got {seed!r}"
    )


def check_finite(who: str, loss: float, norm: float, step: int, kept: str = "the last checkpoint is kept") -> None:
    """Raises FloatingPointError when the loss or the gradient norm of step ``step + 1`` is not finite: the run
    stops before the update, and the folder keeps its last checkpoint. ``kept`` says what is left
    (:meth:`TrainingRun.kept`: the step of the last checkpoint, or that none was saved)."""
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(
            f"{who}: non-finite loss ({loss}) or gradient norm ({norm}) at step {step + 1}; {kept}"
        )


# what model.safetensors' 'diffice_model' type says about the run that wrote it
_KIND_OF_TYPE = {"Segmenter": "segmenter", "PlaneClassifier": "classifier", "ConceptOracle": "oracle"}


def run_kind(out_dir: PathLike) -> tuple[str, str] | None:
    """(kind, what model.safetensors holds) of the training run in a folder -- kind "ddpm", "segmenter",
    "classifier", "oracle" or "unknown" -- from its ``model.safetensors`` metadata (``diffice_model``'s type for the
    supervised networks, guided-diffusion's UNet for a DDPM); None when the folder holds no model file."""
    model = Path(out_dir) / "model.safetensors"
    if not model.is_file():
        return None
    try:
        meta = load_safetensors_metadata(model)
    except (OSError, ValueError):
        return "unknown", "not a readable safetensors file"
    if "diffice_model" in meta:
        try:
            held = str(json.loads(meta["diffice_model"]).get("type"))
        except (ValueError, AttributeError):
            return "unknown", "a file with unreadable 'diffice_model' metadata"
        return _KIND_OF_TYPE.get(held, "unknown"), held
    if "diffice_config" in meta or meta.get("format") == "guided-diffusion UNetModel":
        return "ddpm", "guided-diffusion UNet"
    return "unknown", "a file without diffice's training metadata"


def check_resumable(out_dir: PathLike, kind: str, who: str, steps: int | None = None) -> None:
    """Before a resume loads or changes anything: the folder holds a run (``train_state.npz``) of this ``kind``
    ("ddpm", "segmenter", "classifier", "oracle"; :func:`run_kind`) and, with ``steps``, one that has not done more
    steps than that. Raises FileNotFoundError (nothing to resume) or ValueError naming the folder."""
    out = Path(out_dir)
    state = out / "train_state.npz"
    if not state.is_file():
        raise FileNotFoundError(f"{who}: nothing to resume in {out} (no {state.name})")
    found = run_kind(out)
    if found is None:
        raise FileNotFoundError(f"{who}: nothing to resume in {out} (no model.safetensors)")
    if found[0] != kind:
        held = f"{_a(found[0])} training run" if found[0] != "unknown" else "no diffice training run it knows"
        what = found[1] if found[0] == "unknown" else _a(found[1])
        raise ValueError(f"{out}: holds {held} (model.safetensors is {what}), not {_a(kind)} run; use another --out")
    if steps is not None:
        try:
            with np.load(state, allow_pickle=False) as saved:
                done = int(saved["step"])
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{who}: {state} is not a training state ({exc})") from None
        if int(steps) < done:
            raise ValueError(
                f"{who}: the run in {out} already has {done} steps, more than --steps {steps}; give --steps above "
                f"{done} to train it further"
            )


def resume_settings(
    who: str,
    saved: Mapping[str, Any],
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    fixed: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The settings a run goes on with: each of ``given`` (None: not given) against the run's ``saved`` ones (empty
    for a new run). Not given: the run's value, else ``defaults``'. Given and different from the run's: a setting
    named in ``fixed`` (the architecture, the data split) is a ValueError naming the option, the run's and the
    given value; any other (the optimizer's) is taken, with a one-line note on stderr. ``flags``: the option a
    setting is given by, where it is not ``--`` and its name with dashes."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        old = saved.get(name)
        if value is None:
            out[name] = old if old is not None else defaults[name]
            continue
        out[name] = value
        if old is None or _same(old, value):
            continue
        flag = (flags or {}).get(name) or "--" + name.replace("_", "-")
        if name in fixed:
            raise ValueError(
                f"{who}: {flag} {_show(value)} differs from the resumed run's {_show(old)}; a resumed run keeps "
                f"its {flag}: leave it out, or start a new run in another --out"
            )
        print(
            f"{who}: {flag} {_show(value)} differs from the run's {_show(old)}: continuing with {_show(value)}",
            file=sys.stderr,
        )
    return out


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _same(a: Any, b: Any) -> bool:
    """Equal once both are JSON values (a tuple equals its list)."""
    return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


#: The signals a training run stops on with a checkpoint: Ctrl-C, and SIGTERM, which SLURM's scancel and a job's
#: walltime send (before SIGKILL after the cluster's KillWait, 30 s by default) and `kill` sends by default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Ctrl-C (or SIGTERM) sets the flag (the step in flight finishes, a checkpoint is saved); a second one raises
    KeyboardInterrupt.

    A context manager: the handlers are installed on entry (from the main thread only) and the previous ones
    restored on exit.
    """

    def __init__(self) -> None:
        self.stop = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self.previous.items():
            if previous is not None:
                signal.signal(signum, previous)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) inside the block is held and acted on at its end, as the handler in place would have: for
    steps that must all happen or none (renaming a checkpoint's files). Only on the main thread, where Python's
    handlers run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, Any]] = []
    previous: dict[int, Any] = {
        signum: signal.signal(signum, lambda n, frame: held.append((n, frame))) for signum in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            first, frame = held[0]
            if callable(previous[first]):
                previous[first](first, frame)
            elif previous[first] == signal.SIG_DFL:
                signal.raise_signal(first)


class TrainingRun:
    """A training run's folder: the files, and the bookkeeping of checkpoints and resume around a loop.

    Args:
        out_dir: the folder (created).
        who: the name errors start with ("train_ddpm").
        log_fields: the columns of ``loss.csv``.
        model_files: the names of the model files a checkpoint writes (``model_paths``, in that order); the first
            one tells whether anything was saved yet.
        resume_hint: how to resume, in the error for a folder that already holds a run ("--resume").
        continue_hint: how to continue, in the message after Ctrl-C ("run again with --resume").

    A loop uses it as: :meth:`load` (the saved state on resume), :meth:`resumed_step`, :meth:`restart_log`;
    then :meth:`logging` around the steps with :meth:`log` each step and :meth:`checkpoint_if_due`; at the end
    :meth:`save_final`, :meth:`plot` and :meth:`say_interrupted`. Its ``save(step)`` calls :meth:`save`.
    """

    def __init__(
        self,
        out_dir: PathLike,
        who: str,
        log_fields: Sequence[str],
        model_files: Sequence[str] = ("model.safetensors",),
        resume_hint: str = "--resume",
        continue_hint: str = "run again with --resume",
    ) -> None:
        self.out = Path(out_dir)
        check_out_dir(who, self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"{who}: cannot create the output folder {self.out} ({exc.strerror or exc})") from None
        self.who = who
        self.log_fields = list(log_fields)
        self.model_paths: list[Path] = [self.out / name for name in model_files]
        self.state_path = self.out / "train_state.npz"
        self.log_path, self.plot_path = self.out / "loss.csv", self.out / "loss.png"
        self.resume_hint, self.continue_hint = resume_hint, continue_hint
        self.start = 0  # the step the run continues from
        self.elapsed = 0.0  # the training seconds logged up to `start` (the `seconds` column continues from it)
        self.saved_step: int | None = None  # the step of the checkpoint in the folder (None: none yet)
        self._log_file: TextIO | None = None
        self._writer: csv.DictWriter | None = None

    # ---- starting or resuming ----

    def load(self, resume: bool) -> dict[str, np.ndarray] | None:
        """The saved ``train_state.npz`` (resume) or None (a new run); refuses to resume an empty folder or to
        start over a run."""
        _remove_temporaries(self.out.glob(".*.new"))  # a checkpoint a killed run (SIGKILL) was writing
        if resume and not self.state_path.exists():
            raise FileNotFoundError(f"{self.who}: nothing to resume in {self.out} (no {self.state_path.name})")
        if not resume and self.state_path.exists():
            raise FileExistsError(
                f"{self.who}: {self.out} already holds a training run; resume it "
                f"({self.resume_hint}) or choose another folder"
            )
        return dict(np.load(self.state_path, allow_pickle=False)) if resume else None

    def resumed_step(self, saved: Mapping[str, np.ndarray]) -> int:
        """The step of the saved state (kept as ``start``), after checking that every model file is from it."""
        self.start = int(saved["step"])
        for path in self.model_paths:
            meta_step = load_safetensors_metadata(path).get("step")
            if meta_step != str(self.start):
                raise ValueError(
                    f"{self.who}: {path.name} is from step {meta_step} but {self.state_path.name} from "
                    f"step {self.start}; the checkpoint is inconsistent"
                )
        self.saved_step = self.start
        return self.start

    def restart_log(self, resumed: bool) -> None:
        """Rewrites ``loss.csv``: its header and, on resume, the rows up to the checkpoint's step ``start`` (a
        crashed run may have logged further); a new run starts it empty. ``elapsed`` becomes the last kept row's
        ``seconds`` (0 for a new run): a loop logs its elapsed time from there, so the column keeps rising."""
        rows = [r for r in read_log(self.log_path) if int(r["step"]) <= self.start] if resumed else []
        self.elapsed = 0.0
        for row in reversed(rows):  # the last row with a number there (a log without the column: 0)
            try:
                seconds = float(row.get("seconds") or "nan")
            except ValueError:
                continue
            if math.isfinite(seconds):
                self.elapsed = max(0.0, seconds)
                break
        with open(self.log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.log_fields)
            writer.writeheader()
            writer.writerows(rows)

    # ---- checkpoints ----

    def save(self, step: int, models: Mapping[Path, ModelContents], state: Callable[[], Mapping[str, Any]]) -> None:
        """Writes a checkpoint at ``step``: each model file (path -> its contents) and ``train_state.npz`` (``step``
        then ``state()``), under temporary names first, then renamed together: the files stay consistent."""
        tmp = {p: p.with_name("." + p.name + ".new") for p in [*models, self.state_path]}
        try:
            for path, contents in models.items():
                tensors, metadata = contents()
                save_safetensors(tmp[path], tensors, metadata=metadata)
            with open(tmp[self.state_path], "wb") as f:
                np.savez(f, step=np.int64(step), **state())
            with interrupts_held():  # a second Ctrl-C between two renames would leave files of two steps
                for final, temp in tmp.items():
                    os.replace(temp, final)
        finally:  # stopped while writing (a second Ctrl-C, a full disk): the last checkpoint stays, no litter
            _remove_temporaries(tmp.values())
        self.saved_step = step

    def kept(self) -> str:
        """What the folder holds to go on from, for an error that stops the run: the last checkpoint's step, or
        that none was saved yet."""
        cure = "a lower learning rate (--lr) or gradient clipping (--grad-clip)"
        if self.saved_step is None:
            return f"no checkpoint was saved yet (nothing to resume in {self.out}); start again with {cure}"
        return (
            f"the checkpoint of step {self.saved_step} in {self.out} is kept; resume it ({self.resume_hint}) "
            f"with {cure}"
        )

    def checkpoint_if_due(self, step: int, steps: int, checkpoint_every: int, save: Callable[[int], None]) -> None:
        """Every ``checkpoint_every`` steps before the last: flushes the log, saves(step) and redraws the plot."""
        if step % checkpoint_every == 0 and step < steps:
            self.flush_log()
            save(step)
            self.plot()

    def save_final(self, step: int, save: Callable[[int], None]) -> None:
        """At the end of a run: saves(step) when steps were done now or nothing was saved yet."""
        if step > self.start or not self.model_paths[0].exists():
            save(step)

    def plot(self) -> bool:
        """``loss.png`` from ``loss.csv`` (see :func:`plot_loss`)."""
        return plot_loss(self.log_path, self.plot_path)

    def say_interrupted(self, step: int) -> None:
        """The message on stderr after Ctrl-C: where the checkpoint is and how to continue."""
        print(f"interrupted: checkpoint saved at step {step} in {self.out}; {self.continue_hint}", file=sys.stderr)

    # ---- the per-step log ----

    @contextmanager
    def logging(self) -> Iterator[None]:
        """``loss.csv`` open for appending (:meth:`log`, :meth:`flush_log`) inside ``with run.logging():``."""
        with open(self.log_path, "a", newline="") as f:
            self._log_file, self._writer = f, csv.DictWriter(f, fieldnames=self.log_fields)
            try:
                yield
            finally:
                self._log_file = self._writer = None

    def log(self, row: Mapping[str, Any]) -> None:
        """One step's row of ``loss.csv`` (inside :meth:`logging`)."""
        assert self._writer is not None, "log() outside logging()"
        self._writer.writerow(row)

    def flush_log(self) -> None:
        """Pushes the rows logged so far to the file."""
        if self._log_file is not None:
            self._log_file.flush()


def _remove_temporaries(paths: Iterable[Path]) -> None:
    """Deletes those of a checkpoint's temporary files (``.<name>.new``) that exist."""
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def read_log(path: Path) -> list[dict]:
    """The rows of a ``loss.csv`` (dicts of strings); [] when there is none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_loss(log_path: PathLike, png_path: PathLike) -> bool:
    """Loss per step (and a moving average) from the CSV log as a PNG: matplotlib if installed, else Pillow.
    Returns False when neither is available or the log is empty."""
    rows = read_log(Path(log_path))
    if not rows:
        return False
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    smooth_steps = steps[window - 1 :]
    tmp = Path(png_path).with_name("." + Path(png_path).name + ".tmp")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.plot(steps, loss, color="#9ecae1", linewidth=0.8, label="loss")
        ax.plot(smooth_steps, smooth, color="#08519c", linewidth=1.5, label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if np.all(loss > 0):
            ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)
    except ImportError:
        try:
            _plot_pillow(steps, loss, smooth_steps, smooth, tmp)
        except ImportError:
            return False
    os.replace(tmp, png_path)
    return True


def _plot_pillow(steps, loss, smooth_steps, smooth, path: Path) -> None:
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 700, 400, 70, 20, 20, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    log = bool(np.all(loss > 0))
    ys = np.log10(loss) if log else loss
    ys_smooth = np.log10(smooth) if log else smooth
    lo, hi = float(ys.min()), float(ys.max())
    hi = hi if hi > lo else lo + 1.0
    s0, s1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))

    def xy(s, v):
        return (
            left + (s - s0) / (s1 - s0) * (width - left - right),
            top + (hi - v) / (hi - lo) * (height - top - bottom),
        )

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for s, v, color, w in ((steps, ys, (158, 202, 225), 1), (smooth_steps, ys_smooth, (8, 81, 156), 2)):
        points = [xy(a, b) for a, b in zip(s, v)]
        if len(points) > 1:
            draw.line(points, fill=color, width=w)
    fmt = (lambda v: f"{10**v:.3g}") if log else (lambda v: f"{v:.3g}")
    draw.text((5, top), fmt(hi), fill="black")
    draw.text((5, height - bottom - 10), fmt(lo), fill="black")
    draw.text((left, height - bottom + 5), str(int(s0)), fill="black")
    draw.text((width - right - 60, height - bottom + 5), str(int(s1)), fill="black")
    draw.text(
        (width // 2 - 40, height - bottom + 20), "step" + ("  (loss, log scale)" if log else "  (loss)"), fill="black"
    )
    img.save(path, format="PNG")
