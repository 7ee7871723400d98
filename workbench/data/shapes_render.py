"""Drawing one synthetic shapes image: sample what to draw, place it, paint it.

Placement goes layer by layer and rejects a placement that would hide too much of an annotated
object; painting then goes bottom to top over a textured background. Layout and painting use
separate random streams of ``(seed, index)``, so targets never need the pixels.

The attribute sets live here, not in :mod:`workbench.data.synthetic`, because that module imports
this one; functions take its :class:`~workbench.data.synthetic.ShapesConfig` as ``cfg``, imported
for type checking only.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # synthetic.py imports this module; the type needs no import at run time
    from workbench.data.synthetic import ShapesConfig

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
# Hue centres (degrees). Category colours jitter by at most _HUE_JITTER with saturation >= 0.65
# and value >= 0.75; the off-palette colours stay outside those windows (grey by saturation,
# brown by value, purple and cyan by hue), so a colour class is always decidable from pixels.
COLOURS = {"red": 0.0, "green": 120.0, "blue": 220.0, "yellow": 55.0}
TEXTURES = ("solid", "striped", "checkered")
DISTRACTOR_SHAPES = ("crescent", "arrow", "blob", "heart")
OFF_PALETTE = {  # name -> (hue range in degrees, saturation range, value range)
    "grey": ((0.0, 360.0), (0.0, 0.1), (0.3, 0.85)),
    "brown": ((20.0, 35.0), (0.5, 0.8), (0.3, 0.5)),
    "purple": ((270.0, 295.0), (0.45, 0.8), (0.45, 0.85)),
    "cyan": ((178.0, 192.0), (0.5, 0.9), (0.6, 0.95)),
}
_HUE_JITTER = 8.0
# Stretch limits that keep each shape recognisable: an ellipse is still a circle and a rectangle
# still a square, but a much flattened hexagon or star starts to look like something else.
_MAX_ASPECT = {"circle": 1.6, "square": 1.6, "triangle": 1.4, "star": 1.25}  # others: 1.3
_PLACE_TRIES, _LAYOUT_TRIES = 25, 4


@dataclass(eq=False)
class Layer:
    """One shape; the fields after ``required`` are set when it is placed."""

    name: str
    shape: str
    texture: str  # a category texture, or "hollow" for outline distractors
    rgb: np.ndarray  # [3] float32 in [0, 1]
    # Unit-frame polygons [K, 2], each drawn as "fill", "cut" (erase) or "outline".
    parts: list[tuple[np.ndarray, str]]
    # Stripe angle, period / short side, duty, phase, dark shade, light angle, light gain, outline.
    pattern: list[float]
    category_id: int | None = None
    required: bool = False  # first instance of a category chosen for the image
    geometry: tuple[float, ...] = ()  # size, aspect, angle, cx, cy (pixels, radians)
    y0: int = 0
    x0: int = 0
    alpha: np.ndarray | None = None  # [h, w] float32 coverage of the patch at (y0, x0), in-image
    full_area: float = 0.0  # coverage sum including any part outside the image
    visible: np.ndarray | None = None  # [h, w] coverage left by the layers on top (objects only)


def _ring(n: int, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    t = np.arange(n) * 2 * math.pi / n - math.pi / 2  # first vertex points up
    r = np.resize(np.asarray(radii), n)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _unit_parts(shape: str, rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
    """Polygons of ``shape``, scaled so the filled parts just fit in [-1, 1]^2 (y points down)."""
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    if shape in ("circle", "triangle", "hexagon"):
        parts = [(_ring({"circle": 72, "triangle": 3, "hexagon": 6}[shape]), "fill")]
    elif shape == "square":
        parts = [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), "fill")]
    elif shape == "star":
        parts = [(_ring(10, (1.0, rng.uniform(0.38, 0.5))), "fill")]
    elif shape == "cross":
        w = rng.uniform(0.28, 0.4)
        q = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
        parts = [(np.array(q + [(-x, -y) for x, y in q], float), "fill")]
    elif shape == "crescent":
        bite = rng.uniform(0.75, 0.9) * _ring(72) + [rng.uniform(0.35, 0.55), 0.0]
        parts = [(_ring(72), "fill"), (bite, "cut")]
    elif shape == "arrow":
        w, head = rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.7)
        q = [(-1, -w), (0.2, -w), (0.2, -head), (1, 0), (0.2, head), (0.2, w), (-1, w)]
        parts = [(np.array(q, float), "fill")]
    elif shape == "blob":  # strong 3rd harmonic: lumpy, never an ellipse, star or hexagon
        r = 1 + rng.uniform(0.05, 0.2) * np.cos(2 * t + rng.uniform(0, 7))
        r += rng.uniform(0.15, 0.25) * np.cos(3 * t + rng.uniform(0, 7))
        parts = [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), "fill")]
    elif shape == "heart":
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        parts = [(np.stack([16 * np.sin(t) ** 3, -y], axis=1), "fill")]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    filled = np.concatenate([p for p, op in parts if op != "cut"])
    lo, hi = filled.min(0), filled.max(0)
    return [((p - (lo + hi) / 2) * (2 / (hi - lo).max()), op) for p, op in parts]


def _new_layer(shape: str, colour: str, texture: str, rng: np.random.Generator) -> Layer:
    if colour in COLOURS:
        hue = COLOURS[colour] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
        sat, val = rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)
    else:
        hue, sat, val = (rng.uniform(*r) for r in OFF_PALETTE[colour])
    rgb = np.array(colorsys.hsv_to_rgb((hue % 360) / 360, sat, val), np.float32)
    parts = _unit_parts(shape, rng)
    if texture == "hollow":
        parts = [(p, "outline") for p, _ in parts]
    low = [0, 0.18, 0.4, 0, 0.3, 0, 0, 1.5]
    high = [math.pi, 0.35, 0.6, 1, 0.5, 2 * math.pi, 0.12, 3.5]
    pattern = rng.uniform(low, high).tolist()
    return Layer(f"{colour} {texture} {shape}", shape, texture, rgb, parts, pattern)


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def _distractor(cfg: ShapesConfig, rng: np.random.Generator) -> Layer:
    """A shape of no category: it breaks one attribute by a clear margin."""
    shape, colour = _pick(rng, cfg.shapes), _pick(rng, cfg.colours)
    texture, kind = _pick(rng, cfg.textures), int(rng.integers(3))
    if kind == 0:  # a shape outside the set, in any colour
        shape = _pick(rng, DISTRACTOR_SHAPES)
        colour = _pick(rng, cfg.colours + tuple(OFF_PALETTE))
    elif kind == 1:  # a category shape in an off-palette colour
        colour = _pick(rng, tuple(OFF_PALETTE))
    else:  # the outline of a category shape in a palette colour
        texture = "hollow"
    return _new_layer(shape, colour, texture, rng)


def _sample_layers(
    cfg: ShapesConfig, allowed: tuple[dict, ...], rng: np.random.Generator
) -> list[Layer]:
    """Objects (one instance of each chosen category first) and distractors, not yet placed."""
    n_objects = _count(rng, cfg.objects_per_image)
    most = min(cfg.categories_per_image[1], n_objects, len(allowed))
    k = _count(rng, (cfg.categories_per_image[0], most))
    chosen = [allowed[i] for i in rng.choice(len(allowed), size=k, replace=False)]
    layers = []
    for j, r in enumerate(chosen + [chosen[i] for i in rng.integers(k, size=n_objects - k)]):
        layer = _new_layer(r["shape"], r["colour"], r["texture"], rng)
        layer.category_id, layer.required = r["id"], j < k
        layers.append(layer)
    return layers + [_distractor(cfg, rng) for _ in range(_count(rng, cfg.distractors_per_image))]


def _rasterize(layer: Layer, geometry: tuple[float, ...], image_size: int, ss: int) -> None:
    """Draw the layer's coverage at ``ss`` times the resolution and box-average it down."""
    size, aspect, angle, cx, cy = geometry
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = [((p * (size / 2, size / (2 * aspect))) @ rot.T + (cx, cy), op) for p, op in layer.parts]
    filled = np.concatenate([p for p, op in pts if op != "cut"])
    x0, y0 = (int(v) - 1 for v in np.floor(filled.min(0)))
    x1, y1 = (int(v) + 1 for v in np.ceil(filled.max(0)))
    canvas = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for p, op in pts:
        # Fine pixel k covers [k, k + 1); PIL puts pixel centres on integer coordinates.
        xy = ((p - (x0, y0)) * ss - 0.5).ravel().tolist()
        if op == "outline":
            draw.polygon(xy, outline=255, width=max(1, round(layer.pattern[7] * ss)))
        else:
            draw.polygon(xy, fill=255 if op == "fill" else 0)
    alpha = np.asarray(canvas.reduce(ss), np.float32) / 255
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, image_size), min(x1, image_size)
    layer.geometry, layer.y0, layer.x0, layer.full_area = geometry, cy0, cx0, float(alpha.sum())
    layer.alpha = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def _overlap(a: Layer, b: Layer) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices of ``a``'s and ``b``'s patches over their common pixels (None if disjoint)."""
    (ha, wa), (hb, wb) = a.alpha.shape, b.alpha.shape
    y0, y1 = max(a.y0, b.y0), min(a.y0 + ha, b.y0 + hb)
    x0, x1 = max(a.x0, b.x0), min(a.x0 + wa, b.x0 + wb)
    if y0 >= y1 or x0 >= x1:
        return None
    sa = (slice(y0 - a.y0, y1 - a.y0), slice(x0 - a.x0, x1 - a.x0))
    return sa, (slice(y0 - b.y0, y1 - b.y0), slice(x0 - b.x0, x1 - b.x0))


def _fits(layer: Layer, placed: list[Layer], min_visible: float) -> bool:
    """Put ``layer`` on top if every annotated object keeps ``min_visible`` of its coverage.

    Painting coverage a over a layer leaves it visible as v * (1 - a), so an object's visible
    map is its coverage times the product of (1 - a) over the layers drawn after it.
    """
    annotated = layer.category_id is not None
    if annotated and layer.alpha.sum() < min_visible * layer.full_area:
        return False  # too much of it falls outside the image
    updates = []
    for other in placed:
        ov = None if other.visible is None else _overlap(other, layer)
        if ov is not None:
            hidden = other.visible[ov[0]] * layer.alpha[ov[1]]
            if other.visible.sum() - hidden.sum() < min_visible * other.full_area:
                return False
            updates.append((other, ov[0], hidden))
    for other, sl, hidden in updates:
        other.visible[sl] -= hidden
    layer.visible = layer.alpha.copy() if annotated else None
    return True


def _place(layer: Layer, placed: list[Layer], cfg: ShapesConfig, rng) -> bool:
    lo, hi = cfg.object_size
    max_aspect = min(cfg.max_aspect, _MAX_ASPECT.get(layer.shape, 1.3))
    for _ in range(_PLACE_TRIES):
        size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        margin = 0.2 * size  # the centre stays inside, so the border cuts off a modest part
        cx, cy = rng.uniform(margin, cfg.image_size - margin, size=2).tolist()
        geometry = (size, rng.uniform(1, max_aspect), rng.uniform(0, 2 * math.pi), cx, cy)
        _rasterize(layer, geometry, cfg.image_size, cfg.supersample)
        if _fits(layer, placed, cfg.min_visible):
            return True
    return False


def layout_layers(
    cfg: ShapesConfig, allowed: tuple[dict, ...], seed: int, index: int
) -> list[Layer]:
    """The placed layers of image ``index``, bottom first.

    ``allowed`` holds the category records that may appear (keys ``id``, ``shape``, ``colour``,
    ``texture``). Its order matters: the random draws index into it.
    """
    rng = np.random.default_rng([seed, index, 0])
    specs = _sample_layers(cfg, allowed, rng)
    n_required = sum(s.required for s in specs)
    for attempt in range(_LAYOUT_TRIES):
        order = [int(i) for i in rng.permutation(len(specs))]
        if attempt == _LAYOUT_TRIES - 1:  # last resort: every object before any distractor
            order.sort(key=lambda i: specs[i].category_id is None)
        placed: list[Layer] = []
        for i in order:
            layer = dataclasses.replace(specs[i])
            if _place(layer, placed, cfg, rng):
                placed.append(layer)
        objects = [x for x in placed if x.category_id is not None]
        enough = len(objects) >= cfg.objects_per_image[0]
        if enough and sum(x.required for x in objects) == n_required:
            return placed
    raise RuntimeError(
        f"could not place {cfg.objects_per_image[0]}+ objects in shapes image {index} (seed "
        f"{seed}) with min_visible={cfg.min_visible}; lower objects_per_image or object_size"
    )


def coco_annotations(layers: list[Layer]) -> list[dict]:
    """COCO dicts of the annotated layers: tight box and count of the pixels >= half visible."""
    out = []
    for layer in layers:
        if layer.visible is not None:
            mask = layer.visible >= 0.5
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            x, y = layer.x0 + cols[0], layer.y0 + rows[0]
            box = [float(x), float(y), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
            area = float(mask.sum())
            out.append(dict(bbox=box, category_id=layer.category_id, area=area, iscrowd=0))
    return out


def _stripes(u: np.ndarray, period: float, duty: float, phase: float) -> np.ndarray:
    """1 on the stripes, 0 between, with a 1-pixel ramp at the edges (anti-aliasing)."""
    t = np.mod(u / period + phase, 1.0) * period
    on = duty * period
    signed = np.where(t < on, np.minimum(t, on - t), -np.minimum(t - on, period - t))
    return np.clip(signed + 0.5, 0, 1)


def _paint(layer: Layer) -> np.ndarray:
    """``[h, w, 3]`` float32 colour of the layer's patch: lighting ramp and texture."""
    size, aspect, _, cx, cy = layer.geometry
    stripe_angle, rel_period, duty, phase, dark, light_angle, gain, _ = layer.pattern
    ys, xs = np.indices(layer.alpha.shape, dtype=np.float32)
    xs += layer.x0 + 0.5 - cx
    ys += layer.y0 + 0.5 - cy
    # Light from one side changes brightness by up to +-gain and leaves hue alone.
    shade = 1 + gain * (xs * math.cos(light_angle) + ys * math.sin(light_angle)) / (size / 2)
    if layer.texture in ("striped", "checkered"):
        period = max(4.0, rel_period * size / aspect)  # >= ~3 periods across the short side
        c, s = math.cos(stripe_angle), math.sin(stripe_angle)
        checkered = layer.texture == "checkered"
        on = _stripes(xs * c + ys * s, period, 0.5 if checkered else duty, phase)
        if checkered:
            other = _stripes(ys * c - xs * s, period, 0.5, phase)
            on = on + other - 2 * on * other  # exclusive or of two stripe sets
        shade = shade * (1 - on * (1 - dark))  # second stripe colour: a darker shade, same hue
    return np.clip(layer.rgb * shade[..., None], 0, 1)


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a small ``[h, w, 3]`` float32 array to ``[size, size, 3]``."""
    planes = [Image.fromarray(np.ascontiguousarray(img[..., c])) for c in range(3)]
    return np.stack(
        [np.asarray(p.resize((size, size), Image.Resampling.BICUBIC)) for p in planes], -1
    )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``[size, size, 3]`` float32: a dull colour under a gradient, smooth noise, low-contrast
    blobs and maybe a faint grid or stripes. Low saturation keeps it apart from the palette."""
    # Smooth parts live on a coarse grid and are upsampled: the same look at a fraction of the cost.
    n = 32
    yy, xx = (np.indices((n, n), dtype=np.float32) + 0.5) / n
    a = rng.uniform(0, 2 * math.pi)
    gradient = 1 + rng.uniform(-0.25, 0.25) * (xx * math.cos(a) + yy * math.sin(a) - 0.5)
    hsv = rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.3, 0.85)
    low = np.asarray(colorsys.hsv_to_rgb(*hsv), np.float32) * gradient[..., None]
    cells = int(rng.integers(2, 9))
    low += _upsample(
        rng.normal(0, rng.uniform(0.01, 0.06), (cells, cells, 3)).astype(np.float32), n
    )
    for _ in range(int(rng.integers(0, 7))):
        (bx, by), sigma = rng.uniform(0, 1, 2), rng.uniform(0.04, 0.2)
        bump = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sigma**2))
        tint = rng.normal(0, 0.04) + rng.normal(0, 0.015, 3)  # mostly lighter or darker
        low += bump[..., None] * tint.astype(np.float32)
    img = _upsample(low, size)
    kind = int(rng.integers(3))  # 0 stripes, 1 grid, 2 neither
    if kind < 2:
        period, a, amp = rng.uniform(6, 32), rng.uniform(0, math.pi), rng.uniform(0.02, 0.06)
        ys, xs = np.indices((size, size), dtype=np.float32)
        lines = np.cos(2 * math.pi * (xs * math.cos(a) + ys * math.sin(a)) / period) ** 8
        if kind == 1:
            other = np.cos(2 * math.pi * (ys * math.cos(a) - xs * math.sin(a)) / period) ** 8
            lines = np.maximum(lines, other)
        sign = 1.0 if rng.random() < 0.5 else -1.0  # lighter or darker lines
        img += (sign * amp) * lines[..., None]
    return img


def compose_image(cfg: ShapesConfig, seed: int, index: int, layers: list[Layer]) -> np.ndarray:
    """Paint the layers bottom to top over a fresh background; ``[H, W, 3]`` uint8 RGB."""
    rng = np.random.default_rng([seed, index, 1])  # own stream: targets need no painting
    img = _background(rng, cfg.image_size)
    for layer in layers:
        h, w = layer.alpha.shape
        patch = img[layer.y0 : layer.y0 + h, layer.x0 : layer.x0 + w]
        a = layer.alpha[..., None]
        patch += a * (_paint(layer) - patch)
    sigma = rng.uniform(0.004, 0.02)  # sensor noise
    img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
