"""COCO AP and query metrics under the visual-prompt protocols
(docs/method.md#evaluation-protocols), per-image records.

Protocols (the prompts come from :func:`workbench.data.prompts.protocol_prompts`, which FiftyOne
and the notebooks call too):

- ``interactive``: each image is searched with prompts drawn from its own ground truth, K boxes
  per class present; classes absent from the image are not prompted (so they cannot produce
  false positives there).
- ``cross_image``: one generic prompt per category, K exemplars from other images averaged into
  one class embedding. With ``prompt_pool=None`` the exemplars come from the evaluated dataset
  minus the searched image, so every image has its own bank; each exemplar is embedded once and
  cached, each pool image encoded once. With a separate pool, one bank serves every image.
  Categories without any exemplar get no prompt; ``EvalResult.unprompted`` lists them.
  With ``exemplar_draws`` > 1, the exemplars are drawn again with seeds ``seed + 1, ...``: each
  searched image is encoded once and re-prompted with every draw's banks, and the APs of the
  draws and their spread (``ap_std_draws``) are reported beside the AP of the first draw.

Every evaluation through a :class:`~workbench.predictor.Predictor` also measures query selection
on the first draw: recall of the top third and two thirds of the queries, the rank correlation of
selection logit and GRQO reward, and the calibration of the objectness
(:mod:`workbench.query_metrics` defines them). Images whose classes are searched in several
groups (more than the Predictor's ``max_prompts``) have no single query set and take no part.

Ground truth is the dataset's own untransformed annotations in original pixels
(:func:`~workbench.coco_eval.ground_truth_coco`); the Predictor returns boxes in the same frame.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from workbench.coco_eval import coco_results, coco_stats, ground_truth_coco, match_counts
from workbench.config import LossConfig
from workbench.data.dataset import DetectionDataset, ImagesById
from workbench.data.prompts import PROTOCOLS, protocol_prompts
from workbench.postprocess import QueryOutputs
from workbench.predictor import EncodedImage, Predictor
from workbench.prompt_bank import PromptBank, model_fingerprint
from workbench.query_metrics import (
    QueryStats,
    ap_spread,
    pool_metrics,
    prompted_truth,
    query_stats,
)
from workbench.types import Detections, Target


@dataclass(frozen=True)
class ImageRecord:
    """One evaluated image, for error analysis: counts at IoU 0.5 (``coco_eval.match_counts``)."""

    index: int
    image_id: int
    num_prompts: int
    num_gt: int
    num_detections: int
    tp50: int
    fp50: int
    ignored50: int

    @property
    def missed50(self) -> int:
        return self.num_gt - self.tp50


@dataclass
class EvalResult:
    """COCO numbers of one evaluation; NaN marks an undefined value (no ground truth).

    Attributes:
        stats: the 12 COCO numbers by name (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ...).
        per_category: AP of each category, by name.
        split_stats: ``{"base": stats, "novel": stats}`` when the categories carry a split.
        unprompted: category name -> number of images searched without a prompt for it.
        records: one :class:`ImageRecord` per image.
        query_metrics: :data:`~workbench.query_metrics.QUERY_METRICS` by name (NaN without a
            Predictor's queries), plus ``ap_std_draws`` when several exemplar draws ran.
        ap_draws: AP of each cross-image exemplar draw (seed, seed + 1, ...); the first is
            ``stats["AP"]``. Empty with a single draw.
    """

    protocol: str
    evaluator: str
    exemplars_per_class: int
    num_images: int
    stats: dict[str, float]
    per_category: dict[str, float]
    split_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    unprompted: dict[str, int] = field(default_factory=dict)
    records: list[ImageRecord] = field(default_factory=list)
    query_metrics: dict[str, float] = field(default_factory=dict)
    ap_draws: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def __getattr__(self, name: str) -> float:  # result.AP, result.AP50, result.AR100 ...
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def scalars(self) -> dict[str, float]:
        """Flat numbers for logs: every stat, ``AP_base`` / ``AP50_novel`` style splits and
        the query metrics (``recall_top_third``, ..., ``ap_std_draws``)."""
        out = dict(self.stats)
        for split, stats in self.split_stats.items():
            out.update({f"{k}_{split}": stats[k] for k in ("AP", "AP50", "AP75")})
        out.update(self.query_metrics)
        return out

    def to_dict(self) -> dict:
        """JSON-ready (NaN becomes None)."""
        clean = lambda d: {k: None if math.isnan(v) else v for k, v in d.items()}  # noqa: E731
        return {
            **{
                k: getattr(self, k)
                for k in ("protocol", "evaluator", "exemplars_per_class", "num_images", "seconds")
            },
            "stats": clean(self.stats),
            "per_category": clean(self.per_category),
            "split_stats": {s: clean(v) for s, v in self.split_stats.items()},
            "unprompted": dict(self.unprompted),
            "query_metrics": clean(self.query_metrics),
            "ap_draws": [None if math.isnan(v) else v for v in self.ap_draws],
            "records": [dataclasses.asdict(r) for r in self.records],
        }


def evaluate(
    predictor_or_model,
    dataset: DetectionDataset,
    *,
    protocol: str = "interactive",
    exemplars_per_class: int = 1,
    prompt_pool: DetectionDataset | None = None,
    seed: int = 0,
    max_images: int | None = None,
    evaluator: str = "faster",
    progress: bool = False,
    batch_size: int = 4,
    min_size: int | None = None,
    max_size: int | None = None,
    exemplar_draws: int = 1,
    loss: LossConfig | None = None,
) -> EvalResult:
    """COCO AP and query metrics of a Predictor (or a detector, wrapped with ``min_size`` /
    ``max_size``) on the first ``max_images`` images of ``dataset``; see the module docstring.

    Anything with the Predictor's ``predict(image, prompts, reference_images=...)`` works (used
    by tests); ``predict_batch`` and ``encode_batch`` are used when present.

    Args:
        exemplar_draws: cross-image exemplar draws whose AP spread is reported (seeds ``seed``,
            ``seed + 1``, ...); 1 or 0: the first only. Ignored by the interactive protocol.
            ``stats`` (the AP) is the first draw's whatever the number, so the default here (1,
            no spread measured, one prediction per image) and a run's ``eval.exemplar_draws``
            (5, the spread logged beside the AP) report the same AP.
        loss: the matching-cost weights of the reward in ``spearman_select_reward`` (default:
            ``LossConfig()``, DINO's).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: use one of {PROTOCOLS}")
    start = time.perf_counter()
    predictor = _as_predictor(predictor_or_model, min_size, max_size)
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    targets = [dataset.target(i) for i in indices]
    seeds = [seed + d for d in range(max(1, exemplar_draws) if protocol == "cross_image" else 1)]
    draws, references = _draw_prompts(
        predictor, dataset, targets, protocol, exemplars_per_class, prompt_pool, seeds, batch_size
    )
    runs = _predict_all(
        predictor, dataset, indices, targets, draws, references, batch_size, progress
    )
    gt = ground_truth_coco(dataset, indices)
    result = _summarise(
        gt,
        coco_results(runs[0].detections, runs[0].category_ids),
        dataset,
        indices,
        targets,
        draws[0],
        protocol=protocol,
        evaluator=evaluator,
        k=exemplars_per_class,
    )
    result.query_metrics = pool_metrics(_query_stats(runs[0].queries, targets, draws[0], loss))
    if len(runs) > 1:
        result.ap_draws = [result.AP] + [_ap(gt, run, evaluator) for run in runs[1:]]
        result.query_metrics["ap_std_draws"] = ap_spread(result.ap_draws)
    result.seconds = time.perf_counter() - start
    return result


def _ap(gt: dict, run: _Run, evaluator: str) -> float:
    return float(
        coco_stats(gt, coco_results(run.detections, run.category_ids), evaluator=evaluator).stats[0]
    )


def _draw_prompts(predictor, dataset, targets, protocol, k, pool, seeds, batch_size):
    """Per seed, the prompts of every image (PromptBanks when a Predictor can embed the
    exemplars once), and the reference images cross-image exemplars lie on."""
    draws = [
        protocol_prompts(
            dataset, targets, protocol, exemplars_per_class=k, seed=s, prompt_pool=pool
        )
        for s in seeds
    ]
    if protocol == "interactive":
        return draws, None
    references = ImagesById(dataset if pool is None else pool)
    if isinstance(predictor, Predictor):
        draws = _cached_banks(predictor, references, draws, batch_size)
    return draws, references


def _as_predictor(obj, min_size: int | None, max_size: int | None):
    if isinstance(obj, nn.Module):
        sizes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v}
        return Predictor.from_model(obj, **sizes)
    if not hasattr(obj, "predict"):
        raise TypeError(f"evaluate needs a Predictor or a detector, got {type(obj).__name__}")
    return obj


