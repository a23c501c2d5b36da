"""Writes notebooks/*.ipynb (without outputs) from the cell sources below: the notebooks are code, reviewed here.

    python scripts/make_notebooks.py

The test suite executes every notebook (tests/test_notebooks.py) on the bundled demo models.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"

# %matplotlib inline: figures show in Jupyter, and in a headless kernel (the tests) they become image/png outputs
SETUP = """%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import diffice
from diffice.explain.demo import demo_phantoms
from diffice.evaluation.figures import overlay

models = diffice.load_demo_models()
print(models.unet.config["model_channels"], "channels;", models.info["classifier"]["validation"])"""

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        new_markdown_cell(
            "# Quickstart\n\nCounterfactual explanations with Diff-ICE on the bundled phantom models: "
            "non-standard-plane (NSP) fetal-head phantoms, moved towards the standard plane (SP) by an "
            "unconditional DDPM guided by the plane classifier f and a fidelity loss."
        ),
        new_code_cell(SETUP),
        new_code_cell("""batch = demo_phantoms(3)                    # one tilted, one without CSP, one without thalami
x = batch.images                             # (3, 1, 64, 80) float32 in [-1, 1]
explainer = models.explainer(iterations=3)   # the demo settings (tau 30 of 100, lambda_c 40/60/80), L = 3
result = explainer.explain(x, target=1, seed=0)
print("p(SP) per iteration (rows) and image (columns):")
print(np.round(result.prob_target, 3))
print("flipped:", result.flipped[-1], " lambda_c used:", result.lambda_used[-1])
print("already SP for f at iteration 0:", result.input_is_target)"""),
        new_markdown_cell(
            "f already calls the third phantom (thalami missing) a standard plane: its p(SP) at iteration 0 is "
            "high and `result.input_is_target` is set for it. The classifier is not perfect on this failure mode. "
            "Diff-ICE still explains it (guidance only pushes p(SP) higher), and the oracle below, trained apart "
            "from f, judges whether the thalami appeared (its TH head, one factor of its quality score QS)."
        ),
        new_code_cell("""fig, axes = plt.subplots(len(x), 1 + result.counterfactuals.shape[0], figsize=(10, 6))
for i in range(len(x)):
    for j in range(axes.shape[1]):
        img = x[i] if j == 0 else result.counterfactuals[j - 1, i]
        axes[i, j].imshow(img[0], cmap="gray", vmin=-1, vmax=1)
        axes[i, j].set_title(("input" if j == 0 else f"iteration {j}") + f"\\np(SP)={result.prob_target[j, i]:.2f}",
                             fontsize=8)
        axes[i, j].axis("off")
fig.tight_layout()"""),
        new_code_cell("""# the oracle (trained apart from f, one head per concept) judges whether the change is real
qs_in = models.oracle.quality_score(x)
qs_cf = models.oracle.quality_score(result.counterfactuals[-1])
print("oracle QS input :", np.round(qs_in, 3))
print("oracle QS after :", np.round(qs_cf, 3))
assert result.counterfactuals.shape == (3, 3, 1, 64, 80)"""),
    ],
    "02_iteration_paths.ipynb": [
        new_markdown_cell(
            "# Iteration paths (the paper's Figure 3)\n\nEach row: an NSP phantom (its failure mode above the "
            "input) and the output of each Diff-ICE iteration, with f's segmentation overlaid and f's p(SP) above. "
            "f already calls the third input (thalami missing) a standard plane (p at the input well above 0.5): "
            "the classifier misses that failure mode there, and the row shows what guidance does to an input "
            "that is already the target."
        ),
        new_code_cell(SETUP),
        new_code_cell("""batch = demo_phantoms(4)
x = batch.images
result = models.explainer().explain(x, target=1, seed=1)    # L = 5
L = result.counterfactuals.shape[0]
seg = result.segmentation                                  # (L + 1, N, H, W) label maps
fig, axes = plt.subplots(len(x), L + 1, figsize=(2 * (L + 1), 1.8 * len(x)))
for i in range(len(x)):
    for j in range(L + 1):
        img = x[i] if j == 0 else result.counterfactuals[j - 1, i]
        axes[i, j].imshow(overlay(img, seg[j, i], scale=1))
        name = f"input ({batch.params[i]['failure_mode']})" if j == 0 else f"it {j}"
        axes[i, j].set_title(f"{name} p={result.prob_target[j, i]:.2f}", fontsize=8)
        axes[i, j].axis("off")   # (so a set_ylabel would not show: the failure mode is in the input's title)
fig.tight_layout()
print("classes:", models.segmentation_classes)"""),
        new_code_cell("""# the same figure as diffice demo writes it (Pillow only)
