"""Dataset statistics for ``python -m workbench data stats`` and notebooks; any DetectionDataset.

Box statistics come from ``dataset.instances()`` (no decoding), in pixels of the original image.
Per-category ``instances`` count non-crowd boxes only (crowd regions are never prompts nor
ground truth for AP); crowd regions are counted apart. With ``check_images`` every image is
decoded and failures are listed, not raised, so one report shows every broken file at once.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from tqdm import tqdm

from workbench.data.dataset import DetectionDataset

TINY_BOX_PX = 4.0


def _size_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": float(statistics.median(values)), "max": max(values)}


def _category_rows(dataset: DetectionDataset) -> list[dict]:
    boxes, images = Counter(), defaultdict(set)
    for inst in dataset.instances():
        if not inst.iscrowd:
            boxes[inst.label] += 1
            images[inst.label].add(inst.image_index)
    return [
        {
            "id": c.id,
            "name": c.name,
            "label": c.label,
            "split": c.split,
            "instances": boxes[c.label],
            "images": len(images[c.label]),
        }
        for c in dataset.categories
    ]


def _check_images(dataset: DetectionDataset, progress: bool) -> tuple[list[dict], int]:
    """Decode every image: ``([{index, image_id, file_name, error} of unreadable], mismatches)``."""
    unreadable, mismatches = [], 0
    for index in tqdm(range(len(dataset)), desc="decoding images", disable=not progress):
        info: dict = {}
        try:
            info = dataset.image_info(index)
            image = dataset.load_image(index)
        # A report of every broken file beats stopping at the first; any failure is listed.
        except Exception as err:
            unreadable.append(
                {
                    "index": index,
                    "image_id": info.get("id"),
                    "file_name": info.get("file_name"),
                    "error": f"{type(err).__name__}: {err}",
                }
            )
            continue
        if "height" in info and tuple(image.shape[-2:]) != (info["height"], info["width"]):
            mismatches += 1
    return unreadable, mismatches


def dataset_stats(
    dataset: DetectionDataset, check_images: bool = True, progress: bool = False
) -> dict:
    """Counts, per-category table, box sizes (px), load repairs and, optionally, unreadable images.

    Keys: ``num_images``, ``num_annotations`` (all kept boxes, crowd included),
    ``num_categories``, ``categories`` (``id, name, label, split, instances, images``),
    ``images_without_annotations``, ``crowd_boxes``, ``box_sizes`` (``width`` / ``height`` each
    ``{min, median, max}`` px of non-crowd boxes, ``tiny_boxes``: width or height below
    ``tiny_threshold_px``), ``load_report`` (the dataset's repair counts), and with
    ``check_images``: ``images_checked``, ``unreadable_images`` (``index, image_id, file_name,
    error``) and ``size_mismatches`` (decoded size differs from ``image_info``).
    """
    instances = dataset.instances()
    boxes = [i.box_xyxy for i in instances if not i.iscrowd]
    widths = [x1 - x0 for x0, _, x1, _ in boxes]
    heights = [y1 - y0 for _, y0, _, y1 in boxes]
    stats = {
        "num_images": len(dataset),
        "num_annotations": len(instances),
        "num_categories": len(dataset.categories),
        "categories": _category_rows(dataset),
        "images_without_annotations": len(dataset) - len({i.image_index for i in instances}),
        "crowd_boxes": sum(i.iscrowd for i in instances),
        "box_sizes": {
            "width": _size_summary(widths),
            "height": _size_summary(heights),
            "tiny_boxes": sum(
                min(w, h) < TINY_BOX_PX for w, h in zip(widths, heights, strict=True)
            ),
            "tiny_threshold_px": TINY_BOX_PX,
        },
        "load_report": dict(sorted(dataset.report.counts.items())),
    }
    if check_images:
        unreadable, mismatches = _check_images(dataset, progress)
        stats["images_checked"] = len(dataset)
        stats["unreadable_images"] = unreadable
        stats["size_mismatches"] = mismatches
    return stats


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_stats(stats: dict) -> str:
    """A terminal report of :func:`dataset_stats`' result."""
    sizes = stats["box_sizes"]
    lines = [
        f"images: {stats['num_images']}   annotations: {stats['num_annotations']}   "
        f"categories: {stats['num_categories']}",
        f"images without annotations: {stats['images_without_annotations']}   "
        f"crowd boxes: {stats['crowd_boxes']}",
        "",
        f"{'label':>5}  {'id':>6}  {'name':<24} {'split':<6} {'instances':>9} {'images':>7}",
    ]
    for c in stats["categories"]:
        lines.append(
            f"{c['label']:>5}  {c['id']:>6}  {c['name'][:24]:<24} {c['split'] or '-':<6} "
            f"{c['instances']:>9} {c['images']:>7}"
        )
    lines.append("")
    for axis in ("width", "height"):
        s = sizes[axis]
        lines.append(
            f"box {axis:<6} px: min {_fmt(s['min'])}  median {_fmt(s['median'])}  "
            f"max {_fmt(s['max'])}"
        )
    lines.append(f"tiny boxes (< {sizes['tiny_threshold_px']:g} px): {sizes['tiny_boxes']}")
    repairs = {k: n for k, n in stats["load_report"].items() if n}
    lines.append("load repairs: " + (", ".join(f"{k}={n}" for k, n in repairs.items()) or "none"))
    if "unreadable_images" in stats:
        bad = stats["unreadable_images"]
        lines.append(
            f"images decoded: {stats['images_checked']}, unreadable: {len(bad)}, "
            f"size differs from annotation: {stats['size_mismatches']}"
        )
        lines += [f"  [{b['index']}] {b['file_name']}: {b['error']}" for b in bad]
    return "\n".join(lines)
