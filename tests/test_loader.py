"""The data order: the same micro-batches for any process layout, worker count or resume point."""

from __future__ import annotations

import pytest
import torch

from workbench.config import DataConfig, TrainConfig
from workbench.data.loader import (
    ItemSeededDataset,
    StepSampler,
    epoch_order,
    make_loader,
    steps_per_epoch,
)
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.data.transforms import train_transforms

SHAPES = ShapesConfig(
    image_size=64,
    object_size=(8, 24),
    objects_per_image=(2, 5),
    distractors_per_image=(0, 1),
    supersample=1,
)


def shapes(num_images: int = 20) -> ShapesDataset:
    """Random flip, box-keeping crop and resize: images differ in size, so padding happens too."""
    aug = train_transforms(DataConfig(min_size=40, max_size=64, crop_prob=0.7, hflip_prob=0.5))
    return ShapesDataset(num_images, seed=3, cfg=SHAPES, transforms=aug)


def flat(steps) -> list:
    """[(step, micro, images, boxes)] of an iterable of lists of micro-Batches."""
    return [
        (s, m, b.images, [t.boxes_cxcywh for t in b.targets])
        for s, micro in enumerate(steps)
        for m, b in enumerate(micro)
    ]


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for (_, _, im_a, boxes_a), (_, _, im_b, boxes_b) in zip(a, b, strict=True):
        assert torch.equal(im_a, im_b)
        assert all(torch.equal(x, y) for x, y in zip(boxes_a, boxes_b, strict=True))


def test_one_process_with_accumulation_sees_the_micro_batches_of_two_processes():
    data = shapes()
    one = flat(make_loader(data, TrainConfig(batch_size=4, grad_accum=2, seed=1), epoch=1))
    two_cfg = TrainConfig(batch_size=2, grad_accum=1, seed=1)
    ranks = [flat(make_loader(data, two_cfg, 1, 0, rank=r, world_size=2)) for r in (0, 1)]
    # Step s of the single process = [rank 0's step s, rank 1's step s].
    interleaved = [row for pair in zip(*ranks, strict=True) for row in pair]
    assert len(one) == 2 * 5 == len(interleaved)  # 20 images / global batch 4 = 5 steps
    assert_same(one, interleaved)
    assert one[0][2].shape[0] == 2  # micro-batches of 2 images


def test_worker_count_does_not_change_the_data():
    data, cfg = shapes(12), TrainConfig(batch_size=2, grad_accum=2, seed=5)
    assert_same(
        flat(make_loader(data, cfg, epoch=0, num_workers=0)),
        flat(make_loader(data, cfg, epoch=0, num_workers=2)),
    )


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, inner):
        self.inner, self.loaded = inner, []
        self.categories = inner.categories

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.loaded.append(i)
        return self.inner[i]


def test_starting_at_step_k_gives_the_rest_of_the_epoch_without_loading_skipped_images():
    cfg = TrainConfig(batch_size=4, grad_accum=2, seed=2)
    full = flat(make_loader(shapes(), cfg, epoch=3))
    counting = CountingDataset(shapes())
    resumed = flat(make_loader(counting, cfg, epoch=3, start_step=2))
    assert_same(full[2 * 2 :], resumed)
    order = epoch_order(20, seed=2, epoch=3)
    assert sorted(counting.loaded) == sorted(order[2 * 4 : 5 * 4].tolist())


def test_epochs_are_permutations_and_the_incomplete_last_step_is_dropped():
    sampler = StepSampler(23, batch_size=3, grad_accum=1, seed=0, epoch=0, rank=1, world_size=2)
    assert sampler.num_steps == steps_per_epoch(23, 3, 2) == 3 and len(sampler) == 3
    seen = [
        i
        for r in (0, 1)
        for b in StepSampler(23, 3, 1, seed=0, epoch=0, rank=r, world_size=2)
        for i in b
    ]
    assert len(seen) == len(set(seen)) == 18
    assert not torch.equal(epoch_order(23, 0, 0), epoch_order(23, 0, 1))
    assert torch.equal(epoch_order(23, 0, 1), epoch_order(23, 0, 1))


def test_item_augmentation_depends_on_seed_epoch_and_index_only():
    data = ItemSeededDataset(shapes(6), seed=9, epoch=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    forward = [data[i][0] for i in range(6)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    backward = [data[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    data.set_epoch(1)
    assert any(not torch.equal(a, data[i][0]) for i, a in enumerate(forward))
    assert data.categories == data.dataset.categories  # the protocol passes through


def test_too_few_images_for_one_global_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one global batch of 8"):
        steps_per_epoch(5, batch_size=4, world_size=2)
