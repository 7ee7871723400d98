"""What the app shows: the two models' detections with their agreement, per-class counts, and
the per-query table, plot and top-K drawing. Plain Python and PIL / matplotlib (no gradio).

Agreement: a detection of one model is "found by both" when the other model has a detection of
the same class with IoU >= 0.5; pairs are matched one-to-one, best score first (COCO's greedy
rule), so two SFT boxes on one object do not both count as agreeing with one GRQO box.
"""

from __future__ import annotations

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
COLORS = {BOTH: (30, 200, 90), "sft": (255, 140, 0), "grqo": (40, 120, 255)}
LEGEND = (
    "**Boxes:** green = found by both models (same class, IoU >= 0.5) · "
    "orange = only SFT · blue = only GRQO"
)


def agreement(a: Detections, b: Detections, iou: float = AGREEMENT_IOU) -> tuple[list, list]:
    """``(status_a, status_b)``: ``"both"`` or ``"only"`` for every detection of each model."""
    status_a, status_b = [ONLY] * len(a), [ONLY] * len(b)
    if not len(a) or not len(b):
        return status_a, status_b
    overlap = box_ops.box_iou(a.boxes_xyxy, b.boxes_xyxy)
    overlap[a.prompt_index[:, None] != b.prompt_index[None, :]] = -1.0
    taken = torch.zeros(len(b), dtype=torch.bool)
    for i in torch.argsort(a.scores, descending=True).tolist():
        candidates = overlap[i].masked_fill(taken, -1.0)
        j = int(candidates.argmax())
        if float(candidates[j]) >= iou:
            taken[j] = True
            status_a[i], status_b[j] = BOTH, BOTH
    return status_a, status_b


def threshold(dets: Detections, score_threshold: float) -> Detections:
    """The detections scoring at least ``score_threshold``."""
    keep = dets.scores >= score_threshold
    return Detections(
        dets.boxes_xyxy[keep],
        dets.scores[keep],
        dets.prompt_index[keep],
        tuple(n for n, k in zip(dets.names, keep.tolist(), strict=True) if k),
        dets.image_size,
        dets.query_index[keep],
    )


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


def draw_comparison(image, dets: Detections, status: Sequence[str], model: str) -> Image.Image:
    """One model's detections: green where the other model agrees, the model's colour (dashed)
    where it alone found the object."""
    captions = [f"{n} {s:.2f}" for n, s in zip(dets.names, dets.scores.tolist(), strict=True)]
    colors = [COLORS[BOTH] if s == BOTH else COLORS[model] for s in status]
    return draw_labelled(image, dets.boxes_xyxy, captions, colors, [s == ONLY for s in status])


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

COLUMNS = (
    "rank",
    "query_index",
    "class",
    "score",
    "objectness",
    "select_score",
    "box_xyxy",
    "matched_gt",
    "iou",
    "cost",
    "reward",
    "advantage",
    "muted",
    "hungarian",
    "kl",
)


def table_rows(records: Sequence[QueryRecord], gt_names: Sequence[str] = ()) -> tuple[list, list]:
    """``(headers, rows)`` of the query table, dropping columns that are empty for this image
    (reward-side columns without ground truth, KL without a reference)."""
    rows = []
    for r in records:
        matched = "" if r.matched_gt is None else f"{r.matched_gt}: {gt_names[r.matched_gt]}"
        values = {
            "rank": r.rank,
            "query_index": r.query_index,
            "class": r.extra.get("name", ""),
            "score": r.score,
            "objectness": r.objectness,
            "select_score": r.select_score,
            "box_xyxy": ", ".join(f"{v:.0f}" for v in r.box_xyxy),
            "matched_gt": matched,
            "iou": r.iou,
            "cost": r.cost,
            "reward": r.reward,
            "advantage": r.advantage,
            "muted": r.muted,
            "hungarian": r.extra.get("hungarian"),
            "kl": r.kl,
        }
        rows.append(values)
    keep = [c for c in COLUMNS if any(row[c] not in (None, "") for row in rows)]
    return keep, [[_rounded(row[c]) for c in keep] for row in rows]


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def query_plot(records: Sequence[QueryRecord], title: str) -> Image.Image:
    """Selection score against reward and advantage (with ground truth) or against score and KL
    (without); muted queries as grey crosses, Hungarian-assigned ones ringed in red."""
    has_truth = any(r.reward is not None for r in records)
    has_kl = any(r.kl is not None for r in records)
    panels = (
        [("reward", "reward"), ("advantage", "advantage")]
        if has_truth
        else [("score", "class score")] + ([("kl", "KL (k3) vs reference")] if has_kl else [])
    )
    fig = Figure(figsize=(4.2 * len(panels), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    x = [r.select_score for r in records]
    groups = [  # (indices, marker style), drawn in this order on every panel
        ([i for i, r in enumerate(records) if not r.muted], {"s": 18, "label": "active"}),
        (
            [i for i, r in enumerate(records) if r.muted],
            {"s": 22, "marker": "x", "color": "0.55", "label": "muted"},
        ),
        (
            [i for i, r in enumerate(records) if r.extra.get("hungarian")],
            {"s": 80, "facecolors": "none", "edgecolors": "red", "label": "Hungarian match"},
        ),
    ]
    for k, (field, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        y = [getattr(r, field) if getattr(r, field) is not None else float("nan") for r in records]
        for indices, style in groups:
            if indices:  # an empty group would only add a legend entry
                ax.scatter([x[i] for i in indices], [y[i] for i in indices], **style)
        ax.set_xlabel("selection score (logit)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.canvas.draw()
    return Image.frombuffer(
        "RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()
    ).convert("RGB")


def draw_top_queries(image, records: Sequence[QueryRecord], top_k: int) -> Image.Image:
    """The ``top_k`` best-scoring queries on the image, captioned ``q<index> <score>``; coloured
    by advantage when known (green > 0, red < 0, grey muted), else by class."""
    best = sorted(records, key=lambda r: -r.score)[: max(0, top_k)]
    colors = []
    for r in best:
        if r.advantage is None:
            colors.append(color_for(r.prompt_index))
        elif r.muted:
            colors.append((150, 150, 150))
        else:
            colors.append((30, 200, 90) if r.advantage > 0 else (230, 50, 50))
    captions = [f"q{r.query_index} {r.score:.2f}" for r in best]
    return draw_labelled(image, [r.box_xyxy for r in best] or torch.zeros(0, 4), captions, colors)
