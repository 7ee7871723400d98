"""The synthetic shapes dataset: categories and split, determinism, occlusion, COCO agreement."""

from __future__ import annotations

import colorsys
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from workbench import boxes as box_ops
from workbench.data.dataset import DetectionDataset
from workbench.data.synthetic import (
    COLOURS,
    SHAPES,
    ShapesConfig,
    ShapesDataset,
    render_shapes_image,
    render_shapes_scene,
    shape_categories,
    write_shapes_dataset,
)

SMALL = ShapesConfig(image_size=128, object_size=(14, 40), objects_per_image=(3, 8))


def _scenes(cfg: ShapesConfig = SMALL, seed: int = 0, n: int = 12):
    return [render_shapes_scene(cfg, seed, i) for i in range(n)]


def _attribute_values(records: list[dict]) -> dict[str, set[str]]:
    return {key: {r[key] for r in records} for key in ("shape", "colour", "texture")}


def test_default_categories_are_the_attribute_product_in_fixed_order():
    cats = shape_categories()
    assert len(cats) == 48 >= 24
    assert [c["id"] for c in cats] == list(range(1, 49))
    assert cats[0]["name"] == "red solid circle" and cats[1]["name"] == "red striped circle"
    assert len({c["name"] for c in cats}) == 48
    for c in cats:
        assert c["name"] == f"{c['colour']} {c['texture']} {c['shape']}"
        assert c["split"] in ("base", "novel")


def test_default_split_holds_out_a_quarter_and_keeps_every_attribute_in_base():
    cats = shape_categories()
    base = [c for c in cats if c["split"] == "base"]
    assert sum(c["split"] == "novel" for c in cats) == 12
    assert _attribute_values(base) == _attribute_values(cats)
    assert shape_categories() == cats  # deterministic


@settings(max_examples=30, deadline=None)
@given(
    split_seed=st.integers(0, 10_000),
    fraction=st.floats(0.0, 0.45),
    n_shapes=st.integers(2, len(SHAPES)),
    n_colours=st.integers(2, len(COLOURS)),
)
def test_any_seeded_split_keeps_every_attribute_value_in_base(
    split_seed, fraction, n_shapes, n_colours
):
    cfg = ShapesConfig(
        shapes=SHAPES[:n_shapes],
        colours=tuple(COLOURS)[:n_colours],
        novel_fraction=fraction,
        split_seed=split_seed,
        categories_per_image=(1, 2),
    )
    cats = shape_categories(cfg)
    base = [c for c in cats if c["split"] == "base"]
    assert len(cats) - len(base) == round(fraction * len(cats))
    assert _attribute_values(base) == _attribute_values(cats)


def test_explicit_novel_names_are_used_and_unknown_names_are_named_with_a_suggestion():
    cfg = ShapesConfig(novel=("red striped star", "blue solid hexagon"))
    novel = {c["name"] for c in shape_categories(cfg) if c["split"] == "novel"}
    assert novel == {"red striped star", "blue solid hexagon"}
    with pytest.raises(ValueError, match=r"'red striped stra'.*did you mean 'red striped star'"):
        ShapesConfig(novel=("red striped stra",))
    with pytest.raises(ValueError, match=r"'blue dotted star'"):
        ShapesConfig(categories=("blue dotted star",))


def test_invalid_attribute_and_size_settings_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"ShapesConfig\.shapes"):
        ShapesConfig(shapes=("circle", "pentagon"))
    with pytest.raises(ValueError, match=r"ShapesConfig\.object_size"):
        ShapesConfig(image_size=64, object_size=(10, 40))


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", 3, seed=5, cfg=SMALL)
    b = write_shapes_dataset(tmp_path / "b", 3, seed=5, cfg=SMALL)
    c = write_shapes_dataset(tmp_path / "c", 3, seed=6, cfg=SMALL)
    assert _file_bytes(a.parent) == _file_bytes(b.parent)
    assert a.read_bytes() != c.read_bytes()
    files_c = _file_bytes(c.parent)
    assert all(v != files_c[k] for k, v in _file_bytes(a.parent).items() if k.endswith(".png"))


