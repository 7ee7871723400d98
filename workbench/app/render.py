"""What the app shows: the two models' detections with their agreement, per-class counts, and
the per-query table, plot and top-K drawing. Plain Python and PIL / matplotlib (no gradio).

Agreement: a shown detection (thresholded, duplicates merged) of one model is "found by both"
when the other model shows one of the same class with IoU >= 0.5; pairs are matched one-to-one,
best score first (COCO's greedy rule), so two SFT boxes on one object do not both count as
agreeing with one GRQO box.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from workbench import boxes as box_ops
from workbench.types import Detections, QueryRecord
from workbench.viz import color_for, draw_boxes

AGREEMENT_IOU = 0.5
BOTH, ONLY = "both", "only"
LEGEND = (
    "**Boxes** take their class's colour (the same as on the target image and in the table): "
    "**solid** = found by both models (same class, IoU >= 0.5), **dashed** = only this model "
    "found it."
)


def agreement_pairs(
    a: Detections, b: Detections, iou: float = AGREEMENT_IOU
) -> list[tuple[int, int]]:
    """``(index in a, index in b)`` of the detections both models show: same prompt, IoU at
    least ``iou``, one-to-one, ``a``'s best-scoring detections choosing first."""
    if not len(a) or not len(b):
        return []
    overlap = box_ops.box_iou(a.boxes_xyxy, b.boxes_xyxy)
    overlap[a.prompt_index[:, None] != b.prompt_index[None, :]] = -1.0
    taken, pairs = torch.zeros(len(b), dtype=torch.bool), []
    for i in torch.argsort(a.scores, descending=True).tolist():
        candidates = overlap[i].masked_fill(taken, -1.0)
        j = int(candidates.argmax())
        if float(candidates[j]) >= iou:
            taken[j] = True
            pairs.append((i, j))
    return pairs


def agreement(a: Detections, b: Detections, iou: float = AGREEMENT_IOU) -> tuple[list, list]:
    """``(status_a, status_b)``: ``"both"`` or ``"only"`` for every detection of each model."""
    status_a, status_b = [ONLY] * len(a), [ONLY] * len(b)
    for i, j in agreement_pairs(a, b, iou):
        status_a[i], status_b[j] = BOTH, BOTH
    return status_a, status_b


DISPLAY_MIN_SIDE = 512  # small images are enlarged for drawing, so captions stay legible


def draw_labelled(
    image, boxes_xyxy, captions: Sequence[str], colors: Sequence[tuple], dashed=()
) -> Image.Image:
    """A copy of ``image`` with each box (absolute xyxy pixels) outlined in its colour and
    captioned; images smaller than ``DISPLAY_MIN_SIDE`` are enlarged first (``viz.draw_boxes``)."""
    return draw_boxes(
        image,
        boxes_xyxy,
        list(captions),
        colors=list(colors),
        dashed=list(dashed),
        min_side=DISPLAY_MIN_SIDE,
    )


def draw_comparison(
    image, dets: Detections, status: Sequence[str], colors: Sequence[tuple]
) -> Image.Image:
    """One model's detections, each in its class's colour (``colors``: one per prompt), solid
    where the other model agrees and dashed where this model alone found the object."""
    captions = [f"{n} {s:.2f}" for n, s in zip(dets.names, dets.scores.tolist(), strict=True)]
    box_colors = [colors[int(p)] for p in dets.prompt_index.tolist()]
    return draw_labelled(image, dets.boxes_xyxy, captions, box_colors, [s == ONLY for s in status])


GALLERY_MAX_SIDE = 1024  # a search's drawings are shrunk to this (pixels), to keep 200 light


