"""The Gradio app: draw visual prompts, compare SFT and GRQO side by side, inspect every query.

    python app.py                                   # models/sft + models/grqo on 127.0.0.1:7860
    python app.py --sft CKPT --grqo CKPT --min-size 256 --max-size 512

``build_demo(models)`` is the factory (tests pass tiny models); nothing heavy happens at import.
The handlers' logic is plain Python in ``workbench/integrations/app_logic.py``; this file only
wires the components (laid out in ``app_layout.py``) to it. Per-user state is one ``gr.State``
holding a Session.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path

from workbench.cpu import use_available_cpus
from workbench.integrations import app_export
from workbench.integrations import app_logic as logic
from workbench.integrations.app_inputs import NEGATIVE_PREFIXES, size_notice
from workbench.integrations.app_models import EXAMPLES_DIR, Models, Settings, scan_examples

log = logging.getLogger("workbench.app")


def _frame(headers, rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=headers)


def _status(done: str, notices) -> str:
    import gradio as gr

    for notice in notices:
        gr.Info(notice)
    return "\n\n".join([done, *(f"Note: {n}" for n in notices)])


def _guarded(fn, status, on_error=None):
    """Run a handler. A user error (the ValueError family: InputError, DatasetError) becomes a
    warning and a status line; anything else is logged with its traceback on stderr and shown as
    one line. Other outputs keep their values, and the server carries on."""
    import gradio as gr

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


def build_demo(models, *, examples_dir=EXAMPLES_DIR, settings: Settings | None = None):
    """The app (a ``gr.Blocks``) over ``models``: a :class:`Models` (``Models.from_checkpoints``)
    or ``{"sft": Predictor | None, "grqo": Predictor | None}``."""
    import gradio as gr

    from workbench.integrations import app_layout as layout

    if not isinstance(models, Models):
        models = Models.from_predictors(**models)
    settings = settings or Settings()
    examples = scan_examples(examples_dir) if Path(examples_dir).is_dir() else {}
    if examples:
        gr.set_static_paths([str(Path(examples_dir).resolve())])  # served in place
    with gr.Blocks(title="DINO-R1 workbench") as demo:
        ui = layout.layout(models, examples, app_export.fiftyone_hook())
        session = gr.State(None, time_to_live=6 * 3600, delete_callback=logic.close_session)
        compared = gr.State(False)  # did the last Detect succeed (then refresh the query panel)

        def view(v):
            return {
                **{ui.images[k]: v.images[k] for k in ui.images},
                ui.counts: _frame(v.headers, v.rows),
                ui.summary: v.summary,
            }

        def load_example(example_name):
            ex = examples.get(example_name)
            if ex is None:
                raise ValueError(
                    f"unknown example {example_name!r}; choose one of {list(examples)}"
                )
            value = {"image": str(ex.image_path), "boxes": [dict(b) for b in ex.prompt_boxes]}
            return {
                ui.target: gr.update(value=value, **layout.label_update(ex.classes)),
                ui.classes: ", ".join(ex.classes),
                ui.gt_file: str(ex.annotations),
                ui.status: f"Example **{example_name}**: {len(ex.prompt_boxes)} prompt "
                "box(es) drawn from its ground truth; press Detect.",
            }

        def offer_classes(text):
            update = layout.label_update([n.strip() for n in str(text).split(",")])
            return {ui.target: update, ui.reference: update}

        def compare(state, target_image, reference_image, prompt_bank, score_threshold):
            state, v, notices = logic.compare(
                models, state, target_image, reference_image, prompt_bank, score_threshold, settings
            )
            return {
                session: state,
                compared: True,
                **view(v),
                ui.status: _status("Detection done.", notices),
            }

        def apply_threshold(state, score_threshold):
            v = logic.rethreshold(models, state, score_threshold)
            return {**view(v), ui.status: f"Score threshold {float(score_threshold):.2f}."}

        def inspect_queries(
            state, model, target_image, reference_image, prompt_bank, ground_truth_json, top_k
        ):
            state, v, notices = logic.inspect(
                models,
                state,
                model,
                target_image,
                reference_image,
                prompt_bank,
                ground_truth_json,
                top_k,
                settings,
            )
            return {
                session: state,
                ui.queries: _frame(v.headers, v.rows),
                ui.plot: v.plot,
                ui.top_image: v.top_queries,
                ui.query_summary: v.summary,
                ui.status: _status("Queries inspected.", notices),
            }

        def after_compare(ok, *args):
            return inspect_queries(*args) if ok else [gr.skip()] * len(inspect_out)

        def new_reference(image):
            notice = size_notice(image, settings.max_side)
            if notice:
                gr.Info(notice)

        def new_target(image):
            new_reference(image)
            return None, None  # another image: the example's ground truth no longer applies

        def save_bank(state, target_image, reference_image, bank_name):
            state, names, files, message = logic.save_bank(
                models, state, target_image, reference_image, bank_name, settings
            )
            return {
                session: state,
                ui.bank: gr.update(choices=[layout.NO_BANK] + [(n, n) for n in names]),
                ui.bank_files: files,
                ui.status: message,
            }

        def export_coco(state):
            paths, message = app_export.export_coco(state)
            return {ui.export_files: paths, ui.status: message}

        def send_to_fiftyone(state):
            return {ui.fiftyone_status: app_export.send_to_fiftyone(state)}

        lane = dict(concurrency_limit=settings.concurrency, concurrency_id="model")
        raw = dict(preprocess=False)  # annotator payloads are read (and checked) by app_inputs
        private = dict(api_visibility="private")
        inspect_in = [session, ui.which, ui.target, ui.reference, ui.bank, ui.gt_file, ui.top_k]
        inspect_out = [session, ui.queries, ui.plot, ui.top_image, ui.query_summary, ui.status]
        view_out = [*ui.images.values(), ui.counts, ui.summary]
        status = ui.status

        ui.example.input(
            _guarded(load_example, status),
            [ui.example],
            [ui.target, ui.classes, ui.gt_file, status],
            api_name="load_example",
        )
        for event in (ui.classes.submit, ui.classes.blur):
            event(offer_classes, [ui.classes], [ui.target, ui.reference], **private)
        ui.target.upload(new_target, [ui.target], [ui.gt_file, ui.example], **private, **raw)
        ui.reference.upload(new_reference, [ui.reference], None, **private, **raw)
        ui.detect.click(
            _guarded(compare, status, {compared: False}),
            [session, ui.target, ui.reference, ui.bank, ui.threshold],
            [session, compared, *view_out, status],
            api_name="compare",
            **raw,
            **lane,
        ).then(
            _guarded(after_compare, status),
            [compared, *inspect_in],
            inspect_out,
            **private,
            **raw,
            **lane,
        )
        ui.threshold.release(
            _guarded(apply_threshold, status),
            [session, ui.threshold],
            [*view_out, status],
            api_name="apply_threshold",
        )
        ui.inspect.click(
            _guarded(inspect_queries, status),
            inspect_in,
            inspect_out,
            api_name="inspect_queries",
            **raw,
            **lane,
        )
        ui.which.input(
            _guarded(inspect_queries, status), inspect_in, inspect_out, **private, **raw, **lane
        )
        ui.save.click(
            _guarded(save_bank, status),
            [session, ui.target, ui.reference, ui.bank_name],
            [session, ui.bank, ui.bank_files, status],
            api_name="save_bank",
            **raw,
            **lane,
        )
        ui.export.click(
            _guarded(export_coco, status),
            [session],
            [ui.export_files, status],
            api_name="export_coco",
        )
        ui.fiftyone.click(
            _guarded(send_to_fiftyone, ui.fiftyone_status),
            [session],
            [ui.fiftyone_status],
            api_name="send_to_fiftyone",
            **lane,
        )

        def model_info() -> dict:
            """The loaded models, bundled examples, limits and negative-class prefixes."""
            return {
                "models": {
                    s.key: {"available": s.available, "source": s.source, "error": s.error}
                    for s in models.slots
                },
                "examples": list(examples),
                "limits": dataclasses.asdict(settings),
                "negative_prefixes": list(NEGATIVE_PREFIXES),
            }

        gr.api(model_info, api_name="model_info")
    return demo


MAX_UPLOAD = "25mb"  # per file; images above ~89 M pixels are refused after upload too


def serve(demo, host: str = "127.0.0.1", port: int | None = None, *, block: bool = True):
    """Launch ``demo`` as the command line does: bound to ``host`` (local by default), uploads
    capped at MAX_UPLOAD, files served only from gradio's upload folder and the examples."""
    return demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, max_file_size=MAX_UPLOAD, prevent_thread_lock=not block
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="SFT checkpoint directory (default: models/sft)")
    parser.add_argument("--grqo", help="GRQO checkpoint directory (default: models/grqo)")
    parser.add_argument("--min-size", type=int, default=256, help="shorter image side, pixels")
    parser.add_argument("--max-size", type=int, default=512, help="cap on the longer side")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=Path, default=EXAMPLES_DIR)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    use_available_cpus()
    models = Models.from_checkpoints(
        args.sft, args.grqo, min_size=args.min_size, max_size=args.max_size, device=args.device
    )
    for problem in models.problems():
        print(f"warning: {problem}", file=sys.stderr)
    if not models.available():
        print("Starting without models; the page says how to provide them.", file=sys.stderr)
    serve(build_demo(models, examples_dir=args.examples), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
