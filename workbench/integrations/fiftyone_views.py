"""Saved views for error analysis: each one shows its culprit, and says why when it is empty.

Every view filters its *subject* field to the labels its rule selects (``filter_labels`` keeps
only the samples with at least one), shows only the fields it is about (``select_fields``:
ground truth, the model's shown predictions, the prompts' exemplars) and ranks the samples by
a score of the case. The subjects live in fields the App shows at first (``ground_truth`` and
``<model>_predictions``), so opening a view shows its case without ticking a box.

- ``<model>_high_confidence_fp``: shown predictions tagged ``fp`` by ``eval_<model>`` with
  confidence at least ``confidence``; most confident first.
- ``<model>_missed_gt``: ground-truth boxes tagged ``fn``, with the model's nearest shown
  prediction to each (``near_missed``); most misses first.
- ``<model>_high_score_low_reward``: shown predictions scoring at least ``confidence`` whose
  GRQO reward is at most ``low_reward`` (default: the lowest quartile of the shown predictions'
  rewards); lowest reward first.
- ``<model>_duplicates``: shown predictions into which the merge folded raw same-class
  detections overlapping by IoU > 0.7 (``duplicates`` > 0); most duplicates first. The folded
  boxes are in ``<model>_topk`` (tick it to see them).
- ``<model>_likely_missing_annotation``: shown predictions scoring at least ``confidence`` with
  objectness at least ``objectness`` and no ground-truth box nearby (``gt_max_iou`` < 0.1): a
  confident detection on nothing annotated is often an annotation the dataset lacks.
- ``fixed_by_<candidate>`` / ``broken_by_<candidate>``: ground truth the baseline missed and the
  candidate found (or the reverse), counted on the shown predictions (above the display
  threshold), with the detection that found it (``changed_gt``) and the other model's nearest
  one (``near_missed``).

The specs of the saved views (rule, subject, the fields and evaluations they read, sample
count, why empty) are kept in ``dataset.info["workbench"]["view_specs"]``; :func:`drop_stale_views`
deletes a view whose fields or evaluations are gone, so every saved view always loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from workbench import boxes as box_ops
from workbench.data.dataset import DatasetError

GT_FIELD = "ground_truth"
EXEMPLAR_FIELD = "exemplars"
NO_GT_NEARBY = 0.1  # gt_max_iou below this: nothing annotated under the detection
HIGH_OBJECTNESS = 0.5


def field_names(model: str) -> dict[str, str]:
    """The FiftyOne names belonging to one exported model."""
    return {
        "predictions": f"{model}_predictions",
        "topk": f"{model}_topk",
        "queries": f"{model}_queries",
        "eval_key": f"eval_{model}",
    }


@dataclass(frozen=True)
class ViewSpec:
    """One saved view: its rule in words, the label field the rule selects (``subject``), the
    fields it shows and the evaluations it reads, and what an empty result means."""

    name: str
    rule: str
    subject: str
    fields: tuple[str, ...]
    eval_keys: tuple[str, ...]
    if_empty: str
    build: Callable
    params: dict | None = None


def _shown(dataset, view, fields: Sequence[str]):
    """``view`` showing only ``fields`` (those that exist), the exemplars and the sample's
    identity (``image_id``, ``dataset_index``)."""
    wanted = (*fields, EXEMPLAR_FIELD, "image_id", "dataset_index")
    keep = [f for f in wanted if dataset.has_field(f)]
    return view.select_fields(list(dict.fromkeys(keep)))


def high_confidence_fp(dataset, model: str, confidence: float):
    from fiftyone import ViewField as F

    names = field_names(model)
    pred, key = names["predictions"], names["eval_key"]
    view = dataset.filter_labels(pred, (F(key) == "fp") & (F("confidence") >= confidence))
    view = view.sort_by(F(f"{pred}.detections.confidence").max(), reverse=True)
    return _shown(dataset, view, [GT_FIELD, pred])


def missed_gt(dataset, model: str):
    from fiftyone import ViewField as F

    names = field_names(model)
    pred = names["predictions"]
    view = dataset.filter_labels(GT_FIELD, F(names["eval_key"]) == "fn")
    view = view.filter_labels(pred, F("near_missed") == True, only_matches=False)  # noqa: E712
    view = view.sort_by(F(f"{GT_FIELD}.detections").length(), reverse=True)
    return _shown(dataset, view, [GT_FIELD, pred])


def changed_gt(dataset, baseline: str, candidate: str, *, fixed: bool):
    """Ground truth the candidate found and the baseline missed (``fixed``), or the reverse,
    with the detection that found it and the other model's nearest detection."""
    from fiftyone import ViewField as F

    before, after = ("fn", "tp") if fixed else ("tp", "fn")
    base, cand = field_names(baseline), field_names(candidate)
    finder, loser = (cand, base) if fixed else (base, cand)
    view = dataset.filter_labels(
        GT_FIELD, (F(base["eval_key"]) == before) & (F(cand["eval_key"]) == after)
    )
    mark = "fixed" if fixed else "broken"
    view = view.filter_labels(
        finder["predictions"], F("changed_gt") == mark, only_matches=False
    ).filter_labels(
        loser["predictions"],
        F("near_missed") == True,  # noqa: E712
        only_matches=False,
    )
    view = view.sort_by(F(f"{GT_FIELD}.detections").length(), reverse=True)
    return _shown(dataset, view, [GT_FIELD, base["predictions"], cand["predictions"]])


