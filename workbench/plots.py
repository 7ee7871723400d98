"""Matplotlib figures for the notebooks: training curves, query selection, matching costs, rewards.

``viz`` draws on images with PIL; this module lays numbers and images out in figures. matplotlib
is imported inside each function, so importing the module costs nothing. Every ``plot_*``
returns the ``Figure``; tensors may be torch or numpy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workbench.viz import palette_color, to_pil


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _rgb_of(color: Sequence[int]) -> tuple[float, ...]:
    """An RGB colour of 0-255 ints as matplotlib's 0-1 floats."""
    return tuple(c / 255 for c in color[:3])


def png_bytes(picture, dpi: int = 100) -> bytes:
    """A PIL image, an image tensor or a matplotlib figure (closed after) as PNG bytes: the
    value of an ``ipywidgets.Image``, which notebooks redraw on every widget change."""
    buffer = io.BytesIO()
    if hasattr(picture, "savefig"):
        import matplotlib.pyplot as plt

        picture.savefig(buffer, format="png", dpi=dpi)
        plt.close(picture)
    else:
        to_pil(picture).save(buffer, format="png")
    return buffer.getvalue()


# --- training runs ---------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (training logs and ``eval/...`` lines), in order;
    an empty list while the run has not logged yet. A half-written last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the trainer is writing it right now
            break
    return records


