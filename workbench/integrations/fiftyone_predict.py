"""What a checkpoint says about every image of a dataset: detections plus the per-query table.

The FiftyOne export writes these values; nothing here imports fiftyone, so the same numbers can be
checked against :mod:`workbench.evaluation` without a database. Prompts come from
:func:`workbench.data.prompts.protocol_prompts`, the function :func:`workbench.evaluation.evaluate`
draws them with (same protocol, K, seed and prompt pool), so the detections are the ones
``evaluate`` scores, up to the last bits of batched vs single-image forwards.

Rewards and advantages come from :func:`workbench.analysis.table_from_outputs` against the image's
ground truth of the prompted classes (crowd regions left out, as in training); the KL needs a
reference checkpoint (e.g. the SFT model a GRQO run started from) and is None without one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from workbench.analysis import GroundTruth, reference_logits_at, run_settings, table_from_outputs
from workbench.config import GRQOConfig, LossConfig
from workbench.data.dataset import DetectionDataset, ImagesById
from workbench.data.prompts import protocol_prompts
from workbench.predictor import Predictor
from workbench.types import Detections, QueryRecord, VisualPrompt


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


def iter_predictions(
    predictor: Predictor,
    dataset: DetectionDataset,
    *,
    protocol: str = "interactive",
    exemplars_per_class: int = 1,
    seed: int = 0,
    prompt_pool: DetectionDataset | None = None,
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
        protocol, exemplars_per_class, seed, prompt_pool: the prompts, as
            :func:`~workbench.data.prompts.protocol_prompts` draws them for ``evaluate``.
        reference: a reference checkpoint for the KL column (None: KL is None).
        score_threshold, max_detections: post-processing, as in ``Predictor.predict``.
        grqo, loss: the configs the rewards and advantages are computed under (default: the
            model's own, :func:`~workbench.analysis.run_settings`).
    """
    own_grqo, own_loss = run_settings(predictor)
    grqo, loss = grqo or own_grqo, loss or own_loss
    indices = range(len(dataset)) if indices is None else indices
    targets = [dataset.target(i) for i in indices]
    prompt_lists = protocol_prompts(
        dataset,
        targets,
        protocol,
        exemplars_per_class=exemplars_per_class,
        seed=seed,
        prompt_pool=prompt_pool,
    )
    images = ref_images = None
    if protocol == "cross_image":  # the images the exemplars lie on, each encoded once
        source = dataset if prompt_pool is None else prompt_pool
        images = ImagesById(source, encode=predictor.encode)
        if reference is not None:
            ref_images = ImagesById(source, encode=reference.encode)
    rows = zip(indices, targets, prompt_lists, strict=True)
    for index, target, prompts in tqdm(rows, total=len(targets), desc=desc, disable=not progress):
        if not prompts:  # nothing to search for: no detections, no queries
            yield ImagePrediction(target.image_id, _no_detections(target.orig_size))
            continue
        image = dataset.load_image(index)
        encoded = predictor.encode(image)
        dets, queries = predictor.predict(
            encoded,
            prompts,
            reference_images=images,
            score_threshold=score_threshold,
            max_detections=max_detections,
            return_queries=True,
        )
        ref_logits = None
        if reference is not None:
            ref_logits = reference_logits_at(
                reference, image, encoded, prompts, queries.token_index, ref_images
            )
        truth = GroundTruth.prompted(target, prompts)
        table = table_from_outputs(
            queries,
            truth,
            reference_logits=ref_logits,
            names=[p.name for p in prompts],
            grqo=grqo,
            loss=loss,
        )
        yield ImagePrediction(
            target.image_id, dets, tuple(table), tuple(prompts), truth.annotation_ids
        )


def predict_dataset(predictor: Predictor, dataset: DetectionDataset, **kwargs) -> list:
    """:func:`iter_predictions` as a list of :class:`ImagePrediction` (same arguments)."""
    return list(iter_predictions(predictor, dataset, **kwargs))


def _no_detections(image_size: tuple[int, int]) -> Detections:
    return Detections(
        boxes_xyxy=torch.zeros(0, 4),
        scores=torch.zeros(0),
        prompt_index=torch.zeros(0, dtype=torch.int64),
        names=(),
        image_size=tuple(image_size),
    )
