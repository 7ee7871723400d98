import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench import boxes as B
from workbench.config import DataConfig
from workbench.data.collate import collate, pad_images
from workbench.data.transforms import (
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    eval_transforms,
    resized_hw,
    train_transforms,
)
from workbench.types import Target


def boxed_image(h=60, w=80, boxes_xyxy=((5, 10, 25, 30), (40, 20, 70, 55))):
    """An image whose pixels are 1 exactly inside the boxes, so pixels and boxes can be compared."""
    image = torch.zeros(3, h, w)
    for x0, y0, x1, y1 in boxes_xyxy:
        image[:, y0:y1, x0:x1] = 1.0
    xyxy = torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    target = Target(
        boxes_cxcywh=B.convert(xyxy, "xyxy", "cxcywh", dst_normalized=True, size_hw=(h, w)),
        labels=torch.arange(len(xyxy)),
        image_id=1,
        size=(h, w),
        orig_size=(h, w),
    )
    return image, target


def test_resize_caps_the_long_side():
    assert resized_hw(480, 640, 256, 1333) == (256, 341)
    assert resized_hw(100, 1000, 256, 512) == (51, 512)
    image, target = boxed_image()
    out, t = Resize(120, 1000)(image, target)
    assert tuple(out.shape) == (3, 120, 160) and t.size == (120, 160)
    assert torch.equal(t.boxes_cxcywh, target.boxes_cxcywh)  # normalised boxes do not move
    assert t.orig_size == target.orig_size


def test_flip_mirrors_pixels_and_boxes_together():
    image, target = boxed_image()
    out, t = RandomHorizontalFlip(p=1.0)(image, target)
    for box in t.boxes_xyxy().round().int().tolist():
        x0, y0, x1, y1 = box
        assert out[0, y0:y1, x0:x1].min() == 1.0
    twice, t2 = RandomHorizontalFlip(p=1.0)(out, t)
    assert torch.equal(twice, image)
    torch.testing.assert_close(t2.boxes_cxcywh, target.boxes_cxcywh)


@settings(max_examples=60)
@given(st.integers(0, 10_000), st.floats(0.2, 1.0))
def test_box_preserving_crop_keeps_every_box_whole(seed, min_scale):
    torch.manual_seed(seed)
    image, target = boxed_image()
    out, t = RandomCrop(p=1.0, min_scale=min_scale)(image, target)
    assert len(t) == len(target) and t.size == tuple(out.shape[-2:])
    total = image[0].sum()
    assert out[0].sum() == total  # every box pixel survived the crop
    for x0, y0, x1, y1 in t.boxes_xyxy().round().int().tolist():
        assert out[0, y0:y1, x0:x1].min() == 1.0  # and the boxes still frame them


@settings(max_examples=60)
@given(st.integers(0, 10_000))
def test_free_crop_clips_and_drops_mostly_hidden_boxes(seed):
    torch.manual_seed(seed)
    image, target = boxed_image()
    crop = RandomCrop(p=1.0, min_scale=0.3, keep_all_boxes=False, min_visible=0.5)
    out, t = crop(image, target)
    h, w = out.shape[-2:]
    xyxy = t.boxes_xyxy()
    assert torch.all((xyxy[:, 0] >= -1e-4) & (xyxy[:, 2] <= w + 1e-4) & (xyxy[:, 3] <= h + 1e-4))
    for box, ann in zip(xyxy.round().int().tolist(), t.annotation_ids.tolist(), strict=True):
        x0, y0, x1, y1 = box
        assert out[0, y0:y1, x0:x1].mean() == 1.0, ann


def test_presets_follow_the_config():
    cfg = DataConfig(min_size=64, max_size=100, train_scales=(48, 64), hflip_prob=1.0)
    image, target = boxed_image()
    torch.manual_seed(0)
    out, t = train_transforms(cfg)(image, target)
    assert min(out.shape[-2:]) in (48, 64) and max(out.shape[-2:]) <= 100
    assert t.size == tuple(out.shape[-2:])
    out, _ = eval_transforms(cfg)(image, target)
    assert tuple(out.shape[-2:]) == (64, 85)


def test_empty_targets_pass_through_every_transform():
    image, target = boxed_image(boxes_xyxy=())
    torch.manual_seed(0)
    cfg = DataConfig(crop_prob=1.0, hflip_prob=1.0, min_size=32, max_size=64)
    out, t = train_transforms(cfg)(image, target)
    assert len(t) == 0 and t.size == tuple(out.shape[-2:])


def test_collate_pads_and_masks():
    a, ta = boxed_image(30, 50)
    b, tb = boxed_image(45, 20, boxes_xyxy=((1, 1, 5, 5),))
    batch = collate([(a, ta), (b, tb)], size_divisor=32)
    assert tuple(batch.images.shape) == (2, 3, 64, 64)
    assert batch.pixel_mask[0].sum() == 30 * 50 and batch.pixel_mask[1].sum() == 45 * 20
    assert torch.equal(batch.images[0, :, :30, :50], a) and batch.images[0, :, 30:].abs().sum() == 0
    assert batch.targets[1] is tb and batch.prompts is None
    moved = batch.to("cpu")
    assert torch.equal(moved.images, batch.images)
    images, mask = pad_images([a], size_divisor=1)
    assert tuple(images.shape) == (1, 3, 30, 50) and mask.all()


def test_target_select_and_replace_stay_consistent():
    _, target = boxed_image()
    sub = target.select(torch.tensor([False, True]))
    assert len(sub) == 1 and sub.labels.tolist() == [1]
    moved = dataclasses.replace(target, size=(10, 10))
    assert moved.boxes_xyxy().shape == (2, 4)
