"""Why did each query score what it did? The per-query table of one image, for any checkpoint.

For every decoder query of the last layer, in selection order: its rank, selection logit and
objectness (sigmoid of it), best prompt and score, box; with ground truth, the box it matches
best (lowest matching cost), IoU and cost terms, whether Hungarian matching assigned it, and
GRQO's reward and advantage (muted or not); with a reference model, the k3 KL of its objectness.
The app, the notebooks and FiftyOne all read this one table.

Rewards, advantages and the muted queries follow the GRQO and loss settings the model was
trained with (:func:`run_settings`: the run config its checkpoint records), so a model trained
with ``grqo.mute=0`` shows no muted query; the defaults of a training run stand in only for a
model whose checkpoint records no run.

    records = query_table(predictor, image, prompts, ground_truth=GroundTruth(boxes, labels))
    frame = to_dataframe(records)          # when pandas is installed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from workbench import boxes as box_ops
from workbench.config import GRQOConfig, LossConfig
from workbench.data.prompts import prompted_rows
from workbench.matching import HungarianMatcher, pairwise_cost_terms
from workbench.objectives.grqo import k3_kl, mute_count
from workbench.postprocess import QueryOutputs
from workbench.predictor import EncodedImage, Predictor
from workbench.prompt_bank import PromptBank
from workbench.rewards import REWARDS, group_advantages
from workbench.types import QueryRecord, Target, VisualPrompt


@dataclass(frozen=True)
class GroundTruth:
    """Known objects of the image: ``boxes_xyxy [N, 4]`` absolute pixels, ``prompt_index [N]``
    the prompt (class) each one belongs to, and (when known) each one's annotation id, which
    ``QueryRecord.matched_gt`` rows can be traced back to."""

    boxes_xyxy: Tensor
    prompt_index: Tensor
    annotation_ids: tuple[int, ...] = ()

    @classmethod
    def prompted(cls, target: Target, prompts: Sequence[VisualPrompt]) -> GroundTruth:
        """The untransformed ``target``'s non-crowd boxes of the prompted classes, labelled by
        prompt index: what GRQO rewards a query against and the query metrics score
        (:func:`~workbench.data.prompts.prompted_rows`)."""
        rows, prompt_index = prompted_rows(target, [p.label for p in prompts])
        boxes = target.boxes_xyxy(target.orig_size)[rows].reshape(-1, 4)
        ids = tuple(int(target.annotation_ids[j]) for j in rows)
        return cls(boxes_xyxy=boxes, prompt_index=prompt_index, annotation_ids=ids)


def run_settings(predictor: Predictor) -> tuple[GRQOConfig, LossConfig]:
    """The GRQO and loss settings ``predictor``'s model was trained with (the run config its
    checkpoint records), or a training run's defaults when it records none."""
    run = getattr(predictor, "run_config", None)
    return (run.grqo, run.loss) if run is not None else (GRQOConfig(), LossConfig())


def table_from_outputs(
    queries: QueryOutputs,
    ground_truth: GroundTruth | None = None,
    *,
    grqo: GRQOConfig,
    loss: LossConfig,
    reference_logits: Tensor | None = None,
    names: Sequence[str] = (),
) -> list[QueryRecord]:
    """The table from one image's query outputs (``QueryOutputs`` of ``Predictor.predict``).

    ``grqo``, ``loss``: the settings rewards, advantages and muting follow; pass the model's
    own (:func:`run_settings`). ``reference_logits``: ``[Q]`` a reference model's selection
    logits at the same tokens.
    """
    q = queries.logits.shape[0]
    scores, best = queries.scores.max(-1)
    kl = k3_kl(queries.select_logits, reference_logits) if reference_logits is not None else None
    truth = _truth_columns(queries, ground_truth, grqo, loss) if ground_truth is not None else {}
    records = []
    for i in range(q):
        extra = {"name": names[int(best[i])] if names else "", **truth.get("extra", [{}] * q)[i]}
        records.append(
            QueryRecord(
                rank=i,
                query_index=i,
                token_index=int(queries.token_index[i]),
                select_score=float(queries.select_logits[i]),
                objectness=float(queries.select_logits[i].sigmoid()),
                score=float(scores[i]),
                prompt_index=int(best[i]),
                box_xyxy=tuple(round(float(v), 2) for v in queries.boxes_xyxy[i]),
                matched_gt=truth["matched"][i] if truth else None,
                iou=truth["iou"][i] if truth else None,
                cost=truth["cost"][i] if truth else None,
                reward=truth["reward"][i] if truth else None,
                advantage=truth["advantage"][i] if truth else None,
                muted=i >= q - mute_count(grqo, q),
                kl=float(kl[i]) if kl is not None else None,
                extra=extra,
            )
        )
    return records


