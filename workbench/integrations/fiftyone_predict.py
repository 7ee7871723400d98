"""What a checkpoint says about every image of a dataset: detections plus the per-query table.

The FiftyOne export writes these values; nothing here imports fiftyone, so the same numbers can be
checked against :mod:`workbench.evaluation` without a database. Prompts are drawn exactly as
:func:`workbench.evaluation.evaluate` draws them (same protocol, K and seed, cross-image exemplars
from the dataset itself minus the searched image), so the detections are the ones ``evaluate``
scores, up to the last bits of batched vs single-image forwards.

Rewards and advantages come from :func:`workbench.analysis.table_from_outputs` against the image's
ground truth of the prompted classes (crowd regions left out, as in training); the KL needs a
reference checkpoint (e.g. the SFT model a GRQO run started from) and is None without one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from workbench.analysis import GroundTruth, reference_logits_at, run_settings, table_from_outputs
from workbench.config import GRQOConfig, LossConfig
from workbench.data.dataset import DetectionDataset
from workbench.data.prompts import cross_image_prompts, interactive_prompts
from workbench.evaluation import PROTOCOLS
from workbench.predictor import EncodedImage, Predictor
from workbench.types import Detections, QueryRecord, Target, VisualPrompt


@dataclass(frozen=True)
class ImagePrediction:
    """One model on one image.

    Attributes:
        image_id: the dataset's image id (the key of the FiftyOne sample).
        detections: post-processed detections, absolute xyxy pixels; ``query_index`` points
            into ``queries``.
        queries: the per-query table (every selected query, selection order), or empty.
        prompts: the prompts the image was searched with (``Detections.prompt_index`` order).
        truth_annotation_ids: annotation id of each ground-truth row the rewards were computed
            against (``QueryRecord.matched_gt`` indexes it).
    """

    image_id: int
    detections: Detections
    queries: tuple[QueryRecord, ...] = ()
    prompts: tuple[VisualPrompt, ...] = ()
    truth_annotation_ids: tuple[int, ...] = ()

    def prompt_image_ids(self, prompt_index: int) -> list[int]:
        """Source image id of each exemplar of a prompt (the searched image for ``None``)."""
        return [
            self.image_id if ex.image_id is None else int(ex.image_id)
            for ex in self.prompts[prompt_index].exemplars
        ]


class _EncodedImages(Mapping):
    """Dataset images by image id, encoded by one Predictor on first use and kept (cross-image
    exemplars reuse a few reference images for every searched image)."""

    def __init__(self, predictor: Predictor, dataset: DetectionDataset, index_of: dict[int, int],
                 capacity: int = 256):  # fmt: skip
        self.predictor, self.dataset, self.capacity = predictor, dataset, capacity
        self.index_of = index_of  # image id -> dataset index of every image with a box
        self._cache: OrderedDict[int, EncodedImage] = OrderedDict()

    def __getitem__(self, image_id) -> EncodedImage:
        if image_id not in self._cache:
            image = self.dataset.load_image(self.index_of[image_id])
            self._cache[image_id] = self.predictor.encode(image)
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(image_id)
        return self._cache[image_id]

    def __contains__(self, image_id) -> bool:  # without encoding anything
        return image_id in self.index_of

    def __iter__(self) -> Iterator:
        return iter(self.index_of)

    def __len__(self) -> int:
        return len(self.index_of)


def prompts_for(
    dataset: DetectionDataset,
    target: Target,
    protocol: str,
    exemplars_per_class: int,
    seed: int,
    instances=None,
) -> list[VisualPrompt]:
    """The prompts ``evaluate`` searches ``target``'s image with under ``protocol``."""
    cats, k = dataset.categories, exemplars_per_class
    if protocol == "interactive":
        return interactive_prompts(target, cats, exemplars_per_class=k, seed=seed)
    instances = dataset.instances() if instances is None else instances
    return cross_image_prompts(instances, cats, exemplars_per_class=k, seed=seed,
                               exclude_image_ids=[target.image_id])  # fmt: skip