def test_pycocotools_reads_the_json_and_agrees_with_the_on_the_fly_dataset(tmp_path):
    from pycocotools.coco import COCO

    cfg = ShapesConfig(image_size=128, object_size=(14, 40), categories="base")
    path = write_shapes_dataset(tmp_path, 4, seed=3, cfg=cfg)
    coco = COCO(str(path))
    data = ShapesDataset(4, seed=3, cfg=cfg)
    assert json.loads(path.read_text())["info"]["config"]["categories"] == "base"
    assert sorted(coco.getCatIds()) == [c.id for c in data.categories]
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for index in range(4):
        info = data.image_info(index)
        assert coco.imgs[info["id"]] == info
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        target = data.target(index)
        coco_boxes = torch.tensor([a["bbox"] for a in anns])
        ours = box_ops.convert(
            target.boxes_cxcywh, "cxcywh", "xywh", src_normalized=True, size_hw=target.size
        )
        torch.testing.assert_close(ours, coco_boxes, atol=1e-3, rtol=0)
        assert target.labels.tolist() == [a["category_id"] - 1 for a in anns]
        assert target.annotation_ids.tolist() == [a["id"] for a in anns]
        png = np.array(Image.open(path.parent / info["file_name"]))
        assert torch.equal(data.load_image(index), torch.from_numpy(png).permute(2, 0, 1) / 255)


def test_every_image_has_several_categories_and_instances_with_valid_boxes():
    for index in range(25):
        image, anns = render_shapes_image(SMALL, 1, index)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert len({a["category_id"] for a in anns}) >= 2
        assert len(anns) >= SMALL.objects_per_image[0]
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**20), index=st.integers(0, 10_000), min_visible=st.floats(0.3, 0.9))
def test_visible_fraction_respects_the_bound_and_boxes_are_modal(seed, index, min_visible):
    cfg = ShapesConfig(image_size=128, object_size=(14, 40), min_visible=min_visible)
    scene = render_shapes_scene(cfg, seed, index)
    objects = [(i, layer) for i, layer in enumerate(scene.layers) if layer.category_id is not None]
    assert len(objects) == len(scene.annotations)
    for (i, layer), ann in zip(objects, scene.annotations, strict=True):
        # Recompute what is left of the layer after everything drawn on top of it.
        visible = layer.alpha.copy()
        for above in scene.layers[i + 1 :]:
            visible *= 1 - above.alpha
        np.testing.assert_allclose(layer.visible, visible, atol=1e-4)
        assert visible.sum() >= min_visible * layer.full_area - 1e-3
        mask = visible >= 0.5
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == [float(v) for v in box]
        assert ann["area"] == float(mask.sum())
        assert ann["category_id"] == layer.category_id


def test_objects_do_overlap_in_some_images():
    hidden = [
        1 - layer.visible.sum() / layer.alpha.sum()
        for scene in _scenes()
        for layer in scene.layers
        if layer.visible is not None
    ]
    assert max(hidden) > 0.1


def test_base_only_sets_draw_no_novel_category_but_keep_every_label():
    data = ShapesDataset(
        15, seed=2, cfg=ShapesConfig(image_size=128, object_size=(14, 40), categories="base")
    )
    assert len(data.categories) == 48
    novel_labels = {c.label for c in data.categories if c.split == "novel"}
    labels = {inst.label for inst in data.instances()}
    assert labels and not labels & novel_labels
    novel_only = ShapesConfig(image_size=128, object_size=(14, 40), categories="novel")
    _, anns = render_shapes_image(novel_only, 2, 0)
    assert {a["category_id"] - 1 for a in anns} <= novel_labels


def test_distractors_appear_and_match_no_category():
    scenes = _scenes(n=16)
    names = {c["name"] for c in shape_categories(SMALL)}
    distractors = [layer for s in scenes for layer in s.layers if layer.category_id is None]
    assert sum(any(x.category_id is None for x in s.layers) for s in scenes) >= 4
    for layer in distractors:
        colour, texture, shape = layer.name.split(" ")
        assert layer.name not in names
        assert shape not in SMALL.shapes or colour not in SMALL.colours or texture == "hollow"
    for scene in scenes:
        assert len(scene.annotations) == sum(x.category_id is not None for x in scene.layers)


