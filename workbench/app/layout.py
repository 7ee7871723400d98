"""The app's page: its components, and the adapters between them and the handlers (with
``app.py``, the only code that uses gradio).

:func:`layout` creates the components; :class:`Events` turns each handler's plain result into
component values (and a handler's user error into a warning and a status line). Element ids
(``#target``, ``#detect``, ``#sft-result``, ``#grqo-result``, ``#queries``, ``#search``, ...) are
what the browser tests select.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
from gradio_image_annotation import image_annotator
from pandas.io.formats.style import Styler

from workbench.app import export, handlers, jobs, render, search
from workbench.app.inputs import DEFAULT_CLASS, size_notice
from workbench.app.models import TITLES, Models, ModelSlot, Settings
from workbench.app.session import Session, close_session
from workbench.inputs import InputError
from workbench.postprocess import MERGE_IOU, SCORE_THRESHOLD
from workbench.predictor import Predictor
from workbench.viz import hex_color, ink_for, palette_color

log = logging.getLogger("workbench.app")

NO_BANK = ("(none: drawn boxes only)", "")
COUNT_HEADERS = ["class", "SFT", "GRQO", "both", "only SFT", "only GRQO"]
HELP = """**Draw** a box around an example object on the *target* image; its label is the class
name. Boxes with the same name are averaged into one class; several names search several classes
at once. A name starting with `-` or `not ` (e.g. `-WBC`) is a **negative** class, "not this
kind": objects it claims are not reported. Boxes on the *reference* tab are applied to the
target (cross-image prompts). Unlabelled boxes form the class `object`."""
SEARCH_HELP = """Searches every image for the classes drawn on the *Target image* tab (and the
reference image) and the saved bank chosen under *Prompt banks*, with one model, at the score
threshold and merging set on the right; at most {cap} images at once. An image that cannot be
read is skipped and named."""


def label_update(session, names, **props):
    """Annotator props offering ``names`` as box labels, each in its class colour of
    ``session`` (the colour its results and table rows get)."""
    names = list(dict.fromkeys(n for n in names if n))
    colors = [hex_color(c) for c in handlers.label_colors(session, names)]
    return gr.update(label_list=names, label_colors=colors, **props)


ADAPT_HELP = """**Teach the model new objects.** Upload an image below, draw a box around *every*
object of the classes to learn and name each (its label is the class), then **Add**; repeat on
several images (a fifth is held out to score the result). Or upload a labelled dataset as a
zip: a LabelImg, VOC or YOLO folder, or a COCO json with its images. **Start** fine-tunes the
chosen model in the background (`python -m workbench adapt`): it times three steps, plans what
fits the budget, re-plans from the pace of its warm-up, and scores the model before and after on
the held-out images. One fine-tune runs at a time and takes every core, so detection here slows
down meanwhile."""

ANNOTATOR_HELP = (
    ": drag a box around one example object, then name it in the dialog: pick a class offered "
    "or type a new name (`-name`: not this kind); the mouse wheel zooms"
)


def _annotator(label: str, elem_id: str):
    return image_annotator(
        label=label + ANNOTATOR_HELP,
        elem_id=elem_id,
        image_type="filepath",
        sources=["upload", "clipboard"],
        label_list=[DEFAULT_CLASS],
        label_colors=[hex_color(palette_color(0))],
    )


def _result_image(title: str, elem_id: str) -> gr.Image:
    """An image the page draws, titled above it (gradio's label would cover its top rows)."""
    with gr.Column():
        gr.Markdown(f"**{title}**")
        return gr.Image(
            label=title,
            show_label=False,
            type="pil",
            format="png",
            interactive=False,
            elem_id=elem_id,
        )


def _search_tab(ui, models: Models, examples: dict, settings: Settings) -> None:
    """The "Search many images" tab's components (:mod:`workbench.app.search`), on ``ui``."""
    gr.Markdown(SEARCH_HELP.format(cap=settings.max_search_images))
    ui.search_files = gr.File(
        label="Images to search",
        file_count="multiple",
        file_types=["image"],
        elem_id="search-files",
    )
    with gr.Row():
        ui.search_examples = gr.Checkbox(
            False,
            label=f"use the example images ({len(examples)} bundled)",
            elem_id="search-examples",
        )
        default = "grqo" if models.grqo.available or not models.sft.available else "sft"
        ui.search_model = gr.Radio(
            [("SFT", "sft"), ("GRQO", "grqo")], value=default, label="Model", elem_id="search-model"
        )
    ui.search = gr.Button("Search", variant="primary", elem_id="search")
    ui.search_status = gr.Markdown(label="search status", elem_id="search-status")
    ui.search_gallery = gr.Gallery(
        label="Detections per image", columns=3, object_fit="contain", elem_id="search-gallery"
    )
    ui.search_counts = gr.Dataframe(
        label="Detections per class and image", interactive=False, elem_id="search-counts"
    )
    ui.search_json = gr.File(label="COCO json of the detections", elem_id="search-json")


def adapt_estimate(minutes: float) -> str:
    """How long a fine-tune takes, for the page."""
    import os

    return (
        f"About {minutes:g} min of training on this machine ({os.cpu_count()} cores), then about "
        "a minute to score the model before and after on 20 held-out images (more for more). "
        "The minutes include timing three steps and loading the model; the run stops at the "
        "budget in any case."
    )


def _adapt_tab(ui) -> None:
    """The "Teach a new object" tab's components (:mod:`workbench.app.jobs`), on ``ui``."""
    gr.Markdown(ADAPT_HELP)
    ui.adapt_image = _annotator("Training image: box every object to learn", "adapt-image")
    with gr.Row():
        ui.adapt_add = gr.Button("Add this image with its boxes", elem_id="adapt-add")
        ui.adapt_clear = gr.Button("Empty the training set", elem_id="adapt-clear")
    ui.adapt_set = gr.Markdown("The training set is empty.", elem_id="adapt-set")
    ui.adapt_upload = gr.File(
        label="... or a labelled dataset (.zip)", file_types=[".zip"], elem_id="adapt-upload"
    )
    with gr.Row():
        choices = [("SFT", "sft"), ("GRQO", "grqo")]
        ui.adapt_base = gr.Radio(choices, value="sft", label="Start from", elem_id="adapt-base")
        ui.adapt_objective = gr.Radio(
            choices, value="sft", label="Fine-tune with", elem_id="adapt-objective"
        )
        ui.adapt_minutes = gr.Slider(
            1, 30, value=10, step=1, label="Budget (minutes)", elem_id="adapt-minutes"
        )
    ui.adapt_estimate = gr.Markdown(adapt_estimate(10), elem_id="adapt-estimate")
    with gr.Row():
        ui.adapt_start = gr.Button("Start fine-tune", variant="primary", elem_id="adapt-start")
        ui.adapt_cancel = gr.Button("Cancel", elem_id="adapt-cancel")
    ui.adapt_state = gr.Markdown("No fine-tune has run yet.", elem_id="adapt-state")
    ui.adapt_log = gr.Textbox(
        label="Log", lines=6, max_lines=12, interactive=False, elem_id="adapt-log"
    )
    with gr.Row():
        ui.adapt_use_sft = gr.Button("Compare it in the SFT column", elem_id="adapt-use-sft")
        ui.adapt_use_grqo = gr.Button("Compare it in the GRQO column", elem_id="adapt-use-grqo")
    ui.adapt_timer = gr.Timer(2.0)


def model_banner(models: Models) -> str:
    """The line under the title: each column's model, or what is missing."""
    banner = "\n\n".join(f"⚠️ {p}" for p in models.problems()) or "Models: " + " · ".join(
        f"**{s.title}** `{Path(s.source).name or s.source}`" for s in models.slots
    )
    trained = {s.trained_on for s in models.available()} - {None}
    if trained:
        banner += " · trained on " + " / ".join(sorted(trained))
    return banner


def layout(
    models: Models, examples: dict, fiftyone_hook, settings: Settings | None = None
) -> SimpleNamespace:
    """Create the page's components (inside a ``gr.Blocks``); returns them by name."""
    ui = SimpleNamespace()
    gr.Markdown("# DINO-R1 workbench · visual prompts, SFT vs GRQO")
    ui.model_status = gr.Markdown(model_banner(models), elem_id="model-status")
    with gr.Row():
        with gr.Column(scale=3), gr.Tabs():
            with gr.Tab("Target image"):
                ui.target = _annotator("Target image: draw prompt boxes", "target")
            with gr.Tab("Reference image (optional)"):
                ui.reference = _annotator(
                    "Reference image: its boxes search the target", "reference"
                )
            with gr.Tab("Search many images", elem_id="search-tab"):
                _search_tab(ui, models, examples, settings or Settings())
            with gr.Tab("Teach a new object", elem_id="adapt-tab"):
                _adapt_tab(ui)
        with gr.Column(scale=2):
            ui.example = gr.Dropdown(
                list(examples),
                value=None,
                label="Example image",
                info="an image with ground truth and suggested prompt boxes",
                elem_id="example",
            )
            ui.classes = gr.Textbox(
                label="Class names offered for new boxes (comma-separated)",
                placeholder="RBC, WBC, -Platelets",
            )
            gr.Markdown(HELP)
            ui.gt_file = gr.File(label="Ground truth (COCO json, optional)", file_types=[".json"])
            ui.threshold = gr.Slider(
                0, 1, value=SCORE_THRESHOLD, step=0.01, label="Score threshold", elem_id="threshold"
            )
            ui.merge = gr.Checkbox(
                True,
                label=f"One box per object (same-class boxes overlapping above IoU {MERGE_IOU} "
                "merge)",
                info="untick to see every raw query box",
                elem_id="merge",
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
            s.key: _result_image(f"{s.title} detections", f"{s.key}-result") for s in models.slots
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
        ui.plot = _result_image(
            "Every query: selection logit vs reward, advantage (or score, KL)", "query-plot"
        )
        ui.top_image = _result_image(
            "Top-K queries (green: advantage > 0, red: < 0, grey: muted)", "top-queries"
        )
    ui.every_column = gr.Checkbox(False, label="Show every column", elem_id="every-column")
    ui.queries = gr.Dataframe(
        label="Every decoder query, by rank (muted queries greyed)",
        interactive=False,
        elem_id="queries",
    )
    with gr.Row():
        ui.export = gr.Button("Export results as COCO json")
        ui.export_files = gr.File(label="COCO json per model + image", file_count="multiple")
        available = not isinstance(fiftyone_hook, str)
        ui.fiftyone = gr.Button("Send to FiftyOne", interactive=available)
    ui.fiftyone_status = gr.Markdown("" if available else fiftyone_hook, label="fiftyone")
    ui.session = gr.State(None, time_to_live=6 * 3600, delete_callback=close_session)
    ui.compared = gr.State(False)  # did the last Detect succeed (then refresh the query panel)
    return ui


MUTED_ROW = "color: #888; background-color: rgba(128, 128, 128, 0.15)"


def _query_table(headers, rows) -> Styler:
    """The query table as gradio shows it: each cell as :func:`render.cell_text` writes it (the
    data stay numbers for API clients), muted queries' rows greyed."""
    frame = pd.DataFrame(rows, columns=headers, dtype=object)  # keeps None, bool and int as is
    styler = frame.style.format({c: functools.partial(render.cell_text, c) for c in headers})
    return styler.apply(lambda row: [MUTED_ROW if row["muted"] else ""] * len(row), axis=1)


def _names(text) -> list[str]:
    """The class names of a comma-separated text box."""
    return [n.strip() for n in str(text).split(",")]


def _count_table(headers, rows, colors) -> Styler:
    """The per-class count table, each class name on its class colour."""
    frame = pd.DataFrame(rows, columns=headers)
    styles = [f"background-color: {hex_color(c)}; color: {hex_color(ink_for(c))}" for c in colors]
    return frame.style.apply(lambda column: styles, subset=["class"], axis=0)


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

    def __init__(
        self, ui, models: Models, examples: dict, settings: Settings, fiftyone_hook, jobs=None
    ):
        self.ui, self.models, self.examples, self.settings = ui, models, examples, settings
        self.fiftyone_hook, self.jobs = fiftyone_hook, jobs
        # (inputs, outputs) of each event, in the order of its method's parameters and results
        view = [*ui.images.values(), ui.counts, ui.summary]
        # what a new target clears: every result of the previous one
        results = [*view, ui.queries, ui.plot, ui.top_image, ui.query_summary]
        request = [ui.target, ui.reference, ui.bank]
        inspect_in = [ui.session, ui.which, *request, ui.gt_file, ui.top_k, ui.every_column]
        inspect_out = [ui.session, ui.queries, ui.plot, ui.top_image, ui.query_summary, ui.status]
        search_in = [ui.search_files, ui.search_examples, ui.search_model]
        search_out = [ui.search_gallery, ui.search_counts, ui.search_json]
        self.io = SimpleNamespace(
            load_example=(
                [ui.session, ui.example],
                [ui.session, ui.target, ui.classes, ui.gt_file, ui.status],
            ),
            show_example=(
                [ui.session, ui.example, ui.classes],
                [ui.session, ui.target, *results],
            ),
            new_target=(
                [ui.session, ui.target],
                [ui.session, ui.target, ui.gt_file, ui.example, *results, ui.status],
            ),
            new_reference=([ui.session, ui.reference], [ui.session, ui.reference]),
            offer_classes=([ui.session, ui.classes], [ui.session, ui.target, ui.reference]),
            compare=(
                [ui.session, *request, ui.threshold, ui.merge],
                [ui.session, ui.compared, *view, ui.status],
            ),
            after_compare=([ui.compared, *inspect_in], inspect_out),
            apply_threshold=([ui.session, ui.threshold, ui.merge], [*view, ui.status]),
            inspect_queries=(inspect_in, inspect_out),
            query_columns=([ui.session, ui.every_column], [ui.queries]),
            save_bank=(
                [ui.session, ui.target, ui.reference, ui.bank_name],
                [ui.session, ui.bank, ui.bank_files, ui.status],
            ),
            export_coco=([ui.session], [ui.export_files, ui.status]),
            send_to_fiftyone=([ui.session], [ui.fiftyone_status]),
            search_images=(
                [ui.session, *request, *search_in, ui.threshold, ui.merge],
                [ui.session, *search_out, ui.search_status],
            ),
            adapt_add=([ui.session, ui.adapt_image], [ui.session, ui.adapt_set]),
            adapt_clear=([ui.session], [ui.session, ui.adapt_set]),
            adapt_budget=([ui.adapt_minutes], [ui.adapt_estimate]),
            adapt_start=(
                [ui.session, ui.adapt_upload, ui.adapt_base, ui.adapt_objective, ui.adapt_minutes],
                [ui.session, ui.adapt_state, ui.adapt_log],
            ),
            adapt_cancel=([], [ui.adapt_state, ui.adapt_log]),
            adapt_poll=([], [ui.adapt_state, ui.adapt_log]),
            adapt_use=([ui.session], [ui.session, ui.model_status, ui.status]),
        )

    def _view(self, v) -> dict:
        ui = self.ui
        shown = {ui.images[k]: v.images[k] for k in ui.images}  # the summary names the image
        counts = _count_table(v.headers, v.rows, v.colors)
        return {**shown, ui.counts: counts, ui.summary: v.summary}

    def _cleared(self, state) -> dict:
        """Every result of the previous target emptied (and forgotten by the session)."""
        ui = self.ui
        if isinstance(state, Session):
            state.comparison = None
            state.queries = None
        images = dict.fromkeys(ui.images.values())
        empty = {ui.counts: None, ui.summary: "", ui.queries: None, ui.plot: None}
        return {**images, **empty, ui.top_image: None, ui.query_summary: ""}

    def load_example(self, state, example_name):
        if not example_name:  # emptied by an upload, which cleared the page itself
            return {self.ui.session: state}
        state, v = handlers.load_example(self.examples, example_name, state)
        ui = self.ui
        return {
            ui.session: state,
            ui.target: v.annotator,
            ui.classes: ", ".join(v.classes),
            ui.gt_file: v.ground_truth,
            ui.status: v.status,
        }

    def show_example(self, state, example_name, class_names):
        """After an example is loaded: its classes offered as labels, old results cleared."""
        if not example_name:
            return {self.ui.session: state}
        state = state if isinstance(state, Session) else Session()
        labels = label_update(state, _names(class_names))
        return {self.ui.session: state, self.ui.target: labels, **self._cleared(state)}

    def new_target(self, state, image):
        """Another image: the example's ground truth no longer applies, old results go; a small
        image is shown enlarged for drawing."""
        state, shown = self._for_drawing(state, image)
        ui = self.ui
        cleared = self._cleared(state)
        cleared[ui.status] = "New image: draw a prompt box around an example object, then Detect."
        return {ui.session: state, ui.target: shown, ui.gt_file: None, ui.example: None, **cleared}

    def offer_classes(self, state, text):
        state = state if isinstance(state, Session) else Session()
        update = label_update(state, _names(text))
        return {self.ui.session: state, self.ui.target: update, self.ui.reference: update}

    def compare(
        self,
        state,
        target_image,
        reference_image,
        prompt_bank,
        score_threshold,
        merge_duplicates=True,
        progress=gr.Progress(),  # noqa: B008 (gradio's way to ask for a progress bar)
    ):
        request = (target_image, reference_image, prompt_bank, score_threshold, self.settings)
        state, v, notices = handlers.compare(
            self._models(state), state, *request, progress, merge=merge_duplicates
        )
        ui = self.ui
        status = _status(v.status, notices)
        return {ui.session: state, ui.compared: True, **self._view(v), ui.status: status}

    def apply_threshold(self, state, score_threshold, merge_duplicates=True):
        v = handlers.rethreshold(self._models(state), state, score_threshold, merge_duplicates)
        if v is None:
            return {self.ui.status: f"Score threshold {float(score_threshold):.2f}: press Detect."}
        return {**self._view(v), self.ui.status: v.status}

    def inspect_queries(
        self,
        state,
        model,
        target_image,
        reference_image,
        prompt_bank,
        ground_truth_json,
        top_k,
        every_column=False,
    ):
        request = (target_image, reference_image, prompt_bank, ground_truth_json, top_k)
        state, v, notices = handlers.inspect(
            self._models(state), state, model, *request, self.settings, every_column
        )
        ui = self.ui
        return {
            ui.session: state,
            ui.queries: _query_table(v.headers, v.rows),
            ui.plot: v.plot,
            ui.top_image: v.top_queries,
            ui.query_summary: v.summary,
            ui.status: _status(f"Queries inspected: {v.summary.split(' · ')[0]}.", notices),
        }

    def query_columns(self, state, every_column):
        """The last inspected queries' table with the compact or every column; before any
        inspection, nothing (the next one reads the box)."""
        if not isinstance(state, Session) or state.queries is None:
            return {self.ui.queries: gr.skip()}
        return {self.ui.queries: _query_table(*handlers.query_columns(state, every_column))}

    def after_compare(self, ok, *args):
        """The query panel for the new comparison; the status line stays the comparison's."""
        if not ok:
            return [gr.skip()] * len(self.io.after_compare[1])
        return {**self.inspect_queries(*args), self.ui.status: gr.skip()}

    def new_reference(self, state, image):
        """A reference image: a note if it will be downscaled, enlarged for drawing if small."""
        state, shown = self._for_drawing(state, image)
        return {self.ui.session: state, self.ui.reference: shown}

    def _for_drawing(self, state, image):
        """``(session, the annotator's new value or gr.skip())`` for an uploaded image."""
        state = state if isinstance(state, Session) else Session()
        if image is None:
            return state, gr.skip()
        notice = size_notice(image, self.settings.max_side)
        if notice:
            gr.Info(notice)
        enlarged = handlers.for_drawing(state, image)
        return state, gr.skip() if enlarged is None else enlarged

    def save_bank(self, state, target_image, reference_image, bank_name):
        state, names, files, message = handlers.save_bank(
            self._models(state), state, target_image, reference_image, bank_name, self.settings
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

    def search_images(
        self,
        state,
        target_image,
        reference_image,
        prompt_bank,
        images,
        use_examples,
        model,
        score_threshold: float,
        merge_duplicates: bool = True,
        progress=gr.Progress(),  # noqa: B008 (gradio's way to ask for a progress bar)
    ):
        prompts = (target_image, reference_image, prompt_bank)
        request = (images, bool(use_examples), model, prompts, score_threshold, self.settings)
        state, v, notices = search.search_images(
            self._models(state), state, *request, self.examples, progress, merge=merge_duplicates
        )
        ui = self.ui
        return {
            ui.session: state,
            ui.search_gallery: v.gallery,
            ui.search_counts: pd.DataFrame(v.rows, columns=v.headers),
            ui.search_json: v.json_path,
            ui.search_status: _status(v.status, notices),
        }

    # --- the "Teach a new object" tab ----------------------------------------------------------

    def _models(self, state) -> Models:
        """This session's models: the app's, with an adapted one in a column when chosen."""
        return (state.models if isinstance(state, Session) else None) or self.models

    def _training_set(self, state) -> tuple[Session, jobs.TrainingSet]:
        state = state if isinstance(state, Session) else Session()
        if state.training is None:
            state.training = jobs.TrainingSet(state.folder / f"training-{time.time_ns()}")
        return state, state.training

    def adapt_add(self, state, training_image):
        state, drawn = self._training_set(state)
        message = jobs.add_drawn(drawn, training_image, self.settings.max_side)
        return {self.ui.session: state, self.ui.adapt_set: message}

    def adapt_clear(self, state):
        state = state if isinstance(state, Session) else Session()
        state.training = None
        return {self.ui.session: state, self.ui.adapt_set: "The training set is empty."}

    def adapt_budget(self, minutes):
        return {self.ui.adapt_estimate: adapt_estimate(float(minutes))}

    def adapt_start(self, state, dataset_zip, start_from, objective, minutes):
        """Start a fine-tune of ``start_from`` (sft / grqo, the app's checkpoint) on the drawn
        training set, or on the uploaded zip when there is one."""
        state, drawn = self._training_set(state)
        slot = self.models.get(start_from)
        if not slot.available or not Path(slot.source).is_dir():
            where = slot.source or "none"
            raise InputError(
                f"the {slot.title} model has no checkpoint folder to start from ({where}); "
                "start the app with --sft / --grqo checkpoint folders"
            )
        if dataset_zip:
            data = jobs.unpack_dataset(dataset_zip, self.jobs.data_folder())
        else:
            data = self.jobs.keep(drawn.ready())
        self.jobs.start(data, slot.source, objective=objective, minutes=float(minutes))
        return {self.ui.session: state, **self.adapt_poll()}

    def adapt_cancel(self):
        if not self.jobs.cancel():
            gr.Info("No fine-tune is running.")
        return self.adapt_poll()

    def adapt_poll(self):
        """The job's state and log (the page's timer asks every 2 s)."""
        if self.jobs is None:
            return {self.ui.adapt_state: "Fine-tuning is off in this app.", self.ui.adapt_log: ""}
        state = self.jobs.state()
        return {self.ui.adapt_state: jobs.state_text(state), self.ui.adapt_log: state.log}

    def adapt_use_sft(self, state):
        return self._adapt_use(state, "sft")

    def adapt_use_grqo(self, state):
        return self._adapt_use(state, "grqo")

    def _adapt_use(self, state, column: str):
        """Put the finished job's model in ``column`` (sft / grqo) of this session's compare
        view; the app's other sessions keep theirs."""
        state = state if isinstance(state, Session) else Session()
        done = self.jobs.state() if self.jobs is not None else None
        if done is None or done.status != "done":
            raise InputError("no finished fine-tune yet: start one and wait until it is done")
        predictor = Predictor.from_checkpoint(done.out, max_detections=self.settings.max_detections)
        name = f"{done.out.name} (adapted)"
        slot = ModelSlot(column, predictor, str(done.out), name=name)
        state.models = replace(self._models(state), **{column: slot})
        state.comparison = state.queries = None  # results of the old model no longer apply
        message = f"The {TITLES[column]} column now shows {name}: press Detect to compare."
        return {
            self.ui.session: state,
            self.ui.model_status: model_banner(state.models),
            self.ui.status: message,
        }

    def model_info(self) -> dict:
        """The loaded models, bundled examples, limits and negative-class prefixes."""
        return handlers.model_info(self.models, self.examples, self.settings)
