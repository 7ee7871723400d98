"""Procedural "shapes" detection data for visual prompting: exact boxes, unlimited, offline.

A category is a (shape, colour, texture) combination such as "red striped star". An image holds
several instances of a few categories on a textured background, partly hiding each other, plus
distractors that belong to no category: a shape outside the shape set, a colour outside the
palette, or a hollow outline. Some combinations are held out as "novel" while every shape, colour
and texture stays among the "base" ones, so base -> novel generalisation can be measured.

Boxes follow COCO: ``bbox`` is absolute xywh pixels, the tight box of the *visible* pixels (modal
box), ``area`` the visible pixel count. Image ``i`` depends only on ``(seed, i)``; how one image
is laid out and painted is in :mod:`workbench.data.shapes_render`, how the categories are named
and split in :mod:`workbench.data.shapes_categories`::

    image, annotations = render_shapes_image(ShapesConfig(), seed=0, index=7)
    write_shapes_dataset("data/shapes_val", num_images=200, seed=1)  # COCO json + PNGs
    train = ShapesDataset(2000, seed=0, cfg=ShapesConfig(categories="base"))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from workbench.data.dataset import Category, Instance, LoadReport, Transform, make_target
from workbench.data.shapes_categories import resolve_categories
from workbench.data.shapes_render import (
    COLOURS,
    DISTRACTOR_SHAPES,
    OFF_PALETTE,
    SHAPES,
    TEXTURES,
    Layer,
    coco_annotations,
    compose_image,
    layout_layers,
)
from workbench.safe_paths import refuse_existing, write_atomic
from workbench.types import Target

__all__ = [
    "COLOURS",
    "DISTRACTOR_SHAPES",
    "OFF_PALETTE",
    "SHAPES",
    "TEXTURES",
    "SceneLayer",
    "ShapesConfig",
    "ShapesDataset",
    "ShapesScene",
    "render_shapes_image",
    "render_shapes_scene",
    "shape_categories",
    "write_shapes_dataset",
]

_ANN_ID_STRIDE = 1000  # annotation id = image_id * stride + k: unique with random access


@dataclass(frozen=True)
class ShapesConfig:
    """How synthetic shapes images look. Ranges are inclusive ``(low, high)``.

    Attributes:
        image_size: side of the square RGB images, pixels.
        object_size: longer side of a shape before rotation, pixels (drawn log-uniformly).
        max_aspect: cap on stretching (circle -> ellipse, square -> rectangle); triangles,
            stars, hexagons and crosses stretch at most 1.25-1.4 so they stay recognisable.
        objects_per_image: annotated objects per image.
        categories_per_image: distinct categories per image; each gets at least one instance.
        distractors_per_image: shapes of no category, never annotated.
        min_visible: share of an annotated object's coverage left visible after occlusion and the
            image border; placements that would break it are redrawn.
        shapes, colours, textures: attribute sets (subsets of SHAPES, COLOURS, TEXTURES); the
            categories are their product, shape-major: ids 1..C in that order.
        novel: names of the held-out categories. None: ``round(novel_fraction * C)`` of them,
            drawn with ``split_seed`` so that every shape, colour and texture keeps a base category
            and each value is held out about equally often. An explicit list is taken as given.
        categories: which categories may appear: "all", "base", "novel" or a tuple of names.
            The others are never drawn, not even unannotated.
        supersample: anti-aliasing: masks are drawn this many times larger, then box-averaged.
    """

    image_size: int = 256
    object_size: tuple[int, int] = (20, 64)
    max_aspect: float = 1.6
    objects_per_image: tuple[int, int] = (3, 12)
    categories_per_image: tuple[int, int] = (2, 4)
    distractors_per_image: tuple[int, int] = (0, 6)
    min_visible: float = 0.6
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    textures: tuple[str, ...] = ("solid", "striped")
    novel: tuple[str, ...] | None = None
    novel_fraction: float = 0.25
    split_seed: int = 0
    categories: str | tuple[str, ...] = "all"
    supersample: int = 4

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, list):  # YAML gives lists; tuples keep the config hashable
                object.__setattr__(self, name, tuple(value))
        for name, known in (("shapes", SHAPES), ("colours", COLOURS), ("textures", TEXTURES)):
            values = getattr(self, name)
            unknown = [v for v in values if v not in known]
            if unknown or not values or len(set(values)) != len(values):
                raise ValueError(
                    f"ShapesConfig.{name}={values!r}: need distinct values from {tuple(known)}"
                )
        (s0, s1), (o0, o1) = self.object_size, self.objects_per_image
        (c0, c1), (d0, d1) = self.categories_per_image, self.distractors_per_image
        checks = [  # objects up to half the image leave room to place several of them
            ("object_size", 1 <= s0 <= s1 <= self.image_size / 2, "1 <= low <= high <= size/2"),
            ("objects_per_image", 1 <= o0 <= o1 < _ANN_ID_STRIDE, "1 <= low <= high < 1000"),
            ("categories_per_image", 1 <= c0 <= min(c1, o0), "1 <= low <= high, low <= objects"),
            ("distractors_per_image", 0 <= d0 <= d1, "0 <= low <= high"),
            ("min_visible", 0 < self.min_visible <= 1, "0 < min_visible <= 1"),
            ("novel_fraction", 0 <= self.novel_fraction < 1, "0 <= novel_fraction < 1"),
            ("max_aspect", self.max_aspect >= 1, ">= 1"),
            ("supersample", self.supersample >= 1, ">= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"ShapesConfig.{name}={getattr(self, name)!r} must satisfy {rule}")
        resolve_categories(self)  # checks category names now, not in the middle of an epoch


def shape_categories(cfg: ShapesConfig | None = None) -> list[dict]:
    """COCO category records, ids ``1..C`` shape-major: ``id``, ``name``, ``supercategory``,
    ``shape``, ``colour``, ``texture`` and ``split`` ("base" or "novel")."""
    return [dict(r) for r in resolve_categories(cfg or ShapesConfig())[0]]


# ---------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class SceneLayer:
    """One drawn shape of a :class:`ShapesScene`; later layers lie on top.

    Attributes:
        name: "<colour> <texture> <shape>"; distractor names match no category
            ("grey solid star", "red hollow circle", "blue striped crescent").
        category_id: the category, or None for a distractor.
        alpha: ``[H, W]`` float32 coverage in [0, 1] of the whole shape, clipped to the image.
        full_area: coverage sum of the shape including any part outside the image.
        visible: ``[H, W]`` float32 coverage left by the layers on top; None for distractors.
    """

    name: str
    category_id: int | None
    alpha: np.ndarray
    full_area: float
    visible: np.ndarray | None


@dataclass(frozen=True)
class ShapesScene:
    """An image, its annotations (in the order of the annotated layers) and its layers, bottom
    first. ``image`` is ``[H, W, 3]`` uint8 RGB. For checks, plots and occlusion studies."""

    image: np.ndarray
    annotations: list[dict]
    layers: list[SceneLayer]


def _checked_layout(cfg: ShapesConfig, seed: int, index: int) -> list[Layer]:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return layout_layers(cfg, resolve_categories(cfg)[1], seed, index)


def render_shapes_scene(cfg: ShapesConfig | None, seed: int, index: int) -> ShapesScene:
    """Like :func:`render_shapes_image`, plus every layer's coverage and visibility maps."""
    cfg = cfg or ShapesConfig()
    layers = _checked_layout(cfg, seed, index)

    def full(patch: np.ndarray | None, layer: Layer) -> np.ndarray | None:
        if patch is None:
            return None
        out = np.zeros((cfg.image_size, cfg.image_size), np.float32)
        out[layer.y0 : layer.y0 + patch.shape[0], layer.x0 : layer.x0 + patch.shape[1]] = patch
        return out

    scene_layers = [
        SceneLayer(x.name, x.category_id, full(x.alpha, x), x.full_area, full(x.visible, x))
        for x in layers
    ]
    image = compose_image(cfg, seed, index, layers)
    return ShapesScene(image, coco_annotations(layers), scene_layers)


