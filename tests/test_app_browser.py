"""The app in a real browser: Playwright drives Debian's Chromium (never `playwright install`).

Uploads an image, drags prompt boxes on the annotator's canvas, runs detection, and checks that
both result images and the per-query panel render, with content that follows the drawn boxes;
searches several uploaded images with the drawn prompts and downloads the COCO json.
"""

from __future__ import annotations

import functools
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testing_constants import (
    canvas_painted,
    chromium_context,
    drag_box,
    launch_demo,
)

import app
from app import EXAMPLES_DIR
from workbench.app.models import Settings
from workbench.model.build import build_detector
from workbench.predictor import Predictor
from workbench.viz import CLASS_PALETTE

CHROMIUM = Path("/usr/bin/chromium")
IMAGE = EXAMPLES_DIR / "shapes" / "images" / "shapes_000002.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium"
        " (apt-get install chromium; `make setup` does it as root)",
    ),
]


LOADS = []  # one entry per call of the server's load_example handler


def counted(fn):
    @functools.wraps(fn)
    def run(*args):
        LOADS.append(args[-1])  # the example's name
        return fn(*args)

    return run


@pytest.fixture(scope="module")
def server():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    predictors = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        predictors.append(Predictor(build_detector("tiny").eval(), min_size=128, max_size=256))
    models = {"sft": predictors[0], "grqo": predictors[1]}
    demo = app.build_demo(models, settings=Settings(max_detections=30))
    for block_fn in demo.fns.values():  # the server's own handler, counted as it runs
        if block_fn.api_name == "load_example":
            block_fn.fn = counted(block_fn.fn)
    yield launch_demo(demo)
    demo.close()


@pytest.fixture(scope="module")
def page(server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        context = chromium_context(p, 1280, 1400, executable=str(CHROMIUM))
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(server, wait_until="load")
        page.wait_for_selector("#target")
        yield page
        context.close()


def detect(page, previous_table: str | None) -> str:
    """Click Detect; wait for the query table to be filled (and to differ from ``previous``)."""
    page.locator("#detect").click()
    page.wait_for_function(
        """previous => {
            const table = document.querySelector('#queries');
            const summary = document.querySelector('#query-summary');
            return table && summary && summary.innerText.includes('queries')
                && table.innerText.includes('star') && table.innerText !== previous;
        }""",
        arg=previous_table,
    )
    return page.locator("#queries").inner_text()


def image_size(page, selector: str) -> tuple[int, int]:
    image = page.locator(f"{selector} img").first
    image.wait_for(state="visible")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle())
    return image.evaluate("el => [el.naturalWidth, el.naturalHeight]")


