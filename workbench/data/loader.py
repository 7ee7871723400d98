"""Exact, resumable data order: which images a step sees and how they are augmented.

Two facts make a run replayable and independent of how it is spread over processes:

- **Order.** An epoch's order is one permutation of the dataset, drawn from ``(seed, epoch)``. A
  step takes the next ``batch_size * world_size`` indices of it, cut into ``world_size *
  grad_accum`` micro-batches of ``batch_size // grad_accum`` images; micro-batch ``m`` of rank
  ``r`` is the global micro-batch ``g = r * grad_accum + m``. So one process with ``grad_accum=W``
  sees the same micro-batches, in the same order, as W processes with ``grad_accum=1`` (rank r's
  single micro-batch is micro-batch r). The last incomplete step of an epoch is dropped.
- **Augmentation.** Item ``i`` of epoch ``e`` runs its transforms under random generators seeded
  from ``(seed, e, i)`` (:class:`ItemSeededDataset`), so a crop or flip does not depend on the
  worker that loads it, on what was loaded before, or on where a resumed run starts.

Starting at step ``k`` of an epoch skips the first ``k`` steps' indices without loading them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from workbench.config import TrainConfig
from workbench.data.collate import collate
from workbench.data.dataset import DatasetError, DetectionDataset
from workbench.types import Batch, Target

# Domain tags keep the seeds of different uses apart even when their other inputs coincide.
SEED_ORDER, SEED_ITEM, SEED_FORWARD = 0x0DE5, 0x17E3, 0xF0D1


def derive_seed(*values: int) -> int:
    """A 63-bit seed from non-negative ints, well mixed (numpy's SeedSequence), stable across
    processes and Python versions (unlike ``hash`` of a str)."""
    words = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class ItemSeededDataset(torch.utils.data.Dataset):
    """A DetectionDataset whose item ``i`` is augmented under RNGs seeded from (seed, epoch, i).

    The transforms draw from torch's global generator (and a dataset may use numpy's or Python's).
    A private ``torch.Generator`` cannot be made the global one, so each item runs inside
    ``torch.random.fork_rng`` (which restores the caller's CPU generator afterwards) with the
    CPU generator reseeded; numpy's and Python's global states are saved, seeded and restored the
    same way. Only the CPU generator is forked: transforms run on CPU, and ``torch.manual_seed``
    is avoided because it would also reseed CUDA generators outside the fork.

    Every other attribute (``categories``, ``target``, ``instances`` ...) is the wrapped dataset's.
    """

    def __init__(self, dataset: DetectionDataset, seed: int, epoch: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Takes effect for loaders created afterwards (workers copy the dataset at start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        seed = derive_seed(SEED_ITEM, self.seed, self.epoch, int(index))
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

    def __getattr__(self, name: str):
        if name == "dataset":  # not yet set (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def epoch_order(num_items: int, seed: int, epoch: int) -> Tensor:
    """``[num_items]`` int64: the global order of ``epoch``, the same in every process."""
    generator = torch.Generator().manual_seed(derive_seed(SEED_ORDER, seed, epoch))
    return torch.randperm(num_items, generator=generator)


def steps_per_epoch(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """Complete steps in one epoch; ``batch_size`` is per process (TrainConfig.batch_size)."""
    global_batch = batch_size * world_size
    if num_items < global_batch:
        raise DatasetError(
            f"the dataset has {num_items} images, fewer than one global batch of {global_batch} "
            f"(train.batch_size={batch_size} x {world_size} processes); lower train.batch_size "
            "or use more images"
        )
    return num_items // global_batch


class StepSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices) from step ``start_step`` on.

    Each step yields ``grad_accum`` micro-batches, in order; see the module docstring.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        grad_accum: int,
        *,
        seed: int,
        epoch: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % grad_accum:
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of grad_accum {grad_accum}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
        self.num_items, self.grad_accum = num_items, grad_accum
        self.micro_size, self.global_batch = batch_size // grad_accum, batch_size * world_size
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.num_steps = steps_per_epoch(num_items, batch_size, world_size)
        if not 0 <= start_step <= self.num_steps:
            raise ValueError(f"start_step {start_step} must lie in [0, {self.num_steps}]")
        self.start_step = start_step

    def micro_batch(self, order: Tensor, step: int, micro: int) -> list[int]:
        """Indices of this rank's micro-batch ``micro`` of ``step`` within ``order``."""
        g = self.rank * self.grad_accum + micro
        begin = step * self.global_batch + g * self.micro_size
        return order[begin : begin + self.micro_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.num_items, self.seed, self.epoch)
        for step in range(self.start_step, self.num_steps):
            for micro in range(self.grad_accum):
                yield self.micro_batch(order, step, micro)

    def __len__(self) -> int:
        return (self.num_steps - self.start_step) * self.grad_accum


class StepLoader:
    """Iterates the steps of one epoch: each item is the list of this rank's micro-Batches."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: StepSampler) -> None:
        self.loader, self.sampler = loader, sampler

    def __len__(self) -> int:
        return self.sampler.num_steps - self.sampler.start_step

    def __iter__(self) -> Iterator[list[Batch]]:
        step: list[Batch] = []
        for batch in self.loader:
            step.append(batch)
            if len(step) == self.sampler.grad_accum:
                yield step
                step = []


def make_loader(
    dataset: DetectionDataset,
    cfg: TrainConfig,
    epoch: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> StepLoader:
    """This rank's steps of ``epoch`` from ``start_step``, as lists of ``cfg.grad_accum``
    micro-Batches of ``cfg.batch_size // cfg.grad_accum`` images (``collate`` per micro-batch).

    The dataset is wrapped in an :class:`ItemSeededDataset` seeded with ``cfg.seed``; the result
    is the same for any ``num_workers``.
    """
    base = dataset.dataset if isinstance(dataset, ItemSeededDataset) else dataset
    seeded = ItemSeededDataset(base, cfg.seed, epoch)
    sampler = StepSampler(
        len(seeded),
        cfg.batch_size,
        cfg.grad_accum,
        seed=cfg.seed,
        epoch=epoch,
        start_step=start_step,
        rank=rank,
        world_size=world_size,
    )
    loader = torch.utils.data.DataLoader(
        seeded,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        # A private generator: otherwise the loader draws its worker base seed from torch's
        # global generator, which would shift every random number drawn after it.
        generator=torch.Generator(),
    )
    return StepLoader(loader, sampler)