def render_shapes_image(
    cfg: ShapesConfig | None, seed: int, index: int
) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of the set drawn with ``seed``; it depends on ``(seed, index)`` only.

    Returns:
        image: ``[H, W, 3]`` uint8 RGB, ``H = W = cfg.image_size``.
        annotations: COCO dicts with ``bbox`` (absolute xywh pixels, tight box of the visible
            pixels), ``category_id`` (see :func:`shape_categories`), ``area`` (visible pixels)
            and ``iscrowd`` 0; no ``id`` or ``image_id``.
    """
    cfg = cfg or ShapesConfig()
    layers = _checked_layout(cfg, seed, index)
    return compose_image(cfg, seed, index, layers), coco_annotations(layers)


def _image_record(cfg: ShapesConfig, index: int) -> dict:
    name = f"images/shapes_{index:06d}.png"
    return {"id": index + 1, "file_name": name, "width": cfg.image_size, "height": cfg.image_size}


def _with_ids(annotations: list[dict], index: int) -> list[dict]:
    image_id = index + 1
    return [
        {"id": image_id * _ANN_ID_STRIDE + k, "image_id": image_id, **a}
        for k, a in enumerate(annotations)
    ]


def write_shapes_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    cfg: ShapesConfig | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir/images/shapes_{i:06d}.png`` and ``out_dir/annotations.json`` (COCO).

    Image ids are ``i + 1`` and file names relative to the json's folder, so the json agrees
    exactly with ``ShapesDataset(num_images, seed, cfg)``; ``info`` records the generator's
    parameters. The same arguments give byte-identical files. Returns the json's path. Existing
    files of those names are refused (an :class:`~workbench.safe_paths.OutputError`, before
    anything is written) unless ``overwrite``.
    """
    cfg = cfg or ShapesConfig()
    out_dir = Path(out_dir)
    if not overwrite:
        refuse_existing(
            [out_dir / "annotations.json"]
            + [out_dir / _image_record(cfg, i)["file_name"] for i in range(num_images)],
            setting="--out",
        )
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(num_images), desc="shapes images", disable=not progress):
        image, anns = render_shapes_image(cfg, seed, index)
        images.append(_image_record(cfg, index))
        # Sensor noise makes stronger compression buy ~10% size for twice the time.
        Image.fromarray(image).save(out_dir / images[-1]["file_name"], compress_level=1)
        for a in _with_ids(anns, index):
            annotations.append(
                {**a, "bbox": [round(v, 2) for v in a["bbox"]], "area": round(a["area"], 2)}
            )
    info = {
        "description": "workbench synthetic shapes",
        "generator": "workbench.data.synthetic",
        "seed": seed,
        "num_images": num_images,
        "config": dataclasses.asdict(cfg),
    }
    coco = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": shape_categories(cfg),
    }
    return write_atomic(out_dir / "annotations.json", json.dumps(coco, separators=(",", ":")))


