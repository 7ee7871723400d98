"""The app's page: its components, and the adapters between them and the handlers (with
``app.py``, the only code that uses gradio).

:func:`layout` creates the components; :class:`Events` turns each handler's plain result into
component values (and a handler's user error into a warning and a status line). Element ids
(``#target``, ``#detect``, ``#sft-result``, ``#grqo-result``, ``#queries``, ...) are what the
browser tests select.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

import gradio as gr
import pandas as pd
from gradio_image_annotation import image_annotator

from workbench.app import export, handlers
from workbench.app.inputs import size_notice
from workbench.app.models import Models, Settings
from workbench.app.session import close_session
from workbench.postprocess import SCORE_THRESHOLD
from workbench.viz import color_for

log = logging.getLogger("workbench.app")

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
            ui.threshold = gr.Slider(
                0, 1, value=SCORE_THRESHOLD, step=0.01, label="Score threshold"
            )
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
    ui.session = gr.State(None, time_to_live=6 * 3600, delete_callback=close_session)
    ui.compared = gr.State(False)  # did the last Detect succeed (then refresh the query panel)
    return ui


def _frame(headers, rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


def _status(done: str, notices) -> str:
    for notice in notices:
        gr.Info(notice)
    return "\n\n".join([done, *(f"Note: {n}" for n in notices)])


def guarded(fn, status, on_error=None):
    """Run a handler. A user error (the ValueError family: InputError, DatasetError) becomes a
    warning and a status line; anything else is logged with its traceback on stderr and shown as
    one line. Other outputs keep their values, and the server carries on."""

    def run(*args):
        try:
            return fn(*args)
        except ValueError as err:
            message = str(err)
        except Exception as err:
            log.exception("handler %s failed", fn.__name__)
            message = f"internal error ({type(err).__name__}: {err}); the server log has details"
        gr.Warning(message)
        return {status: f"**Problem:** {message}", **(on_error or {})}

    return functools.wraps(fn)(run)  # the API names its parameters after fn's


class Events:
    """The page's events over :mod:`~workbench.app.handlers`: each method takes component values
    and returns ``{component: value}`` (its parameter names are the API's)."""

    def __init__(self, ui, models: Models, examples: dict, settings: Settings, fiftyone_hook):
        self.ui, self.models, self.examples, self.settings = ui, models, examples, settings
        self.fiftyone_hook = fiftyone_hook
        # (inputs, outputs) of each event, in the order of its method's parameters and results
        view = [*ui.images.values(), ui.counts, ui.summary]
        request = [ui.target, ui.reference, ui.bank]
        inspect_in = [ui.session, ui.which, *request, ui.gt_file, ui.top_k]
        inspect_out = [ui.session, ui.queries, ui.plot, ui.top_image, ui.query_summary, ui.status]
        self.io = SimpleNamespace(
            load_example=([ui.example], [ui.target, ui.classes, ui.gt_file, ui.status]),
            compare=(
                [ui.session, *request, ui.threshold],
                [ui.session, ui.compared, *view, ui.status],
            ),
            after_compare=([ui.compared, *inspect_in], inspect_out),
            apply_threshold=([ui.session, ui.threshold], [*view, ui.status]),
            inspect_queries=(inspect_in, inspect_out),
            save_bank=(
                [ui.session, ui.target, ui.reference, ui.bank_name],
                [ui.session, ui.bank, ui.bank_files, ui.status],
            ),
            export_coco=([ui.session], [ui.export_files, ui.status]),
            send_to_fiftyone=([ui.session], [ui.fiftyone_status]),
        )

    def _view(self, v) -> dict:
        ui = self.ui
        shown = {ui.images[k]: v.images[k] for k in ui.images}
        return {**shown, ui.counts: _frame(v.headers, v.rows), ui.summary: v.summary}

    def load_example(self, example_name):
        v = handlers.load_example(self.examples, example_name)
        ui = self.ui
        return {
            ui.target: gr.update(value=v.annotator, **label_update(v.classes)),
            ui.classes: ", ".join(v.classes),
            ui.gt_file: v.ground_truth,
            ui.status: v.status,
        }

    def offer_classes(self, text):
        update = label_update([n.strip() for n in str(text).split(",")])
        return {self.ui.target: update, self.ui.reference: update}

    def compare(self, state, target_image, reference_image, prompt_bank, score_threshold):
        request = (target_image, reference_image, prompt_bank, score_threshold, self.settings)
        state, v, notices = handlers.compare(self.models, state, *request)
        ui = self.ui
        status = _status("Detection done.", notices)
        return {ui.session: state, ui.compared: True, **self._view(v), ui.status: status}

    def apply_threshold(self, state, score_threshold):
        v = handlers.rethreshold(self.models, state, score_threshold)
        return {**self._view(v), self.ui.status: f"Score threshold {float(score_threshold):.2f}."}

    def inspect_queries(
        self, state, model, target_image, reference_image, prompt_bank, ground_truth_json, top_k
    ):
        request = (target_image, reference_image, prompt_bank, ground_truth_json, top_k)
        state, v, notices = handlers.inspect(self.models, state, model, *request, self.settings)
        ui = self.ui
        return {
            ui.session: state,
            ui.queries: _frame(v.headers, v.rows),
            ui.plot: v.plot,
            ui.top_image: v.top_queries,
            ui.query_summary: v.summary,
            ui.status: _status("Queries inspected.", notices),
        }

    def after_compare(self, ok, *args):
        return self.inspect_queries(*args) if ok else [gr.skip()] * len(self.io.after_compare[1])

    def new_reference(self, image):
        notice = size_notice(image, self.settings.max_side)
        if notice:
            gr.Info(notice)

    def new_target(self, image):
        self.new_reference(image)
        return None, None  # another image: the example's ground truth no longer applies

    def save_bank(self, state, target_image, reference_image, bank_name):
        state, names, files, message = handlers.save_bank(
            self.models, state, target_image, reference_image, bank_name, self.settings
        )
        ui = self.ui
        return {
            ui.session: state,
            ui.bank: gr.update(choices=[NO_BANK] + [(n, n) for n in names]),
            ui.bank_files: files,
            ui.status: message,
        }

    def export_coco(self, state):
        paths, message = export.export_coco(state)
        return {self.ui.export_files: paths, self.ui.status: message}

    def send_to_fiftyone(self, state):
        message = export.send_to_fiftyone(state, self.fiftyone_hook)
        return {self.ui.fiftyone_status: message}

    def model_info(self) -> dict:
        """The loaded models, bundled examples, limits and negative-class prefixes."""
        return handlers.model_info(self.models, self.examples, self.settings)
