"""Screenshots of the FiftyOne error analysis of BCCD val with the default models, for the README.

    .venv/bin/python docs/fiftyone_screenshots.py     # writes docs/fiftyone_*.png

Exports BCCD val (``$WORKBENCH_BCCD`` or ``../shared/data/bccd/BCCD``) with models/sft and
models/grqo as ``python -m workbench fiftyone export --source bccd --split val --model
sft=models/sft --model grqo=models/grqo --reference sft`` does, into a private FiftyOne database
in a temporary folder (about 4 minutes on 2 cores), serves the App on a free local port and drives
Debian's Chromium headless through Playwright:

- ``fiftyone_grid.png``: the dataset as it opens (ground truth, exemplars and both models' shown
  predictions, one colour per field);
- ``fiftyone_missing_annotation.png``: the saved view ``sft_likely_missing_annotation``, its first
  sample opened;
- ``fiftyone_duplicates.png``: the saved view ``sft_duplicates``, its first sample opened.

FiftyOne attaches to any FiftyOne database service already running (another notebook, App or test
session), whatever its folder; this script waits until none runs, and
:func:`~workbench.integrations.fiftyone_db.check_database` refuses to go on in another one.
``--database DIR`` keeps the database in DIR (and BCCD's converted copy beside it) and reuses an
export found there.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageColor
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from testing_constants import chromium_context  # noqa: E402

OUT = REPO / "docs"
BCCD = REPO.parent / "shared" / "data" / "bccd" / "BCCD"
NAME = "workbench-bccd-val"
VIEWS = {
    "fiftyone_missing_annotation.png": "sft_likely_missing_annotation",
    "fiftyone_duplicates.png": "sft_duplicates",
}
THUMBNAILS_PAINTED = """() => {
    const thumbnails = [...document.querySelectorAll('canvas[class*="lookerCanvas"]')];
    return thumbnails.length > 0 && thumbnails.every(c => c.width > 0 && c.height > 0
        && c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data[3] > 0);
}"""
MODAL_PAINTED = """() => {
    const modal = document.querySelector('[data-cy="modal"]');
    const canvas = modal && modal.querySelector('canvas[class*="lookerCanvas"]');
    return !!canvas && canvas.width > 0
        && canvas.getContext('2d').getImageData(canvas.width / 2, canvas.height / 2, 1, 1)
            .data[3] > 0;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def other_database_services() -> list[int]:
    """PIDs of running FiftyOne database services (what FiftyOne would attach to)."""
    import psutil

    wanted, found = ["--51-service", "db", "--multi"], []
    for proc in psutil.process_iter(["cmdline"]):
        line = proc.info["cmdline"] or []
        if any(line[i : i + 3] == wanted for i in range(len(line))):
            found.append(proc.pid)
    return found


def private_database(folder: Path) -> None:
    """Point FiftyOne at ``folder`` (before it is imported), once no other FiftyOne database
    service runs: FiftyOne would attach to that one instead."""
    os.environ["FIFTYONE_DATABASE_DIR"] = str(folder)
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    deadline = time.monotonic() + 1800
    while pids := other_database_services():
        if time.monotonic() > deadline:
            raise SystemExit(f"FiftyOne database services {pids} kept running for 30 minutes")
        print(f"waiting for the FiftyOne database service(s) {pids} to stop", flush=True)
        time.sleep(20)


def export(data_dir: Path):
    """The dataset NAME: reused when the database holds it, else exported by the CLI."""
    import fiftyone as fo

    from workbench.cli import main
    from workbench.integrations.fiftyone_db import check_database

    check_database()  # this folder's database, not another process's
    if not fo.dataset_exists(NAME):
        os.environ["WORKBENCH_DATA"] = str(data_dir)
        os.environ.setdefault("WORKBENCH_BCCD", str(BCCD))
        start = time.perf_counter()
        args = ["fiftyone", "export", "--source", "bccd", "--split", "val", "--reference", "sft"]
        args += ["--model", f"sft={REPO / 'models' / 'sft'}"]
        args += ["--model", f"grqo={REPO / 'models' / 'grqo'}", "--name", NAME]
        if main(args):
            raise SystemExit("the export failed")
        print(f"exported in {time.perf_counter() - start:.0f} s", flush=True)
    return fo.load_dataset(NAME)


def dismiss_pop_up(page, wait_ms: int = 0) -> None:
    """Close FiftyOne's advertising pop-up, which shows a few seconds after the first page."""
    dismiss = page.get_by_text("Dismiss", exact=True)
    if wait_ms:
        try:
            dismiss.first.wait_for(timeout=wait_ms)
        except PlaywrightTimeout:
            return
    if dismiss.count():
        dismiss.first.click()


def open_page(page, url: str, pop_up_ms: int = 0) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_function(THUMBNAILS_PAINTED)
    dismiss_pop_up(page, pop_up_ms)
    page.wait_for_timeout(1000)  # the last thumbnails' labels
    page.wait_for_function(THUMBNAILS_PAINTED)


def open_first_sample(page) -> None:
    page.locator('canvas[class*="lookerCanvas"]').first.click()
    page.wait_for_function(MODAL_PAINTED)
    page.mouse.move(5, 995)  # no tooltip of the label under the pointer
    page.wait_for_timeout(1500)  # the labels over the image


def screenshots(ds) -> None:
    from fiftyone.core.utils import to_slug  # a saved view's URL name
    from playwright.sync_api import sync_playwright

    from workbench.integrations import fiftyone as wfo

    port = free_port()
    session = wfo.launch(ds, port=port)
    base = f"http://127.0.0.1:{port}/datasets/{ds.slug}"
    try:
        with sync_playwright() as p:
            context = chromium_context(p, 1400)
            page = context.new_page()
            page.set_default_timeout(120_000)
            open_page(page, base, pop_up_ms=15_000)
            page.screenshot(path=OUT / "fiftyone_grid.png")
            for out, view in VIEWS.items():
                open_page(page, f"{base}?view={to_slug(view)}")
                open_first_sample(page)
                page.screenshot(path=OUT / out)
            context.close()
    finally:
        session.close()


def small_png(path: Path) -> None:
    """256 colours (a third of the bytes), the fields' own colours among them: a palette fitted
    to the picture alone drops the few yellow exemplar pixels."""
    from workbench.integrations.fiftyone import FIELD_COLORS, MODEL_COLORS

    shot = Image.open(path).convert("RGB")
    keep = [ImageColor.getrgb(c) for c in {**FIELD_COLORS, **MODEL_COLORS}.values()]
    fitted = shot.quantize(256 - len(keep), dither=Image.Dither.NONE)
    palette = fitted.getpalette()[: 3 * (256 - len(keep))] + [v for rgb in keep for v in rgb]
    holder = Image.new("P", (1, 1))
    holder.putpalette(palette)
    shot.quantize(palette=holder, dither=Image.Dither.NONE).save(path, optimize=True)


def database_stopped(folder: Path, timeout: float = 60) -> None:
    """Wait until no mongod keeps its data in ``folder`` (FiftyOne stops it after its client)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = (p.info["cmdline"] or [] for p in psutil.process_iter(["cmdline"]))
        if not any(str(folder) in line for line in lines):
            return
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", help="keep the FiftyOne database in this folder")
    args = parser.parse_args()
    if not args.database:  # a temporary one, removed once its mongod is gone
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "db"
            done = subprocess.run([sys.executable, __file__, "--database", str(folder)])
            database_stopped(folder)
        return done.returncode
    folder = Path(args.database).absolute()
    private_database(folder)
    screenshots(export(folder.parent / "data"))
    for name in ("fiftyone_grid.png", *VIEWS):
        small_png(OUT / name)
        print(OUT / name, f"{(OUT / name).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
