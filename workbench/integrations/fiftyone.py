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

Exporting again is idempotent: the dataset keeps its name and samples, each field is overwritten
in place, evaluations whose labels were rewritten are dropped and redone, views are re-saved.

``fiftyone`` is imported by the functions that need it, never at import of this module; set
``FIFTYONE_DATABASE_DIR`` (and ``FIFTYONE_DO_NOT_TRACK=true``) before the first call.
"""

from __future__ import annotations

import itertools
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
    GT_ATTRIBUTES,
    GT_FIELD,
    QUERY_ATTRIBUTES,
    declare,
    ground_truth_detections,
    prediction_detections,
    query_detections,
)
from workbench.integrations.fiftyone_predict import (
    ImagePrediction,
    iter_predictions,
    predict_dataset,
)
from workbench.integrations.fiftyone_views import field_names, save_views
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
    "summary",
]

_MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CHUNK = 64  # images predicted, then written, at a time


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


def build_dataset(
    dataset: DetectionDataset,
    name: str,
    *,
    image_dir: str | Path | None = None,
    indices: Sequence[int] | None = None,
    progress: bool = False,
):
    """Create or update the persistent FiftyOne dataset ``name`` with images and ground truth.

    Args:
        dataset: any :class:`~workbench.data.dataset.DetectionDataset` (COCO json, VOC
            converted to COCO, BCCD, shapes, ...).
        image_dir: where images without a file go (default ``$WORKBENCH_DATA/fiftyone/<name>``).
        indices: the dataset indices to export (default: all).

    Returns:
        the ``fo.Dataset``; samples already present (same ``image_id``) are updated in place.
    """
    import fiftyone as fo

    image_dir = Path(image_dir) if image_dir else data_root() / "fiftyone" / name
    ds = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
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
    declare(ds, GT_FIELD, GT_ATTRIBUTES)
    ds.info.setdefault("workbench", {})["categories"] = [
        {"id": c.id, "name": c.name, "split": c.split} for c in dataset.categories
    ]
    ds.save()
    return ds


def _drop_stale_evaluations(ds, field: str) -> None:
    """Evaluations of a rewritten field point at label ids that no longer exist."""
    for key in ds.list_evaluations():
        config = ds.get_evaluation_info(key).config
        if field in (config.pred_field, config.gt_field):
            ds.delete_evaluation(key)


def add_predictions(
    ds,
    model: str,
    predictions: Sequence[ImagePrediction],
    *,
    all_queries: bool = False,
    info: Mapping | None = None,
) -> None:
    """Write one model's predictions as ``<model>_predictions`` (and ``<model>_queries``, which
    is deleted when ``all_queries`` is off, so it never describes other predictions), overwriting
    those fields in place; ``info`` (how they were made) goes to ``ds.info``.

    The lower-level door: tests write constructed :class:`ImagePrediction` values through it.
    """
    _check_model_name(model)
    names = field_names(model)
    values = {p.image_id: prediction_detections(p) for p in predictions}
    ds.set_values(names["predictions"], values, key_field="image_id")
    fields = [names["predictions"]]
    if all_queries:
        queries = {p.image_id: query_detections(p) for p in predictions}
        ds.set_values(names["queries"], queries, key_field="image_id")
        fields.append(names["queries"])
    elif ds.has_field(names["queries"]):  # an earlier export's queries: not these predictions'
        ds.delete_sample_field(names["queries"])
    for field in fields:
        _drop_stale_evaluations(ds, field)
        declare(ds, field, QUERY_ATTRIBUTES)
    ds.info.setdefault("workbench", {}).setdefault("models", {})[model] = dict(info or {})
    _show_by_default(ds)
    ds.save()


def _show_by_default(ds) -> None:
    """The App draws ground truth and predictions at first; the all-queries fields (every
    query, most of them background) stay a checkbox away."""
    import fiftyone as fo

    shown = [GT_FIELD, *(f for f in ds.get_field_schema() if f.endswith("_predictions"))]
    ds.app_config.active_fields = fo.ActiveFields(paths=shown)


def evaluate(
    ds, models: Sequence[str] | None = None, *, iou: float = 0.5, progress: bool = False
) -> dict[str, dict[str, float]]:
    """FiftyOne's COCO evaluation of each model's predictions against ``ground_truth``.

    Tags predictions ``tp`` / ``fp`` and ground truth ``tp`` / ``fn`` at ``iou`` under
    ``eval_<model>``, counts them per sample (``eval_<model>_tp`` ...), and computes COCO mAP
    (IoU 0.50:0.95, 101 recall points, 100 detections per image and class). Returns ``{model:
    {"mAP", "tp", "fp", "fn", <query metrics>}}`` (mAP NaN without ground truth; the query
    metrics of the export, None where undefined), also kept in ``ds.info``.
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
        results = ds.evaluate_detections(
            names["predictions"],
            gt_field=GT_FIELD,
            eval_key=key,
            method="coco",
            iou=iou,
            classwise=True,
            compute_mAP=True,
            progress=progress,
        )
        m_ap = float(results.mAP())
        counts = {k: int(ds.sum(f"{key}_{k}") or 0) for k in ("tp", "fp", "fn")}
        queries = ds.info.get("workbench", {}).get("models", {}).get(model, {})
        summary[model] = {
            "mAP": m_ap if m_ap >= 0 else math.nan,
            **counts,
            **queries.get("query_metrics", {}),
        }
    stored = ds.info.setdefault("workbench", {}).setdefault("evaluations", {})
    stored.update(
        {
            m: {**s, "mAP": None if math.isnan(s["mAP"]) else s["mAP"], "iou": iou}
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
    all_queries: bool = False,
    indices: Sequence[int] | None = None,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
    image_dir: str | Path | None = None,
    run_evaluation: bool = True,
    baseline: str | None = None,
    candidate: str | None = None,
    confidence: float = 0.5,
    iou: float = 0.5,
    model_info: Mapping[str, Mapping] | None = None,
    progress: bool = False,
):
    """Images, ground truth and every model's predictions, evaluated, with the saved views.

    Args:
        predictors: model name (``sft``, ``grqo``, ...) -> its Predictor.
        references: model name -> the reference checkpoint its KL is computed against.
        protocol, exemplars_per_class, seed, prompt_pool: the prompts, drawn as ``workbench
            eval`` draws them (:func:`~workbench.data.prompts.protocol_prompts`); with the
            same checkpoint, split and settings, FiftyOne's mAP is ``workbench eval``'s AP.
        all_queries: also write ``<model>_queries`` (every selected query of every image).
        baseline, candidate: the pair compared by the fixed / broken views (default ``sft`` and
            ``grqo`` when both are exported).
        confidence: the score a false positive or a low-reward query needs to count as "high".

    Returns:
        the ``fo.Dataset``.
    """
    for model in predictors:
        _check_model_name(model)
    ds = build_dataset(dataset, name, image_dir=image_dir, indices=indices, progress=progress)
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
            score_threshold=score_threshold,
            max_detections=max_detections,
            progress=progress,
            desc=f"{model}: predict",
        )
        info = {
            "protocol": protocol,
            "exemplars_per_class": exemplars_per_class,
            "seed": seed,
            "prompt_pool": prompt_pool is not None and protocol == "cross_image",
            "score_threshold": score_threshold,
            "kl_reference": model in references,
            **dict((model_info or {}).get(model, {})),
        }
        stats, pairs = [], zip(order, stream, strict=True)  # one prediction per index, in order
        while chunk := list(itertools.islice(pairs, _CHUNK)):  # written as they come
            add_predictions(ds, model, [p for _, p in chunk], all_queries=all_queries, info=info)
            stats += [_table_stats(p, dataset.target(i)) for i, p in chunk if p.queries]
        _store_query_metrics(ds, model, pool_metrics(stats))
    if run_evaluation and predictors:
        analyse(
            ds,
            list(predictors),
            iou=iou,
            baseline=baseline,
            candidate=candidate,
            confidence=confidence,
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
    progress: bool = False,
) -> dict:
    """:func:`evaluate` the models (default: every exported one), then save the views;
    ``baseline`` / ``candidate`` default to ``sft`` / ``grqo`` when both are there.
    Returns ``{"evaluations": ..., "views": {name: samples}}``."""
    models = list(ds.info.get("workbench", {}).get("models", {})) if models is None else models
    evaluations = evaluate(ds, models, iou=iou, progress=progress)
    if baseline is None and candidate is None and {"sft", "grqo"} <= set(models):
        baseline, candidate = "sft", "grqo"
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
    """What a dataset holds: samples, labels per label field, evaluations, saved views."""
    import fiftyone as fo

    label_fields = [
        name
        for name, field in ds.get_field_schema().items()
        if isinstance(field, fo.EmbeddedDocumentField) and field.document_type is fo.Detections
    ]
    return {
        "name": ds.name,
        "samples": len(ds),
        "labels": {f: ds.count(f"{f}.detections") for f in sorted(label_fields)},
        "evaluations": ds.info.get("workbench", {}).get("evaluations", {}),
        "views": {v: len(ds.load_saved_view(v)) for v in sorted(ds.list_saved_views())},
    }


def launch(dataset_or_name, *, port: int = 5151, address: str = "127.0.0.1"):
    """Start the FiftyOne App on ``address:port`` (local only by default) and return the
    session; the caller keeps the process alive (``session.wait(-1)``) and closes it."""
    import fiftyone as fo

    ds = load(dataset_or_name) if isinstance(dataset_or_name, str) else dataset_or_name
    return fo.launch_app(ds, address=address, port=port, remote=True, auto=False)
