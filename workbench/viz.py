"""Drawing boxes, prompts and detections onto images (PIL only; used by the CLI, app, notebooks).

All boxes here are absolute xyxy pixels of the image drawn on.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from workbench import boxes as box_ops
from workbench.data.dataset import Category
from workbench.types import Detections, PromptSet, Target, VisualPrompt


def color_for(key: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per integer key (golden-ratio hue steps)."""
    hue = (0.07 + 0.618033988749895 * key) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


# Distinct and legible on photos and on white, in the order classes get them
CLASS_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 200, 220),
    (240, 50, 230),
    (150, 190, 20),
    (250, 190, 190),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (100, 110, 255),
    (128, 128, 0),
    (255, 215, 0),
    (0, 0, 128),
)
NEGATIVE_COLOR = (128, 128, 128)  # classes named "not X": never shown as results


def palette_color(index: int) -> tuple[int, int, int]:
    """The ``index``-th class colour: :data:`CLASS_PALETTE` in order, then golden-ratio hues."""
    if index < len(CLASS_PALETTE):
        return CLASS_PALETTE[index]
    return color_for(index)


def ink_for(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever text reads better on ``background`` (r, g, b)."""
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def hex_color(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` -> ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def to_pil(image: Tensor | np.ndarray | Image.Image) -> Image.Image:
    """A ``[3, H, W]`` float tensor in [0, 1], ``[H, W, 3]`` uint8 array or PIL image -> RGB."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] image tensor, got {tuple(image.shape)}")
        array = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array, "RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")


