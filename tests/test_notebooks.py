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