from diffice.evaluation.figures import path_figure
grid = path_figure(x, result.counterfactuals, result.prob_target, seg, class_names=models.segmentation_classes)
plt.figure(figsize=(12, 6)); plt.imshow(grid); plt.axis("off")
assert grid.ndim == 3 and grid.shape[2] == 3"""),
    ],
    "03_quality_vs_concepts.ipynb": [
        new_markdown_cell(
            "# Quality difference by input quality and concept (Figures 4 and S2)\n\n"
            "QD = QS_O(counterfactual) - QS_O(input), QS_O the oracle's quality score, against the "
            "input's QS_O, per failure mode (which concept the input lacks); MQD, the paper's mean quality "
            "difference: the mean over all inputs of QD, with QD counted as 0 for the inputs whose QS_O is 0.5 or "
            "more."
        ),
        new_code_cell(SETUP),
        new_code_cell("""from diffice import phantoms
modes = ["tilted", "no_csp", "no_th", "blurred"]
parts = [phantoms.generate(3, (64, 80), seed=100 + k, standard_fraction=0.0, failure_mode=m)
         for k, m in enumerate(modes)]
x = np.concatenate([p.images for p in parts])
mode_of = np.repeat(modes, 3)
result = models.explainer(iterations=2).explain(x, target=1, seed=0)
qs_in = models.oracle.quality_score(x)
qs_cf = np.stack([models.oracle.quality_score(cf) for cf in result.counterfactuals])   # (L, N)
qd = qs_cf - qs_in
low = qs_in < 0.5
mqd = np.where(low, qd, 0.0).sum(axis=1) / len(x)
print("MQD per iteration:", np.round(mqd, 3))
for m in modes:
    sel = mode_of == m
    print(f"{m:8s} QS in {qs_in[sel].mean():.3f}  QD last {qd[-1, sel].mean():+.3f}")"""),
        new_code_cell("""fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for m in modes:
    sel = mode_of == m
    axes[0].scatter(qs_in[sel], qd[-1, sel], label=m)
axes[0].axhline(0, color="gray", lw=0.5)
axes[0].set_xlabel("QS of the input"); axes[0].set_ylabel("QD (last iteration)"); axes[0].legend()
probs = {c: (models.oracle.concept_probabilities(x)[c], models.oracle.concept_probabilities(result.counterfactuals[-1])[c])
         for c in models.oracle.concepts}
axes[1].bar(list(probs), [float(np.mean(b - a)) for a, b in probs.values()])
axes[1].set_ylabel("mean change of P(concept)")
fig.tight_layout()
assert qd.shape == (2, 12)"""),
    ],
    "04_ablation_strip.ipynb": [
        new_markdown_cell(
            "# Ablation strip (Figure S1)\n\nOne input through Diff-ICE, its single-iteration "
            "variants and DiME (each with the fidelity loss Lp), and Diff-ICE without Lp (lambda_p = 0)."
        ),
        new_code_cell(SETUP),
        new_code_cell("""x = demo_phantoms(1).images
variants = [("Diff-ICE (L=5)", dict(method="diff-ice")),
            ("Diff-ICE_1", dict(method="diff-ice-1")),
            ("Diff-ICE_1-x_t", dict(method="diff-ice-1-xt")),
            ("DiME (tau=10)", dict(method="dime", tau=10)),
            ("Diff-ICE, lambda_p=0", dict(method="diff-ice", lambda_p=0.0))]
outputs = []
for name, kw in variants:
    r = models.explainer(**kw).explain(x, target=1, seed=0)
    outputs.append((name, r.counterfactuals[-1, 0], r.prob_target[-1, 0], float(np.abs(r.counterfactuals[-1, 0] - x[0]).mean())))
fig, axes = plt.subplots(1, len(outputs) + 1, figsize=(2.2 * (len(outputs) + 1), 2.4))
axes[0].imshow(x[0, 0], cmap="gray", vmin=-1, vmax=1); axes[0].set_title("input", fontsize=8); axes[0].axis("off")
for ax, (name, img, p, l1) in zip(axes[1:], outputs):
    ax.imshow(img[0], cmap="gray", vmin=-1, vmax=1); ax.axis("off")
    ax.set_title(f"{name}\\np(SP)={p:.2f} L1={l1:.2f}", fontsize=7)
