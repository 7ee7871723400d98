"""The app's "Teach a new object" tab in a real browser: boxes drawn on several images, a
background fine-tune of the shipped SFT model with a progress line, cancel, a finished job, and
its model compared in the GRQO column."""

from __future__ import annotations

from pathlib import Path

import pytest
from testing_constants import (
    canvas_painted,
    chromium_context,
    drag_box,
    launch_demo,
)

import app
from workbench.app.models import Models

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make setup)"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    models = Models.from_checkpoints(default_folder=REPO / "models")
    demo = app.build_demo(models, adapt_root=tmp_path_factory.mktemp("adapt_runs"))
    url = launch_demo(demo)
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        context = chromium_context(p, 1280, 1400, executable=str(CHROMIUM))
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#target")
        yield page
        context.close()
    demo.close()


def text_of(page, selector: str, wanted: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "([s, t]) => document.querySelector(s).innerText.includes(t)",
        arg=[selector, wanted],
        timeout=timeout,
    )
    return page.locator(selector).inner_text()


def test_draw_on_several_images_fine_tune_cancel_finish_and_compare(page, bccd_voc):
    page.get_by_role("tab", name="Teach a new object").click()
    assert "min of training on this machine" in page.locator("#adapt-estimate").inner_text()
    page.locator("#adapt-add").click()  # nothing uploaded: a message, not a crash
    text_of(page, "#adapt-set", "upload an image on this tab")
    for i in range(3):
        photo = bccd_voc / "JPEGImages" / f"BloodImage_0000{i}.jpg"
        page.locator("#adapt-image input[type=file]").first.set_input_files(str(photo))
        page.wait_for_function(canvas_painted("#adapt-image"))
        drag_box(page, (-60, -50), (20, 30), "cell", annotator="#adapt-image")
        page.locator("#adapt-add").click()
        images = f"{i + 1} image" + ("s" if i else "")
        text_of(page, "#adapt-set", f"{images} in the training set; boxes: cell {i + 1}")
    budget = page.locator("#adapt-minutes input[type=number]")
    budget.fill("3")
    budget.press("Enter")
    text_of(page, "#adapt-estimate", "About 3 min of training")

    page.locator("#adapt-start").click()
    text_of(page, "#adapt-state", "running")
    page.wait_for_function(  # the job's own output, read back by the page's timer
        "() => document.querySelector('#adapt-log textarea').value.includes('adapting')"
    )
    page.locator("#adapt-start").click()  # one job at a time: refused, in a warning
    page.wait_for_function(
        """() => [...document.querySelectorAll("[data-testid='toast-body']")]
            .some(t => t.innerText.includes('already running'))"""
    )
    page.locator("#adapt-cancel").click()
    text_of(page, "#adapt-state", "cancelled")

    budget.fill("2")
    budget.press("Enter")
    page.locator("#adapt-start").click()
    text_of(page, "#adapt-state", "running")
    state = text_of(page, "#adapt-state", "done", timeout=540_000)
    assert "before: interactive AP50" in state and "after: interactive AP50" in state
    assert "training set" in page.locator("#adapt-set").inner_text()

    page.locator("#adapt-use-grqo").click()
    status = text_of(page, "#model-status", "(adapted)")
    assert "adapted-sft-" in status and "SFT" in status
    text_of(page, "#status", "press Detect")
    # The compare view runs it: an example with its suggested prompt boxes, then Detect.
    page.get_by_role("tab", name="Target image").click()
    page.locator("#example input").click()
    page.locator("ul[role='listbox'] li", has_text="BloodImage_00021").first.click()
    text_of(page, "#status", "BloodImage_00021")
    page.locator("#detect").click()
    assert "(adapted)" in text_of(page, "#status", "with SFT and adapted-sft-")
