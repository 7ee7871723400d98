"""The app's handlers as plain functions: compare, re-threshold, inspect queries, prompt banks,
examples and model info (export: :mod:`workbench.app.export`). ``app.py`` wires the page's
components to them; tests call them directly, without a server.

State: the models are shared, read-only; everything per user lives in a
:class:`~workbench.app.session.Session` (its bank folder, saved banks, last comparison). Handlers
take the session and return it; none keeps anything elsewhere. Every user-facing problem is an
:class:`~workbench.inputs.InputError` whose message says what to fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, replace

from PIL import Image

from workbench.analysis import (
    GroundTruth,
    reference_selection_logits,
    run_settings,
    table_from_outputs,
)
from workbench.app import render
from workbench.app.examples import Example
from workbench.app.inputs import (
    BOX_KEYS,
    NEGATIVE_PREFIXES,
    REFERENCE,
    Request,
    drawing_copy,
    read_ground_truth,
    read_request,
    split_label,
    truth_for_prompts,
)
from workbench.app.models import Models, ModelSlot, Settings
from workbench.app.session import Comparison, InspectedQueries, Session
from workbench.inputs import InputError
from workbench.postprocess import MERGE_IOU, QueryOutputs
from workbench.predictor import EncodedImage
from workbench.prompt_bank import PromptBank
from workbench.query_metrics import query_stats
from workbench.viz import to_pil


def prompt_bank(
    slot: ModelSlot, request: Request, session: Session, encoded, search: bool = True
) -> PromptBank:
    """The classes ``slot``'s model searches for: the chosen saved bank (this model's copy)
    followed by the drawn prompts, embedded by this model. A search needs a positive class; a
    saved bank may hold negatives only (to combine with other prompts later)."""
    parts = [session.bank(request.bank_name, slot.key)] if request.bank_name else []
    if request.prompts:
        images = {REFERENCE: request.reference.image} if request.reference else {}
        parts.append(slot.predictor.embed_prompts(request.prompts, images, encoded))
    bank = parts[0] if len(parts) == 1 else PromptBank.concat(parts)
    if search and all(bank.negative):
        raise InputError(
            "every class is negative ('-' or 'not ' prefix); add at least one positive example"
        )
    return bank


def _ground_truth(gt_file, request: Request):
    if not gt_file:
        return None
    path = gt_file.get("path") if isinstance(gt_file, dict) else str(gt_file)
    truth, notices = read_ground_truth(path, request.target)
    request.notices += notices
    return truth


def describe_classes(names, negative, num_exemplars) -> str:
    """``"star (2 boxes), not circle (1 box)"``: what was searched for."""
    return ", ".join(
        f"{'not ' if neg else ''}{name} ({k} box{'es' if k != 1 else ''})"
        for name, neg, k in zip(names, negative, num_exemplars, strict=True)
    )


def _slots(models: Models) -> list[ModelSlot]:
    slots = models.available()
    if not slots:
        raise InputError("no model is loaded: " + " ".join(models.problems()))
    return slots


# --- compare ----------------------------------------------------------------------------------


@dataclass
class ComparisonView:
    """What the page shows of a comparison: each model's drawing, the per-class count table
    (``colors``: each row's class colour), the summary under the images and the status line."""

    images: dict[str, Image.Image | None]
    headers: list[str]
    rows: list[list]
    colors: list[tuple[int, int, int]]
    summary: str
    status: str


def compare(
    models,
    session,
    target,
    reference,
    bank_name,
    score_threshold,
    settings,
    progress=None,
    *,
    merge: bool = True,
):
    """Run both models on the same prompts; ``progress(fraction, text)`` hears each step, and
    ``merge`` says whether duplicates are merged. Returns ``(session, ComparisonView, notices)``."""
    session = session if isinstance(session, Session) else Session()
    session.comparison = None  # a failed run must not leave the previous image's results
    request = read_request(target, reference, bank_name, settings)
    detections, sources, seconds, bank = {}, {}, {}, None
    slots = _slots(models)
    for k, slot in enumerate(slots):
        if progress is not None:
            progress(k / len(slots), f"{slot.title}: searching {request.target.file_name}")
        start = time.perf_counter()
        encoded = slot.predictor.encode(request.target.image)
        bank = prompt_bank(slot, request, session, encoded)
        detections[slot.key] = slot.predictor.predict(  # all top-K: re-thresholded later
            encoded, bank, score_threshold=0.0, max_detections=settings.max_detections
        )
        seconds[slot.key] = time.perf_counter() - start
        sources[slot.key] = slot.source
    session.comparison = Comparison(
        to_pil(request.target.image),
        request.target.file_name,
        bank.names,
        bank.negative,
        bank.num_exemplars,
        detections,
        sources,
        float(score_threshold),
        MERGE_IOU if merge else None,
        seconds,
    )
    return session, comparison_view(session, models), request.notices


def rethreshold(models, session, score_threshold, merge: bool = True) -> ComparisonView | None:
    """The last comparison at another score threshold, duplicates merged or not (no model
    runs); None when there is no comparison yet."""
    if not isinstance(session, Session) or session.comparison is None:
        return None
    session.comparison.score_threshold = float(score_threshold)
    session.comparison.merge_iou = MERGE_IOU if merge else None
    return comparison_view(session, models)


def comparison_view(session: Session, models: Models) -> ComparisonView:
    """The page's view of ``session``'s last comparison (see the module docstring of
    :mod:`workbench.app.render` for the drawing)."""
    c = session.comparison
    dets = c.shown()
    if len(dets) == 2:
        a, b = render.agreement(dets["sft"], dets["grqo"])
        status = {"sft": a, "grqo": b}
    else:
        status = {k: [render.ONLY] * len(d) for k, d in dets.items()}
    colors = [session.color(n, neg) for n, neg in zip(c.names, c.negative, strict=True)]
    images = {
        s.key: render.draw_comparison(c.image, dets[s.key], status[s.key], colors)
        if s.key in dets
        else None
        for s in models.slots
    }
    index = [i for i, neg in enumerate(c.negative) if not neg]
    headers, rows = render.count_rows(c.names, dets, status)
    rows, row_colors = [rows[i] for i in index], [colors[i] for i in index]
    parts = []
    for k, d in dets.items():
        raw = int((c.detections[k].scores >= c.score_threshold).sum())
        merged = f" ({raw} raw boxes before merging)" if c.merge_iou is not None else ""
        parts.append(f"**{models.get(k).title}**: {len(d)} objects{merged}")
    if len(dets) == 2:
        parts.append(f"**found by both**: {status['sft'].count(render.BOTH)}")
    merging = (
        f"duplicates merged above IoU {c.merge_iou:.2f}"
        if c.merge_iou is not None
        else "every raw box"
    )
    summary = (
        f"**{c.file_name}** · score >= {c.score_threshold:.2f} · {merging} · "
        + " · ".join(parts)
        + "\n\n"
        + render.LEGEND
    )
    missing = models.problems()
    if missing:
        summary += "\n\n" + "\n\n".join(f"Not shown: {m}" for m in missing)
    status_line = describe_outcome(c, dets, models)
    return ComparisonView(images, headers, rows, row_colors, summary, status_line)


def describe_outcome(c: Comparison, shown: dict, models: Models) -> str:
    """The status line of a comparison: what ran on what (and what the models were trained on,
    as their checkpoints record), how long it took, what each model found and its best score;
    for a model that shows nothing, what to try."""
    described = describe_classes(c.names, c.negative, c.num_exemplars)
    titles = " and ".join(models.get(k).title for k in c.detections)
    trained = {models.get(k).trained_on for k in c.detections} - {None}
    knows = f" (trained on {' / '.join(sorted(trained))})" if trained else ""
    lines = [
        f"Searched **{c.file_name}** for {described} with {titles}{knows} in "
        f"{sum(c.seconds.values()):.1f} s."
    ]
    empty = False
    for key, dets in shown.items():
        title, raw = models.get(key).title, c.detections[key]
        if not len(raw):
            lines.append(f"{title} found nothing: every object it saw went to a negative class.")
            empty = True
            continue
        best = f"best score {float(raw.scores.max()):.2f}"
        if len(dets):
            found = Counter(dets.names)
            per_class = ", ".join(f"{found[n]} {n}" for n in dict.fromkeys(dets.names))
            lines.append(f"{title} found {per_class} ({best}).")
            continue
        empty = True
        top = int(raw.scores.argmax())
        lower = math.floor(float(raw.scores[top]) * 100) / 100
        lines.append(
            f"{title} found nothing scoring >= {c.score_threshold:.2f} ({best}, "
            f"{raw.names[top]}): lower the score threshold to {lower:.2f} to see it."
        )
    if empty:
        lines.append(
            "For objects unlike what the models were trained on: draw several example boxes per "
            "class (they are averaged), try a reference image, or fine-tune a model on a few "
            "annotated images of your objects (`python -m workbench train CONFIG "
            "model.init_from=models/sft`, see the README's Training section)."
        )
    return " ".join(lines)


# --- inspect ----------------------------------------------------------------------------------


@dataclass
class QueryView:
    headers: list[str]
    rows: list[list]
    plot: Image.Image
    top_queries: Image.Image
    summary: str


def inspect(
    models,
    session,
    model_key,
    target,
    reference,
    bank_name,
    gt_file,
    top_k,
    settings,
    every_column: bool = False,
):
    """Every decoder query of one model: table (the compact columns, or ``every_column``),
    plot and top-K drawing. With ground truth, rewards and errors, and every loaded model's
    query metrics on this image; with the other model loaded, the KL of the objectness against
    it (the paper's GRQO reference is the SFT model). The session keeps the queries for
    :func:`query_columns`. Returns ``(session, QueryView, notices)``."""
    session = session if isinstance(session, Session) else Session()
    slot = models.get(model_key)
    if not slot.available:
        raise InputError(f"the {slot.title} model is not loaded: {slot.error}")
    request = read_request(target, reference, bank_name, settings)
    truth = _ground_truth(gt_file, request)
    encoded = slot.predictor.encode(request.target.image)
    bank = prompt_bank(slot, request, session, encoded)
    _, queries = slot.predictor.predict(encoded, bank, return_queries=True)
    gt = None
    if truth is not None:
        gt, notices = truth_for_prompts(truth, list(bank.names), list(bank.negative))
        request.notices += notices
    other = models.get("grqo" if slot.key == "sft" else "sft")
    other_run = _prompted(other, request, session) if other.available else None
    reference_logits = None
    if other_run is not None:
        reference_logits = _reference_logits(other, other_run, encoded)
        if reference_logits is None:
            request.notices.append(f"no KL column: {other.title} tokenises images differently")
        else:
            reference_logits = reference_logits[queries.token_index]
    grqo, loss = run_settings(slot.predictor)
    records = table_from_outputs(
        queries, gt, grqo=grqo, loss=loss, reference_logits=reference_logits, names=bank.names
    )
    gt_names = [] if gt is None else [bank.names[int(i)] for i in gt.prompt_index]
    session.queries = InspectedQueries(records, gt_names)
    headers, rows = render.table_rows(records, gt_names, every_column)
    muted = sum(r.muted for r in records)
    title = f"{slot.title}: {len(records)} queries, {muted} muted"
    described = describe_classes(bank.names, bank.negative, bank.num_exemplars)
    summary = f"**{title}** · classes: {described}"
    summary += (
        f" · ground truth: {len(gt_names)} boxes"
        if gt is not None
        else " · no ground truth: scores and objectness only"
    )
    if reference_logits is not None:
        summary += f" · KL against {other.title}"
    if gt is not None:
        runs = [(slot.title, queries)]
        runs += [(other.title, _queries(other, other_run))] if other_run else []
        summary += "\n\n" + describe_query_metrics(runs, gt)
    plot = render.query_plot(records, title)
    top = render.draw_top_queries(request.target.image, records, int(top_k))
    return session, QueryView(headers, rows, plot, top, summary), request.notices


def query_columns(session, every_column: bool) -> tuple[list, list]:
    """``(headers, rows)``: the last inspected queries' table again, with the compact or every
    column (no model runs)."""
    if not isinstance(session, Session) or session.queries is None:
        raise InputError("no queries to show yet: press Inspect queries first")
    inspected = session.queries
    return render.table_rows(inspected.records, inspected.gt_names, bool(every_column))


def _prompted(slot: ModelSlot, request, session) -> tuple[EncodedImage, PromptBank]:
    """``slot``'s model's encoding of the target image and its bank of the request's classes."""
    encoded = slot.predictor.encode(request.target.image)
    return encoded, prompt_bank(slot, request, session, encoded)


def _reference_logits(other: ModelSlot, other_run, encoded: EncodedImage):
    """``[T]`` the other model's selection logit of every token, or None when its tokens do not
    line up with this model's (another backbone or resolution)."""
    ref_encoded, bank = other_run
    if ref_encoded.features.spatial_shapes_list != encoded.features.spatial_shapes_list:
        return None
    return reference_selection_logits(other.predictor, ref_encoded, bank)


def _queries(slot: ModelSlot, run) -> QueryOutputs:
    encoded, bank = run
    return slot.predictor.predict(encoded, bank, return_queries=True)[1]


def describe_query_metrics(runs: list[tuple[str, QueryOutputs]], gt: GroundTruth) -> str:
    """This image's query metrics (:mod:`workbench.query_metrics`) of each model, by title, on
    one line."""
    parts = []
    for title, queries in runs:
        m = query_stats(queries, gt.boxes_xyxy, gt.prompt_index).metrics()
        parts.append(
            f"{title}: recall of the top ⅓ / ⅔ queries {_value(m['recall_top_third'])} / "
            f"{_value(m['recall_top_two_thirds'])}, Spearman(selection, reward) "
            f"{_value(m['spearman_select_reward'])}, objectness ECE {_value(m['ece_objectness'])}"
        )
    return "**Query selection on this image** · " + " · ".join(parts)


def _value(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


# --- prompt banks -----------------------------------------------------------------------------


def save_bank(models, session, target, reference, name, settings):
    """Save the drawn prompts as bank ``name``: one file per loaded model, in the session's
    folder. Returns ``(session, bank names, files, message)``."""
    session = session if isinstance(session, Session) else Session()
    clean = re.sub(r"[^A-Za-z0-9_.\- ]", "", str(name or "")).strip(" .")
    if not clean:
        raise InputError("give the prompt bank a name (letters, digits, '-', '_', '.', spaces)")
    if clean not in session.banks and len(session.banks) >= settings.max_banks:
        raise InputError(f"this session already has {settings.max_banks} banks; reuse a name")
    request = read_request(target, reference, "", settings)
    files = {}
    for slot in _slots(models):
        encoded = slot.predictor.encode(request.target.image)
        bank = replace(prompt_bank(slot, request, session, encoded, search=False), name=clean)
        files[slot.key] = bank.save(session.folder / "banks" / f"{clean}.{slot.key}")
    session.banks[clean] = files
    classes = ", ".join(p.name for p in request.prompts)
    message = f"Saved prompt bank **{clean}** ({classes}) for {', '.join(k.upper() for k in files)}"
    return session, sorted(session.banks), [str(p) for p in files.values()], message


def for_drawing(session: Session, payload) -> dict | None:
    """A freshly uploaded image's annotator value, enlarged for drawing when small (the boxes
    start empty); None when it needs no change."""
    image = payload.get("image") if isinstance(payload, dict) else None
    path = image.get("path") if isinstance(image, dict) else image
    if not path:
        return None
    copy, k = drawing_copy(path, session.folder / "drawing")
    return {"image": copy, "boxes": []} if k > 1 else None


# --- examples and model info --------------------------------------------------------------------


@dataclass
class ExampleView:
    """A bundled example for the page: the annotator's value (image and suggested prompt boxes),
    the class names its boxes may take, its ground-truth json and a status line."""

    annotator: dict
    classes: list[str]
    ground_truth: str
    status: str


def load_example(examples: dict[str, Example], name: str, session=None):
    """The example called ``name`` (a key of ``examples``), ready to detect in: the image to
    draw on (enlarged when small, :func:`~workbench.app.inputs.drawing_copy`) and its suggested
    boxes in that image's pixels and their classes' colours of this session. Returns
    ``(session, ExampleView)``."""
    session = session if isinstance(session, Session) else Session()
    example = examples.get(name)
    if example is None:
        raise InputError(f"unknown example {name!r}; choose one of {list(examples)}")
    path, k = drawing_copy(example.image_path, session.folder / "drawing")
    boxes = [
        {**b, **{c: b[c] * k for c in BOX_KEYS}, "color": session.color(b["label"])}
        for b in example.prompt_boxes
    ]
    value = {"image": path, "boxes": boxes}
    status = (
        f"Example **{name}**: {len(boxes)} suggested prompt box(es) from its ground truth "
        f"({', '.join(b['label'] for b in boxes)}); press Detect, or draw your own."
    )
    return session, ExampleView(value, list(example.classes), str(example.annotations), status)


def label_colors(session: Session, labels) -> list[tuple[int, int, int]]:
    """Each box label's class colour in ``session`` (grey for negative classes)."""
    return [session.color(*split_label(label)) for label in labels]


def model_info(models: Models, examples: dict, settings: Settings) -> dict:
    """The loaded models (with the input size each reads images at), bundled examples, limits
    and negative-class prefixes."""
    return {
        "models": {
            s.key: {
                "available": s.available,
                "source": s.source,
                "error": s.error,
                "input_size": [s.predictor.min_size, s.predictor.max_size] if s.available else None,
            }
            for s in models.slots
        },
        "examples": list(examples),
        "limits": dataclasses.asdict(settings),
        "negative_prefixes": list(NEGATIVE_PREFIXES),
    }
