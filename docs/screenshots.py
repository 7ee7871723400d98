"""Screenshots of the app's main flows with the default models, for the README.

    .venv/bin/python docs/screenshots.py      # writes docs/app_*.png

Starts ``app.py`` (models/sft and models/grqo) on a free local port and drives Debian's Chromium
headless through Playwright, as a user would:

- ``app_compare.png``: a BCCD example with its suggested prompt boxes, detected by both models
  (one box per object, colours per class, the status line and the per-class counts);
- ``app_queries.png``: the query inspector of that comparison (plot, top-K drawing, table);
- ``app_unseen.png``: a photo unlike anything the models were trained on (matplotlib's sample
  portrait), prompted with one box: what the status line says.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from testing_constants import chromium_context  # noqa: E402

OUT = REPO / "docs"
EXAMPLE = "bccd/BloodImage_00021.jpg"
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"app.py did not start on port {port}")


def wait_for_status(page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#status').innerText.includes(text)", arg=text
    )
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="status-tracker"]')]
            .every(t => t.classList.contains('hide'))"""
    )


def union_clip(page, selectors: list[str], pad: int = 8) -> dict:
    boxes = [page.locator(s).first.bounding_box() for s in selectors]
    x0, y0 = min(b["x"] for b in boxes) - pad, min(b["y"] for b in boxes) - pad
    x1 = max(b["x"] + b["width"] for b in boxes) + pad
    y1 = max(b["y"] + b["height"] for b in boxes) + pad
    return {"x": max(0, x0), "y": max(0, y0), "width": x1 - x0, "height": y1 - y0}


def main() -> int:
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_app(port)
    try:
        with sync_playwright() as p:
            context = chromium_context(p, 1280)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.locator("#example input").click()
            page.locator("ul[role='listbox'] li", has_text=EXAMPLE).first.click()
            wait_for_status(page, Path(EXAMPLE).name)
            page.locator("#detect").click()
            wait_for_status(page, f"Searched {Path(EXAMPLE).name}")
            page.wait_for_function("document.querySelector('#queries').innerText.includes('score')")
            page.screenshot(
                path=OUT / "app_compare.png",
                full_page=True,
                clip=union_clip(page, ["#target", "#status", "#counts"]),
            )
            page.screenshot(
                path=OUT / "app_queries.png",
                full_page=True,
                clip=union_clip(page, ["#query-summary", "#query-plot", "#queries"]),
            )

            page.locator("#target input[type=file]").first.set_input_files(str(PHOTO))
            wait_for_status(page, "New image")
            canvas = page.locator("#target canvas").first
            box = canvas.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx - 50, cy - 110)
            page.mouse.down()
            page.mouse.move(cx + 40, cy - 10, steps=8)
            page.mouse.up()
            label = page.locator('#model-box-edit input[aria-label="Label"]')
            label.fill("face")
            label.press("Enter")
            ok = page.locator("#model-box-edit button", has_text="OK")
            if ok.is_visible():
                ok.click()
            page.locator("#threshold input[type=number]").fill("0.5")
            page.locator("#threshold input[type=number]").press("Enter")
            page.locator("#detect").click()
            wait_for_status(page, "Searched grace_hopper.jpg")
            page.screenshot(
                path=OUT / "app_unseen.png",
                full_page=True,
                clip=union_clip(page, ["#target", "#status", "#sft-result"]),
            )
            context.close()
    finally:
        proc.terminate()
        proc.wait(30)
    for name in ("app_compare.png", "app_queries.png", "app_unseen.png"):
        shot = Image.open(OUT / name).convert("RGB")  # 256 colours: a third of the bytes
        shot.quantize(256, dither=Image.Dither.NONE).save(OUT / name, optimize=True)
        print(OUT / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
