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
    NEGATIVE_PREFIXES,
    REFERENCE,
    Request,
    read_ground_truth,
    read_request,
    truth_for_prompts,
)
from workbench.app.models import Models, ModelSlot, Settings
from workbench.app.session import Comparison, Session
from workbench.inputs import InputError
from workbench.postprocess import QueryOutputs
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
    images: dict[str, Image.Image | None]
    headers: list[str]
    rows: list[list]
    summary: str


def compare(models, session, target, reference, bank_name, score_threshold, settings):
    """Run both models on the same prompts. Returns ``(session, ComparisonView, notices)``."""
    session = session if isinstance(session, Session) else Session()
    request = read_request(target, reference, bank_name, settings)
    detections, sources, bank = {}, {}, None
    for slot in _slots(models):
        encoded = slot.predictor.encode(request.target.image)
        bank = prompt_bank(slot, request, session, encoded)
        detections[slot.key] = slot.predictor.predict(  # all top-K: re-thresholded later
            encoded, bank, score_threshold=0.0, max_detections=settings.max_detections
        )
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
    )
    return session, comparison_view(session.comparison, models), request.notices


def rethreshold(models, session, score_threshold) -> ComparisonView:
    """The last comparison at another score threshold (no model runs)."""
    if not isinstance(session, Session) or session.comparison is None:
        raise InputError("nothing to filter yet: run Detect first")
    session.comparison.score_threshold = float(score_threshold)
    return comparison_view(session.comparison, models)


def comparison_view(comparison: Comparison, models: Models) -> ComparisonView:
    t = comparison.score_threshold
    dets = {k: render.threshold(d, t) for k, d in comparison.detections.items()}
    if len(dets) == 2:
        a, b = render.agreement(dets["sft"], dets["grqo"])
        status = {"sft": a, "grqo": b}
    else:
        status = {k: [render.ONLY] * len(d) for k, d in dets.items()}
    images = {
        s.key: render.draw_comparison(comparison.image, dets[s.key], status[s.key], s.key)
        if s.key in dets
        else None
        for s in models.slots
    }
    described = describe_classes(comparison.names, comparison.negative, comparison.num_exemplars)
    index = [i for i, neg in enumerate(comparison.negative) if not neg]
    headers, rows = render.count_rows(comparison.names, dets, status)
    rows = [rows[i] for i in index]
    parts = [f"**{models.get(k).title}**: {len(d)} detections" for k, d in dets.items()]
    if len(dets) == 2:
        both = status["sft"].count(render.BOTH)
        parts.append(f"**found by both**: {both}")
    summary = (
        f"Score >= {t:.2f} · classes: {described} · " + " · ".join(parts) + "\n\n" + render.LEGEND
    )
    missing = models.problems()
    if missing:
        summary += "\n\n" + "\n\n".join(f"Not shown: {m}" for m in missing)
    return ComparisonView(images, headers, rows, summary)


# --- inspect ----------------------------------------------------------------------------------


@dataclass
class QueryView:
    headers: list[str]
    rows: list[list]
    plot: Image.Image
    top_queries: Image.Image
    summary: str


def inspect(models, session, model_key, target, reference, bank_name, gt_file, top_k, settings):
    """Every decoder query of one model: table, plot and top-K drawing. With ground truth,
    rewards and errors, and every loaded model's query metrics on this image; with the other
    model loaded, the KL of the objectness against it (the paper's GRQO reference is the SFT
    model). Returns ``(session, QueryView, notices)``."""
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
    headers, rows = render.table_rows(records, gt_names)
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


# --- examples and model info --------------------------------------------------------------------


@dataclass
class ExampleView:
    """A bundled example for the page: the annotator's value (image and suggested prompt boxes),
    the class names its boxes may take, its ground-truth json and a status line."""

    annotator: dict
    classes: list[str]
    ground_truth: str
    status: str


def load_example(examples: dict[str, Example], name: str) -> ExampleView:
    """The example called ``name`` (a key of ``examples``), ready to detect in."""
    example = examples.get(name)
    if example is None:
        raise InputError(f"unknown example {name!r}; choose one of {list(examples)}")
    value = {"image": str(example.image_path), "boxes": [dict(b) for b in example.prompt_boxes]}
    status = (
        f"Example **{name}**: {len(example.prompt_boxes)} prompt box(es) drawn from its ground "
        "truth; press Detect."
    )
    return ExampleView(value, list(example.classes), str(example.annotations), status)


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