# Counts the times the query panel's outputs start an event (their status tracker shows), so a
# test can wait for an event that changes nothing visible, such as Detect's follow-up after a
# refusal, to end.
WATCH_QUERY_PANEL = """() => {
    window.queryPanelEvents = 0;
    const tracker = () => document.querySelector('#queries [data-testid="status-tracker"]');
    let busy = false;
    new MutationObserver(() => {
        const t = tracker();
        const now = !!t && !t.classList.contains('hide');
        if (now && !busy) window.queryPanelEvents += 1;
        busy = now;
    }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""
QUERY_PANEL_IDLE = """() => {
    const t = document.querySelector('#queries [data-testid="status-tracker"]');
    return window.queryPanelEvents > 0 && (!t || t.classList.contains('hide'));
}"""


def test_draw_a_box_detect_and_inspect_queries(page):
    start = time.perf_counter()
    page.evaluate(WATCH_QUERY_PANEL)
    page.locator("#detect").click()  # nothing uploaded yet: a message, not a crash
    page.wait_for_function("document.querySelector('#status').innerText.includes('no image')")
    page.wait_for_function(QUERY_PANEL_IDLE)  # the follow-up event must not fail either
    toasts = [t.inner_text() for t in page.locator("[data-testid='toast-body']").all()]
    assert toasts and not [t for t in toasts if t.startswith("Error")], toasts

    page.locator("#target input[type=file]").first.set_input_files(str(IMAGE))
    # the 256 px image comes back enlarged to draw on, then the canvas paints it
    page.wait_for_function("document.querySelector('#status').innerText.includes('New image')")
    page.wait_for_function(
        "document.querySelector('#target canvas')?.getBoundingClientRect().width >= 480"
    )
    page.wait_for_function(canvas_painted("#target"))
    drag_box(page, (-40, -40), (30, 30), "star")
    first = detect(page, None)

    for selector in ("#sft-result", "#grqo-result", "#top-queries", "#query-plot"):
        width, height = image_size(page, selector)
        assert width >= 300 and height >= 200, selector
    assert "star" in page.locator("#counts").inner_text()  # the box's label names the class
    assert "for star (1 box) with SFT and GRQO" in page.locator("#status").inner_text()
    summary = page.locator("#query-summary").inner_text()
    assert "GRQO: 50 queries, 17 muted" in summary and "KL against SFT" in summary
    rows = [line for line in first.splitlines() if line.strip()]
    assert len(rows) > 20

    # A second box of the same class changes the class embedding, hence every query's score.
    drag_box(page, (50, 40), (90, 85), "star")
    second = detect(page, first)
    assert second != first
    # the status line stays the comparison's after the query panel refreshes
    assert "for star (2 boxes) with SFT and GRQO" in page.locator("#status").inner_text()
    print(f"browser flow took {time.perf_counter() - start:.1f} s")


def result_png(page, selector: str) -> Image.Image:
    """The result image the page shows (fetched from its src)."""
    image = page.locator(f"{selector} img").first
    image.wait_for(state="visible")
    return Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body()))


def colored_pixels(image: Image.Image, rgb) -> int:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return int((pixels == np.array(rgb)).all(1).sum())


def choose_example(page, name: str) -> None:
    field = page.locator("#example input")
    field.click()
    page.locator("ul[role='listbox'] li", has_text=name).first.click()
    # the example's own status line (an earlier search of the same image names it too) and the
    # previous image's results cleared
    page.wait_for_function(
        """name => document.querySelector('#status').innerText.includes(`Example ${name}:`)
            && !document.querySelector('#queries').innerText.includes('score')""",
        arg=name,
    )


def set_threshold(page, value: str) -> None:
    """Type a value into the threshold's number box and press Enter, as a user does."""
    box = page.locator("#threshold input[type=number]")
    box.fill(value)
    box.press("Enter")


def wait_for_counts(page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#counts').innerText.includes(text)", arg=text
    )


RESULTS_IDLE = """() => [...document.querySelectorAll(
    '#sft-result [data-testid="status-tracker"], #status [data-testid="status-tracker"]')]
    .every(t => t.classList.contains('hide'))"""


