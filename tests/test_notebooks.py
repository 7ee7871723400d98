"""Every notebook runs top to bottom on CPU (QUICK parameters), twice, printing the same numbers;
it renders figures and widgets, opens with its goal and closes with takeaways and exercises, and
its rendered page in docs/notebooks/ is current.

The notebooks execute here with nbclient, the engine nbmake runs them with, so the outputs can be
checked as well; one test also runs nbmake itself on a deliberately broken copy to show that a
raising notebook fails the suite (each notebook ends with assertions of what it taught).
"""

import difflib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("notebook_docs", ROOT / "docs" / "notebooks.py")
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)

NOTEBOOKS = docs.NOTEBOOKS
WIDGETS = {"02", "03", "04", "05"}  # notebooks that must contain an interactive widget
HEADER = ("**Goal**", "**You will learn**", "**Prerequisites**", "**Runtime**")


def outputs(nb, mime: str) -> int:
    return sum(mime in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) >= 1
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_with_its_goal_and_closes_with_takeaways_and_exercises(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), path.name
    for part in HEADER:
        assert part in first.source, f"{path.name}: the first cell does not state {part}"
    runtime = first.source.split("**Runtime**", 1)[1].split("\n", 1)[0]
    # A time for each mode, as a number (not a placeholder).
    assert re.search(r"quick[^,]*\d", runtime) and re.search(r"full[^.]*\d", runtime), (
        f"{path.name}: runtime {runtime!r} gives no time for quick and full"
    )
    assert "2505.24025" in "".join(c.source for c in nb.cells), f"{path.name}: paper not cited"
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    headings = [line for text in markdown for line in text.splitlines() if line.startswith("## ")]
    assert "## Takeaways" in headings, path.name
    assert "## Exercises" in headings, path.name
    exercises = next(t for t in markdown if t.startswith("## Exercises"))
    assert exercises.count("<details>") >= 2, f"{path.name}: exercises need checkable answers"
    # No section number of a document the repository does not hold (the old spec's "§5.4").
    assert not re.search(r"§\s?\d", "".join(markdown)), f"{path.name}: cites a § of no document"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_a_current_rendered_page(path):
    page = docs.PAGES / f"{path.stem}.html"
    assert page.is_file(), f"{page} is missing: run `make docs`"
    assert docs.recorded_hash(page) == docs.source_hash(path), (
        f"{page.name} was rendered from another version of {path.name}: run `make docs`"
    )
    assert docs.figures_in_page(page) >= 1, f"{page.name} shows no figure"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_twice_with_the_same_printed_numbers(path, tmp_path):
    first_runs, second_runs = tmp_path / "first", tmp_path / "second"
    first = docs.execute(path, first_runs)
    assert outputs(first, "image/png") >= 1, "no matplotlib figure rendered"
    if path.stem[:2] in WIDGETS:
        assert outputs(first, "application/vnd.jupyter.widget-view+json") >= 1, "no widget"
    bars = [
        f"cell {i}: {text[-200:]}"
        for i, c in enumerate(first.cells)
        for o in c.get("outputs", [])
        if o.get("name") == "stderr" and "it/s]" in (text := "".join(o.get("text", "")))
    ]
    assert not bars, "a progress bar was drawn on stderr: " + "; ".join(bars)
    page = docs.PAGES / f"{path.stem}.html"
    if page.is_file():  # the committed page shows as many figures as the notebook draws
        figures = docs.figures_in_page(page)
        assert figures == outputs(first, "image/png"), f"{page.name}: rebuild with `make docs`"
    second = docs.execute(path, second_runs)
    a, b = docs.printed(first, first_runs), docs.printed(second, second_runs)
    assert len(a) >= 3, "the notebook printed almost nothing to compare"
    assert a == b, "\n".join(difflib.unified_diff(a, b, "first run", "second run", lineterm=""))


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