fig.tight_layout()
for name, _, p, l1 in outputs:
    print(f"{name:22s} p(SP) {p:.3f}  L1 to input {l1:.3f}")"""),
    ],
    "05_tables.ipynb": [
        new_markdown_cell(
            "# Tables (Tables 1, 2 and S3) and the strips (Figures 3 and S1)\n\n"
            "Read from a `diffice sweep` results store: `$DIFFICE_TABLES_STORE`, else `paper-tables/results.sqlite` "
            "in this checkout (what `diffice sweep --config benchmarks/paper_tables.toml` writes). Without one, a "
            "tiny sweep runs first (8 phantoms, tau = 4, L = 2, the four methods and two ablation settings; about "
            "a minute on 2 cores): its numbers show the layout, not the method's quality."
        ),
        new_code_cell(SETUP),
        new_code_cell('''import os, tempfile
from pathlib import Path
from diffice.explain.sweep import SweepStore, compute_tables, format_tables, load_sweep, run_sweep

checkout = Path(diffice.__file__).resolve().parents[1]
store_path = Path(os.environ.get("DIFFICE_TABLES_STORE") or checkout / "paper-tables" / "results.sqlite")
if store_path.is_file():
    print("reading", store_path)
else:
    work = Path(tempfile.mkdtemp(prefix="diffice-tables-"))
    print(f"no store at {store_path}: a tiny sweep into {work}")
    (work / "sweep.toml").write_text("""
[sweep]
models = "demo"
phantoms = 8
out = "out"
method = ["diff-ice", "diff-ice-1", "diff-ice-1-xt", "dime"]
[[grid]]            # the ablation (Table S3): Lp off, a higher tau
method = "diff-ice"
lambda_p = [0]
[[grid]]
method = "diff-ice"
tau = [8]
[method]
iterations = 2
tau = 4
[run]
batch_size = 8
""")
    spec = load_sweep(str(work / "sweep.toml"))
    print(run_sweep(spec, progress=False))
    store_path = spec.store_path
store = SweepStore(store_path)
tables = compute_tables(store)
print(format_tables(tables))'''),
        new_code_cell("""# Table 2's columns per iteration, read by name (a column the tables do not have is left out)
table2 = next(t for t in tables if t["title"].startswith("Table 2"))
header = table2["header"]

def number(cell):
    try:
        return float(cell)
    except ValueError:
        return float("nan")   # "-": not available

def interval(cell):
    low, _, high = cell.strip("[]").partition(",")
    return number(low), number(high)

wanted = [c for c in ["FR", "dp", "MQD", "QS", "FSD", "SonoSim", "New sat %"] if c in header]
iterations = [int(row[header.index("Iteration")]) for row in table2["rows"]]
cols = min(4, len(wanted))
fig, axes = plt.subplots(-(-len(wanted) // cols), cols, figsize=(3 * cols, 2.6 * -(-len(wanted) // cols)), squeeze=False)
for ax in axes.flat[len(wanted):]:
    ax.axis("off")
for ax, name in zip(axes.flat, wanted):
    values = np.array([number(row[header.index(name)]) for row in table2["rows"]])
    ax.plot(iterations, values, "o-")
    if f"{name} CI" in header:
        low, high = np.array([interval(row[header.index(f"{name} CI")]) for row in table2["rows"]]).T
        ax.fill_between(iterations, low, high, alpha=0.25)
    ax.set_title(name); ax.set_xlabel("iteration"); ax.set_xticks(iterations)
fig.tight_layout()
fr = np.array([number(row[header.index("FR")]) for row in table2["rows"]])
assert [t["title"][:8] for t in tables] == ["Table 1:", "Table 2:", "Table S3"]
assert iterations == list(range(1, len(iterations) + 1)) and ((fr >= 0) & (fr <= 1)).all()"""),
        new_code_cell("""# Figures 3 / S1: rows chosen by a rule (printed), not by hand; tiles titled with f's p(SP) and the oracle's QS
from PIL import Image
from diffice.evaluation.figures import strip_figure, strip_group

strips = strip_figure(store, models.oracle, Path(tempfile.mkdtemp()) / "strip.png")
print("rule:", strips.rule)
for pick in strips.picks:
    print(f"  {pick['name']:24s} {pick['reason']:28s} QS gain {pick['gain']:+.3f}")
for path in [strips.path, strips.ablation_path]:
    if path is not None:
        strip = np.asarray(Image.open(path))
        plt.figure(figsize=(strip.shape[1] / 90, strip.shape[0] / 90)); plt.imshow(strip); plt.axis("off")
# every row is an image of the validity subset (finite counterfactuals), and every failure mode in it has its row
reference = store.results(strips.reference)
L = strips.reference["iterations"]
subset = set(reference.image_ids[reference.validity & reference.finite(L)].tolist())
modes = {strip_group(n) for i, n in enumerate(store.image_names()) if i in subset}
assert {p["image_id"] for p in strips.picks} <= subset and {p["group"] for p in strips.picks} == modes"""),
    ],
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        for k, cell in enumerate(cells):  # fixed ids: regenerating changes only the cells that changed
            cell.id = f"cell-{k}"
        nb = new_notebook(
            cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        )
        nbformat.write(nb, OUT / name)
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()
