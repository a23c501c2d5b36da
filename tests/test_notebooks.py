"""Every notebook in notebooks/ runs from top to bottom on the bundled demo models (so none of them rots)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # the kernel imports this checkout's diffice, whether installed or built in place
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as in Jupyter: the notebooks choose the inline backend
    # 05_tables reads a sweep's store; none here (whatever a checkout holds): it runs its tiny sweep
    monkeypatch.setenv("DIFFICE_TABLES_STORE", str(tmp_path / "no-store" / "results.sqlite"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # every figure a cell draws is shown in the notebook (not drawn into a non-interactive backend and lost)
    for c in code:
        if "plt.subplots(" in c.source or "plt.figure(" in c.source:
            shown = [o for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
            assert shown, f"no figure shown by the cell:\n{c.source[:200]}"


def test_tables_notebook_reads_a_store_of_an_image_folder(tmp_path, monkeypatch):
    """05_tables on a store whose images are files, not phantom_NNN_<mode> phantoms (its check of the strip's rows
    parsed a failure mode out of every name: an IndexError for 'scan_a.png'); the strip groups them as one."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from PIL import Image

    from diffice.data.images import to_uint8
    from diffice.explain.demo import demo_phantoms
    from diffice.explain.sweep import load_sweep, run_sweep

    (tmp_path / "scans").mkdir()
    for name, image in zip(["scan_a.png", "b.png", "c.png"], demo_phantoms(4).images[[0, 1, 3]]):
        Image.fromarray(to_uint8(image)).save(tmp_path / "scans" / name)
    (tmp_path / "sweep.toml").write_text(
        '[sweep]\nmodels = "demo"\nimages = "scans"\nout = "out"\nmethod = ["diff-ice", "dime"]\n'
        "[method]\niterations = 2\ntau = 2\n[run]\nbatch_size = 3\n"
    )
    spec = load_sweep(str(tmp_path / "sweep.toml"))
    run_sweep(spec, progress=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("DIFFICE_TABLES_STORE", str(spec.store_path))
    nb = nbformat.read(ROOT / "notebooks" / "05_tables.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"reading {spec.store_path}" in text and "median gain of" in text and "all images" in text