def lowest_quartile_reward(dataset, model: str) -> float | None:
    """The lowest quartile of the rewards of a model's shown predictions (None: no rewards)."""
    q = dataset.quantiles(f"{field_names(model)['predictions']}.detections.reward", 0.25)
    return None if q is None else float(q)


def high_score_low_reward(dataset, model: str, confidence: float, low_reward: float):
    from fiftyone import ViewField as F

    pred = field_names(model)["predictions"]
    rule = (F("confidence") >= confidence) & (F("reward") != None) & (F("reward") <= low_reward)  # noqa: E711
    view = dataset.filter_labels(pred, rule)
    view = view.sort_by(F(f"{pred}.detections.reward").min())
    return _shown(dataset, view, [GT_FIELD, pred])


def duplicates(dataset, model: str):
    from fiftyone import ViewField as F

    names = field_names(model)
    pred = names["predictions"]
    view = dataset.filter_labels(pred, F("duplicates") > 0)
    view = view.sort_by(F(f"{pred}.detections.duplicates").sum(), reverse=True)
    return _shown(dataset, view, [GT_FIELD, pred, names["topk"]])


def likely_missing_annotation(dataset, model: str, confidence: float):
    from fiftyone import ViewField as F

    pred = field_names(model)["predictions"]
    rule = (
        (F("confidence") >= confidence)
        & (F("objectness") != None)  # noqa: E711
        & (F("objectness") >= HIGH_OBJECTNESS)
        & (F("gt_max_iou") != None)  # noqa: E711
        & (F("gt_max_iou") < NO_GT_NEARBY)
    )
    view = dataset.filter_labels(pred, rule)
    view = view.sort_by(F(f"{pred}.detections.confidence").max(), reverse=True)
    return _shown(dataset, view, [GT_FIELD, pred])


