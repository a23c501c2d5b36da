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


def _run_cells(sources, tmp_path, monkeypatch):
    """The notebook of these code cells, executed in a fresh kernel (this checkout's diffice), with its outputs."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert nbformat.validate(nb) is None
    return nb.cells


def test_progress_bar_in_a_notebook_is_one_line(tmp_path, monkeypatch):
    """A kernel's stderr is no tty: the bar printed a new line every 5 s and at every finished batch (hundreds of
    lines for a sweep); there it is redrawn in place with "\\r", as on a terminal, and ends with one newline."""
    (cell,) = _run_cells(
        [
            "from diffice.progress import ProgressBar\n"
            "bar = ProgressBar(40, label='explain')\n"
            "for i in range(40):\n"
            "    bar.update(i + 1, note=f'images {i + 1}/40', force=True)\n"
            "bar.close()"
        ],
        tmp_path,
        monkeypatch,
    )
    text = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stderr")
    assert text.count("\r") >= 40 and text.count("\n") == 1, text[:300]
    assert text.rsplit("\r", 1)[1].startswith("explain [########################] 40/40 100.0%")
