"""`diffice sweep`: a grid of methods and settings over an image set, in one resumable SQLite results store, with
the paper's tables (Table 1: methods, Table 2: Diff-ICE per iteration, Table S3: ablation).

Config (TOML): the sections of ``diffice explain`` ([models], [diffusion], [method], [run]; see diffice.explain.run)
plus

    [sweep]
    models = "demo"              # the bundled demo models (64x80) instead of [models]; demo_models = "DIR" for others
    images = "images/"           # an image folder (relative to this file), or:
    phantoms = 12                # N non-standard-plane phantoms (diffice.explain.demo.demo_phantoms), resized to
    image_size
    out = "sweep-results"        # results.sqlite and tables.md go here (relative to this file; --out wins)
    store_format = "png"         # counterfactuals as 8-bit PNG, or "float16" (raw little-endian (C, H, W))
    # the main grid: any ExplainerConfig field as a list (a single value is a one-value axis; missing: [method])
    method = ["diff-ice", "diff-ice-1", "diff-ice-1-xt", "dime", "fastdime"]
    iterations = [5]             # Diff-ICE's L (the single-pass methods always run one)
    tau = [120]
    lambda_c = [[40, 60, 80]]    # each entry is one searched list; a flat list of numbers is one entry
    lambda_p = [30, 0]           # Lp on / off

    [[grid]]                     # more configurations (e.g. an ablation): its axes over the [method] values
    method = "diff-ice-1"
    tau = [80, 160, 200]
    lambda_p = [30, 0]

    [cluster]                    # options of --cluster slurm|pbs (diffice.explain.cluster.CLUSTER_DEFAULTS)

    [tables]                     # what the tables' image columns judge with (config.tables_options)
    oracle = "demo"              # the concept oracle (MQD, QS): "demo", a model file or "none"
    features = "oracle"          # the realism network: the oracle's SonoNet, or a model file
    realism_reference = {phantoms = 100, seed = 20261207}   # or {images = "FOLDER"} or "none"

Work is split into units (one image batch x one configuration); the batches are consecutive [run] batch_size
chunks of the image set sorted by name, fixed before anything runs. Each finished unit is written to
``results.sqlite`` in one transaction (the unit row, and per image and iteration: prob_target, flipped, lambda_used,
nonfinite_step and the counterfactual), so a run stopped anywhere resumes with the finished units skipped and no
unit half-written. Since a unit's batch never depends on the schedule and the sampler's noise follows each image's
pixels, the results do not depend on which units ran when, or where (``--cluster``, see diffice.explain.cluster).

Store schema (read it with :class:`SweepStore`, or any SQLite client):

- ``meta(key, value)``: the format, the run settings, the models, the image set, Table 1's base setting (JSON);
- ``images(image_id, name, pixel_key, input)``: the inputs as explained (encoded like the counterfactuals);
- ``configs(config_id, label, method, iterations, tau, lambda_c, lambda_p, params)``: params = every
  ExplainerConfig field (JSON); config_id = a hash of it;
- ``units(unit_id, config_id, batch, image_ids, batch_seconds, iteration_seconds, peak_bytes,
  unet_evaluations, worker, finished_at)``: a row exists only for a finished unit;
- ``results(config_id, image_id, iteration, prob_target, flipped, lambda_used, nonfinite_step, counterfactual)``:
  iteration 0 is the input (flipped = f classifies the input as the target), 1..L the iterations.
"""

from __future__ import annotations

from .config import STORE_NAME, SweepSpec, config_id, config_label, load_sweep, tables_options
from .judges import FeatureNetwork, Judges
from .runner import load_sweep_images, plan_units, run_sweep
from .store import ConfigResults, SweepStore, decode_image, encode_image
from .tables import (
    TABLE_COLUMNS,
    Column,
    Estimate,
    compute_tables,
    format_tables,
    mean_interval,
    print_tables,
    register_column,
    wilson_interval,
)

__all__ = [
    "SweepSpec",
    "load_sweep",
    "run_sweep",
    "SweepStore",
    "ConfigResults",
    "Column",
    "TABLE_COLUMNS",
    "register_column",
    "Estimate",
    "mean_interval",
    "wilson_interval",
    "tables_options",
    "Judges",
    "FeatureNetwork",
    "compute_tables",
    "format_tables",
    "print_tables",
    "STORE_NAME",
    "config_id",
    "config_label",
    "load_sweep_images",
    "plan_units",
    "encode_image",
    "decode_image",
]
