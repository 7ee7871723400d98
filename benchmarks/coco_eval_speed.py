"""COCO evaluation time, faster-coco-eval against pycocotools, on the same predictions.

    python benchmarks/coco_eval_speed.py [--images 500] [--gt-per-image 20] [--categories 20] \
        [--repeats 3] [--tolerance 1e-6]

A synthetic set stands in for a model's output: images of 640 x 480 px, ``--gt-per-image`` boxes
each (sides log-uniform over 6-300 px, so small, medium and large all occur; 2 % crowd), and per
image up to 100 detections: most ground-truth boxes found again with jittered corners and a score
that grows with the overlap, some with the wrong category, plus random false positives. Both
evaluators run through ``workbench.coco_eval.coco_stats`` (index building, ``loadRes``,
evaluate, accumulate, summarize), alternately, ``--repeats`` times after a warm-up on two images;
the median counts. The 12 COCO numbers and the per-category APs of the two are compared: the
largest absolute difference is reported (``identical``: exactly equal), and the script exits with
an error, after writing the result, when it exceeds ``--tolerance``.
Writes benchmarks/results/coco_eval_speed.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from workbench.coco_eval import EVALUATORS, STAT_NAMES, coco_stats

WIDTH, HEIGHT = 640, 480


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 4]`` xywh pixels inside the image, sides log-uniform over 6-300 px."""
    wh = np.exp(rng.uniform(math.log(6), math.log(300), (n, 2)))
    wh = np.minimum(wh, [WIDTH - 1, HEIGHT - 1])
    xy = rng.uniform(0, 1, (n, 2)) * ([WIDTH, HEIGHT] - wh)
    return np.concatenate([xy, wh], 1)


def synthetic_set(images: int, gt_per_image: int, categories: int, seed: int = 0):
    """COCO ground truth and results dicts (see the module docstring)."""
    rng = np.random.default_rng(seed)
    names = [{"id": c + 1, "name": f"c{c + 1}"} for c in range(categories)]
    gt = {"images": [], "annotations": [], "categories": names}
    results = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": WIDTH, "height": HEIGHT})
        boxes = random_boxes(rng, gt_per_image)
        labels = rng.integers(1, categories + 1, gt_per_image)
        for box, label in zip(boxes, labels, strict=True):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "category_id": int(label),
                    "iscrowd": int(rng.random() < 0.02),
                }
            )
        found = rng.random(gt_per_image) < 0.85
        jitter = rng.normal(0, 0.1, (gt_per_image, 4)) * boxes[:, [2, 3, 2, 3]]
        dets = boxes[found] + jitter[found]
        dets[:, 2:] = np.maximum(dets[:, 2:], 1.0)
        error = np.abs(jitter[found]).sum(1) / boxes[found, 2:].sum(1)
        scores = np.clip(1.0 - error + rng.normal(0, 0.1, len(dets)), 0.01, 1.0)
        det_labels = labels[found].copy()
        confused = rng.random(len(dets)) < 0.1
        det_labels[confused] = rng.integers(1, categories + 1, int(confused.sum()))
        extra = min(max(100 - len(dets), 0), gt_per_image // 2 + 1)  # false positives
        dets = np.concatenate([dets, random_boxes(rng, extra)])
        scores = np.concatenate([scores, rng.uniform(0.01, 0.6, extra)])
        det_labels = np.concatenate([det_labels, rng.integers(1, categories + 1, extra)])
        for box, score, label in zip(dets, scores, det_labels, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box.tolist(),
                    "score": float(score),
                }
            )
    return gt, results


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, NaN (COCO's "undefined") equal to NaN and infinitely far from a number."""
    both_nan = np.isnan(a) & np.isnan(b)
    if (np.isnan(a) != np.isnan(b)).any():
        return math.inf
    return float(np.abs(a[~both_nan] - b[~both_nan]).max(initial=0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--gt-per-image", type=int, default=20)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest allowed |diff|")
    args = parser.parse_args()
    gt, results = synthetic_set(args.images, args.gt_per_image, args.categories)
    warm_up = synthetic_set(2, args.gt_per_image, args.categories)  # imports, first-call costs
    for name in EVALUATORS:
        coco_stats(*warm_up, evaluator=name)
    seconds = {name: [] for name in EVALUATORS}
    stats = {}
    for _ in range(args.repeats):
        for name in EVALUATORS:
            start = time.perf_counter()
            stats[name] = coco_stats(gt, results, evaluator=name)
            seconds[name].append(time.perf_counter() - start)
    faster, reference = stats["faster"], stats["pycocotools"]
    cats = sorted(reference.per_category)
    per_category = [np.array([s.per_category[c] for c in cats]) for s in (faster, reference)]
    diff_stats = largest_difference(faster.stats, reference.stats)
    diff_categories = largest_difference(*per_category)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "images": args.images,
        "annotations": len(gt["annotations"]),
        "detections": len(results),
        "categories": args.categories,
        "repeats": args.repeats,
        "seconds": {name: {"median": median[name], "all": seconds[name]} for name in EVALUATORS},
        "speedup_faster_over_pycocotools": median["pycocotools"] / median["faster"],
        "stats": {
            name: dict(zip(STAT_NAMES, stats[name].stats.tolist(), strict=True))
            for name in EVALUATORS
        },
        "max_abs_difference_stats": diff_stats,
        "max_abs_difference_per_category_ap": diff_categories,
        "identical": max(diff_stats, diff_categories) == 0.0,
        "tolerance": args.tolerance,
        "agree": max(diff_stats, diff_categories) <= args.tolerance,
    }
    print(
        f"faster-coco-eval {median['faster']:.2f} s, pycocotools {median['pycocotools']:.2f} s "
        f"(x{result['speedup_faster_over_pycocotools']:.1f}); max |diff| {diff_stats:.2g} "
        f"(12 stats), {diff_categories:.2g} (per-category AP)"
    )
    print(write_result("coco_eval_speed", result))
    if not result["agree"]:
        raise SystemExit(f"the evaluators differ by more than --tolerance {args.tolerance}")


if __name__ == "__main__":
    main()