def plot_metrics(
    records: Sequence[dict] | str | Path,
    panels: Mapping[str, Sequence[str]],
    *,
    logy: Sequence[str] = (),
    size: tuple[float, float] = (4.2, 3.0),
):
    """One panel per entry of ``panels`` (title -> metric names), each metric against ``step``.

    ``records``: a run directory or :func:`read_metrics` records; records lacking a metric (or
    holding ``None`` for it) are skipped. Panels named in ``logy`` get a log y-axis.
    """
    import matplotlib.pyplot as plt

    if isinstance(records, str | Path):
        records = read_metrics(records)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False
    )
    for ax, (title, keys) in zip(axes[0], panels.items(), strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="." if len(points) < 30 else None, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if title in logy:
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_with_live_metrics(
    job: Callable[[], Any],
    run_dir: str | Path,
    panels: Mapping[str, Sequence[str]],
    show: Callable[[Any], Any],
    *,
    every_s: float = 5.0,
    **plot_kwargs,
) -> Any:
    """Run ``job`` (e.g. ``lambda: train(cfg, progress=False)``) in a background thread and pass
    ``show`` a :func:`plot_metrics` figure of ``run_dir`` every ``every_s`` seconds while it runs
    and once when it ends (each figure is closed after ``show``). In a notebook ``show`` is a
    display handle's ``update``, so one output is redrawn in place.

    Returns what ``job`` returned; re-raises what it raised, after drawing the last figure.
    """
    import concurrent.futures

    import matplotlib.pyplot as plt

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(job)
        finished = False
        while not finished:  # wait() returns as soon as the job ends: no idle last sleep
            finished = bool(concurrent.futures.wait([running], timeout=every_s).done)
            fig = plot_metrics(run_dir, panels, **plot_kwargs)
            show(fig)
            plt.close(fig)
    return running.result()


# --- query selection -------------------------------------------------------------------------


def token_centres(
    token_index: Tensor, spatial_shapes: Sequence[tuple[int, int]], input_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Where encoder tokens sit: ``(level [N] int, centre_xy [N, 2])``.

    Tokens are the feature maps flattened level by level, row-major (``ImageFeatures``); a
    token's centre is its cell's centre in pixels of the ``input_hw`` (height, width) tensor the
    model was given (padding included, since every map covers the padded input).
    """
    index = _np(token_index).astype(np.int64).reshape(-1)
    sizes = np.array([h * w for h, w in spatial_shapes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    level = np.searchsorted(starts, index, side="right") - 1
    shapes = np.array(spatial_shapes)[level]  # [N, 2] (h, w) of each token's map
    row, col = np.divmod(index - starts[level], shapes[:, 1])
    x = (col + 0.5) / shapes[:, 1] * input_hw[1]
    y = (row + 0.5) / shapes[:, 0] * input_hw[0]
    return level, np.stack([x, y], -1)


def plot_query_selection(
    image,
    token_scores: Tensor,
    select_index: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    prompt_index: Tensor,
    names: Sequence[str] = (),
    colors: Sequence[tuple[int, int, int]] = (),
    size: float = 3.4,
):
    """Visual-guided query selection on one image.

    Left: the image with every selected token at its cell centre, coloured by the prompt it
    scores highest (``prompt_index [Q]``; prompt ``u`` drawn in ``colors[u]``, RGB 0-255,
    default ``viz.palette_color(u)``), larger for coarser levels; the legend sits under the
    image. Then one panel per level: the objectness ``sigmoid(token_scores)`` of every token
    (``[T]`` max-over-prompts encoder logits, ``VisualPromptDetector.selection_logits``) on one
    colour scale from 0 to the highest, shown by a shared colour bar; selected tokens marked ``x``.
    ``image``: the model's ``[3, H, W]`` input (or a PIL image of the same size).
    """
    import matplotlib.pyplot as plt

    pil = to_pil(image)
    level, xy = token_centres(select_index, spatial_shapes, (pil.height, pil.width))
    prompts = _np(prompt_index).astype(int)
    scores = 1 / (1 + np.exp(-_np(token_scores)))
    colors = list(colors) or [palette_color(u) for u in range(int(prompts.max(initial=0)) + 1)]
    fig, axes = plt.subplots(
        1,
        1 + len(spatial_shapes),
        figsize=(size * (1 + len(spatial_shapes)) + 0.8, size + 0.4),
        layout="constrained",
    )
    axes[0].imshow(pil)
    for u in np.unique(prompts):
        at = prompts == u
        label = names[u] if u < len(names) else f"prompt {u}"
        axes[0].scatter(
            xy[at, 0],
            xy[at, 1],
            s=12 * 2.0 ** level[at],
            color=_rgb_of(colors[u]),
            edgecolors="black",
            linewidths=0.5,
            label=label,
        )
    axes[0].set_title(f"{len(prompts)} selected tokens", fontsize=9)
    axes[0].legend(
        fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False
    )
    start, selected = 0, _np(select_index).astype(int)
    for lv, (h, w) in enumerate(spatial_shapes):
        ax = axes[1 + lv]
        heat = ax.imshow(
            scores[start : start + h * w].reshape(h, w), vmin=0, vmax=scores.max(), cmap="viridis"
        )
        rows, cols = np.divmod(selected[level == lv] - start, w)
        ax.scatter(cols, rows, marker="x", color="white", s=14, linewidths=1.2)
        ax.set_title(f"level {lv}: {h}x{w}, {int((level == lv).sum())} picked", fontsize=9)
        start += h * w
    for ax in axes:
        ax.axis("off")
    fig.colorbar(heat, ax=axes[1:], shrink=0.85, label="objectness sigmoid(selection logit)")
    return fig


def plot_embeddings_2d(
    embeddings: Tensor, colourings: Mapping[str, Sequence[str]], size: float = 3.6
):
    """The first two principal components of ``embeddings [N, d]``, one panel per colouring
    (title -> a label for each of the N points, e.g. each exemplar's class or attribute). A label
    that names a matplotlib colour ("red") is drawn in that colour."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import is_color_like

    x = torch.as_tensor(_np(embeddings), dtype=torch.float64)
    x = x - x.mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).numpy()
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    fig, axes = plt.subplots(
        1, len(colourings), figsize=(size * len(colourings), size), squeeze=False
    )
    for ax, (title, labels) in zip(axes[0], colourings.items(), strict=True):
        for k, value in enumerate(sorted(set(labels))):
            at = np.array([label == value for label in labels])
            colour = value if is_color_like(value) else _rgb_of(palette_color(k))
            ax.scatter(xy[at, 0], xy[at, 1], s=14, color=colour, label=value)
        ax.set_title(f"coloured by {title}", fontsize=9)
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})", fontsize=8)
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize=8)
        ax.legend(  # under the axes, so no point is hidden
            fontsize=7,
            ncol=min(3, len(set(labels))),
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            frameon=False,
        )
    fig.tight_layout()
    return fig