def view_specs(
    dataset,
    models: Sequence[str],
    *,
    baseline: str | None,
    candidate: str | None,
    confidence: float,
    low_reward: float | None,
) -> list[ViewSpec]:
    """The views of the module docstring for ``models`` (and the pair, when both are given)."""
    specs = []
    for model in models:
        names = field_names(model)
        pred, key = names["predictions"], (names["eval_key"],)
        shown = (GT_FIELD, pred)
        top = dataset.bounds(f"{pred}.detections.confidence")[1]
        gate = (
            f" (the highest shown {model} score is {top:.2f}: lower --confidence to see more)"
            if top is not None and top < confidence
            else ""
        )
        specs += [
            ViewSpec(
                f"{model}_high_confidence_fp",
                f"{pred} tagged fp by {key[0]} with confidence >= {confidence:g}",
                pred,
                shown,
                key,
                f"no shown {model} detection scoring >= {confidence:g} is a false positive" + gate,
                lambda ds, m=model: high_confidence_fp(ds, m, confidence),
            ),
            ViewSpec(
                f"{model}_missed_gt",
                f"{GT_FIELD} tagged fn by {key[0]} (with {model}'s nearest shown detection)",
                GT_FIELD,
                shown,
                key,
                f"{model}'s shown detections find every ground-truth box",
                lambda ds, m=model: missed_gt(ds, m),
            ),
            ViewSpec(
                f"{model}_duplicates",
                f"{pred} with duplicates > 0: raw same-class boxes at IoU > 0.7 merged into it",
                pred,
                (*shown, names["topk"]),
                (),
                f"{model} never put two same-class boxes above the threshold at IoU > 0.7",
                lambda ds, m=model: duplicates(ds, m),
            ),
            ViewSpec(
                f"{model}_likely_missing_annotation",
                f"{pred} with confidence >= {confidence:g}, objectness >= {HIGH_OBJECTNESS:g} "
                f"and gt_max_iou < {NO_GT_NEARBY:g} (no ground truth nearby)",
                pred,
                shown,
                (),
                f"every shown {model} detection scoring >= {confidence:g} with objectness >= "
                f"{HIGH_OBJECTNESS:g} overlaps some ground-truth box" + gate,
                lambda ds, m=model: likely_missing_annotation(ds, m, confidence),
            ),
        ]
        low = lowest_quartile_reward(dataset, model) if low_reward is None else low_reward
        if low is not None:
            specs.append(
                ViewSpec(
                    f"{model}_high_score_low_reward",
                    f"{pred} with confidence >= {confidence:g} and reward <= {low:.3g}",
                    pred,
                    shown,
                    (),
                    f"no shown {model} detection scoring >= {confidence:g} has reward <= {low:.3g}",
                    lambda ds, m=model, r=low: high_score_low_reward(ds, m, confidence, r),
                    {"confidence": confidence, "low_reward": low},
                )
            )
    if baseline and candidate:
        for name in (baseline, candidate):
            if name not in models:
                raise DatasetError(f"{name!r} is not among the evaluated models {list(models)}")
        b, c = field_names(baseline), field_names(candidate)
        pair = (GT_FIELD, b["predictions"], c["predictions"])
        keys = (b["eval_key"], c["eval_key"])
        for fixed in (True, False):
            verb = "fixed" if fixed else "broken"
            who = (baseline, candidate) if fixed else (candidate, baseline)
            specs.append(
                ViewSpec(
                    f"{verb}_by_{candidate}",
                    f"{GT_FIELD} {who[0]} missed and {who[1]} found (shown detections only)",
                    GT_FIELD,
                    pair,
                    keys,
                    f"{who[1]} finds no ground-truth box that {who[0]} misses",
                    lambda ds, f=fixed: changed_gt(ds, baseline, candidate, fixed=f),
                )
            )
    return specs


def save_views(
    dataset,
    models: Sequence[str],
    *,
    baseline: str | None = None,
    candidate: str | None = None,
    confidence: float = 0.5,
    low_reward: float | None = None,
) -> dict[str, int]:
    """Save the views of the module docstring for every evaluated model (and the baseline /
    candidate pair when both are given), empty ones included, with their specs in
    ``dataset.info``; returns ``{view name: number of samples}``."""
    for model in models:
        if not dataset.has_evaluation(field_names(model)["eval_key"]):
            raise DatasetError(
                f"model {model!r} has no evaluation on {dataset.name!r}; run "
                f"`python -m workbench fiftyone evaluate {dataset.name}` first"
            )
    specs = view_specs(
        dataset,
        models,
        baseline=baseline,
        candidate=candidate,
        confidence=confidence,
        low_reward=low_reward,
    )
    stored = stored_specs(dataset)
    counts = {}
    for spec in specs:
        view = spec.build(dataset)
        counts[spec.name] = len(view)
        why = None if counts[spec.name] else f"empty: {spec.if_empty}"
        description = spec.rule if why is None else f"{spec.rule}. {why}"
        dataset.save_view(spec.name, view, description=description, overwrite=True)
        stored[spec.name] = {
            "rule": spec.rule,
            "subject": spec.subject,
            "fields": list(spec.fields),
            "eval_keys": list(spec.eval_keys),
            "samples": counts[spec.name],
            "why_empty": why,
            "params": {"confidence": confidence, **(spec.params or {})},
        }
    _store_specs(dataset, stored)
    return counts