def _palette_colour(rgb: np.ndarray) -> str | None:
    """The category colour a pixel colour reads as, by the generator's hue windows."""
    h, s, v = colorsys.rgb_to_hsv(*(rgb / 255))
    for name, centre in COLOURS.items():
        if s >= 0.45 and v >= 0.6 and abs((h * 360 - centre + 180) % 360 - 180) <= 15:
            return name
    return None


def test_solid_colours_read_as_their_class_and_off_palette_as_none():
    checked = {"object": 0, "distractor": 0}
    for scene in _scenes(n=16):
        for i, layer in enumerate(scene.layers):
            colour, texture, shape = layer.name.split(" ")
            inside = layer.alpha >= 0.99 if layer.visible is None else layer.visible >= 0.99
            for above in scene.layers[i + 1 :] if layer.visible is None else ():
                inside &= above.alpha == 0  # distractors: only where nothing lies on top
            if texture != "solid" or inside.sum() < 10 or shape not in SHAPES:
                continue
            seen = _palette_colour(np.median(scene.image[inside], axis=0))
            if layer.category_id is not None:
                assert seen == colour, layer.name
                checked["object"] += 1
            elif colour not in COLOURS:
                assert seen is None, layer.name
                checked["distractor"] += 1
    assert checked["object"] > 10 and checked["distractor"] > 0


def test_dataset_follows_the_protocol_and_applies_transforms():
    def flip(image, target):
        boxes = target.boxes_cxcywh.clone()
        boxes[:, 0] = 1 - boxes[:, 0]
        return image.flip(-1), dataclasses.replace(target, boxes_cxcywh=boxes)

    plain = ShapesDataset(5, seed=0, cfg=SMALL)
    flipped = ShapesDataset(5, seed=0, cfg=SMALL, transforms=flip)
    assert isinstance(plain, DetectionDataset) and len(plain) == 5
    assert not plain.report.counts
    image, target = plain[4]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert target.image_id == 5 and target.size == target.orig_size == (128, 128)
    f_image, f_target = flipped[4]
    assert torch.equal(f_image, image.flip(-1))
    torch.testing.assert_close(f_target.boxes_cxcywh[:, 0], 1 - target.boxes_cxcywh[:, 0])
    with pytest.raises(IndexError):
        plain[5]


def test_image_depends_only_on_seed_and_index():
    small_set, big_set = ShapesDataset(3, seed=9, cfg=SMALL), ShapesDataset(500, seed=9, cfg=SMALL)
    assert torch.equal(small_set.load_image(2), big_set.load_image(2))
    assert torch.equal(small_set.target(2).boxes_cxcywh, big_set[2][1].boxes_cxcywh)
    image, _ = render_shapes_image(SMALL, 9, 2)
    assert torch.equal(big_set.load_image(2), torch.from_numpy(image).permute(2, 0, 1) / 255)
    assert not np.array_equal(image, render_shapes_image(SMALL, 9, 3)[0])


def test_cached_pixels_equal_a_fresh_render_and_respect_the_budget():
    cfg = ShapesConfig(image_size=64, object_size=(8, 24), supersample=1)
    cached = ShapesDataset(4, seed=5, cfg=cfg, cache_bytes=2 * 3 * 64 * 64)  # room for two
    fresh = ShapesDataset(4, seed=5, cfg=cfg, cache_bytes=0)
    for _ in range(2):  # the second pass reads the cache where it holds the image
        for i in range(4):
            image, target = cached[i]
            expected, expected_target = fresh[i]
            assert torch.equal(image, expected)
            assert torch.equal(target.boxes_cxcywh, expected_target.boxes_cxcywh)
    assert len(cached._pixels) == 2 and not fresh._pixels
    cached[0][0].mul_(0)  # a caller editing its image in place leaves the cache intact
    assert torch.equal(cached[0][0], fresh[0][0])