def plot_layer_ious(
    ious: Tensor,
    stage_names: Sequence[str],
    query_labels: Sequence[str],
    colors: Sequence[tuple[int, int, int]] = (),
    size: tuple[float, float] = (5.0, 3.2),
):
    """Iterative box refinement, measured: ``ious [S, K]`` is the IoU of K queries' boxes with
    their objects at S stages (``stage_names``: proposals, then each decoder layer). One line per
    query (``query_labels[k]``, drawn in ``colors[k]``, RGB 0-255, default
    ``viz.palette_color(k)``; queries sharing a colour get different line styles), the mean over
    queries as a thick black line; the legend sits right of the axes."""
    import matplotlib.pyplot as plt

    values = _np(ious).reshape(len(stage_names), len(query_labels))
    colors = list(colors) or [palette_color(k) for k in range(len(query_labels))]
    styles, uses = ("-", "--", ":", "-."), {}
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    for k, (label, colour) in enumerate(zip(query_labels, colors, strict=True)):
        n = uses[tuple(colour)] = uses.get(tuple(colour), -1) + 1  # earlier lines of this colour
        style = styles[n % len(styles)]
        ax.plot(values[:, k], style, marker="o", ms=4, color=_rgb_of(colour), label=label)
    ax.plot(values.mean(1), "-", color="black", lw=2.5, marker="s", label="mean")
    ax.set_xticks(range(len(stage_names)), stage_names, fontsize=8)
    ax.set_ylabel("IoU with its object")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# --- GRQO ------------------------------------------------------------------------------------