def _cached_banks(predictor: Predictor, references: ImagesById, draws, batch_size: int) -> list:
    """Every draw's prompt lists as PromptBanks: each exemplar embedded once, each reference
    image encoded once, a prompt list shared by several images turned into one bank."""
    lists = {id(plist): plist for draw in draws for plist in draw}
    wanted: dict[int, dict[tuple, None]] = {}
    for plist in lists.values():
        for p in plist:
            for ex in p.exemplars:
                wanted.setdefault(ex.image_id, {})[tuple(ex.box_xyxy)] = None
    cache: dict[tuple, Tensor] = {}
    image_ids = list(wanted)
    for s in range(0, len(image_ids), batch_size):
        chunk = image_ids[s : s + batch_size]
        images = [references[i] for i in chunk]
        for image_id, enc in zip(chunk, predictor.encode_batch(images), strict=True):
            boxes = list(wanted[image_id])
            for box, emb in zip(boxes, predictor.embed_exemplars(enc, boxes), strict=True):
                cache[image_id, box] = emb
    fingerprint = model_fingerprint(predictor.model)
    banks = {}
    for key, plist in lists.items():
        rows = [
            torch.stack([cache[e.image_id, tuple(e.box_xyxy)] for e in p.exemplars]) for p in plist
        ]
        banks[key] = PromptBank.from_exemplar_embeddings(plist, rows, fingerprint) if plist else []
    return [[banks[id(plist)] for plist in draw] for draw in draws]