def test_a_typed_threshold_refilters_and_a_new_example_clears_old_results(page):
    choose_example(page, "shapes/shapes_000002.png")
    set_threshold(page, "0")
    page.locator("#detect").click()
    page.wait_for_function(
        "document.querySelector('#status').innerText.includes('Searched shapes_000002.png')"
    )
    page.wait_for_function("document.querySelector('#queries').innerText.includes('score')")
    counts = page.locator("#counts").inner_text()
    assert "red solid star" in counts
    # the class's colour, as its row of the count table shows it
    css = page.evaluate(
        """() => {
            const cells = [...document.querySelectorAll('#counts td, #counts [role=gridcell]')];
            const cell = cells.find(c => c.innerText.trim() === 'red solid star');
            let el = cell;
            while (el && getComputedStyle(el).backgroundColor === 'rgba(0, 0, 0, 0)') {
                el = el.firstElementChild;
            }
            return el ? getComputedStyle(el).backgroundColor : null;
        }"""
    )
    assert css and css.startswith("rgb("), css
    color = tuple(int(v) for v in css[4:-1].split(","))
    assert color in CLASS_PALETTE
    drawn = result_png(page, "#sft-result")
    assert colored_pixels(drawn, color) > 50  # boxes drawn in the class colour

    # Typed into the number box + Enter: the boxes drawn follow (tiny models score < 0.9)
    set_threshold(page, "0.9")
    page.wait_for_function(
        "document.querySelector('#status').innerText.includes('found nothing scoring >= 0.90')"
    )
    assert colored_pixels(result_png(page, "#sft-result"), color) == 0
    # arrow keys on the slider re-filter too
    slider = page.locator("#threshold input[type=range]")
    slider.fill("0.02")
    slider.press("ArrowDown")
    slider.press("ArrowDown")
    page.wait_for_function(
        "document.querySelector('#threshold input[type=number]').value === '0'"
        " && document.querySelector('#status').innerText.includes('Searched shapes_000002.png')"
        " && !document.querySelector('#status').innerText.includes('found nothing scoring')"
    )
    page.wait_for_function(RESULTS_IDLE)
    assert colored_pixels(result_png(page, "#sft-result"), color) > 50

    # another example: no result of the previous image stays on the page
    choose_example(page, "shapes/shapes_000003.png")
    page.wait_for_function(
        """() => !document.querySelector('#sft-result img')
            && !document.querySelector('#queries').innerText.includes('score')
            && !document.querySelector('#counts').innerText.includes('red solid star')"""
    )
    assert "shapes_000002" not in page.locator("#summary").inner_text()


def test_search_many_images_with_the_drawn_prompts(page):
    choose_example(page, "shapes/shapes_000002.png")  # its suggested boxes are the prompts
    page.get_by_role("tab", name="Search many images").click()
    images = [EXAMPLES_DIR / "shapes" / "images" / f"shapes_00000{k}.png" for k in range(3)]
    page.locator("#search-files input[type=file]").set_input_files([str(p) for p in images])
    page.wait_for_function(  # the three uploads listed (the page breaks each name at its suffix)
        "document.querySelector('#search-files').innerText.includes('shapes_000002')"
    )
    page.locator("#search").click()
    page.wait_for_function(
        "document.querySelectorAll('#search-gallery .thumbnail-lg img').length === 3"
    )
    page.wait_for_function(
        "/3 images, [0-9]+ detections/.test(document.querySelector('#search-status').innerText)"
    )
    status = page.locator("#search-status").inner_text()
    assert "red solid star" in status and "skipped" not in status, status
    assert page.locator("#search-counts").inner_text().count("shapes_00000") == 3
    link = page.locator("#search-json a").first
    link.wait_for(state="attached")
    coco = json.loads(page.request.get(link.get_attribute("href")).body())
    assert [i["file_name"] for i in coco["images"]] == [p.name for p in images]
    detections = int(status.split(" images, ")[1].split(" detections")[0])
    assert len(coco["annotations"]) == detections


def test_choosing_an_example_loads_it_once(page, server):
    """Gradio's dropdown repeats its choice as an input event when it loses focus; a second load
    would reset the boxes being drawn and could wipe the search a quick Detect started."""
    before = len(LOADS)
    choose_example(page, "shapes/shapes_000003.png")
    page.locator("#detect").click()  # the list has lost its focus by now
    page.wait_for_function(
        "document.querySelector('#status').innerText.includes('Searched shapes_000003.png')"
    )
    page.wait_for_function("document.querySelector('#queries').innerText.includes('score')")
    page.wait_for_function(RESULTS_IDLE)
    assert LOADS[before:] == ["shapes/shapes_000003.png"]
    set_threshold(page, "0.9")  # the search is still there to re-filter
    page.wait_for_function(
        "document.querySelector('#status').innerText.includes('found nothing scoring >= 0.90')"
    )