def prompted_ground_truth(
    target: Target, prompts: Sequence[VisualPrompt]
) -> tuple[GroundTruth, tuple[int, ...]]:
    """The image's non-crowd boxes of the prompted classes, labelled by prompt index (what GRQO
    rewards a query against; absolute xyxy pixels of the original image), and their annotation
    ids."""
    prompt_of = {p.label: u for u, p in enumerate(prompts)}
    labels, crowd = target.labels.tolist(), target.iscrowd.tolist()
    keep = [j for j in range(len(labels)) if not crowd[j] and labels[j] in prompt_of]
    boxes = target.boxes_xyxy(target.orig_size)[keep].reshape(-1, 4)
    prompt_index = torch.tensor([prompt_of[labels[j]] for j in keep], dtype=torch.int64)
    ids = tuple(int(target.annotation_ids[j]) for j in keep)
    return GroundTruth(boxes_xyxy=boxes, prompt_index=prompt_index), ids


def iter_predictions(
    predictor: Predictor,
    dataset: DetectionDataset,
    *,
    protocol: str = "interactive",
    exemplars_per_class: int = 1,
    seed: int = 0,
    reference: Predictor | None = None,
    indices: Sequence[int] | None = None,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
    grqo: GRQOConfig | None = None,
    loss: LossConfig | None = None,
    progress: bool = False,
    desc: str = "predict",
) -> Iterator[ImagePrediction]:
    """Detections and the per-query table of every image at ``indices`` (default: all), one
    image at a time (a large dataset's tables need not fit in memory at once).

    Args:
        predictor: the checkpoint to run.
        protocol: ``"interactive"`` or ``"cross_image"`` (see :mod:`workbench.evaluation`).
        reference: a reference checkpoint for the KL column (None: KL is None).
        score_threshold, max_detections: post-processing, as in ``Predictor.predict``.
        grqo, loss: the configs the rewards and advantages are computed under (default: the
            model's own, :func:`~workbench.analysis.run_settings`).
    """
    own_grqo, own_loss = run_settings(predictor)
    grqo, loss = grqo or own_grqo, loss or own_loss
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: use one of {PROTOCOLS}")
    indices = range(len(dataset)) if indices is None else indices
    cross = protocol == "cross_image"
    instances = dataset.instances() if cross else None
    images = ref_images = None
    if cross:  # exemplars come from the images that have boxes
        index_of = {inst.image_id: inst.image_index for inst in instances}
        images = _EncodedImages(predictor, dataset, index_of)
        if reference is not None:
            ref_images = _EncodedImages(reference, dataset, index_of)
    for index in tqdm(indices, desc=desc, disable=not progress):
        target = dataset.target(index)
        prompts = prompts_for(dataset, target, protocol, exemplars_per_class, seed, instances)
        if not prompts:  # nothing to search for: no detections, no queries
            yield ImagePrediction(target.image_id, _no_detections(target.orig_size))
            continue
        image = dataset.load_image(index)
        encoded = predictor.encode(image)
        dets, queries = predictor.predict(
            encoded, prompts, reference_images=images,
            score_threshold=score_threshold, max_detections=max_detections, return_queries=True,
        )  # fmt: skip
        ref_logits = None
        if reference is not None:
            ref_logits = reference_logits_at(
                reference, image, encoded, prompts, queries.token_index, ref_images
            )
        truth, truth_ids = prompted_ground_truth(target, prompts)
        table = table_from_outputs(
            queries, truth, reference_logits=ref_logits, names=[p.name for p in prompts],
            grqo=grqo, loss=loss,
        )  # fmt: skip
        yield ImagePrediction(target.image_id, dets, tuple(table), tuple(prompts), truth_ids)


def predict_dataset(predictor: Predictor, dataset: DetectionDataset, **kwargs) -> list:
    """:func:`iter_predictions` as a list of :class:`ImagePrediction` (same arguments)."""
    return list(iter_predictions(predictor, dataset, **kwargs))


def _no_detections(image_size: tuple[int, int]) -> Detections:
    return Detections(
        boxes_xyxy=torch.zeros(0, 4), scores=torch.zeros(0),
        prompt_index=torch.zeros(0, dtype=torch.int64), names=(), image_size=tuple(image_size),
    )  # fmt: skip