def draw_boxes(
    image: Tensor | np.ndarray | Image.Image,
    boxes_xyxy: Tensor | Sequence[Sequence[float]],
    labels: Sequence[str] = (),
    color_keys: Sequence[int] = (),
    scores: Sequence[float] | None = None,
    width: int | None = None,
    dashed: bool | Sequence[bool] = False,
    colors: Sequence[tuple[int, int, int]] | None = None,
    min_side: int = 0,
) -> Image.Image:
    """A copy of ``image`` with each box outlined and captioned ``label`` (``score``).

    Colours come from ``colors`` or from ``color_for(color_keys[i])``; ``dashed`` is one flag or
    one per box. Images whose longer side is under ``min_side`` are enlarged by an integer factor
    first (boxes too), and line width and font size follow the image, so captions stay legible.
    """
    out = to_pil(image).copy()
    factor = max(1, -(-min_side // max(out.size))) if min_side else 1
    if factor > 1:
        out = out.resize((out.width * factor, out.height * factor), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(out)
    scaled = factor > 1 or min_side
    font = (
        ImageFont.load_default(size=max(10, round(max(out.size) / 45)))
        if scaled
        else ImageFont.load_default()
    )
    width = width or (max(2, round(max(out.size) / 300)) if scaled else 2)
    rows = (torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4) * factor).tolist()
    flags = [dashed] * len(rows) if isinstance(dashed, bool) else list(dashed)
    for i, (x0, y0, x1, y1) in enumerate(rows):
        color = (
            colors[i]
            if colors is not None
            else color_for(color_keys[i] if i < len(color_keys) else i)
        )
        if i < len(flags) and flags[i]:
            _dashed_rectangle(draw, (x0, y0, x1, y1), color, width)
        else:
            draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        caption = labels[i] if i < len(labels) else ""
        if scores is not None:
            caption = f"{caption} {scores[i]:.2f}".strip()
        if caption:
            left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
            height = bottom - top + 2
            ty = y0 - height if y0 >= height else y0
            draw.rectangle((x0, ty, x0 + right - left + 3, ty + height), fill=color)
            draw.text((x0 + 1 - left, ty + 1 - top), caption, fill=ink_for(color), font=font)
    return out


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, color, width: int) -> None:
    """Dashes of 3 line widths along each side."""
    x0, y0, x1, y1 = box
    step = 3 * width
    for x in range(int(x0), int(x1), 2 * step):
        draw.line(((x, y0), (min(x + step, x1), y0)), fill=color, width=width)
        draw.line(((x, y1), (min(x + step, x1), y1)), fill=color, width=width)
    for y in range(int(y0), int(y1), 2 * step):
        draw.line(((x0, y), (x0, min(y + step, y1))), fill=color, width=width)
        draw.line(((x1, y), (x1, min(y + step, y1))), fill=color, width=width)


def draw_target(
    image: Tensor | Image.Image,
    target: Target,
    categories: Sequence[Category] = (),
    colors: Mapping[int, tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Ground truth drawn on the image it belongs to (the target's ``size``); crowd boxes dashed.
    A box of label ``k`` is drawn in ``colors[k]`` if given, else in ``color_for(k)``."""
    pil = to_pil(image)
    boxes = target.boxes_xyxy((pil.height, pil.width))
    names = {c.label: c.name for c in categories}
    labels = [names.get(int(x), str(int(x))) for x in target.labels]
    crowd = target.iscrowd.tolist()
    keys = target.labels.tolist()
    out = pil
    for dashed in (False, True):  # crowd regions dashed
        rows = [i for i, c in enumerate(crowd) if c == dashed]
        row_colors = [(colors or {}).get(keys[i], color_for(keys[i])) for i in rows]
        out = draw_boxes(
            out, boxes[rows], [labels[i] for i in rows], dashed=dashed, colors=row_colors
        )
    return out


def draw_prompts(
    image: Tensor | Image.Image,
    prompts: Sequence[VisualPrompt],
    image_id: int | str | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """The exemplar boxes of ``prompts`` that lie on this image (``image_id``), thick and dashed;
    prompt ``u`` in ``colors[u]`` if given, else in ``color_for(prompt_id)``."""
    boxes, labels, box_colors = [], [], []
    for u, p in enumerate(prompts):
        for ex in p.exemplars:
            if ex.image_id == image_id:
                boxes.append(ex.box_xyxy)
                labels.append(f"prompt: {p.name}")
                box_colors.append(colors[u] if colors is not None else color_for(p.prompt_id))
    return draw_boxes(image, boxes, labels, width=3, dashed=True, colors=box_colors)


def draw_prompt_set(
    image: Tensor | Image.Image, prompts: PromptSet, image_index: int, names: Sequence[str] = ()
) -> Image.Image:
    """The exemplars of a model-side PromptSet that lie on batch image ``image_index`` (their
    boxes are normalised to that image), thick and dashed, captioned with their prompt."""
    pil = to_pil(image)
    rows = (prompts.image_index == image_index).nonzero().flatten().tolist()
    boxes = box_ops.convert(
        prompts.boxes_cxcywh[rows],
        "cxcywh",
        "xyxy",
        src_normalized=True,
        size_hw=(pil.height, pil.width),
    )
    owners = [int(prompts.prompt_index[r]) for r in rows]
    labels = [f"prompt {u}" + (f": {names[u]}" if u < len(names) else "") for u in owners]
    keys = [int(prompts.labels[u]) for u in owners]
    return draw_boxes(pil, boxes, labels, keys, width=3, dashed=True)


def plot_images(images: Sequence, titles: Sequence[str] = (), columns: int = 4, size: float = 3.2):
    """A matplotlib figure of images in a grid (notebooks)."""
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images, strict=False)):
        ax.imshow(to_pil(image))
        if i < len(titles):
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def draw_detections(
    image: Tensor | Image.Image,
    detections: Detections,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Detections captioned with name and score; prompt ``u`` in ``colors[u]`` if given, else in
    ``color_for(u)``."""
    prompts = detections.prompt_index.tolist()
    return draw_boxes(
        image,
        detections.boxes_xyxy,
        list(detections.names),
        prompts,
        scores=detections.scores.tolist(),
        colors=[colors[u] for u in prompts] if colors is not None else None,
    )


def draw_queries(
    image: Tensor | Image.Image,
    boxes_cxcywh: Tensor,
    queries: Sequence[int],
    color_keys: Sequence[int] = (),
    labels: Sequence[str] = (),
    dashed: bool = False,
) -> Image.Image:
    """The boxes of decoder queries ``queries`` (rows of ``boxes_cxcywh [Q, 4]``, normalised
    cxcywh of ``image``, e.g. one decoder layer's ``pred_boxes[b]``)."""
    pil = to_pil(image)
    rows = torch.as_tensor(list(queries), dtype=torch.int64)
    xyxy = box_ops.convert(
        boxes_cxcywh.detach().float().cpu()[rows],
        "cxcywh",
        "xyxy",
        src_normalized=True,
        size_hw=(pil.height, pil.width),
    )
    return draw_boxes(pil, xyxy, labels, color_keys, dashed=dashed)


def image_grid(images: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tile images left to right, top to bottom, on a white canvas."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_w = max(im.width for im in images) + pad
    cell_h = max(im.height for im in images) + pad
    canvas = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), "white")
    for i, im in enumerate(images):
        canvas.paste(im, (pad + (i % columns) * cell_w, pad + (i // columns) * cell_h))
    return canvas
