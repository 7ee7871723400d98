"""The app's page: components and their layout (with app.py, the only code that uses gradio).

Element ids (``#target``, ``#detect``, ``#sft-result``, ``#grqo-result``, ``#queries``, ...) are
what the browser tests select.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
from gradio_image_annotation import image_annotator

from workbench.integrations.app_models import Models
from workbench.viz import color_for

NO_BANK = ("(none: drawn boxes only)", "")
COUNT_HEADERS = ["class", "SFT", "GRQO", "both", "only SFT", "only GRQO"]
HELP = """**Draw** a box around an example object on the *target* image; its label is the class
name. Boxes with the same name are averaged into one class; several names search several classes
at once. A name starting with `-` or `not ` (e.g. `-WBC`) is a **negative** class, "not this
kind": objects it claims are not reported. Boxes on the *reference* tab are applied to the
target (cross-image prompts). Unlabelled boxes form the class `object`."""


def label_update(names):
    """Annotator props offering ``names`` as box labels, each with its own colour."""
    names = list(dict.fromkeys(n for n in names if n))
    colors = ["#{:02x}{:02x}{:02x}".format(*color_for(i)) for i in range(len(names))]
    return gr.update(label_list=names, label_colors=colors)


def _annotator(label: str, elem_id: str):
    return image_annotator(
        label=label, elem_id=elem_id, image_type="filepath", sources=["upload", "clipboard"]
    )


def layout(models: Models, examples: dict, fiftyone_hook) -> SimpleNamespace:
    """Create the page's components (inside a ``gr.Blocks``); returns them by name."""
    ui = SimpleNamespace()
    banner = "\n\n".join(f"⚠️ {p}" for p in models.problems()) or "Models: " + " · ".join(
        f"**{s.title}** `{s.source}`" for s in models.slots
    )
    gr.Markdown("# DINO-R1 workbench · visual prompts, SFT vs GRQO")
    gr.Markdown(banner, elem_id="model-status")
    with gr.Row():
        with gr.Column(scale=3), gr.Tabs():
            with gr.Tab("Target image"):
                ui.target = _annotator("Target image: draw prompt boxes", "target")
            with gr.Tab("Reference image (optional)"):
                ui.reference = _annotator(
                    "Reference image: its boxes search the target", "reference"
                )
        with gr.Column(scale=2):
            ui.example = gr.Dropdown(list(examples), value=None, label="Example image")
            ui.classes = gr.Textbox(
                label="Class names offered for new boxes (comma-separated)",
                placeholder="RBC, WBC, -Platelets",
            )
            gr.Markdown(HELP)
            ui.gt_file = gr.File(label="Ground truth (COCO json, optional)", file_types=[".json"])
            ui.threshold = gr.Slider(0, 1, value=0.2, step=0.01, label="Score threshold")
            ui.detect = gr.Button("Detect with both models", variant="primary", elem_id="detect")
            ui.status = gr.Markdown(label="status", elem_id="status")
            with gr.Accordion("Prompt banks: save prompts, apply them to other images", open=False):
                ui.bank_name = gr.Textbox(label="Bank name", placeholder="cells")
                ui.save = gr.Button("Save current prompts as a bank")
                ui.bank = gr.Dropdown(
                    [NO_BANK],
                    value="",
                    label="Apply a saved bank (its classes are added to the drawn boxes)",
                )
                ui.bank_files = gr.File(label="Bank files (one per model)", file_count="multiple")
    with gr.Row():
        ui.images = {
            s.key: gr.Image(
                label=f"{s.title} detections",
                type="pil",
                format="png",
                interactive=False,
                elem_id=f"{s.key}-result",
            )
            for s in models.slots
        }
    ui.summary = gr.Markdown(label="summary", elem_id="summary")
    ui.counts = gr.Dataframe(
        headers=COUNT_HEADERS, label="Detections per class", interactive=False, elem_id="counts"
    )
    gr.Markdown("## Inspect queries")
    with gr.Row():
        default = "grqo" if models.grqo.available or not models.sft.available else "sft"
        ui.which = gr.Radio([("SFT", "sft"), ("GRQO", "grqo")], value=default, label="Model")
        ui.top_k = gr.Slider(1, 50, value=10, step=1, label="Top-K queries drawn")
        ui.inspect = gr.Button("Inspect queries")
    ui.query_summary = gr.Markdown(label="query summary", elem_id="query-summary")
    with gr.Row():
        ui.plot = gr.Image(
            label="Selection score vs reward / advantage (or score, KL)",
            type="pil",
            format="png",
            interactive=False,
            elem_id="query-plot",
        )
        ui.top_image = gr.Image(
            label="Top-K queries (green: advantage > 0, red: < 0, grey: muted)",
            type="pil",
            format="png",
            interactive=False,
            elem_id="top-queries",
        )
    ui.queries = gr.Dataframe(label="Every decoder query", interactive=False, elem_id="queries")
    with gr.Row():
        ui.export = gr.Button("Export results as COCO json")
        ui.export_files = gr.File(label="COCO json per model + image", file_count="multiple")
        available = not isinstance(fiftyone_hook, str)
        ui.fiftyone = gr.Button("Send to FiftyOne", interactive=available)
    ui.fiftyone_status = gr.Markdown("" if available else fiftyone_hook, label="fiftyone")
    return ui