def stored_specs(dataset) -> dict[str, dict]:
    """A copy of the specs of the saved views (name -> rule, subject, fields, ...)."""
    return dict(dataset.info.get("workbench", {}).get("view_specs", {}))


def _store_specs(dataset, specs: dict[str, dict]) -> None:
    # info is reassigned whole: FiftyOne's change tracking misreads in-place nested updates
    info = dict(dataset.info)
    info["workbench"] = {**info.get("workbench", {}), "view_specs": specs}
    dataset.info = info
    dataset.save()


def drop_stale_views(dataset) -> list[str]:
    """Delete the saved views that read a field or an evaluation that no longer exists, or
    that fail to load; returns their names. Keeps every remaining view loadable."""
    stored = stored_specs(dataset)
    evaluations = set(dataset.list_evaluations())
    dropped = []
    for name in list(dataset.list_saved_views()):
        spec = stored.get(name, {})
        stale = any(not dataset.has_field(f) for f in spec.get("fields", ())) or any(
            k not in evaluations for k in spec.get("eval_keys", ())
        )
        if not stale:
            try:
                dataset.load_saved_view(name)
            except Exception:  # a view of a field an older export deleted
                stale = True
        if stale:
            dataset.delete_saved_view(name)
            stored.pop(name, None)
            dropped.append(name)
    if dropped:
        _store_specs(dataset, stored)
    return dropped


# --- attributes that need the evaluation -------------------------------------------------------


def _iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> torch.Tensor:
    """IoU of FiftyOne boxes (relative xywh; IoU does not change with the image's scale)."""
    ta = torch.tensor(a, dtype=torch.float64).reshape(-1, 4)
    tb = torch.tensor(b, dtype=torch.float64).reshape(-1, 4)
    return box_ops.box_iou(box_ops.xywh_to_xyxy(ta), box_ops.xywh_to_xyxy(tb))


def nearest_to_missed(truth: Sequence, preds: Sequence, eval_key: str) -> list[bool]:
    """For each of ``preds`` (fo.Detection): is it the highest-IoU one (IoU > 0) to some
    ground-truth box of ``truth`` that ``eval_key`` tagged ``fn``?"""
    missed = [g.bounding_box for g in truth if g[eval_key] == "fn"]
    marks = [False] * len(preds)
    if not missed or not preds:
        return marks
    iou = _iou(missed, [p.bounding_box for p in preds])
    best = iou.max(dim=1)
    for value, index in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        if value > 0:
            marks[index] = True
    return marks


def changed_marks(truth: Sequence, preds: Sequence, own: str, other: str, mark: str) -> list:
    """``mark`` on each of ``preds`` (tagged by evaluation ``own``) matched to a ground-truth
    box that evaluation ``other`` tagged ``fn``; None on the rest."""
    lost = {g.id for g in truth if g[other] == "fn"}
    return [mark if p[own] == "tp" and p[f"{own}_id"] in lost else None for p in preds]


def mark_neighbours(
    dataset, models: Sequence[str], baseline: str | None = None, candidate: str | None = None
) -> None:
    """Set ``near_missed`` and ``changed_gt`` on the shown predictions from the evaluations
    (``changed_gt`` is None everywhere without a baseline / candidate pair)."""
    truth = dataset.values(f"{GT_FIELD}.detections")
    for model in models:
        names = field_names(model)
        pred, key = names["predictions"], names["eval_key"]
        preds = dataset.values(f"{pred}.detections")
        near = [nearest_to_missed(t or [], p or [], key) for t, p in zip(truth, preds, strict=True)]
        changed = [[None] * len(p or []) for p in preds]
        pair = {baseline: (candidate, "broken"), candidate: (baseline, "fixed")}
        if baseline and candidate and model in pair:
            other, mark = pair[model]
            other_key = field_names(other)["eval_key"]
            changed = [
                changed_marks(t or [], p or [], key, other_key, mark)
                for t, p in zip(truth, preds, strict=True)
            ]
        dataset.set_values(f"{pred}.detections.near_missed", near)
        dataset.set_values(f"{pred}.detections.changed_gt", changed)