def plot_cost_terms(
    terms: Mapping[str, Tensor],
    weights: Mapping[str, float],
    matches: tuple[Tensor, Tensor] | None = None,
    gt_names: Sequence[str] = (),
    size: tuple[float, float] = (3.0, 4.2),
):
    """Heatmaps of a ``[Q, N]`` matching cost (queries in selection order x ground truths): the
    weighted total first, then each weighted term (``terms`` unweighted, ``weights`` by name).
    ``o`` marks the Hungarian assignment ``(query_index, gt_index)``; ``.`` marks each query's
    cheapest ground truth, whose cost is minus that query's GRQO reward."""
    import matplotlib.pyplot as plt

    weighted = {f"{weights[k]:g} x {k}": weights[k] * _np(v) for k, v in terms.items()}
    total = sum(weighted.values())
    panels = {"total cost": total, **weighted}
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]))
    q, n = total.shape
    for ax, (title, values) in zip(axes, panels.items(), strict=True):
        image = ax.imshow(values, aspect="auto", cmap="magma_r", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.08)
        ax.scatter(total.argmin(1), np.arange(q), s=4, color="cyan")
        if matches is not None:
            rows, cols = (_np(m).astype(int) for m in matches)
            ax.scatter(cols, rows, s=40, facecolors="none", edgecolors="lime", linewidths=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ground truth")
        ax.set_xticks(
            range(n),
            [gt_names[j] if j < len(gt_names) else str(j) for j in range(n)],
            rotation=90,
            fontsize=6,
        )
    axes[0].set_ylabel("query (selection rank)")
    fig.tight_layout()
    return fig


def plot_rewards(
    rewards: Tensor, advantages: Tensor, muted: int, kl: Tensor | None = None, size=(4.2, 3.0)
):
    """One image's group: reward and advantage of every query against its selection rank, the
    ``muted`` lowest-ranked shaded (their advantage is zeroed); the k3 KL of each query if given.
    ``rewards``, ``advantages``, ``kl``: ``[Q]``; or ``[L, Q]`` for one line per decoder layer."""
    import matplotlib.pyplot as plt

    series = {"reward": _np(rewards), "advantage": _np(advantages)}
    if kl is not None:
        series["KL to the reference"] = _np(kl)
    fig, axes = plt.subplots(1, len(series), figsize=(size[0] * len(series), size[1]))
    for ax, (title, values) in zip(axes, series.items(), strict=True):
        values = values.reshape(-1, values.shape[-1])
        q = values.shape[-1]
        for layer, row in enumerate(values):
            last = layer == len(values) - 1
            label = f"layer {layer}" if len(values) > 1 else None
            ax.plot(
                row,
                ".-" if last else "-",
                ms=3,
                lw=1 if last else 0.7,
                alpha=1 if last else 0.5,
                label=label,
            )
        if muted and title != "KL to the reference":  # the mute acts on advantages only
            ax.axvspan(q - muted - 0.5, q - 0.5, color="grey", alpha=0.2, label=f"muted ({muted})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("query (selection rank)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- legends and FiftyOne samples ------------------------------------------------------------


def legend_outside(
    fig,
    entries: Mapping[str, Sequence[int] | str],
    *,
    linewidths: Mapping[str, float] | None = None,
    title: str | None = None,
):
    """A legend to the right of the figure's axes, one line per entry in its colour (``(r, g, b)``
    of 0-255 ints, or a matplotlib colour such as ``"#ff851b"``), ``linewidths[name]`` wide
    (default 2). Returns the legend."""
    from matplotlib.lines import Line2D

    widths = linewidths or {}
    handles = [
        Line2D([], [], color=c if isinstance(c, str) else _rgb_of(c), lw=widths.get(name, 2))
        for name, c in entries.items()
    ]
    return fig.legend(
        handles,
        list(entries),
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        fontsize=8,
        frameon=False,
    )


def fiftyone_boxes_xyxy(detections: Sequence, width: float, height: float) -> list[list[float]]:
    """Pixel ``[x0, y0, x1, y1]`` of FiftyOne detections, whose ``bounding_box`` is
    ``[x, y, w, h]`` relative to the image (top-left corner, fractions of width and height)."""
    return [
        [x * width, y * height, (x + w) * width, (y + h) * height]
        for x, y, w, h in (d.bounding_box for d in detections)
    ]


def merged_into(raw: Sequence, keepers: Sequence, *, iou_above: float, min_score: float) -> list:
    """The ``raw`` detections scoring at least ``min_score`` that overlap a same-label keeper at
    IoU above ``iou_above`` without being the keeper itself (IoU 1): the raw boxes a duplicate
    merge folded into the ``keepers``. Detections are FiftyOne-like objects with ``bounding_box``
    (relative xywh), ``label`` and ``confidence``; the raw order is kept."""
    from workbench.boxes import box_iou

    raw = [d for d in raw if d.confidence >= min_score]
    if not raw or not keepers:
        return []
    iou = box_iou(
        torch.tensor(fiftyone_boxes_xyxy(keepers, 1, 1)),
        torch.tensor(fiftyone_boxes_xyxy(raw, 1, 1)),
    )
    same = torch.tensor([[k.label == r.label for r in raw] for k in keepers])
    hit = ((iou > iou_above) & (iou < 1 - 1e-9) & same).any(0).tolist()
    return [d for d, h in zip(raw, hit, strict=True) if h]


def plot_fiftyone_sample(
    image,
    layers: Mapping[str, Sequence],
    colors: Mapping[str, str],
    *,
    emphasis: str,
    title: str = "",
    size: float = 8,
):
    """An image (a path, PIL image or tensor) with FiftyOne detections drawn field by field, in
    the order of ``layers`` (field -> detections), each in its App colour (``colors``: field ->
    hex): the ``emphasis`` field thick and captioned with label and score, the others thin and
    uncaptioned. A legend outside the image names the fields."""
    from PIL import Image, ImageColor

    from workbench.viz import draw_boxes, plot_images

    picture = Image.open(image) if isinstance(image, str | Path) else image
    picture = to_pil(picture)
    for field, dets in layers.items():
        main = field == emphasis
        picture = draw_boxes(
            picture,
            fiftyone_boxes_xyxy(dets, picture.width, picture.height),
            [d.label for d in dets] if main else (),
            scores=[d.confidence for d in dets] if main else None,
            colors=[ImageColor.getrgb(colors[field])] * len(dets),
            width=3 if main else 1,
        )
    fig = plot_images([picture], [title], columns=1, size=size)
    widths = {field: 3 if field == emphasis else 1 for field in layers}
    legend_outside(fig, {field: colors[field] for field in layers}, linewidths=widths)
    return fig
