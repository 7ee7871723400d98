"""The Gradio app: draw visual prompts, compare SFT and GRQO side by side, inspect every query.

    python app.py                                   # models/sft + models/grqo on 127.0.0.1:7860
    python app.py --sft CKPT --grqo CKPT --min-size 256 --max-size 512

``build_demo(models)`` is the factory (tests pass tiny models); nothing heavy happens at import.
The app lives in ``workbench/app/`` (handlers, inputs, rendering, model loading, the page); this
file wires the page's events to it and resolves the repository's models and examples folders.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from workbench.app.examples import scan_examples
from workbench.app.models import Models, Settings
from workbench.cpu import use_available_cpus

REPO = Path(__file__).resolve().parent
MODELS_DIR, EXAMPLES_DIR = REPO / "models", REPO / "examples"
ADAPT_DIR = REPO / "runs" / "app_adapt"  # the page's fine-tunes (one run folder each)
MAX_UPLOAD = "25mb"  # per file; images above ~89 M pixels are refused after upload too


def build_demo(
    models, *, examples_dir=EXAMPLES_DIR, settings: Settings | None = None, adapt_root=ADAPT_DIR
):
    """The app (a ``gr.Blocks``) over ``models``: a :class:`Models` (``Models.from_checkpoints``)
    or ``{"sft": Predictor | None, "grqo": Predictor | None}``. Fine-tunes started in the page
    write their run folders under ``adapt_root``."""
    import gradio as gr

    from workbench.app import export, layout
    from workbench.app.jobs import AdaptJobs

    models = models if isinstance(models, Models) else Models.from_predictors(**models)
    settings = settings or Settings()
    examples = scan_examples(examples_dir) if Path(examples_dir).is_dir() else {}
    if examples:
        gr.set_static_paths([str(Path(examples_dir).resolve())])  # served in place
    with gr.Blocks(title="DINO-R1 workbench") as demo:
        hook = export.fiftyone_hook()
        ui = layout.layout(models, examples, hook, settings)
        on = layout.Events(ui, models, examples, settings, hook, AdaptJobs(adapt_root, cwd=REPO))
        status, guard, io = ui.status, layout.guarded, on.io
        # annotator payloads are read (and checked) by workbench.app.inputs; models take turns
        lane = dict(concurrency_limit=settings.concurrency, concurrency_id="model")
        heavy, hidden = dict(preprocess=False, **lane), dict(api_visibility="private")
        # on a change of choice only: the dropdown repeats its choice as an input event when it
        # loses focus (a click on the image or on Detect), which must not reload the example
        ui.example.change(
            guard(on.load_example, status), *io.load_example, api_name="load_example"
        ).success(on.show_example, *io.show_example, **hidden)
        for event in (ui.classes.submit, ui.classes.blur):
            event(on.offer_classes, *io.offer_classes, **hidden)
        # an upload clears the annotator first: one lane keeps the two events in order
        target_lane = dict(concurrency_limit=1, concurrency_id="target")
        for event in (ui.target.upload, ui.target.clear):
            event(on.new_target, *io.new_target, **hidden, **target_lane, preprocess=False)
        ui.reference.upload(on.new_reference, *io.new_reference, **hidden, preprocess=False)
        compare = guard(on.compare, status, {ui.compared: False})
        ui.detect.click(compare, *io.compare, api_name="compare", **heavy).then(
            guard(on.after_compare, status), *io.after_compare, **hidden, **heavy
        )
        rethreshold = guard(on.apply_threshold, status)
        # every change (drag, number box, arrow keys) re-filters; only the last one counts
        again = dict(trigger_mode="always_last", show_progress="hidden")
        ui.threshold.change(rethreshold, *io.apply_threshold, api_name="apply_threshold", **again)
        ui.merge.input(rethreshold, *io.apply_threshold, **hidden, **again)
        inspect = guard(on.inspect_queries, status)
        ui.inspect.click(inspect, *io.inspect_queries, api_name="inspect_queries", **heavy)
        ui.which.input(inspect, *io.inspect_queries, **hidden, **heavy)
        columns = guard(on.query_columns, status)
        ui.every_column.change(columns, *io.query_columns, api_name="query_columns")
        ui.save.click(guard(on.save_bank, status), *io.save_bank, api_name="save_bank", **heavy)
        ui.export.click(guard(on.export_coco, status), *io.export_coco, api_name="export_coco")
        send = guard(on.send_to_fiftyone, ui.fiftyone_status)
        fiftyone_lane = dict(concurrency_limit=1, concurrency_id="fiftyone")  # not the models'
        ui.fiftyone.click(send, *io.send_to_fiftyone, api_name="send_to_fiftyone", **fiftyone_lane)
        searching = guard(on.search_images, ui.search_status)
        ui.search.click(searching, *io.search_images, api_name="search_images", **heavy)
        add = guard(on.adapt_add, ui.adapt_set)
        ui.adapt_add.click(add, *io.adapt_add, api_name="adapt_add", preprocess=False)
        ui.adapt_clear.click(on.adapt_clear, *io.adapt_clear, **hidden)
        ui.adapt_minutes.change(on.adapt_budget, *io.adapt_budget, **hidden)
        start = guard(on.adapt_start, ui.adapt_state)
        ui.adapt_start.click(start, *io.adapt_start, api_name="adapt_start")
        ui.adapt_cancel.click(on.adapt_cancel, *io.adapt_cancel, api_name="adapt_cancel")
        ui.adapt_timer.tick(on.adapt_poll, *io.adapt_poll, **hidden, show_progress="hidden")
        for button, use in (
            (ui.adapt_use_sft, on.adapt_use_sft),
            (ui.adapt_use_grqo, on.adapt_use_grqo),
        ):
            button.click(guard(use, status), *io.adapt_use, api_name=use.__name__)
        gr.api(on.model_info, api_name="model_info")
    return demo


def serve(demo, host: str = "127.0.0.1", port: int | None = None, *, block: bool = True):
    """Launch ``demo`` as the command line does: bound to ``host`` (local by default), uploads
    capped at MAX_UPLOAD, files served only from gradio's upload folder and the examples."""
    return demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, max_file_size=MAX_UPLOAD, prevent_thread_lock=not block
    )


