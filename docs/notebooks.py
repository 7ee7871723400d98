"""Execute the notebooks (QUICK parameters) and write their rendered HTML to docs/notebooks/.

    python docs/notebooks.py            # every notebook (what `make docs` runs)
    python docs/notebooks.py 02 04      # only the notebooks whose names start with these

The notebooks are committed without outputs; these pages let a reader see every figure, table and
printed number without running anything. Each page records the SHA-256 of the notebook it was
rendered from, and the test suite checks it, so an edited notebook whose page was not rebuilt
fails. Widgets keep their state in the page (they render wherever the ipywidgets scripts load)
and each notebook also draws a static image of what its widget shows.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGES = ROOT / "docs" / "notebooks"
SOURCE_MARK = "notebook-sha256:"
TIMEOUT = 1200  # seconds per cell


def source_hash(path: Path) -> str:
    """SHA-256 of the notebook file as committed (without outputs)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def execute(path: Path, runs: Path, *, store_widget_state: bool = False):
    """Run a notebook top to bottom in a fresh kernel, in QUICK mode, with training runs under
    ``runs``. Returns the executed notebook (raises on the first failing cell)."""
    nb = nbformat.read(path, as_version=4)
    env = {"WORKBENCH_RUNS": str(runs), "WORKBENCH_NOTEBOOK_FULL": "0"}
    saved = {key: os.environ.get(key) for key in (*env, "MPLBACKEND")}
    os.environ.update(env)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend makes the PNGs
    try:
        NotebookClient(
            nb,
            timeout=TIMEOUT,
            kernel_name="python3",
            store_widget_state=store_widget_state,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


_DURATION = re.compile(r"\b\d+(\.\d+)?\s?(s|ms|min|seconds|minutes)\b")
_ADDRESS = re.compile(r"\b0x[0-9a-f]+\b")
_FIGURE = re.compile(r'<img [^>]*src="data:image/png;base64,')


def printed(nb, runs: Path) -> list[str]:
    """What a notebook printed, cell by cell: stdout and the text/HTML of displayed objects
    (tables, reprs), with the runs folder, wall-clock durations and object addresses masked.
    Figures, widgets and stderr are left out. Two runs of a seeded notebook give the same list."""
    lines = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts = [output["text"]] if output.get("name") == "stdout" else []
            else:
                data = output.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data:
                    continue
                texts = [data[m] for m in ("text/html", "text/plain") if m in data]
            for text in texts:
                text = "".join(text) if isinstance(text, list) else text
                text = text.replace(str(runs), "<RUNS>")
                text = _ADDRESS.sub("0x…", _DURATION.sub("<duration>", text))
                lines.extend(f"[{index}] {line}" for line in text.splitlines())
    return lines


def render_html(nb, source: Path) -> str:
    """The executed notebook as one self-contained HTML page (figures embedded as PNG)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    body = body.replace(f"{ROOT}/", "")  # warnings name library files: no machine's folders
    mark = f"<!-- {SOURCE_MARK}{source_hash(source)} {source.name} -->\n"
    return mark + body


def recorded_hash(page: Path) -> str | None:
    """The notebook hash a rendered page was built from, or None."""
    head = page.read_text(encoding="utf-8")[:300]
    match = re.search(SOURCE_MARK + r"([0-9a-f]{64})", head)
    return match.group(1) if match else None


def figures_in_page(page: Path) -> int:
    """How many PNG figures a rendered page shows as images (its style sheet embeds a PNG too)."""
    return len(_FIGURE.findall(page.read_text(encoding="utf-8")))


def build(paths: list[Path]) -> list[Path]:
    PAGES.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="workbench-docs-") as runs:
            print(f"executing {path.name} ...", flush=True)
            nb = execute(path, Path(runs), store_widget_state=True)
        page = PAGES / f"{path.stem}.html"
        tmp = page.with_suffix(".html.tmp")
        tmp.write_text(render_html(nb, path), encoding="utf-8")
        tmp.replace(page)
        print(f"wrote {page.relative_to(ROOT)} ({page.stat().st_size / 1e6:.1f} MB)")
        written.append(page)
    return written


def main(argv: list[str]) -> int:
    chosen = [p for p in NOTEBOOKS if not argv or any(p.name.startswith(a) for a in argv)]
    if not chosen:
        names = ", ".join(p.name for p in NOTEBOOKS)
        print(f"no notebook matches {argv}: choose from {names}", file=sys.stderr)
        return 2
    build(chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
