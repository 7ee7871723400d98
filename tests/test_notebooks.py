"""Every notebook runs top to bottom on CPU (QUICK parameters), renders figures and widgets.

The notebooks execute here with nbclient, the engine nbmake runs them with, so the outputs can be
checked as well; one test also runs nbmake itself on a deliberately broken copy to show that a
raising notebook fails the suite.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
WIDGETS = {"02", "04", "05"}  # notebooks that must contain an interactive widget


def execute(path: Path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return nb


def outputs(nb, mime: str) -> int:
    return sum(mime in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) >= 1
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))  # where notebooks put training runs
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the PNGs
    nb = execute(path)
    assert outputs(nb, "image/png") >= 1, "no matplotlib figure rendered"
    if path.stem[:2] in WIDGETS:
        assert outputs(nb, "application/vnd.jupyter.widget-view+json") >= 1, "no widget"


def test_a_raising_notebook_fails_under_nbmake(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    broken = tmp_path / "broken.ipynb"
    nbformat.write(nb, broken)
    proc = run_nbmake(broken)
    assert proc.returncode == 1 and "broken on purpose" in proc.stdout
    nb.cells = nb.cells[:1]
    nbformat.write(nb, broken)
    proc = run_nbmake(broken)
    assert proc.returncode == 0, proc.stdout


def run_nbmake(path: Path):
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbmake",
        str(path),
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=path.parent)
