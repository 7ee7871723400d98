"""Visual prompts: which exemplar boxes stand for which class, in training and in evaluation.

Training (docs/method.md#training-prompts, ``generate_visual_prompts`` in the released code): in
each batch, for every category present, one instance is drawn uniformly among all its instances in
the batch; the U chosen boxes form one prompt list shared by every image of the batch. An image's
ground truth gets one-hot targets over those U prompts, and prompts of categories absent from an
image act as negatives for it. So the number of prompts is the number of distinct categories in the
batch.

Evaluation has two protocols (:data:`PROTOCOLS`), and :func:`protocol_prompts` is the one rule
that turns them into prompts, for ``workbench eval``, FiftyOne and the notebooks alike:

- *interactive*: the prompt boxes come from the searched image itself (K instances per class
  present), as when a user draws a box on the picture;
- *cross-image* (generic): K exemplars per class from other images, whose embeddings the model
  averages into one class embedding (docs/method.md#evaluation-protocols), as with a saved prompt
  bank. The exemplars come from a separate prompt pool when one is given, else from the evaluated
  dataset minus the searched image.

Every sampler takes a seed or a ``numpy.random.Generator``, so a run can be replayed exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from workbench import boxes as box_ops
from workbench.data.dataset import Category, DetectionDataset, Instance
from workbench.types import Exemplar, PromptSet, Target, VisualPrompt

PROTOCOLS = ("interactive", "cross_image")


def sample_training_prompts(
    targets: Sequence[Target], rng: np.random.Generator, names: Sequence[str] | None = None
) -> PromptSet:
    """One random instance per category present in the batch, shared by all images
    (method.md#training-prompts).

    Args:
        targets: the batch's targets, labels being dataset labels.
        rng: the generator to draw from (seed it from (run seed, step) for exact replays).
        names: optional category names indexed by label, carried into the PromptSet.

    Returns:
        A PromptSet with ``U`` prompts, one exemplar each, in ascending label order;
        ``image_index`` points into the batch. Crowd regions are never chosen. A batch without
        any box gives ``U = 0``.
    """
    candidates: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for b, target in enumerate(targets):
        for j in torch.nonzero(~target.iscrowd).flatten().tolist():
            candidates[int(target.labels[j])].append((b, j))
    labels = sorted(candidates)
    picks = [candidates[u][int(rng.integers(len(candidates[u])))] for u in labels]
    boxes = [targets[b].boxes_cxcywh[j] for b, j in picks]
    return PromptSet(
        boxes_cxcywh=torch.stack(boxes) if boxes else torch.zeros(0, 4),
        image_index=torch.tensor([b for b, _ in picks], dtype=torch.int64),
        prompt_index=torch.arange(len(labels), dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64),
        names=tuple(names[u] for u in labels) if names is not None else (),
        annotation_ids=torch.tensor(
            [int(targets[b].annotation_ids[j]) for b, j in picks], dtype=torch.int64
        ),
    )


def assign_targets(targets: Sequence[Target], prompt_labels: Tensor) -> list[Target]:
    """Relabel ground truth by prompt: each box's label becomes the index of its class's prompt.

    Boxes whose class has no prompt are dropped (nobody asked for them). Args: ``prompt_labels``
    ``[U]`` int64, the dataset label of each prompt (``PromptSet.labels``).
    """
    lookup = {int(label): u for u, label in enumerate(prompt_labels.tolist())}
    out = []
    for target in targets:
        index = torch.tensor([lookup.get(int(x), -1) for x in target.labels], dtype=torch.int64)
        keep = index >= 0
        relabelled = target.select(keep)
        out.append(
            Target(
                boxes_cxcywh=relabelled.boxes_cxcywh,
                labels=index[keep],
                image_id=target.image_id,
                size=target.size,
                orig_size=target.orig_size,
                iscrowd=relabelled.iscrowd,
                annotation_ids=relabelled.annotation_ids,
            )
        )
    return out


def one_hot_targets(assigned: Target, num_prompts: int) -> Tensor:
    """``[N, U]`` float32 one-hot classification targets over the prompts (after assign_targets)."""
    return torch.nn.functional.one_hot(assigned.labels, num_prompts).float()


def interactive_prompts(
    target: Target,
    categories: Sequence[Category],
    *,
    exemplars_per_class: int = 1,
    seed: int = 0,
) -> list[VisualPrompt]:
    """Prompts drawn from the searched image: up to K instances of each class present in it.

    ``target`` must be untransformed (boxes refer to ``orig_size``); exemplar boxes are absolute
    xyxy pixels with ``image_id=None`` (the searched image). The draw depends only on
    ``(seed, image_id)``, so the prompts of one image do not change with evaluation order.
    """
    rng = np.random.default_rng([seed, int(target.image_id)])
    boxes_xyxy = target.boxes_xyxy(target.orig_size)
    prompts = []
    for cat in categories:
        rows = torch.nonzero((target.labels == cat.label) & ~target.iscrowd).flatten().tolist()
        if not rows:
            continue
        chosen = rng.choice(len(rows), size=min(exemplars_per_class, len(rows)), replace=False)
        exemplars = tuple(
            Exemplar(
                box_xyxy=tuple(boxes_xyxy[rows[i]].tolist()),
                image_id=None,
                annotation_id=int(target.annotation_ids[rows[i]]),
            )
            for i in sorted(chosen.tolist())
        )
        prompts.append(
            VisualPrompt(name=cat.name, exemplars=exemplars, prompt_id=cat.label, label=cat.label)
        )
    return prompts


def cross_image_prompts(
    instances: Sequence[Instance],
    categories: Sequence[Category],
    *,
    exemplars_per_class: int = 1,
    seed: int = 0,
    exclude_image_ids: Sequence[int] = (),
) -> list[VisualPrompt]:
    """Generic prompts: K exemplars per class from other images (method.md#evaluation-protocols).

    Exemplars of one class come from distinct images while there are enough; images in
    ``exclude_image_ids`` (the searched image, typically) are never used. A class with no usable
    instance gets no prompt. Exemplar boxes are absolute xyxy pixels with their ``image_id``.
    """
    rng = np.random.default_rng(seed)
    excluded = set(int(i) for i in exclude_image_ids)
    by_label: dict[int, list[Instance]] = defaultdict(list)
    for inst in instances:
        if not inst.iscrowd and inst.image_id not in excluded:
            by_label[inst.label].append(inst)
    prompts = []
    for cat in categories:
        pool = by_label.get(cat.label, [])
        if not pool:
            continue
        chosen = _spread_over_images(pool, exemplars_per_class, rng)
        exemplars = tuple(
            Exemplar(box_xyxy=tuple(i.box_xyxy), image_id=i.image_id, annotation_id=i.annotation_id)
            for i in chosen
        )
        prompts.append(
            VisualPrompt(name=cat.name, exemplars=exemplars, prompt_id=cat.label, label=cat.label)
        )
    return prompts


def protocol_prompts(
    dataset: DetectionDataset,
    targets: Sequence[Target],
    protocol: str,
    *,
    exemplars_per_class: int = 1,
    seed: int = 0,
    prompt_pool: DetectionDataset | None = None,
) -> list[list[VisualPrompt]]:
    """The prompts each of ``targets``' images (untransformed targets of ``dataset``) is searched
    with under an evaluation protocol.

    - ``interactive``: :func:`interactive_prompts` of each image (``prompt_pool`` is not used);
    - ``cross_image`` with ``prompt_pool``: one list of :func:`cross_image_prompts` from the pool,
      relabelled to ``dataset``'s categories by category id (pool categories the dataset lacks
      are dropped); the same list object for every image, so a caller can embed it once;
    - ``cross_image`` without: :func:`cross_image_prompts` from ``dataset`` minus the searched
      image, so every image has its own list.

    Cross-image exemplars carry the image id of the dataset they lie on (``prompt_pool`` when
    given, else ``dataset``): look their images up in an
    :class:`~workbench.data.dataset.ImagesById` of it. A class without any exemplar gets no
    prompt.
    """
    cats, k = dataset.categories, exemplars_per_class
    if protocol == "interactive":
        return [interactive_prompts(t, cats, exemplars_per_class=k, seed=seed) for t in targets]
    if protocol != "cross_image":
        raise ValueError(f"protocol={protocol!r}: use one of {PROTOCOLS}")
    if prompt_pool is not None:
        return [_pool_prompts(prompt_pool, cats, k, seed)] * len(targets)
    instances = dataset.instances()
    return [
        cross_image_prompts(
            instances, cats, exemplars_per_class=k, seed=seed, exclude_image_ids=[t.image_id]
        )
        for t in targets
    ]


def _pool_prompts(
    pool: DetectionDataset, categories: Sequence[Category], k: int, seed: int
) -> list[VisualPrompt]:
    """Generic prompts from a separate pool, relabelled to ``categories`` by category id."""
    label_of = {c.id: c.label for c in categories}
    pool_ids = {c.label: c.id for c in pool.categories}
    prompts = cross_image_prompts(
        pool.instances(), pool.categories, exemplars_per_class=k, seed=seed
    )
    out = []
    for p in prompts:
        label = label_of.get(pool_ids[p.label])
        if label is not None:
            out.append(replace(p, label=label, prompt_id=label))
    if not out:
        raise ValueError("the prompt pool shares no category id with the evaluated dataset")
    return out


def prompted_rows(target: Target, prompt_labels: Sequence[int]) -> tuple[list[int], Tensor]:
    """Which ground truth a query searched by these prompts is rewarded and scored against: the
    rows of ``target``'s non-crowd boxes whose class is prompted, and ``[N]`` int64 the index of
    each one's prompt in ``prompt_labels`` (the dataset label of each prompt)."""
    prompt_of = {label: u for u, label in enumerate(prompt_labels)}
    labels, crowd = target.labels.tolist(), target.iscrowd.tolist()
    rows = [j for j, label in enumerate(labels) if not crowd[j] and label in prompt_of]
    return rows, torch.tensor([prompt_of[labels[j]] for j in rows], dtype=torch.int64)


def _spread_over_images(
    pool: Sequence[Instance], k: int, rng: np.random.Generator
) -> list[Instance]:
    """Up to ``k`` instances, from as many different images as possible."""
    order = rng.permutation(len(pool)).tolist()
    seen: set[int] = set()
    first, rest = [], []
    for i in order:
        (rest if pool[i].image_id in seen else first).append(pool[i])
        seen.add(pool[i].image_id)
    return (first + rest)[:k]


def build_prompt_set(
    prompts: Sequence[VisualPrompt],
    image_keys: Sequence[int | str | None],
    image_sizes: Mapping[int | str | None, tuple[int, int]],
) -> PromptSet:
    """Model-side PromptSet from user-side VisualPrompts.

    Args:
        prompts: the classes, in prompt order.
        image_keys: the prompt images in the order the model will encode them; ``None`` stands
            for the searched image.
        image_sizes: ``(height, width)`` of each key, to normalise the exemplar boxes.
    """
    position = {key: i for i, key in enumerate(image_keys)}
    rows, images, owners, ann_ids = [], [], [], []
    for u, prompt in enumerate(prompts):
        for ex in prompt.exemplars:
            if ex.image_id not in position:
                raise KeyError(
                    f"prompt {prompt.name!r} uses image {ex.image_id!r}, which is not among the "
                    f"prompt images {list(image_keys)}; pass that image as a reference"
                )
            size = image_sizes[ex.image_id]
            rows.append(
                box_ops.convert(ex.box_xyxy, "xyxy", "cxcywh", dst_normalized=True, size_hw=size)
            )
            images.append(position[ex.image_id])
            owners.append(u)
            ann_ids.append(-1 if ex.annotation_id is None else ex.annotation_id)
    labels = [-1 if p.label is None else p.label for p in prompts]
    return PromptSet(
        boxes_cxcywh=torch.stack(rows).reshape(-1, 4) if rows else torch.zeros(0, 4),
        image_index=torch.tensor(images, dtype=torch.int64),
        prompt_index=torch.tensor(owners, dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64),
        names=tuple(p.name for p in prompts),
        annotation_ids=torch.tensor(ann_ids, dtype=torch.int64),
    )