def _labels(prompts) -> list:
    return list(prompts.labels) if isinstance(prompts, PromptBank) else [p.label for p in prompts]


@dataclass
class _Run:
    """What one exemplar draw found, by image id: detections, the category id of each prompt,
    and (from a Predictor, first draw only) every query."""

    detections: dict[int, Detections] = field(default_factory=dict)
    category_ids: dict[int, list] = field(default_factory=dict)
    queries: dict[int, QueryOutputs] = field(default_factory=dict)


def _predict_all(predictor, dataset, indices, targets, draws, references, batch_size, progress):
    """One :class:`_Run` per draw. The images of a chunk are encoded once for every draw;
    unprompted images are skipped (whether a class has exemplars does not depend on the draw)."""
    cat_id = {c.label: c.id for c in dataset.categories}
    todo = [n for n in range(len(indices)) if len(draws[0][n])]
    runs = [_Run() for _ in draws]
    for s in tqdm(range(0, len(todo), batch_size), desc="evaluate", disable=not progress):
        chunk = todo[s : s + batch_size]
        images = [dataset.load_image(indices[n]) for n in chunk]
        if hasattr(predictor, "encode_batch"):
            images = predictor.encode_batch(images)
        for d, (prompts, run) in enumerate(zip(draws, runs, strict=True)):
            queries = d == 0 and isinstance(predictor, Predictor)
            found = _predict_grouped(
                predictor,
                images,
                [prompts[n] for n in chunk],
                references,
                batch_size,
                queries=queries,
            )
            for n, item in zip(chunk, found, strict=True):
                image_id = targets[n].image_id
                run.detections[image_id], q = item if queries else (item, None)
                run.category_ids[image_id] = [cat_id.get(lab) for lab in _labels(prompts[n])]
                if q is not None:
                    run.queries[image_id] = q
    return runs


def _call(predictor, images, prompts, references, batch_size, queries: bool = False) -> list:
    extra = {"return_queries": True} if queries else {}
    if hasattr(predictor, "predict_batch"):
        return predictor.predict_batch(
            images, prompts, reference_images=references, batch_size=batch_size, **extra
        )
    return [
        predictor.predict(im, p, reference_images=references, **extra)
        for im, p in zip(images, prompts, strict=True)
    ]