def parse_args(argv=None) -> argparse.Namespace:
    trained = "(default: the size its checkpoint was trained at)"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="SFT checkpoint directory (default: models/sft)")
    parser.add_argument("--grqo", help="GRQO checkpoint directory (default: models/grqo)")
    parser.add_argument("--min-size", type=int, help="shorter image side, pixels " + trained)
    parser.add_argument("--max-size", type=int, help="cap on the longer side " + trained)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=Path, default=EXAMPLES_DIR)
    return parser.parse_args(argv)


# Warnings about nothing the app's user set or can change, dropped by quiet_logs: FiftyOne's App
# state round-trips config keys FiftyOne removed (three lines per App connection), and the
# mongod 6.0.5 that requirements-nodeps.txt pins (runs on Debian 12) is its oldest supported.
FIFTYONE_NOISE = {
    "fiftyone.core.config": "App config option has been removed",
    "fiftyone.core.odm.database": "oldest supported major version of MongoDB",
}


def _print_but_component_files(*args, **kwargs) -> None:
    """``print``, except gradio 6.31's leftover debug line for every custom-component file a
    page loads (``id=..., environment=client, type=component, file_name=...``)."""
    first = str(args[0]) if args else ""
    if not (first.startswith("id=") and ", environment=" in first):
        print(*args, **kwargs)


def quiet_logs() -> None:
    """The server's log holds warnings and errors (the app's handlers' with tracebacks), not
    lines per page load: WARNING and up on stderr; gradio's per-file print and
    :data:`FIFTYONE_NOISE` dropped. fiftyone prints its loggers' lines itself (on stdout), so
    they do not also propagate to ours (every line twice). Imports gradio, not fiftyone."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("fiftyone", "eta"):
        logging.getLogger(name).propagate = False
    for name, text in FIFTYONE_NOISE.items():
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())
    import gradio.routes

    gradio.routes.print = _print_but_component_files  # shadows the builtin in that module only


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_logs()
    args = parse_args(argv)
    use_available_cpus()
    models = Models.from_checkpoints(
        args.sft,
        args.grqo,
        default_folder=MODELS_DIR,
        min_size=args.min_size,
        max_size=args.max_size,
        device=args.device,
    )
    for problem in models.problems():
        print(f"warning: {problem}", file=sys.stderr)
    if not models.available():
        print("Starting without models; the page says how to provide them.", file=sys.stderr)
    serve(build_demo(models, examples_dir=args.examples), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
