"""How often do the app's two default models show different detections? Per bundled example.

    python benchmarks/disagreement.py [--sft models/sft] [--grqo models/grqo]

Every image of ``examples/shapes`` and ``examples/bccd`` (held out from both models' training) is
searched by both models with the same prompts, under both protocols: interactive (one exemplar
per class from the image's own ground truth) and cross-image (one exemplar per class from
another image of the set; seed 0). Each model's result is what the app shows: detections scoring
at least ``SCORE_THRESHOLD``, duplicates merged at ``MERGE_IOU``. A detection agrees when the
other model shows one for the same prompt with IoU >= 0.5, exactly as the app's compare view
marks boxes "found by both" (:func:`workbench.app.render.agreement_pairs`); the rest is where the
two differ.

Writes ``benchmarks/results/disagreement.json``: per set and protocol, the shown detections of
each model, the pairs, the share of shown detections without a partner, the share of images on
which the two differ, and the mean score gap of paired detections.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from workbench.app.render import AGREEMENT_IOU, agreement_pairs
from workbench.data.coco import CocoDetection
from workbench.data.dataset import ImagesById
from workbench.data.prompts import protocol_prompts
from workbench.postprocess import MERGE_IOU, SCORE_THRESHOLD, shown_detections
from workbench.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"shapes": REPO / "examples" / "shapes", "bccd": REPO / "examples" / "bccd"}
SIZE = {"min_size": 256, "max_size": 342}  # the resolution both default models trained at


def compare(a: Predictor, b: Predictor, dataset: CocoDetection, protocol: str) -> dict:
    targets = [dataset.target(i) for i in range(len(dataset))]
    prompts = protocol_prompts(dataset, targets, protocol, seed=0)
    references = ImagesById(dataset) if protocol == "cross_image" else None
    shown, pairs, differing, gaps, images = [0, 0], 0, 0, [], 0
    for i, image_prompts in enumerate(prompts):
        if not image_prompts:
            continue
        image, images = dataset.load_image(i), images + 1
        found = [
            shown_detections(m.predict(image, image_prompts, reference_images=references))
            for m in (a, b)
        ]
        paired = agreement_pairs(*found)
        shown = [n + len(d) for n, d in zip(shown, found, strict=True)]
        pairs += len(paired)
        differing += len(paired) != len(found[0]) or len(paired) != len(found[1])
        gaps += [abs(float(found[0].scores[p] - found[1].scores[q])) for p, q in paired]
    total = sum(shown)
    return {
        "images": images,
        "shown": {"sft": shown[0], "grqo": shown[1]},
        "pairs": pairs,
        "unpaired_share": (total - 2 * pairs) / total if total else None,
        "images_differing_share": differing / images if images else None,
        "mean_abs_score_gap_of_pairs": sum(gaps) / len(gaps) if gaps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft", default="models/sft", help="a checkpoint (relative: to the repo)")
    parser.add_argument("--grqo", default="models/grqo")
    args = parser.parse_args()
    sft, grqo = (
        Predictor.from_checkpoint(REPO / p, device="cpu", **SIZE) for p in (args.sft, args.grqo)
    )
    sets = {}
    for name, folder in EXAMPLES.items():
        data = CocoDetection(folder / "annotations.json")
        for protocol in ("interactive", "cross_image"):
            sets[f"{name}/{protocol}"] = result = compare(sft, grqo, data, protocol)
            print(name, protocol, result, flush=True)
    shown = sum(r["shown"]["sft"] + r["shown"]["grqo"] for r in sets.values())
    pairs = sum(r["pairs"] for r in sets.values())
    path = write_result(
        "disagreement",
        {
            "models": {"sft": args.sft, "grqo": args.grqo},
            "shown_as_in_the_app": {"score_threshold": SCORE_THRESHOLD, "merge_iou": MERGE_IOU},
            "pair_iou": AGREEMENT_IOU,
            "sets": sets,
            "unpaired_share_overall": (shown - 2 * pairs) / shown if shown else None,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