def _predict_grouped(predictor, images, prompts, references, batch_size, queries: bool = False):
    """Detections of several images (with ``queries``: ``(Detections, QueryOutputs | None)``
    pairs). Classes beyond the Predictor's ``max_prompts`` (LVIS has 1203) are searched in
    groups of that size, as Grounding DINO splits long text prompts; the groups' detections are
    merged by score and cut to ``max_detections``, and such an image has no single query set."""
    limit = min(_group_size(predictor, p) for p in prompts)
    if all(len(p) <= limit for p in prompts):
        return _call(predictor, images, prompts, references, batch_size, queries)
    if hasattr(predictor, "encode_batch") and not isinstance(images[0], EncodedImage):
        images = predictor.encode_batch(images)  # the backbone once for every group
    groups = [[_take(p, s, limit) for s in range(0, len(p), limit)] for p in prompts]
    found: list[list] = [[] for _ in images]
    for g in range(max(len(x) for x in groups)):
        members = [i for i, x in enumerate(groups) if g < len(x)]
        dets = _call(
            predictor,
            [images[i] for i in members],
            [groups[i][g] for i in members],
            references,
            batch_size,
        )
        for i, d in zip(members, dets, strict=True):
            found[i].append((g * limit, d))
    merged = [_merge(parts, getattr(predictor, "max_detections", 300)) for parts in found]
    return [(d, None) for d in merged] if queries else merged


def _group_size(predictor, prompts) -> int:
    """How many classes one call may search: the Predictor's class limit, and its exemplar limit
    divided by the most exemplars any class has (irrelevant for an embedded bank)."""
    size = getattr(predictor, "max_prompts", None) or len(prompts) or 1
    if not isinstance(prompts, PromptBank) and hasattr(predictor, "max_exemplars") and prompts:
        most = max(len(p.exemplars) for p in prompts)
        size = min(size, max(1, predictor.max_exemplars // most))
    return size


def _take(prompts, start: int, size: int):
    if isinstance(prompts, PromptBank):
        return prompts.select(range(start, min(start + size, len(prompts))))
    return list(prompts[start : start + size])


def _merge(parts: list[tuple[int, Detections]], k: int) -> Detections:
    """Detections of prompt groups (with the prompt offset of each) -> best ``k`` by score."""
    scores = torch.cat([d.scores for _, d in parts])
    order = scores.argsort(descending=True, stable=True)[:k]
    names = [n for _, d in parts for n in d.names]
    return Detections(
        boxes_xyxy=torch.cat([d.boxes_xyxy for _, d in parts])[order],
        scores=scores[order],
        prompt_index=torch.cat([d.prompt_index + offset for offset, d in parts])[order],
        names=tuple(names[i] for i in order.tolist()),
        image_size=parts[0][1].image_size,
        query_index=torch.cat([d.query_index for _, d in parts])[order],
    )


def _summarise(
    gt, results, dataset, indices, targets, prompts, *, protocol, evaluator, k
) -> EvalResult:
    overall = coco_stats(gt, results, evaluator=evaluator)
    name_of = {c.id: c.name for c in dataset.categories}
    split_stats = {}
    for split in sorted({c.split for c in dataset.categories if c.split}):
        ids = [c.id for c in dataset.categories if c.split == split]
        split_stats[split] = coco_stats(gt, results, evaluator=evaluator, cat_ids=ids).as_dict()
    prompted = Counter(lab for plist in prompts for lab in _labels(plist))
    unprompted = {}
    if protocol == "cross_image":
        missing = {c.name: len(indices) - prompted[c.label] for c in dataset.categories}
        unprompted = {name: n for name, n in missing.items() if n > 0}
    counts = match_counts(gt, results)
    records = []
    for i, t, p in zip(indices, targets, prompts, strict=True):
        c = counts[t.image_id]
        records.append(
            ImageRecord(i, t.image_id, len(p), c.num_gt, c.num_detections, c.tp, c.fp, c.ignored)
        )
    return EvalResult(
        protocol=protocol,
        evaluator=evaluator,
        exemplars_per_class=k,
        num_images=len(indices),
        stats=overall.as_dict(),
        per_category={name_of[c]: v for c, v in overall.per_category.items()},
        split_stats=split_stats,
        unprompted=unprompted,
        records=records,
    )


def _query_stats(queries: dict, targets: list[Target], prompts: list, loss) -> list[QueryStats]:
    """The query counts of every image with queries, against its prompted ground truth."""
    out = []
    for target, plist in zip(targets, prompts, strict=True):
        if target.image_id in queries:
            boxes, prompt_index = prompted_truth(target, _labels(plist))
            out.append(query_stats(queries[target.image_id], boxes, prompt_index, loss))
    return out
