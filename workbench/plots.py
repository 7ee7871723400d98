"""Matplotlib figures for the notebooks: training curves, query selection, matching costs, rewards.

``viz`` draws on images with PIL; this module lays numbers and images out in figures. matplotlib
is imported inside each function, so importing the module costs nothing. Every ``plot_*``
returns the ``Figure``; tensors may be torch or numpy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from workbench.viz import color_for, to_pil


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _rgb(key: int) -> tuple[float, float, float]:
    return tuple(c / 255 for c in color_for(key))


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
    color_keys: Sequence[int] = (),
    size: float = 3.4,
):
    """Visual-guided query selection on one image.

    Left: the image with every selected token at its cell centre, coloured by the prompt it
    scores highest (``prompt_index [Q]``; prompt ``u`` drawn in ``viz.color_for(color_keys[u])``,
    default ``u``), larger for coarser levels. Then one panel per level: the objectness
    ``sigmoid(token_scores)`` of every token (``[T]`` max-over-prompts encoder logits,
    ``VisualPromptDetector.selection_logits``) on one colour scale from 0 to the highest, the
    selected tokens marked ``x``.
    ``image``: the model's ``[3, H, W]`` input (or a PIL image of the same size).
    """
    import matplotlib.pyplot as plt

    pil = to_pil(image)
    level, xy = token_centres(select_index, spatial_shapes, (pil.height, pil.width))
    prompts = _np(prompt_index).astype(int)
    scores = 1 / (1 + np.exp(-_np(token_scores)))
    keys = list(color_keys) or list(range(int(prompts.max(initial=0)) + 1))
    fig, axes = plt.subplots(
        1, 1 + len(spatial_shapes), figsize=(size * (1 + len(spatial_shapes)), size)
    )
    axes[0].imshow(pil)
    for u in np.unique(prompts):
        at = prompts == u
        label = names[u] if u < len(names) else f"prompt {u}"
        axes[0].scatter(
            xy[at, 0],
            xy[at, 1],
            s=12 * 2.0 ** level[at],
            color=_rgb(keys[u]),
            edgecolors="black",
            linewidths=0.5,
            label=label,
        )
    axes[0].set_title(f"{len(prompts)} selected tokens", fontsize=9)
    axes[0].legend(fontsize=6, loc="lower right")
    start, selected = 0, _np(select_index).astype(int)
    for lv, (h, w) in enumerate(spatial_shapes):
        ax = axes[1 + lv]
        ax.imshow(
            scores[start : start + h * w].reshape(h, w), vmin=0, vmax=scores.max(), cmap="viridis"
        )
        rows, cols = np.divmod(selected[level == lv] - start, w)
        ax.scatter(cols, rows, marker="x", color="red", s=14)
        ax.set_title(f"level {lv}: {h}x{w}, {int((level == lv).sum())} picked", fontsize=9)
        start += h * w
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
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
            colour = value if is_color_like(value) else _rgb(k)
            ax.scatter(xy[at, 0], xy[at, 1], s=14, color=colour, label=value)
        ax.set_title(f"coloured by {title}", fontsize=9)
        ax.set_xlabel(f"PC1 ({explained[0]:.0%})", fontsize=8)
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize=8)
        ax.legend(fontsize=6, ncol=1 + len(set(labels)) // 9)
    fig.tight_layout()
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