class ShapesDataset(torch.utils.data.Dataset):
    """Shapes images rendered on the fly; a :class:`~workbench.data.dataset.DetectionDataset`.

    Item ``i`` is image id ``i + 1`` of ``write_shapes_dataset(dir, num_images, seed, cfg)``.
    ``dataset[i]`` is ``(image [3, H, W] float32 RGB in [0, 1], Target)`` after ``transforms``;
    Target boxes are normalised cxcywh, labels ``category_id - 1``. Annotations are cached
    once computed (a few hundred bytes per image), and so are the rendered 8-bit pixels, up to
    ``cache_bytes`` in all (default 512 MB, about 2,700 images of 256 px): every epoch after the
    first reads them instead of painting again (rendering is about 17 ms per 256 px image).
    """

    def __init__(
        self,
        num_images: int,
        seed: int,
        cfg: ShapesConfig | None = None,
        transforms: Transform | None = None,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        if num_images < 0 or seed < 0:
            raise ValueError(f"num_images and seed must be >= 0, got {num_images} and {seed}")
        self.cfg = cfg or ShapesConfig()
        self.num_images, self.seed, self.transforms = num_images, seed, transforms
        records = shape_categories(self.cfg)
        self.categories = [Category(r["id"], r["name"], r["id"] - 1, r["split"]) for r in records]
        self.report = LoadReport()  # nothing is ever repaired or dropped
        self._label_of = {c.id: c.label for c in self.categories}
        self._annotations: dict[int, list[dict]] = {}
        self._pixels: dict[int, Tensor] = {}  # rendered uint8 [3, H, W], up to cache_bytes
        self._cache_left = cache_bytes

    def __len__(self) -> int:
        return self.num_images

    def _index(self, index: int) -> int:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} is out of range for {self.num_images} shapes images")
        return index % self.num_images

    def _layers(self, index: int) -> list[Layer]:
        layers = layout_layers(self.cfg, resolve_categories(self.cfg)[1], self.seed, index)
        self._annotations.setdefault(index, _with_ids(coco_annotations(layers), index))
        return layers

    def _target(self, index: int) -> Target:
        if index not in self._annotations:
            self._layers(index)
        size = (self.cfg.image_size, self.cfg.image_size)
        return make_target(self._annotations[index], index + 1, size, self._label_of)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        index = self._index(index)
        image, target = self._image(index), self._target(index)
        return self.transforms(image, target) if self.transforms else (image, target)

    def _image(self, index: int) -> Tensor:
        pixels = self._pixels.get(index)
        if pixels is None:
            pixels = (
                torch.from_numpy(compose_image(self.cfg, self.seed, index, self._layers(index)))
                .permute(2, 0, 1)
                .contiguous()
            )
            if pixels.nbytes <= self._cache_left:
                self._pixels[index], self._cache_left = pixels, self._cache_left - pixels.nbytes
        return pixels.float().div_(255)

    def load_image(self, index: int) -> Tensor:
        """``[3, H, W]`` float32 RGB in [0, 1], without transforms."""
        return self._image(self._index(index))

    def target(self, index: int) -> Target:
        """The untransformed target; lays the image out but does not paint it."""
        return self._target(self._index(index))

    def image_info(self, index: int) -> dict:
        """COCO image record ``id``, ``file_name``, ``width``, ``height`` (no ``path``)."""
        return _image_record(self.cfg, self._index(index))

    def instances(self) -> list[Instance]:
        """Every annotated box, ``box_xyxy`` in absolute pixels; lays out every image once."""
        out = []
        for index in range(self.num_images):
            self.target(index)
            for a in self._annotations[index]:
                x, y, w, h = a["bbox"]
                label = self._label_of[a["category_id"]]
                out.append(Instance(index, index + 1, a["id"], label, (x, y, x + w, y + h)))
        return out
