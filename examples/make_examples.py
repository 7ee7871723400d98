"""Rebuild the app's bundled examples (the committed files are its output).

    .venv/bin/python examples/make_examples.py [--bccd ../shared/data/bccd/BCCD]

- ``shapes/``: 4 synthetic images at 256 px, seed 7_000_001 (no training or validation split of
  ``workbench.data.sources`` uses it), all 48 categories, COCO json beside them.
- ``bccd/``: 4 images of BCCD's *test* split with their boxes, converted from VOC by
  ``workbench.data.voc.convert_voc``, and BCCD's MIT licence.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from workbench.data.synthetic import write_shapes_dataset
from workbench.data.voc import convert_voc

HERE = Path(__file__).resolve().parent
SHAPES_SEED = 7_000_001
BCCD_IMAGES = ("BloodImage_00021", "BloodImage_00065", "BloodImage_00068", "BloodImage_00407")


def make_shapes(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    write_shapes_dataset(out, 4, seed=SHAPES_SEED)


def make_bccd(voc_root: Path, out: Path) -> None:
    test_split = (voc_root / "ImageSets" / "Main" / "test.txt").read_text().split()
    missing = [name for name in BCCD_IMAGES if name not in test_split]
    if missing:
        raise SystemExit(f"{missing} are not in BCCD's test split; pick test images only")
    with tempfile.TemporaryDirectory() as tmp:
        voc = Path(tmp) / "voc"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (voc / sub).mkdir(parents=True)
        for name in BCCD_IMAGES:
            shutil.copy(voc_root / "Annotations" / f"{name}.xml", voc / "Annotations")
            shutil.copy(voc_root / "JPEGImages" / f"{name}.jpg", voc / "JPEGImages")
        (voc / "ImageSets/Main/test.txt").write_text("\n".join(BCCD_IMAGES) + "\n")
        files = convert_voc(voc, Path(tmp) / "coco")
        data = json.loads(Path(files["annotations"]).read_text())
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(
            Path(tmp) / "coco" / "images", out / "images", copy_function=shutil.copyfile
        )
    data["info"]["description"] = "BCCD blood cells, 4 images of the test split, from Pascal VOC"
    data["info"]["source"] = "https://github.com/Shenggan/BCCD_Dataset (MIT)"
    (out / "annotations.json").write_text(json.dumps(data, indent=1) + "\n")
    shutil.copyfile(voc_root.parent / "LICENSE", out / "LICENSE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = HERE.parents[1] / "shared" / "data" / "bccd" / "BCCD"
    parser.add_argument("--bccd", type=Path, default=default, help="BCCD's VOC folder")
    args = parser.parse_args()
    make_shapes(HERE / "shapes")
    make_bccd(args.bccd, HERE / "bccd")
    print(f"examples written to {HERE}")


if __name__ == "__main__":
    main()
