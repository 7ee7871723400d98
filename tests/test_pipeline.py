"""Data flows from a named dataset through transforms, batching and prompt sampling."""

import numpy as np
import torch
from torch.utils.data import DataLoader

from workbench.config import DataConfig
from workbench.data.collate import collate
from workbench.data.prompts import assign_targets, sample_training_prompts
from workbench.data.sources import open_dataset
from workbench.data.transforms import train_transforms


def batches(num_workers, seed=0):
    cfg = DataConfig(
        name="shapes",
        shapes_train_images=8,
        shapes_image_size=128,
        min_size=96,
        max_size=128,
        train_scales=(64, 96),
        crop_prob=0.5,
    )
    dataset = open_dataset(cfg, "train", train_transforms(cfg))
    loader = DataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    out = []
    for step, batch in enumerate(loader):
        batch.prompts = sample_training_prompts(batch.targets, np.random.default_rng([seed, step]))
        out.append(batch)
    return out


def test_batches_carry_padded_images_targets_and_shared_prompts():
    for batch in batches(num_workers=0):
        assert batch.images.shape[0] == 4 and batch.images.shape[-1] % 32 == 0
        for image_mask, target in zip(batch.pixel_mask, batch.targets, strict=True):
            h, w = target.size
            assert image_mask.sum() == h * w and min(h, w) in (64, 96)
            assert ((target.boxes_cxcywh > 0) & (target.boxes_cxcywh <= 1)).all()
        present = sorted({int(x) for t in batch.targets for x in t.labels})
        assert batch.prompts.labels.tolist() == present
        for assigned in assign_targets(batch.targets, batch.prompts.labels):
            assert (assigned.labels < batch.prompts.num_prompts).all()


def test_the_pipeline_replays_exactly_with_worker_processes():
    torch.manual_seed(1)
    a = batches(num_workers=2, seed=3)
    torch.manual_seed(1)
    b = batches(num_workers=2, seed=3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images)
        assert all(
            torch.equal(s.boxes_cxcywh, t.boxes_cxcywh)
            for s, t in zip(x.targets, y.targets, strict=True)
        )
        assert torch.equal(x.prompts.image_index, y.prompts.image_index)
        assert torch.equal(x.prompts.boxes_cxcywh, y.prompts.boxes_cxcywh)