def draw_found(image: Image.Image, dets: Detections, colors: Sequence[tuple]) -> Image.Image:
    """One searched image's detections (xyxy pixels of ``image``), each in its class's colour
    (``colors``: one per prompt) captioned with its class and score, on a copy at most
    ``GALLERY_MAX_SIDE`` pixels long (small images enlarged as :func:`draw_labelled` does)."""
    k = min(1.0, GALLERY_MAX_SIDE / max(image.size))
    if k < 1.0:
        size = (max(1, round(image.width * k)), max(1, round(image.height * k)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    captions = [f"{n} {s:.2f}" for n, s in zip(dets.names, dets.scores.tolist(), strict=True)]
    box_colors = [colors[int(p)] for p in dets.prompt_index.tolist()]
    return draw_labelled(image, dets.boxes_xyxy * k, captions, box_colors)


def count_rows(
    names: Sequence[str], dets: dict[str, Detections], status: dict[str, list]
) -> tuple[list[str], list[list]]:
    """Per-class counts: ``(headers, rows)``; a model missing from ``dets`` gets no columns."""
    models = [m for m in ("sft", "grqo") if m in dets]
    headers = ["class"] + [m.upper() for m in models]
    if len(models) == 2:
        headers += ["both", "only SFT", "only GRQO"]
    rows = []
    by_status = {}  # (prompt index, agreement status) -> count, per model
    if len(models) == 2:
        by_status = {
            m: Counter(zip(dets[m].prompt_index.tolist(), status[m], strict=True)) for m in models
        }
    for k, name in enumerate(names):
        row: list = [name]
        for m in models:
            row.append(int((dets[m].prompt_index == k).sum()))
        if by_status:
            sft, grqo = by_status["sft"], by_status["grqo"]
            row += [sft[k, BOTH], sft[k, ONLY], grqo[k, ONLY]]
        rows.append(row)
    return headers, rows


# --- the per-query panel ----------------------------------------------------------------------

# rank == query_index: queries come ordered by selection logit, so the index is not shown
COMPACT_COLUMNS = ("rank", "class", "score", "iou", "reward", "advantage", "kl", "muted")
EXTRA_COLUMNS = ("objectness", "select_score", "box_xyxy", "matched_gt", "cost", "hungarian")


def table_rows(
    records: Sequence[QueryRecord], gt_names: Sequence[str] = (), every_column: bool = False
) -> tuple[list, list]:
    """``(headers, rows)`` of the query table: ``COMPACT_COLUMNS``, then ``EXTRA_COLUMNS`` with
    ``every_column``, dropping columns that are empty for this image (reward-side columns without
    ground truth, KL without a reference). Values stay numbers (:func:`cell_text` shows them)."""
    columns = COMPACT_COLUMNS + (EXTRA_COLUMNS if every_column else ())
    rows = [_row(r, gt_names) for r in records]
    keep = [c for c in columns if any(row[c] not in (None, "") for row in rows)]
    return keep, [[row[c] for c in keep] for row in rows]


def _row(r: QueryRecord, gt_names: Sequence[str]) -> dict:
    """One query's values by column; ``matched_gt`` names its lowest-cost ground-truth box only
    when that box overlaps it (IoU > 0) and is of the query's class (its best prompt)."""
    name = r.extra.get("name", "")
    matched = ""
    if r.matched_gt is not None and (r.iou or 0.0) > 0 and gt_names[r.matched_gt] == name:
        matched = f"{r.matched_gt}: {name}"
    return {
        "rank": r.rank,
        "class": name,
        "score": r.score,
        "iou": r.iou,
        "reward": r.reward,
        "advantage": r.advantage,
        "kl": r.kl,
        "muted": r.muted,
        "objectness": r.objectness,
        "select_score": r.select_score,
        "box_xyxy": ", ".join(f"{v:.0f}" for v in r.box_xyxy),
        "matched_gt": matched,
        "cost": r.cost,
        "hungarian": r.extra.get("hungarian"),
    }


def cell_text(column: str, value) -> str:
    """How the table shows ``value`` of ``column``: IoU with 2 decimals, KL (>= 0, often tiny)
    in scientific notation below 1e-3, other numbers with 3 decimals, never a negative zero;
    booleans as yes / no, missing values blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, float):
        return str(value)
    if column == "kl" and 0 < abs(value) < 1e-3:
        return f"{value:.2e}"
    text = f"{value:.{2 if column == 'iou' else 3}f}"
    return text.lstrip("-") if float(text) == 0 else text


# The plot's marks: (legend label, which queries, scatter style), drawn in this order
QUERY_MARKS = (
    ("active query", lambda r: not r.muted, {"s": 18}),
    ("muted query (no advantage)", lambda r: r.muted, {"s": 22, "marker": "x", "color": "0.55"}),
    (
        "Hungarian-matched to ground truth",
        lambda r: bool(r.extra.get("hungarian")),
        {"s": 80, "facecolors": "none", "edgecolors": "red"},
    ),
)
X_LABEL = "selection logit of the query's encoder token\n(its objectness, which GRQO regularises)"


def query_figure(records: Sequence[QueryRecord], title: str) -> Figure:
    """Selection logit against reward and advantage (with ground truth) or against score and KL
    (without); one legend below the panels names every mark drawn (``QUERY_MARKS``)."""
    has_kl = any(r.kl is not None for r in records)
    panels = (
        [("reward", "reward"), ("advantage", "advantage")]
        if any(r.reward is not None for r in records)
        else [("score", "class score")] + ([("kl", "KL (k3) vs reference")] if has_kl else [])
    )
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for k, (field, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for name, chosen, style in QUERY_MARKS:
            shown = [r for r in records if chosen(r)]
            if shown:  # an empty group would only add a legend entry
                y = [getattr(r, field) for r in shown]
                y = [float("nan") if v is None else v for v in y]
                ax.scatter([r.select_score for r in shown], y, label=name, **style)
        ax.set_xlabel(X_LABEL, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def query_plot(records: Sequence[QueryRecord], title: str) -> Image.Image:
    """:func:`query_figure` as an RGB image."""
    fig = query_figure(records, title)
    fig.canvas.draw()
    return Image.frombuffer(
        "RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()
    ).convert("RGB")


def draw_top_queries(image, records: Sequence[QueryRecord], top_k: int) -> Image.Image:
    """The ``top_k`` best-scoring queries on the image, captioned ``#<rank> <class> <score>``
    (rank as in the table); coloured by advantage when known (green > 0, red < 0, grey muted),
    else by class."""
    best = sorted(records, key=lambda r: -r.score)[: max(0, top_k)]
    colors = []
    for r in best:
        if r.advantage is None:
            colors.append(color_for(r.prompt_index))
        elif r.muted:
            colors.append((150, 150, 150))
        else:
            colors.append((30, 200, 90) if r.advantage > 0 else (230, 50, 50))
    captions = [f"#{r.rank} {r.extra.get('name', '')} {r.score:.2f}" for r in best]
    return draw_labelled(image, [r.box_xyxy for r in best] or torch.zeros(0, 4), captions, colors)