def _truth_columns(queries: QueryOutputs, truth: GroundTruth, grqo, loss) -> dict:
    """Matching costs, IoU, reward and advantage of every query against the ground truth."""
    n = int(truth.boxes_xyxy.shape[0])
    q = queries.logits.shape[0]
    if n == 0:
        nothing = [None] * q
        return {
            "matched": nothing,
            "iou": nothing,
            "cost": nothing,
            "reward": nothing,
            "advantage": [0.0] * q,
            "extra": [{"hungarian": False}] * q,
        }
    gt = box_ops.convert(
        truth.boxes_xyxy.float(), "xyxy", "cxcywh", dst_normalized=True, size_hw=queries.image_size
    )
    labels = truth.prompt_index.long()
    terms = pairwise_cost_terms(queries.logits, queries.boxes_cxcywh, labels, gt, loss)
    cost = sum(getattr(loss, k) * v for k, v in terms.items())
    best_cost, matched = cost.min(1)
    iou = box_ops.box_iou(queries.boxes_xyxy, truth.boxes_xyxy.float())
    reward = REWARDS[grqo.reward](queries.logits, queries.boxes_cxcywh, labels, gt, loss)
    advantage = group_advantages(reward, mute_count(grqo, q), grqo.std_eps, grqo.unbiased_std)
    target = Target(gt, labels, 0, queries.image_size, queries.image_size)
    rows, _ = HungarianMatcher(loss)(
        {"pred_logits": queries.logits[None], "pred_boxes": queries.boxes_cxcywh[None]}, [target]
    )[0]
    assigned = set(rows.tolist())
    extra = [
        {"hungarian": i in assigned, **{k: float(v[i, matched[i]]) for k, v in terms.items()}}
        for i in range(q)
    ]
    return {
        "matched": matched.tolist(),
        "iou": iou[torch.arange(q), matched].tolist(),
        "cost": best_cost.tolist(),
        "reward": reward.tolist(),
        "advantage": advantage.tolist(),
        "extra": extra,
    }


def query_table(
    predictor: Predictor,
    image,
    prompts: Sequence[VisualPrompt] | PromptBank,
    *,
    ground_truth: GroundTruth | None = None,
    reference: Predictor | None = None,
    reference_images: Mapping | None = None,
    grqo: GRQOConfig | None = None,
    loss: LossConfig | None = None,
) -> list[QueryRecord]:
    """The per-query table of ``image`` under ``prompts`` for ``predictor``'s model.

    ``reference`` (another checkpoint, e.g. the SFT model a GRQO run started from) adds the KL
    column; it needs VisualPrompts, since a prompt bank belongs to one model. ``grqo``, ``loss``
    default to the model's own (:func:`run_settings`).
    """
    own_grqo, own_loss = run_settings(predictor)
    encoded = image if isinstance(image, EncodedImage) else predictor.encode(image)
    _, queries = predictor.predict(
        encoded, prompts, reference_images=reference_images, return_queries=True
    )
    names = prompts.names if isinstance(prompts, PromptBank) else [p.name for p in prompts]
    ref_logits = None
    if reference is not None:
        if isinstance(prompts, PromptBank):
            raise ValueError("a KL against a reference needs VisualPrompts, not a prompt bank")
        if isinstance(image, EncodedImage):
            raise ValueError(
                "pass the raw image, not an EncodedImage, when comparing against a reference: "
                "each model encodes the image with its own backbone"
            )
        ref_logits = reference_logits_at(
            reference, image, encoded, prompts, queries.token_index, reference_images
        )
    return table_from_outputs(
        queries,
        ground_truth,
        grqo=grqo or own_grqo,
        loss=loss or own_loss,
        reference_logits=ref_logits,
        names=names,
    )


def reference_logits_at(
    reference: Predictor,
    image,
    encoded: EncodedImage,
    prompts: Sequence[VisualPrompt],
    token_index: Tensor,
    reference_images: Mapping | None = None,
) -> Tensor:
    """``[Q]`` the reference model's selection logits at the tokens the policy selected
    (``token_index``, into the tokens of ``encoded``, the policy's encoding of ``image``).

    Raises ValueError when the reference tiles ``image`` into other tokens (another resolution
    or backbone): its logits would belong to other places in the image.
    """
    ref_encoded = reference.encode(image)
    if ref_encoded.features.spatial_shapes_list != encoded.features.spatial_shapes_list:
        raise ValueError(
            "the reference model tiles the image into different tokens "
            f"({ref_encoded.features.spatial_shapes_list} vs "
            f"{encoded.features.spatial_shapes_list}); use the same resolution and backbone"
        )
    logits = reference_selection_logits(reference, ref_encoded, prompts, reference_images)
    return logits[token_index]


def reference_selection_logits(
    reference: Predictor,
    image,
    prompts: Sequence[VisualPrompt] | PromptBank,
    reference_images: Mapping | None = None,
) -> Tensor:
    """``[T]`` the reference model's max-over-prompts selection logit of every token.

    ``prompts``: VisualPrompts, or a PromptBank made by the *reference* model.
    """
    encoded = reference.encode(image) if not isinstance(image, EncodedImage) else image
    if isinstance(prompts, PromptBank):
        bank = prompts
    else:
        bank = reference.embed_prompts(prompts, reference_images or {}, encoded)
    with torch.inference_mode():
        classes = bank.embeddings.to(encoded.features.tokens.device)
        return reference.model.selection_logits(encoded.features, classes)[0].cpu()


def to_records(rows: Sequence[QueryRecord]) -> list[dict]:
    """Plain dicts (``extra`` flattened in), JSON-ready."""
    out = []
    for row in rows:
        record = asdict(row)
        record.update(record.pop("extra"))
        out.append(record)
    return out


def to_dataframe(rows: Sequence[QueryRecord]):
    """A pandas DataFrame of the table (pandas is optional: install it to use this)."""
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas ships with the pinned environment
        raise ImportError("to_dataframe needs pandas; use to_records() without it") from err
    return pd.DataFrame(to_records(rows))
