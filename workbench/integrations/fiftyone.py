"""FiftyOne for per-query reward and error analysis: export, evaluate, compare, launch.

::

    ds = build_dataset(val, "workbench-shapes-val")                 # images + ground truth
    export(val, {"sft": sft, "grqo": grqo}, name="workbench-shapes-val",
           references={"grqo": sft}, all_queries=True)              # + predictions, eval, views
    session = launch("workbench-shapes-val", port=5151)             # the App on 127.0.0.1

One sample per image, keyed by the dataset's ``image_id``; images are the dataset's own files,
or PNGs written under ``image_dir`` when the source renders them on the fly (shapes). Fields and
their attributes: :mod:`~workbench.integrations.fiftyone_labels`; saved views:
:mod:`~workbench.integrations.fiftyone_views`. Evaluation is FiftyOne's COCO protocol
(``evaluate_detections(method="coco", compute_mAP=True)``), tagging every prediction ``tp`` /
``fp`` and every ground-truth box ``tp`` / ``fn`` under ``eval_<model>``.

Each exported model's query metrics (:mod:`workbench.query_metrics`: recall of the top third and
two thirds of the queries, Spearman of selection logit vs reward, objectness ECE) are computed
from its per-query tables and kept with its run info (``ds.info["workbench"]["models"][model]``)
and, once evaluated, in its evaluation summary.

What the App shows at first is what a user of the app sees: ``<model>_predictions`` holds the
detections scoring at least the display threshold (:data:`DISPLAY_THRESHOLD`, the app's), with
duplicates merged (:data:`MERGE_IOU`); the raw top-K (``<model>_topk``, the same cap as
``workbench eval``, on which COCO mAP is computed) and every query (``<model>_queries``) are
kept for analysis, a checkbox away. Each field has its own colour (:data:`FIELD_COLORS`).

A dataset knows its source: the source's description and a hash of its content (images,
sizes, boxes, categories). Exporting another source under an existing name is refused unless
``overwrite``; exporting the same source again is idempotent: the dataset keeps its samples,
each field is overwritten in place, evaluations whose labels were rewritten are dropped and
redone, and saved views reading a field or evaluation that is gone are dropped
(:func:`~workbench.integrations.fiftyone_views.drop_stale_views`), so every saved view loads.

``fiftyone`` is imported by the functions that need it, never at import of this module; set
``FIFTYONE_DATABASE_DIR`` (and ``FIFTYONE_DO_NOT_TRACK=true``) before the first call.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from workbench.data.dataset import DatasetError, DetectionDataset
from workbench.data.sources import data_root
from workbench.inputs import InputError
from workbench.integrations.fiftyone_app import add_app_comparison  # without the App server
from workbench.integrations.fiftyone_labels import (
    EXEMPLAR_ATTRIBUTES,
    GT_ATTRIBUTES,
    GT_FIELD,
    QUERY_ATTRIBUTES,
    SHOWN_ATTRIBUTES,
    TOPK_ATTRIBUTES,
    declare,
    exemplar_detections,
    ground_truth_detections,
    prediction_detections,
    query_detections,
    topk_detections,
)
from workbench.integrations.fiftyone_predict import (
    ImagePrediction,
    iter_predictions,
    predict_dataset,
)
from workbench.integrations.fiftyone_views import (
    EXEMPLAR_FIELD,
    drop_stale_views,
    field_names,
    mark_neighbours,
    save_views,
)
from workbench.postprocess import MERGE_IOU, SCORE_THRESHOLD
from workbench.predictor import Predictor
from workbench.query_metrics import QueryStats, image_stats, pool_metrics, prompted_truth
from workbench.types import Target

__all__ = [
    "ImagePrediction",
    "add_app_comparison",
    "add_predictions",
    "analyse",
    "build_dataset",
    "evaluate",
    "export",
    "field_names",
    "iter_predictions",
    "launch",
    "load",
    "predict_dataset",
    "save_views",
    "source_identity",
    "summary",
    "view_urls",
]

_MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CHUNK = 64  # images predicted, then written, at a time
DISPLAY_THRESHOLD = SCORE_THRESHOLD  # the app's: the App shows what the app shows
# one colour per field, far apart (the App's sidebar shows each field's colour beside its name)
FIELD_COLORS = {GT_FIELD: "#2ecc40", EXEMPLAR_FIELD: "#ffdc00"}
MODEL_COLORS = {"sft": "#ff851b", "grqo": "#0074d9"}
MORE_COLORS = ("#f012be", "#39cccc", "#b10dc9", "#ff4136", "#01ff70", "#7fdbff")


def _check_model_name(model: str) -> None:
    if not _MODEL_NAME.fullmatch(model):
        raise InputError(
            f"model name {model!r} must start with a letter and hold only letters, digits and _ "
            "(it becomes the field name <model>_predictions)"
        )


def load(name: str):
    """The persistent FiftyOne dataset ``name``, or a DatasetError naming the ones that exist."""
    import fiftyone as fo

    if not fo.dataset_exists(name):
        known = ", ".join(fo.list_datasets()) or "none"
        raise DatasetError(f"no FiftyOne dataset {name!r} (existing: {known}); export one first")
    return fo.load_dataset(name)


def _image_path(dataset: DetectionDataset, index: int, info: dict, image_dir: Path) -> str:
    """The image file of a sample: the dataset's own file, else a PNG written under image_dir
    (rewritten on every export, so a changed generator never leaves stale pixels)."""
    path = info.get("path")
    if path and Path(path).is_file():
        return str(Path(path).absolute())  # not resolve(): keep a linked dataset's own paths
    from PIL import Image

    out = image_dir / (info.get("file_name") or f"{info['id']}.png")
    out = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    pixels = dataset.load_image(index).mul(255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(out, compress_level=1)
    return str(out.absolute())


def source_identity(dataset: DetectionDataset) -> dict:
    """What a FiftyOne dataset was built from: a description and a hash of the content
    (categories; every image's file name, size, boxes, labels and crowd flags) that tells two
    sources apart even when they share a file name."""
    digest = hashlib.sha256()
    cats = [(c.id, c.name) for c in dataset.categories]
    digest.update(json.dumps(cats).encode())
    for index in range(len(dataset)):
        info, target = dataset.image_info(index), dataset.target(index)
        record = [
            int(target.image_id),
            str(info.get("file_name", "")),
            list(target.orig_size),
            [round(v, 2) for v in target.boxes_xyxy(target.orig_size).flatten().tolist()],
            target.labels.tolist(),
            target.iscrowd.tolist(),
        ]
        digest.update(json.dumps(record).encode())
    kind = getattr(dataset, "name", None) or type(dataset).__name__
    return {
        "description": f"{kind} ({len(dataset)} images, {len(cats)} categories)",
        "hash": digest.hexdigest()[:16],
    }


def _open_for(name: str, identity: dict, overwrite: bool):
    """The dataset ``name`` to export ``identity`` into: a new one, the existing one when it
    holds the same source, a fresh one when ``overwrite``; refused otherwise."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        if overwrite:
            fo.delete_dataset(name)
        else:
            ds = fo.load_dataset(name)
            held = ds.info.get("workbench", {}).get("source")
            if held and held.get("hash") == identity["hash"]:
                return ds
            what = (
                f"{held['description']} (content hash {held['hash']})"
                if held
                else "a source it does not record"
            )
            raise InputError(
                f"FiftyOne dataset {name!r} already holds {what}; this export is "
                f"{identity['description']} (content hash {identity['hash']}). Nothing was "
                "changed. Export under another name (--name NEW), or replace that dataset "
                "(--overwrite)"
            )
    ds = fo.Dataset(name, persistent=True)
    ds.info["workbench"] = {"source": identity}
    ds.save()
    return ds


def build_dataset(
    dataset: DetectionDataset,
    name: str,
    *,
    image_dir: str | Path | None = None,
    indices: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
):
    """Create or update the persistent FiftyOne dataset ``name`` with images and ground truth.

    Args:
        dataset: any :class:`~workbench.data.dataset.DetectionDataset` (COCO json, VOC
            converted to COCO, BCCD, shapes, ...).
        image_dir: where images without a file go (default ``$WORKBENCH_DATA/fiftyone/<name>``).
        indices: the dataset indices to export (default: all).
        overwrite: replace an existing dataset ``name`` that holds another source (without
            it, that is refused with an InputError and nothing changes).

    Returns:
        the ``fo.Dataset``; samples already present (same ``image_id``) are updated in place.
    """
    import fiftyone as fo

    ds = _open_for(name, source_identity(dataset), overwrite)
    image_dir = Path(image_dir) if image_dir else data_root() / "fiftyone" / name
    existing = set(ds.values("image_id")) if len(ds) else set()
    new, truth, paths = [], {}, {}
    indices = range(len(dataset)) if indices is None else indices
    for index in tqdm(indices, desc=f"{name}: images", disable=not progress):
        info, target = dataset.image_info(index), dataset.target(index)
        filepath = _image_path(dataset, index, info, image_dir)
        gt = ground_truth_detections(target, dataset.categories)
        if target.image_id in existing:
            truth[target.image_id], paths[target.image_id] = gt, filepath
            continue
        h, w = target.orig_size
        new.append(
            fo.Sample(
                filepath=filepath,
                image_id=int(target.image_id),
                dataset_index=int(index),
                metadata=fo.ImageMetadata(width=w, height=h),
                **{GT_FIELD: gt},
            )
        )
    if new:
        ds.add_samples(new, progress=progress)
    if truth:
        ds.set_values(GT_FIELD, truth, key_field="image_id")
        ds.set_values("filepath", paths, key_field="image_id")
    _drop_stale_evaluations(ds, GT_FIELD)
    drop_stale_views(ds)
    declare(ds, GT_FIELD, GT_ATTRIBUTES)
    ds.info.setdefault("workbench", {})["categories"] = [
        {"id": c.id, "name": c.name, "split": c.split} for c in dataset.categories
    ]
    ds.save()
    _app_config(ds)
    return ds


def _drop_stale_evaluations(ds, field: str) -> None:
    """Evaluations of a rewritten field point at label ids that no longer exist (the caller
    then drops the views that read them: :func:`drop_stale_views`)."""
    for key in ds.list_evaluations():
        config = ds.get_evaluation_info(key).config
        if field in (config.pred_field, config.gt_field):
            ds.delete_evaluation(key)


def _truth_xyxy(target: Target) -> torch.Tensor:
    return target.boxes_xyxy(target.orig_size)


def add_predictions(
    ds,
    model: str,
    predictions: Sequence[ImagePrediction],
    *,
    all_queries: bool = True,
    score_threshold: float = DISPLAY_THRESHOLD,
    merge_iou: float | None = MERGE_IOU,
    truth: Mapping[int, torch.Tensor] | None = None,
    info: Mapping | None = None,
) -> None:
    """Write one model's predictions, overwriting its fields in place:

    - ``<model>_predictions``: the detections scoring at least ``score_threshold``, duplicates
      merged at ``merge_iou`` (None: kept), with their query's attributes (what the App shows);
    - ``<model>_topk``: every detection as given (the raw top-K mAP is computed on);
    - ``<model>_queries``: every selected query, with ``all_queries`` (without, the field is
      deleted, so it never describes other predictions, and views reading it are dropped);
    - ``exemplars``: the prompts' exemplar boxes, on the images they lie on.

    ``truth`` (image id -> ``[G, 4]`` xyxy ground truth) gives each shown detection its
    ``gt_max_iou``; ``info`` (how the predictions were made) goes to ``ds.info``.
    The lower-level door: tests write constructed :class:`ImagePrediction` values through it.
    """
    _check_model_name(model)
    names = field_names(model)
    truth = truth or {}
    shown = {
        p.image_id: prediction_detections(
            p, truth.get(p.image_id), score_threshold=score_threshold, merge_iou=merge_iou
        )
        for p in predictions
    }
    ds.set_values(names["predictions"], shown, key_field="image_id")
    topk = {p.image_id: topk_detections(p) for p in predictions}
    ds.set_values(names["topk"], topk, key_field="image_id")
    fields = {names["predictions"]: {**QUERY_ATTRIBUTES, **SHOWN_ATTRIBUTES}}
    fields[names["topk"]] = TOPK_ATTRIBUTES
    if all_queries:
        queries = {p.image_id: query_detections(p) for p in predictions}
        ds.set_values(names["queries"], queries, key_field="image_id")
        fields[names["queries"]] = QUERY_ATTRIBUTES
    elif ds.has_field(names["queries"]):  # an earlier export's queries: not these predictions'
        ds.delete_sample_field(names["queries"])
    _add_exemplars(ds, predictions)
    for field, attributes in fields.items():
        _drop_stale_evaluations(ds, field)
        declare(ds, field, attributes)
    drop_stale_views(ds)
    run = {"score_threshold": score_threshold, "merge_iou": merge_iou, **dict(info or {})}
    ds.info.setdefault("workbench", {}).setdefault("models", {})[model] = run
    ds.save()
    _app_config(ds)


def _add_exemplars(ds, predictions: Sequence[ImagePrediction]) -> None:
    """``exemplars`` of every image that an exemplar of these predictions' prompts lies on."""
    sizes = dict(
        zip(
            ds.values("image_id"),
            zip(ds.values("metadata.height"), ds.values("metadata.width"), strict=True),
            strict=True,
        )
    )
    on_image: dict[int, list] = {}
    for pred in predictions:
        for prompt in pred.prompts:
            for ex in prompt.exemplars:
                source = pred.image_id if ex.image_id is None else int(ex.image_id)
                if source in sizes:
                    on_image.setdefault(source, []).append(pred)
    values = {}
    for image_id, preds in on_image.items():
        labels = {}
        for pred in preds:  # one label per exemplar box, however many images it searched
            for det in exemplar_detections(
                pred, image_id, sizes[image_id], searched=pred.image_id == image_id
            ).detections:
                key = (det.label, det.annotation_id, tuple(round(v, 6) for v in det.bounding_box))
                labels.setdefault(key, det)
        values[image_id] = list(labels.values())
    if values:
        import fiftyone as fo

        ds.set_values(
            EXEMPLAR_FIELD,
            {i: fo.Detections(detections=d) for i, d in values.items()},
            key_field="image_id",
        )
        declare(ds, EXEMPLAR_FIELD, EXEMPLAR_ATTRIBUTES)


def _app_config(ds) -> None:
    """The App at first: ground truth, exemplars and each model's shown predictions, one colour
    per field; the raw top-K and query fields stay a checkbox away."""
    import fiftyone as fo

    label_fields = [
        f
        for f, field in ds.get_field_schema().items()
        if isinstance(field, fo.EmbeddedDocumentField) and field.document_type is fo.Detections
    ]
    shown = [f for f in label_fields if not f.endswith(("_topk", "_queries"))]
    ds.app_config.active_fields = fo.ActiveFields(paths=shown)  # nothing else on thumbnails
    suffix = "_predictions"
    models = sorted(f.removesuffix(suffix) for f in label_fields if f.endswith(suffix))
    spare = iter(MORE_COLORS * (1 + len(models) // len(MORE_COLORS)))
    colors = dict(FIELD_COLORS)
    for model in models:
        color = MODEL_COLORS.get(model) or next(spare)
        for suffix in ("_predictions", "_topk", "_queries"):
            colors[model + suffix] = color
    ds.app_config.color_scheme = fo.ColorScheme(
        color_by="field",
        fields=[{"path": f, "fieldColor": c} for f, c in colors.items() if f in label_fields],
    )
    ds.save()


def field_colors(ds) -> dict[str, str]:
    """Each label field's colour in the App (the legend of a screenshot or a notebook plot)."""
    scheme = ds.app_config.color_scheme
    return {f["path"]: f["fieldColor"] for f in (scheme.fields or [])} if scheme else {}


def coco_map(ds, field: str) -> float:
    """COCO AP (IoU 0.50:0.95) of the detections in ``field`` against ``ground_truth``,
    computed by :mod:`workbench.coco_eval` (as ``workbench eval``) from the stored labels;
    NaN without ground truth."""
    from workbench.coco_eval import coco_stats

    cats = ds.info.get("workbench", {}).get("categories", [])
    cat_id = {c["name"]: c["id"] for c in cats}
    images, annotations, results = [], [], []
    rows = zip(
        ds.values("image_id"),
        ds.values("metadata.width"),
        ds.values("metadata.height"),
        ds.values(f"{GT_FIELD}.detections"),
        ds.values(f"{field}.detections"),
        strict=True,
    )
    for image_id, w, h, truth, dets in rows:
        images.append({"id": int(image_id), "width": w, "height": h})
        for g in truth or []:
            x, y, bw, bh = g.bounding_box
            box = [x * w, y * h, bw * w, bh * h]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "category_id": cat_id[g.label],
                    "iscrowd": int(bool(g.iscrowd)),
                }
            )
        for d in dets or []:
            if d.label in cat_id:
                x, y, bw, bh = d.bounding_box
                results.append(
                    {
                        "image_id": int(image_id),
                        "category_id": cat_id[d.label],
                        "bbox": [x * w, y * h, bw * w, bh * h],
                        "score": float(d.confidence),
                    }
                )
    if not annotations:
        return math.nan
    categories = [{"id": c["id"], "name": c["name"]} for c in cats]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return float(coco_stats(gt, results).stats[0])


def fiftyone_map(ds, field: str, *, progress: bool = False) -> float:
    """FiftyOne's own COCO mAP of ``field`` (nothing stored; slow at hundreds of boxes per
    image: ~1.7 s per image at 300 on 2 cores). NaN without ground truth."""
    results = ds.select_fields([GT_FIELD, field]).evaluate_detections(
        field,
        gt_field=GT_FIELD,
        method="coco",
        classwise=True,
        compute_mAP=True,
        progress=progress,
    )
    m_ap = float(results.mAP())
    return m_ap if m_ap >= 0 else math.nan


def evaluate(
    ds,
    models: Sequence[str] | None = None,
    *,
    iou: float = 0.5,
    also_fiftyone_map: bool = False,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Evaluate each model against ``ground_truth``.

    - Tags: FiftyOne's COCO matching of the shown ``<model>_predictions`` at ``iou`` tags each
      ``tp`` / ``fp`` and each ground-truth box ``tp`` / ``fn`` under ``eval_<model>``, and
      counts them per sample (``eval_<model>_tp`` ...): what the views count.
    - ``mAP``: COCO AP (IoU 0.50:0.95) of the raw ``<model>_topk``, by :func:`coco_map`, which
      is ``workbench eval``'s AP for the same checkpoint, prompts and split;
      ``also_fiftyone_map`` adds FiftyOne's own (``fiftyone_mAP``, :func:`fiftyone_map`).

    Returns ``{model: {"mAP", "tp", "fp", "fn", <query metrics>}}`` (mAP NaN without ground
    truth; the query metrics of the export, None where undefined), also kept in ``ds.info``.
    """
    models = list(ds.info.get("workbench", {}).get("models", {})) if models is None else models
    summary = {}
    for model in models:
        names = field_names(model)
        if not ds.has_field(names["predictions"]):
            raise DatasetError(
                f"{ds.name!r} has no field {names['predictions']!r}; export it first"
            )
        key = names["eval_key"]
        ds.select_fields([GT_FIELD, names["predictions"]]).evaluate_detections(
            names["predictions"],
            gt_field=GT_FIELD,
            eval_key=key,
            method="coco",
            iou=iou,
            classwise=True,
            progress=progress,
        )
        counts = {k: int(ds.sum(f"{key}_{k}") or 0) for k in ("tp", "fp", "fn")}
        scored = names["topk"] if ds.has_field(names["topk"]) else names["predictions"]
        maps = {"mAP": coco_map(ds, scored)}
        if also_fiftyone_map:
            maps["fiftyone_mAP"] = fiftyone_map(ds, scored, progress=progress)
        queries = ds.info.get("workbench", {}).get("models", {}).get(model, {})
        summary[model] = {**maps, **counts, **queries.get("query_metrics", {})}
    stored = ds.info.setdefault("workbench", {}).setdefault("evaluations", {})
    maps = ("mAP", "fiftyone_mAP")
    stored.update(
        {
            m: {**s, **{k: None if math.isnan(s[k]) else s[k] for k in maps if k in s}, "iou": iou}
            for m, s in summary.items()
        }
    )
    ds.save()
    return summary


def export(
    dataset: DetectionDataset,
    predictors: Mapping[str, Predictor],
    *,
    name: str,
    references: Mapping[str, Predictor] | None = None,
    protocol: str = "interactive",
    exemplars_per_class: int = 1,
    seed: int = 0,
    prompt_pool: DetectionDataset | None = None,
    all_queries: bool = True,
    indices: Sequence[int] | None = None,
    score_threshold: float = DISPLAY_THRESHOLD,
    merge_iou: float | None = MERGE_IOU,
    max_detections: int | None = None,
    image_dir: str | Path | None = None,
    overwrite: bool = False,
    run_evaluation: bool = True,
    baseline: str | None = None,
    candidate: str | None = None,
    confidence: float = 0.5,
    iou: float = 0.5,
    also_fiftyone_map: bool = False,
    model_info: Mapping[str, Mapping] | None = None,
    progress: bool = False,
):
    """Images, ground truth and every model's predictions, evaluated, with the saved views.

    Args:
        predictors: model name (``sft``, ``grqo``, ...) -> its Predictor.
        references: model name -> the reference checkpoint its KL is computed against.
        protocol, exemplars_per_class, seed, prompt_pool: the prompts, drawn as ``workbench
            eval`` draws them (:func:`~workbench.data.prompts.protocol_prompts`); with the
            same checkpoint, split and settings, the stored mAP is ``workbench eval``'s AP.
        all_queries: also write ``<model>_queries`` (every selected query of every image).
        score_threshold, merge_iou: what ``<model>_predictions`` shows (the app's defaults).
        max_detections: the raw top-K per image (default: each predictor's, as ``workbench
            eval``).
        overwrite: replace a dataset ``name`` that holds another source.
        baseline, candidate: the pair compared by the fixed / broken views (default ``sft`` and
            ``grqo`` when both are exported).
        confidence: the score a false positive or a low-reward query needs to count as "high".

    Returns:
        the ``fo.Dataset``.
    """
    for model in predictors:
        _check_model_name(model)
    ds = build_dataset(
        dataset, name, image_dir=image_dir, indices=indices, overwrite=overwrite, progress=progress
    )
    references = references or {}
    order = range(len(dataset)) if indices is None else indices
    for model, predictor in predictors.items():
        stream = iter_predictions(
            predictor,
            dataset,
            protocol=protocol,
            exemplars_per_class=exemplars_per_class,
            seed=seed,
            prompt_pool=prompt_pool,
            reference=references.get(model),
            indices=indices,
            max_detections=max_detections,
            progress=progress,
            desc=f"{model}: predict",
        )
        info = {
            "protocol": protocol,
            "exemplars_per_class": exemplars_per_class,
            "seed": seed,
            "prompt_pool": prompt_pool is not None and protocol == "cross_image",
            "max_detections": max_detections or predictor.max_detections,
            "kl_reference": model in references,
            **dict((model_info or {}).get(model, {})),
        }
        stats, pairs = [], zip(order, stream, strict=True)  # one prediction per index, in order
        while chunk := list(itertools.islice(pairs, _CHUNK)):  # written as they come
            targets = {p.image_id: dataset.target(i) for i, p in chunk}
            add_predictions(
                ds,
                model,
                [p for _, p in chunk],
                all_queries=all_queries,
                score_threshold=score_threshold,
                merge_iou=merge_iou,
                truth={i: _truth_xyxy(t) for i, t in targets.items()},
                info=info,
            )
            stats += [_table_stats(p, targets[p.image_id]) for _, p in chunk if p.queries]
        _store_query_metrics(ds, model, pool_metrics(stats))
    if run_evaluation and predictors:
        analyse(
            ds,
            list(predictors),
            iou=iou,
            baseline=baseline,
            candidate=candidate,
            confidence=confidence,
            also_fiftyone_map=also_fiftyone_map,
            progress=progress,
        )
    return ds


def _table_stats(prediction: ImagePrediction, target: Target) -> QueryStats:
    """The query counts of one image from its per-query table (selection order; boxes rounded to
    0.01 px, reward as the table computed it), against the non-crowd ground truth of the
    prompted classes."""
    if target.image_id != prediction.image_id:
        raise ValueError(f"prediction of image {prediction.image_id} for image {target.image_id}")
    rows = prediction.queries
    boxes, _ = prompted_truth(target, [p.label for p in prediction.prompts])
    rewards = None if rows[0].reward is None else torch.tensor([r.reward for r in rows])
    logits = torch.tensor([r.select_score for r in rows])
    return image_stats(logits, torch.tensor([r.box_xyxy for r in rows]), rewards, boxes)


def _store_query_metrics(ds, model: str, metrics: Mapping[str, float]) -> None:
    """A model's query metrics (NaN as None) beside how its predictions were made."""
    info = ds.info.setdefault("workbench", {}).setdefault("models", {}).setdefault(model, {})
    info["query_metrics"] = {k: None if math.isnan(v) else v for k, v in metrics.items()}
    ds.save()


def analyse(
    ds,
    models: Sequence[str] | None = None,
    *,
    iou: float = 0.5,
    baseline: str | None = None,
    candidate: str | None = None,
    confidence: float = 0.5,
    low_reward: float | None = None,
    views_only: bool = False,
    also_fiftyone_map: bool = False,
    progress: bool = False,
) -> dict:
    """:func:`evaluate` the models (default: every exported one; ``views_only``: keep their
    evaluations), mark each shown prediction's relation to the missed / changed ground truth,
    then save the views; ``baseline`` / ``candidate`` default to ``sft`` / ``grqo`` when both
    are there. Returns ``{"evaluations": ..., "views": {name: samples}}``."""
    models = list(ds.info.get("workbench", {}).get("models", {})) if models is None else models
    if views_only:
        missing = [m for m in models if not ds.has_evaluation(field_names(m)["eval_key"])]
        if missing:
            raise DatasetError(
                f"{ds.name!r} has no evaluation of {missing}: run `python -m workbench "
                f"fiftyone evaluate {ds.name}` without --views-only first"
            )
        stored = ds.info.get("workbench", {}).get("evaluations", {})
        evaluations = {m: stored.get(m, {}) for m in models}
    else:
        evaluations = evaluate(
            ds, models, iou=iou, also_fiftyone_map=also_fiftyone_map, progress=progress
        )
    if baseline is None and candidate is None and {"sft", "grqo"} <= set(models):
        baseline, candidate = "sft", "grqo"
    mark_neighbours(ds, models, baseline, candidate)
    views = save_views(
        ds,
        models,
        baseline=baseline,
        candidate=candidate,
        confidence=confidence,
        low_reward=low_reward,
    )
    return {"evaluations": evaluations, "views": views}


def summary(ds) -> dict:
    """What a dataset holds: its source, samples, labels per label field, evaluations, saved
    views (samples each) and why an empty view is empty."""
    import fiftyone as fo

    label_fields = [
        name
        for name, field in ds.get_field_schema().items()
        if isinstance(field, fo.EmbeddedDocumentField) and field.document_type is fo.Detections
    ]
    info = ds.info.get("workbench", {})
    views, why = {}, {}
    for name in sorted(ds.list_saved_views()):
        try:
            views[name] = len(ds.load_saved_view(name))
        except Exception as err:  # reported, never fatal: the summary describes what is there
            why[name] = f"does not load: {type(err).__name__}: {err}"
            continue
        if not views[name]:
            why[name] = info.get("view_specs", {}).get(name, {}).get("why_empty")
    return {
        "name": ds.name,
        "source": info.get("source"),
        "samples": len(ds),
        "labels": {f: ds.count(f"{f}.detections") for f in sorted(label_fields)},
        "evaluations": info.get("evaluations", {}),
        "views": views,
        "empty_views": why,
    }


def view_urls(session) -> dict[str, str]:
    """The App's address of each saved view of the session's dataset."""
    from fiftyone.core.utils import to_slug

    ds = session.dataset
    base = f"{session.url.rstrip('/')}/datasets/{ds.slug}"
    return {name: f"{base}?view={to_slug(name)}" for name in sorted(ds.list_saved_views())}


def launch(dataset_or_name, *, port: int = 5151, address: str = "127.0.0.1"):
    """Start the FiftyOne App on ``address:port`` (local only by default) and return the
    session; the caller keeps the process alive (``session.wait(-1)``) and closes it."""
    import fiftyone as fo

    ds = load(dataset_or_name) if isinstance(dataset_or_name, str) else dataset_or_name
    return fo.launch_app(ds, address=address, port=port, remote=True, auto=False)
