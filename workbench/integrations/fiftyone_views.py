"""Saved views for error analysis: where a model is wrong, and what GRQO changed against SFT.

Every view filters labels (``filter_labels`` keeps only the samples with at least one matching
label, and shows only those labels), so it returns exactly the images that contain the case:

- ``<model>_high_confidence_fp``: predictions tagged ``fp`` by ``eval_<model>`` with confidence
  at least ``confidence``;
- ``<model>_missed_gt``: ground-truth boxes tagged ``fn`` by ``eval_<model>``;
- ``fixed_by_<candidate>``: ground truth the baseline missed (``fn``) and the candidate found
  (``tp``), e.g. ``fixed_by_grqo`` against ``sft``;
- ``broken_by_<candidate>``: ground truth the baseline found and the candidate missed;
- ``<model>_high_score_low_reward``: queries scoring at least ``confidence`` whose GRQO reward is
  at most ``low_reward`` (default: the lowest quartile of that model's rewards), read from
  ``<model>_queries`` when it was exported, else from ``<model>_predictions``.

Saving again overwrites a view in place.
"""

from __future__ import annotations

from collections.abc import Sequence

from workbench.data.dataset import DatasetError


def field_names(model: str) -> dict[str, str]:
    """The FiftyOne names belonging to one exported model."""
    return {
        "predictions": f"{model}_predictions",
        "queries": f"{model}_queries",
        "eval_key": f"eval_{model}",
    }


def high_confidence_fp(dataset, model: str, confidence: float):
    from fiftyone import ViewField as F

    names = field_names(model)
    return dataset.filter_labels(
        names["predictions"], (F(names["eval_key"]) == "fp") & (F("confidence") >= confidence)
    )


def missed_gt(dataset, model: str, gt_field: str = "ground_truth"):
    from fiftyone import ViewField as F

    return dataset.filter_labels(gt_field, F(field_names(model)["eval_key"]) == "fn")


def changed_gt(dataset, baseline: str, candidate: str, *, fixed: bool, gt_field="ground_truth"):
    """Ground truth the candidate found and the baseline missed (``fixed``), or the reverse."""
    from fiftyone import ViewField as F

    before, after = ("fn", "tp") if fixed else ("tp", "fn")
    base, cand = field_names(baseline)["eval_key"], field_names(candidate)["eval_key"]
    return dataset.filter_labels(gt_field, (F(base) == before) & (F(cand) == after))


def query_field(dataset, model: str) -> str:
    names = field_names(model)
    return names["queries"] if dataset.has_field(names["queries"]) else names["predictions"]


def high_score_low_reward(dataset, model: str, confidence: float, low_reward: float | None):
    """The view and the reward threshold used (None and None when no query has a reward)."""
    from fiftyone import ViewField as F

    field = query_field(dataset, model)
    if low_reward is None:
        low_reward = dataset.quantiles(f"{field}.detections.reward", 0.25)
    if low_reward is None:
        return None, None
    view = dataset.filter_labels(
        field,
        (F("confidence") >= confidence) & (F("reward") != None) & (F("reward") <= low_reward),  # noqa: E711
    )
    return view, float(low_reward)


def save_views(
    dataset,
    models: Sequence[str],
    *,
    baseline: str | None = None,
    candidate: str | None = None,
    confidence: float = 0.5,
    low_reward: float | None = None,
    gt_field: str = "ground_truth",
) -> dict[str, int]:
    """Save the views of the module docstring for every evaluated model (and the baseline /
    candidate pair when both are given); returns ``{view name: number of samples}``."""
    views = {}
    for model in models:
        if not dataset.has_evaluation(field_names(model)["eval_key"]):
            raise DatasetError(
                f"model {model!r} has no evaluation on {dataset.name!r}; run "
                f"`python -m workbench fiftyone evaluate {dataset.name}` first"
            )
        views[f"{model}_high_confidence_fp"] = high_confidence_fp(dataset, model, confidence)
        views[f"{model}_missed_gt"] = missed_gt(dataset, model, gt_field)
        view, _ = high_score_low_reward(dataset, model, confidence, low_reward)
        if view is not None:
            views[f"{model}_high_score_low_reward"] = view
    if baseline and candidate:
        for name in (baseline, candidate):
            if name not in models:
                raise DatasetError(f"{name!r} is not among the evaluated models {list(models)}")
        views[f"fixed_by_{candidate}"] = changed_gt(
            dataset, baseline, candidate, fixed=True, gt_field=gt_field
        )
        views[f"broken_by_{candidate}"] = changed_gt(
            dataset, baseline, candidate, fixed=False, gt_field=gt_field
        )
    for name, view in views.items():
        dataset.save_view(name, view, overwrite=True)
    return {name: len(view) for name, view in views.items()}
