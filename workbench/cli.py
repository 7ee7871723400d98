"""``python -m workbench <group> <command>``: the command-line front door.

    python -m workbench data make-shapes --out DIR --images 200 --seed 0
    python -m workbench data convert-voc ../shared/data/bccd/BCCD --out DIR
    python -m workbench data convert-yolo path/to/yolo_dataset --out DIR   # or its data.yaml
    python -m workbench data split DIR/annotations.json --out DIR --val 0.2 --test 0.2 --seed 0
    python -m workbench data stats DIR/annotations.json
    python -m workbench data show DIR/annotations.json --count 8 --out grid.png
    python -m workbench data fetch coco          # users with a network
    python -m workbench data sources
    python -m workbench train configs/tiny_shapes_sft.yaml train.lr=1e-4 [--resume | --overwrite]
    torchrun --nproc_per_node=2 -m workbench train configs/small_shapes_sft.yaml
    python -m workbench eval runs/tiny_shapes_sft [eval.max_images=50] [--split test] [--out r.json]
    python -m workbench eval --detections dets.json --gt annotations.json
    python -m workbench predict runs/tiny_shapes_sft image.png --box 10,20,60,80:cell --out out/x
    python -m workbench predict runs/tiny_shapes_sft FOLDER --prompts prompts.json --out dets.json
    python -m workbench fiftyone export --source bccd --split val --model sft=models/sft \
        --model grqo=models/grqo --reference sft [--name N | --overwrite]
    python -m workbench fiftyone evaluate workbench-bccd-val [--iou 0.5] [--views-only]
    python -m workbench fiftyone launch workbench-bccd-val [--port 5151]

Nothing is lost: an output that exists is replaced only with ``--force`` (``train``: a folder
holding a run only with ``--resume`` or ``--overwrite``), and never an input of the command.
User errors (bad files and arguments, unknown datasets, wrong config keys or values, an
unwritable or full disk, a diverging run) print as one line, ``error: ...``, naming the setting
and the fix, and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from workbench.checkpoint import CheckpointError
from workbench.config import ConfigError
from workbench.cpu import use_available_cpus
from workbench.data.dataset import DatasetError, DetectionDataset
from workbench.data.split import SplitError
from workbench.inputs import InputError
from workbench.postprocess import MERGE_IOU, SCORE_THRESHOLD, shown_detections
from workbench.safe_paths import (
    USER_ERRNOS,
    OutputError,
    check_output_file,
    os_error_line,
    write_atomic,
)
from workbench.trainer import NonFiniteLossError

# Mistakes a user can fix: reported as one line, exit status 2.
USER_ERRORS = (
    DatasetError,
    ConfigError,
    CheckpointError,
    InputError,
    OutputError,
    SplitError,
    NonFiniteLossError,
    FileNotFoundError,
)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (status 2, as argparse's own)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must lie in [0, 1]")
    return value


def _save_png(image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def _open_dataset(args: argparse.Namespace) -> DetectionDataset:
    """The dataset named by ``JSON`` or ``--source NAME --split SPLIT``."""
    from workbench.data.coco import CocoDetection

    if args.source:
        from workbench.data.sources import locate

        found = locate(args.source, args.split, root=args.root, download=False)
        return CocoDetection(found.json_path, found.image_root)
    if not args.json:
        raise DatasetError("name a COCO json file or pass --source NAME (see `data sources`)")
    return CocoDetection(args.json, args.images)


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from workbench.data.synthetic import ShapesConfig, write_shapes_dataset

    novel = tuple(n.strip() for n in args.novel.split(",")) if args.novel else None
    cats = (
        args.categories
        if args.categories in ("all", "base", "novel")
        else tuple(n.strip() for n in args.categories.split(","))
    )
    try:
        cfg = ShapesConfig(image_size=args.image_size, novel=novel, categories=cats)
    except ValueError as err:
        raise InputError(f"make-shapes: {err}") from err
    path = write_shapes_dataset(
        args.out, args.images, args.seed, cfg, progress=True, overwrite=args.force
    )
    print(f"wrote {args.images} images and {path}")
    return 0


def _print_conversion(written) -> None:
    """One line per written json with its counts, then the dataset's categories."""
    summary = written.summary
    for split, path in written.items():
        size = summary["splits"][split]
        print(f"{split}: {path} ({size['images']} images, {size['annotations']} boxes)")
    print(f"{len(summary['categories'])} categories: {summary['categories']}")
    if summary.get("images_without_label_file"):
        print(
            f"{summary['images_without_label_file']} images have no label file: kept with no "
            "boxes (the YOLO convention)"
        )


def cmd_convert_voc(args: argparse.Namespace) -> int:
    from workbench.data.voc import convert_voc

    written = convert_voc(
        args.voc_root, args.out, link_images=args.link_images, progress=True, overwrite=args.force
    )
    _print_conversion(written)
    return 0


def cmd_convert_yolo(args: argparse.Namespace) -> int:
    from workbench.data.yolo import convert_yolo

    written = convert_yolo(
        args.yolo_root, args.out, link_images=args.link_images, progress=True, overwrite=args.force
    )
    _print_conversion(written)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from workbench.data.split import split_coco

    written = split_coco(
        args.json, args.out, val=args.val, test=args.test, seed=args.seed, overwrite=args.force
    )
    for split, path in written.items():
        size = written.summary[split]
        missing = size["categories_without_boxes"]
        note = f"; no box of {', '.join(missing)}" if missing else ""
        print(f"{split}: {path} ({size['images']} images, {size['annotations']} boxes{note})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from workbench.data.stats import dataset_stats, format_stats

    stats = dataset_stats(_open_dataset(args), check_images=not args.no_check_images, progress=True)
    print(json.dumps(stats, indent=2, default=str) if args.as_json else format_stats(stats))
    return 1 if stats.get("unreadable_images") else 0


def cmd_show(args: argparse.Namespace) -> int:
    from workbench import viz
    from workbench.data.prompts import interactive_prompts

    out = check_output_file(args.out, force=args.force, inputs=[args.json])
    dataset = _open_dataset(args)
    indices = args.index or list(range(min(args.count, len(dataset))))
    for i in indices:
        if not 0 <= i < len(dataset):
            raise DatasetError(
                f"--index {i} is out of range: the dataset has {len(dataset)} images"
            )
    tiles = []
    for i in indices:
        image, target = dataset.load_image(i), dataset.target(i)
        tile = viz.draw_target(image, target, dataset.categories)
        if args.prompts:
            prompts = interactive_prompts(target, dataset.categories, seed=args.seed)
            tile = viz.draw_prompts(tile, prompts)
        tiles.append(tile)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_png(viz.image_grid(tiles, columns=args.columns), out)
    print(f"wrote {out} ({len(tiles)} images)")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from workbench.data.sources import data_root, fetch, get_source

    src = get_source(args.name)
    dest = Path(args.root) if args.root else data_root() / src.name
    fetch(src, dest, progress=True, force=args.force)
    print(f"{src.name} is ready in {dest}")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from workbench.data.sources import ODINW_NAMES, SOURCES, data_root

    print(f"cache: {data_root()}  (set WORKBENCH_DATA to move it)")
    for src in SOURCES.values():
        print(
            f"  {src.name:8s} {src.description}\n           splits {list(src.splits)}, "
            f"local copy via ${src.env_var}, licence: {src.licence}"
        )
    print(f"  odinw/<name>  one of: {', '.join(ODINW_NAMES)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from workbench.config import load_config
    from workbench.experiment import train
    from workbench.run_folder import require_run

    if args.allow_changes and not args.resume:
        raise InputError("--allow-changes applies changed settings to a resumed run: add --resume")
    cfg = load_config(args.config, args.overrides)
    if args.resume:
        require_run(cfg.train.out_dir)
    summary = train(
        cfg, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from workbench.adapt import adapt

    out = args.out or str(Path("runs") / "adapt" / f"{_stem(args.data)}-{args.objective}")
    adapt(
        args.data,
        args.base,
        out,
        objective=args.objective,
        minutes=args.minutes,
        images=args.images,
        steps=args.steps,
        seed=args.seed,
        frozen_blocks=args.frozen_blocks,
        forgetting=args.forgetting,
        forgetting_images=args.forgetting_images,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def _stem(data: str) -> str:
    """A folder name for DATA: ``bccd``, ``animals`` (a folder), ``labels`` (a json)."""
    path = Path(data.rstrip("/"))
    return (path.stem if path.suffix == ".json" else path.name).replace("/", "-") or "data"


def cmd_eval(args: argparse.Namespace) -> int:
    from workbench.experiment import open_evaluation_data, run_evaluation
    from workbench.predictor import Predictor

    if args.detections or args.gt:
        return _eval_detections_file(args)
    if not args.checkpoint:
        raise InputError("name a checkpoint to evaluate, or score a file: --detections D --gt GT")
    out = check_output_file(args.out, force=args.force) if args.out else None
    cfg, origin = _evaluation_config(args)
    split = args.split or cfg.data.val_split
    evaluated, pool = open_evaluation_data(cfg, split)
    # Said before the (minutes-long) evaluation starts, so a wrong data set or split shows now.
    print(_evaluation_line(args.checkpoint, cfg, split, len(evaluated), origin), flush=True)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, min_size=cfg.data.min_size, max_size=cfg.data.max_size
    )
    results = run_evaluation(predictor, cfg, evaluated, pool)
    report = {p: r.to_dict() for p, r in results.items()}
    first = next(iter(results.values()))
    print(f"split {split!r}: {first.num_images} of {len(evaluated)} images")
    for protocol, result in results.items():
        by_split = {k: round(v["AP"], 4) for k, v in result.split_stats.items()}
        queries = "  ".join(f"{k} {v:.4f}" for k, v in result.query_metrics.items())
        print(
            f"{protocol}: AP {result.AP:.4f}  AP50 {result.AP50:.4f}  by split {by_split}\n"
            f"  queries: {queries}"
        )
    if out is not None:
        write_atomic(out, json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0


def _eval_detections_file(args: argparse.Namespace) -> int:
    """``eval --detections DETS.json --gt GT.json``: COCO AP of a detections json (what
    ``predict FOLDER`` writes) against ground truth of the same images, by file name."""
    from workbench.coco_eval import coco_stats, ground_truth_coco, results_for_ground_truth
    from workbench.data.coco import CocoDetection
    from workbench.data.coco_json import load_coco_json

    if not (args.detections and args.gt) or args.checkpoint or args.overrides or args.config:
        raise InputError(
            "--detections and --gt go together, without a checkpoint, overrides or --config: "
            "eval --detections DETS.json --gt GT.json"
        )
    out = check_output_file(args.out, force=args.force) if args.out else None
    gt = ground_truth_coco(CocoDetection(args.gt))
    detections = load_coco_json(args.detections)
    try:
        results, unmatched = results_for_ground_truth(detections, gt)
    except ValueError as err:
        raise InputError(f"{args.detections}: {err}") from err
    if detections["images"] and unmatched["images_not_in_gt"] == len(detections["images"]):
        raise InputError(
            f"no image of {args.detections} is in {args.gt} (matched by file_name); score "
            "detections of the ground truth's images"
        )
    stats = coco_stats(gt, results).as_dict()
    print(
        f"{args.detections} against {args.gt}: {len(results)} detections on "
        f"{len(gt['images'])} ground-truth images"
    )
    print("  ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    notes = {k: v for k, v in unmatched.items() if v}
    if notes:
        print("not matched: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in notes.items()))
    if out is not None:
        write_atomic(out, json.dumps({"stats": stats, "unmatched": unmatched}, indent=2))
        print(f"wrote {out}")
    return 0


def _evaluation_config(args: argparse.Namespace):
    """``--config`` with the overrides; without it, the run config the checkpoint records (the
    defaults, with a note, when it records none). Also returns where the config came from, in
    words."""
    from workbench.config import load_config
    from workbench.model.build import read_run_config

    with_overrides = f", with {' '.join(args.overrides)}" if args.overrides else ""
    if args.config:
        return load_config(args.config, args.overrides), f"{args.config}{with_overrides}"
    run = read_run_config(args.checkpoint)
    if run is None:
        print(
            f"note: {args.checkpoint} records no run config; evaluating with the defaults "
            "(pass --config to choose the data and protocols)",
            file=sys.stderr,
        )
        origin = "the defaults (the checkpoint records no config)"
    else:
        origin = "the checkpoint's own run config"
    return load_config(None, args.overrides, base=run), origin + with_overrides


def _evaluation_line(checkpoint: str, cfg, split: str, available: int, origin: str) -> str:
    """What ``eval`` is about to evaluate: the data set (``data.val_name`` when set, as
    :func:`~workbench.experiment.open_evaluation_data` reads it), split, image count (the first
    ``eval.max_images``, as :func:`~workbench.evaluation.evaluate` takes them), protocols,
    sizes and where the config came from."""
    data = cfg.data.val_name or cfg.data.name
    if data == "coco_json":
        data += f" {cfg.data.val_json if split == cfg.data.val_split else cfg.data.train_json}"
    limit = cfg.eval.max_images
    count = (
        f"{available} images"
        if limit is None or limit >= available
        else f"{limit} of {available} images (eval.max_images={limit})"
    )
    return (
        f"evaluating {checkpoint} on {data} split {split!r}: {count}, protocols "
        f"{', '.join(cfg.eval.protocols)}, at {cfg.data.min_size}/{cfg.data.max_size} px "
        f"(config: {origin})"
    )


def _parse_box(text: str) -> tuple[tuple[float, float, float, float], str]:
    """``x0,y0,x1,y1[:name]`` -> (box, name)."""
    coords, _, name = text.partition(":")
    try:
        box = tuple(float(v) for v in coords.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise InputError(f"--box {text!r} must be x0,y0,x1,y1 (pixels), optionally :name")
    return box, name or "object"


def cmd_predict(args: argparse.Namespace) -> int:
    from workbench import viz
    from workbench.annotate import cap_per_class
    from workbench.data.images import read_image
    from workbench.predictor import Predictor
    from workbench.types import Exemplar, VisualPrompt

    if args.min_size and args.max_size and args.max_size < args.min_size:
        raise InputError(
            f"--max-size {args.max_size} is below --min-size {args.min_size}; "
            "the longer side cannot be capped below the shorter one"
        )
    _check_prompt_flags(args)
    if Path(args.image).is_dir():
        return _predict_folder(args)
    given = _read_prompt_flags(args)
    json_path, png_path = _predict_outputs(args)
    source = "reference" if args.reference else None
    by_name: dict[str, list[Exemplar]] = {}
    for text in args.box or []:
        box, name = _parse_box(text)
        by_name.setdefault(name, []).append(Exemplar(box, source))
    prompts = [VisualPrompt(n, tuple(ex), prompt_id=i) for i, (n, ex) in enumerate(by_name.items())]
    image = read_image(args.image)  # as displayed (EXIF orientation applied)
    refs = {"reference": read_image(args.reference)} if args.reference else None
    predictor = Predictor.from_checkpoint(
        args.checkpoint, min_size=args.min_size, max_size=args.max_size
    )
    bank = _saved_prompts(args, given, predictor)
    raw = predictor.predict(image, bank or prompts, reference_images=refs)
    shown = shown_detections(raw, args.threshold, args.merge_iou)
    detections = cap_per_class(shown, args.max_per_class)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"image": str(args.image), **r} for r in detections.to_records()]
    write_atomic(json_path, json.dumps(records, indent=2))
    drawn = viz.draw_detections(image, detections)
    if source is None and bank is None:
        drawn = viz.draw_prompts(drawn, prompts)
    _save_png(drawn, png_path)
    size = f"{predictor.min_size}/{predictor.max_size} px"
    above = int((raw.scores >= args.threshold).sum())
    merged = f", {above - len(shown)} duplicates merged" if above > len(shown) else ""
    if len(shown) > len(detections):
        merged += f", {len(shown) - len(detections)} over --max-per-class dropped"
    print(f"{len(detections)} detections at {size}{merged} -> {json_path}, {png_path}")
    return 0


def _check_prompt_flags(args: argparse.Namespace) -> None:
    """Exactly one source of prompts; refused before anything is read."""
    given = [
        f for f, v in (("--box", args.box), ("--bank", args.bank), ("--prompts", args.prompts)) if v
    ]
    if not given:
        raise InputError(
            "no prompts: pass --box x0,y0,x1,y1[:name] (with --reference IMG for a folder), "
            "--prompts PROMPTS.json or --bank BANK.safetensors"
        )
    if len(given) > 1:
        raise InputError(f"{' and '.join(given)} both give prompts; pass one of them")
    if args.reference and not args.box:
        raise InputError("--reference is the image --box boxes lie on; pass --box with it")


def _read_prompt_flags(args: argparse.Namespace):
    """The bank of --bank, or the prompts and reference images of --prompts, read and checked
    before the model is; None for --box."""
    from workbench.data.images import read_image
    from workbench.prompt_bank import PromptBank
    from workbench.prompt_file import read_prompt_file

    if args.bank:
        try:
            bank = PromptBank.load(args.bank)
        except ValueError as err:
            raise InputError(f"--bank: {err}") from err
        if len(bank) == 0:
            raise InputError(f"--bank {args.bank} holds no prompts; save a bank with prompts")
        return bank
    if args.prompts:
        prompts, paths = read_prompt_file(args.prompts)
        return prompts, {key: read_image(path) for key, path in paths.items()}
    return None


def _saved_prompts(args: argparse.Namespace, given, predictor):
    """The PromptBank of what :func:`_read_prompt_flags` read (--prompts embedded once, on
    their reference images); None for --box."""
    from workbench.prompt_bank import PromptBank, model_fingerprint

    if isinstance(given, PromptBank):
        mine = model_fingerprint(predictor.model)
        if given.model_fingerprint and given.model_fingerprint != mine:
            print(
                f"warning: --bank {args.bank} was embedded by other weights than "
                f"{args.checkpoint}'s; its embeddings may not fit: re-embed the prompts with "
                "this model (or use --prompts)",
                file=sys.stderr,
            )
            # Said once, above; not again as a Python warning for every image.
            warnings.filterwarnings("ignore", message="prompt bank .* other weights")
        return given
    if given is not None:
        prompts, images = given
        return predictor.embed_prompts(prompts, images, name=Path(args.prompts).stem)
    return None


def _predict_folder(args: argparse.Namespace) -> int:
    """``predict CHECKPOINT FOLDER ... --out DETS.json``: see :mod:`workbench.annotate`."""
    from workbench.annotate import annotate_folder, image_files
    from workbench.data.images import read_image
    from workbench.predictor import Predictor
    from workbench.prompt_bank import model_fingerprint
    from workbench.types import Exemplar, VisualPrompt

    if args.box and not args.reference:
        raise InputError(
            f"--box on a folder needs --reference IMG, the image the boxes lie on ({args.image} "
            "is a folder of different images); or pass --prompts / --bank"
        )
    if args.out.endswith(("/", os.sep)) or Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a folder; name the json to write, e.g. dets.json")
    inputs = [args.reference, args.checkpoint, args.bank, args.prompts]
    out = check_output_file(args.out, force=args.force, inputs=[p for p in inputs if p])
    image_files(args.image)  # refuse an empty folder before the model is read
    given = _read_prompt_flags(args)
    predictor = Predictor.from_checkpoint(
        args.checkpoint, min_size=args.min_size, max_size=args.max_size
    )
    bank = _saved_prompts(args, given, predictor)
    if bank is None:
        by_name: dict[str, list[Exemplar]] = {}
        for text in args.box:
            box, name = _parse_box(text)
            by_name.setdefault(name, []).append(Exemplar(box, "reference"))
        prompts = [
            VisualPrompt(n, tuple(e), prompt_id=i) for i, (n, e) in enumerate(by_name.items())
        ]
        refs = {"reference": read_image(args.reference)}
        bank = predictor.embed_prompts(prompts, refs, name=Path(args.reference).stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "model": model_fingerprint(predictor.model),
        "min_size": predictor.min_size,
        "max_size": predictor.max_size,
    }
    summary = annotate_folder(
        predictor,
        bank,
        args.image,
        out,
        min_score=args.threshold,
        merge_iou=args.merge_iou,
        max_per_class=args.max_per_class,
        batch_size=args.batch_size,
        settings=settings,
        force=args.force,
        progress=not args.no_progress,
    )
    for name, reason in summary.skipped.items():
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    before = (
        f" ({summary.done_before} done by an earlier run, resumed)" if summary.done_before else ""
    )
    skipped = f", {len(summary.skipped)} unreadable skipped" if summary.skipped else ""
    print(
        f"{summary.done_now} of {summary.found} images predicted by this run{before}{skipped}: "
        f"{summary.detections} detections of {len(bank)} class(es) at {predictor.min_size}/"
        f"{predictor.max_size} px -> {summary.out}"
    )
    return 0


def _predict_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """``STEM.json`` and ``STEM.png`` for ``--out STEM``; a folder (``--out DIR/`` or an
    existing one) gets ``IMAGE_STEM.json`` and ``.png`` inside it. Refused: an input file of the
    command, and an existing file without --force."""
    out = Path(args.out)
    if args.out.endswith(("/", os.sep)) or out.is_dir():
        out = out / Path(args.image).stem
    inputs = [
        p for p in (args.image, args.reference, args.checkpoint, args.bank, args.prompts) if p
    ]
    return tuple(  # type: ignore[return-value]
        check_output_file(out.with_suffix(suffix), force=args.force, inputs=inputs)
        for suffix in (".json", ".png")
    )


def _checkpoint_predictor(path: str, args: argparse.Namespace):
    """A Predictor at the sizes its run was trained at (recorded in its checkpoint), unless
    --min-size / --max-size say otherwise."""
    from workbench.predictor import Predictor

    cap = {} if args.max_detections is None else {"max_detections": args.max_detections}
    return Predictor.from_checkpoint(path, min_size=args.min_size, max_size=args.max_size, **cap)


def _fiftyone_source(args: argparse.Namespace, checkpoints: dict[str, str]):
    """The dataset to export, its cross-image prompt pool, the evaluation settings, the sizes,
    its default FiftyOne name and a sentence saying what it is.

    With a config (``--config``/``--set``), or without any source, the run config the first
    checkpoint records (as ``workbench eval`` without --config), the split, pool
    (``eval.pool_split``), K, seed, image count and sizes are those ``workbench eval`` uses, so
    the two report the same AP; the flags override them. With a json or ``--source``, exemplars
    come from the dataset itself and the sizes are the model's own."""
    from workbench.config import EvalConfig, load_config

    if args.config or args.set or not (args.json or args.source):
        from workbench.experiment import open_evaluation_data
        from workbench.model.build import read_run_config

        first = next(iter(checkpoints.values()), None)
        run = None if args.config or first is None else read_run_config(first)
        if not (args.config or run):
            raise InputError(
                "name the data to export: a COCO json, --source NAME, or --config C "
                "(the first --model's checkpoint records no run config to take it from)"
            )
        cfg = load_config(args.config, args.set, base=run)
        dataset, pool = open_evaluation_data(cfg, args.split)
        sizes = (cfg.data.min_size, cfg.data.max_size)
        origin = args.config or f"the run config of {first}"
        about = f"{cfg.data.name} split {args.split!r} ({len(dataset)} images; from {origin})"
        return dataset, pool, cfg.eval, sizes, f"workbench-{cfg.data.name}-{args.split}", about
    if args.source:
        name = f"{args.source}-{args.split}"
        about = f"{args.source} split {args.split!r}"
    else:
        json_path = Path(args.json).absolute()
        name = f"{json_path.parent.name}-{json_path.stem}"
        about = str(json_path)
    dataset = _open_dataset(args)
    default_name = f"workbench-{name}".replace("/", "-")
    about = f"{about} ({len(dataset)} images)"
    return dataset, None, EvalConfig(), (None, None), default_name, about


def cmd_fiftyone_export(args: argparse.Namespace) -> int:
    from workbench.integrations import fiftyone as wfo
    from workbench.integrations.fiftyone_db import check_database

    check_database()  # before anything is read or written

    checkpoints = {}
    for text in args.model:
        name, _, path = text.partition("=")
        if not (name and path):
            raise InputError(f"--model {text!r} must be NAME=CHECKPOINT, e.g. sft=runs/sft")
        checkpoints[name] = path
    dataset, pool, evaluation, sizes, default_name, about = _fiftyone_source(args, checkpoints)
    args.min_size, args.max_size = args.min_size or sizes[0], args.max_size or sizes[1]
    max_images = evaluation.max_images if args.max_images is None else args.max_images
    k = evaluation.exemplars_per_class if args.exemplars is None else args.exemplars
    seed = evaluation.seed if args.seed is None else args.seed
    predictors = {name: _checkpoint_predictor(path, args) for name, path in checkpoints.items()}
    references = {}
    if args.reference:
        ref = predictors.get(args.reference) or _checkpoint_predictor(args.reference, args)
        references = {name: ref for name, p in predictors.items() if p is not ref}
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    name = args.name or default_name
    print(
        f"exporting {count} images of {about} to FiftyOne dataset {name!r}, models "
        f"{', '.join(predictors) or 'none'} at {args.min_size}/{args.max_size} px",
        flush=True,
    )
    ds = wfo.export(
        dataset,
        predictors,
        name=name,
        references=references,
        protocol=args.protocol,
        exemplars_per_class=k,
        seed=seed,
        prompt_pool=pool,
        all_queries=args.all_queries,
        indices=range(count),
        score_threshold=args.threshold,
        merge_iou=None if args.merge_iou >= 1 else args.merge_iou,
        max_detections=args.max_detections,
        image_dir=args.image_dir,
        overwrite=args.overwrite,
        run_evaluation=not args.no_evaluate,
        baseline=args.baseline,
        candidate=args.candidate,
        confidence=args.confidence,
        iou=args.iou,
        also_fiftyone_map=args.fiftyone_map,
        progress=True,
        model_info={n: {"checkpoint": str(Path(p).resolve())} for n, p in checkpoints.items()},
    )
    print(json.dumps(wfo.summary(ds), indent=2))
    return 0


def cmd_fiftyone_evaluate(args: argparse.Namespace) -> int:
    from workbench.integrations import fiftyone as wfo
    from workbench.integrations.fiftyone_db import check_database

    check_database()
    ds = wfo.load(args.name)
    wfo.analyse(
        ds,
        args.models or None,
        iou=args.iou,
        baseline=args.baseline,
        candidate=args.candidate,
        confidence=args.confidence,
        low_reward=args.low_reward,
        views_only=args.views_only,
        also_fiftyone_map=args.fiftyone_map,
        progress=True,
    )
    print(json.dumps(wfo.summary(ds), indent=2))
    return 0


def cmd_fiftyone_launch(args: argparse.Namespace) -> int:
    """Serve the App until Ctrl-C or SIGTERM (to this process alone, too); then its server's
    processes are gone and the port is free before the exit, status 0."""
    from workbench.integrations import fiftyone as wfo
    from workbench.integrations.fiftyone_db import check_database
    from workbench.integrations.fiftyone_serve import serving_until_signal

    check_database()
    with serving_until_signal():
        session = wfo.launch(args.name, port=args.port, address=args.address)
        for name, url in wfo.view_urls(session).items():
            print(f"  saved view {name}: {url}")
        print(f"FiftyOne App for {args.name!r}: {session.url}  (Ctrl-C stops it)", flush=True)
        session.wait(-1)
    return 0


def cmd_fiftyone_review(args: argparse.Namespace) -> int:
    from workbench.integrations.fiftyone_db import check_database
    from workbench.integrations.fiftyone_review import FIELD, TAGS, review_dataset

    check_database()
    name = args.name or f"workbench-review-{Path(args.detections).stem}"
    images = args.images or str(Path(args.detections).parent)
    ds = review_dataset(args.detections, images, name, overwrite=args.overwrite)
    boxes = ds.count(f"{FIELD}.detections")
    tagged = ds.count_label_tags(FIELD)
    print(f"FiftyOne dataset {name!r}: {len(ds)} images, {boxes} boxes in field {FIELD!r}")
    if tagged:
        print(f"  tags so far: {dict(tagged)}; reviewed images: {len(ds.match_tags('reviewed'))}")
    print("tag in the App (select boxes or images, then the tag icon):")
    for tag, meaning in TAGS.items():
        print(f"  {tag:10} {meaning}")
    print(f"open it:   python -m workbench fiftyone launch {name}")
    print(f"then:      python -m workbench fiftyone export-labels {name} --out corrected.json")
    return 0


def cmd_fiftyone_export_labels(args: argparse.Namespace) -> int:
    from workbench.integrations.fiftyone_db import check_database
    from workbench.integrations.fiftyone_review import export_labels

    check_database()
    out = check_output_file(args.out, force=args.force)
    counts = export_labels(
        args.name, out, reviewed_only=args.reviewed_only, min_score=args.min_score
    )
    print(f"wrote {out}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    print(f"train on it: python -m workbench adapt {out} --from models/sft")
    return 0


def _fiftyone_parser(groups) -> None:
    from workbench.postprocess import MERGE_IOU, SCORE_THRESHOLD  # what the app shows

    group = groups.add_parser(
        "fiftyone",
        help="FiftyOne: predictions with per-query rewards, COCO evaluation, error views, the App",
    )
    sub = group.add_subparsers(dest="command", required=True)

    def analysis_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--iou", type=float, default=0.5, help="IoU of the tp/fp/fn tags (default: %(default)s)"
        )
        p.add_argument(
            "--confidence",
            type=float,
            default=0.5,
            help="score a 'high' one needs (default: %(default)s)",
        )
        p.add_argument(
            "--baseline",
            help="the model 'fixed/broken by' compares against "
            "(default: sft, when sft and grqo are both exported)",
        )
        p.add_argument(
            "--candidate",
            help="the model compared with the baseline "
            "(default: grqo, when sft and grqo are both exported)",
        )

    p = sub.add_parser(
        "export",
        help="images, ground truth and checkpoints' predictions, evaluated, with saved views",
        description="Without a json, --source or --config, the data is the first --model "
        "checkpoint's own run config (as `workbench eval`).",
    )
    _dataset_args(p)
    p.add_argument("--config", help="a YAML config whose data section names the dataset")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, e.g. data.name=shapes (repeatable)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="a checkpoint to export as NAME_predictions (repeatable)",
    )
    p.add_argument("--reference", help="model name or checkpoint the KL is computed against")
    p.add_argument(
        "--protocol",
        choices=("interactive", "cross_image"),
        default="interactive",
        help="how images are prompted (default: %(default)s)",
    )
    p.add_argument("--exemplars", type=int, help="exemplars per class (default: eval's, 1)")
    p.add_argument("--seed", type=int, help="seed of the prompt draw (default: eval's, 0)")
    p.add_argument(
        "--all-queries",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also store every selected query as NAME_queries (default: on)",
    )
    p.add_argument("--max-images", type=int, help="export the first N images only")
    p.add_argument(
        "--threshold",
        type=float,
        default=SCORE_THRESHOLD,
        help="NAME_predictions (shown in the App) keeps detections scoring at least this, as "
        "the app does (default: %(default)s); NAME_topk keeps the raw top-K",
    )
    p.add_argument(
        "--merge-iou",
        type=float,
        default=MERGE_IOU,
        help="NAME_predictions merges same-class boxes overlapping more than this, as the app "
        "does; 1 keeps them all (default: %(default)s)",
    )
    p.add_argument(
        "--max-detections",
        type=int,
        help="raw top-K per image, NAME_topk, on which mAP is computed "
        "(default: the checkpoint's, as `workbench eval`: 300)",
    )
    p.add_argument("--min-size", type=int, help="resize (default: the run's data.min_size)")
    p.add_argument("--max-size", type=int, help="resize cap (default: the run's data.max_size)")
    p.add_argument(
        "--name",
        help="FiftyOne dataset name (default: workbench-<data>-<split>, or "
        "workbench-<folder>-<json stem>)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset of that name that holds another source (refused without)",
    )
    p.add_argument("--image-dir", help="where rendered images are written")
    p.add_argument("--no-evaluate", action="store_true", help="skip evaluation and views")
    p.add_argument(
        "--fiftyone-map",
        action="store_true",
        help="also compute FiftyOne's own mAP of NAME_topk (slow: ~2 s per image at 300 boxes)",
    )
    analysis_args(p)
    p.set_defaults(run=cmd_fiftyone_export)

    p = sub.add_parser("evaluate", help="COCO evaluation (tp/fp/fn tags, mAP) and saved views")
    p.add_argument("name", help="the FiftyOne dataset")
    p.add_argument("--models", nargs="*", help="model names (default: every exported one)")
    p.add_argument(
        "--low-reward",
        type=float,
        help="reward a 'low' one is at most (default: the lowest quartile)",
    )
    p.add_argument(
        "--views-only",
        action="store_true",
        help="re-save the views (e.g. with another --confidence) on the stored evaluations",
    )
    p.add_argument(
        "--fiftyone-map",
        action="store_true",
        help="also compute FiftyOne's own mAP of NAME_topk (slow: ~2 s per image at 300 boxes)",
    )
    analysis_args(p)
    p.set_defaults(run=cmd_fiftyone_evaluate)

    p = sub.add_parser(
        "review",
        help="load a folder's detections (predict FOLDER's json) to correct with tags",
        description="The boxes of DETS.json go into field 'labels'; in the App, tag a wrong box "
        "'reject', a box of another class 'is:NAME', and checked images 'reviewed'; then "
        "export-labels. Loading the same json again keeps every tag.",
    )
    p.add_argument("detections", help="a COCO json of detections (predict FOLDER --out)")
    p.add_argument("--images", help="the image folder (default: the json's folder)")
    p.add_argument("--name", help="dataset name (default: workbench-review-<json stem>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset of that name holding other detections (its tags are lost)",
    )
    p.set_defaults(run=cmd_fiftyone_review)

    p = sub.add_parser(
        "export-labels", help="the reviewed labels of a review dataset as a COCO json"
    )
    p.add_argument("name", help="the FiftyOne dataset made by `fiftyone review`")
    p.add_argument("--out", required=True, help="the COCO json to write")
    p.add_argument("--reviewed-only", action="store_true", help="only images tagged 'reviewed'")
    p.add_argument(
        "--min-score",
        type=_fraction,
        default=0.0,
        help="drop untagged boxes scoring under this (default: keep all)",
    )
    _force_arg(p, "replace an existing --out file")
    p.set_defaults(run=cmd_fiftyone_export_labels)

    p = sub.add_parser("launch", help="the FiftyOne App on 127.0.0.1; prints the URL and waits")
    p.add_argument("name", help="the FiftyOne dataset")
    p.add_argument("--port", type=int, default=5151, help="port of the App (default: %(default)s)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="bind address (default: %(default)s, this machine only)",
    )
    p.set_defaults(run=cmd_fiftyone_launch)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("json", nargs="?", help="a COCO json file")
    p.add_argument("--images", help="image folder (default: the json's folder)")
    p.add_argument("--source", help="a named dataset instead of a json (see `data sources`)")
    p.add_argument("--split", default="val", help="split of --source (default: val)")
    p.add_argument("--root", help="local folder of --source")


def _force_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=what)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m workbench", description=__doc__.split("\n")[0])
    groups = parser.add_subparsers(dest="group", required=True)
    data = groups.add_parser("data", help="datasets: make, convert, inspect, fetch")
    sub = data.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-shapes", help="write a synthetic shapes dataset (PNGs + COCO json)")
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=_count, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_count, default=256)
    p.add_argument("--categories", default="all", help="all | base | novel | name,name,...")
    p.add_argument(
        "--novel", help="comma-separated held-out category names (default: built-in split)"
    )
    _force_arg(p, "replace an existing annotations.json and images of the same names")
    p.set_defaults(run=cmd_make_shapes)

    p = sub.add_parser(
        "convert-voc",
        help="VOC / LabelImg XML folder -> COCO json per split",
        description="Layouts (any case): Annotations/ or annotations/ or labels/ with .xml files "
        "beside JPEGImages/ or images/; or .xml files beside their images. ImageSets/Main/*.txt "
        "gives the splits.",
    )
    p.add_argument("voc_root")
    p.add_argument("--out", required=True)
    p.add_argument("--link-images", action="store_true", help="symlink images instead of copying")
    _force_arg(p, "replace existing json files and other images of the same names in --out")
    p.set_defaults(run=cmd_convert_voc)

    p = sub.add_parser(
        "convert-yolo",
        help="YOLO txt labels (ultralytics, Roboflow, LabelImg) -> COCO json per split",
        description="Class names from data.yaml (or the yaml passed as yolo_root) or classes.txt; "
        "images from the yaml's train/val/test, else images/ (images/train/ etc. are splits), "
        "else the folder itself; each label in labels/ mirroring images/, or beside its image.",
    )
    p.add_argument("yolo_root", help="the dataset's folder, or its data.yaml")
    p.add_argument("--out", required=True)
    p.add_argument("--link-images", action="store_true", help="symlink images instead of copying")
    _force_arg(p, "replace existing json files and other images of the same names in --out")
    p.set_defaults(run=cmd_convert_yolo)

    p = sub.add_parser(
        "split",
        help="split a COCO json into seeded train/val/test jsons",
        description="Every image in exactly one split, stratified by each image's rarest "
        "category; the same seed gives the same files. A split of fraction 0 is not written.",
    )
    p.add_argument("json", help="a COCO json file (e.g. DIR/annotations.json)")
    p.add_argument("--out", required=True, help="folder for train.json, val.json, test.json")
    p.add_argument("--val", type=float, default=0.2, help="fraction in [0, 1) (default: 0.2)")
    p.add_argument("--test", type=float, default=0.2, help="fraction in [0, 1) (default: 0.2)")
    p.add_argument("--seed", type=int, default=0)
    _force_arg(p, "replace existing train/val/test json files in --out (never the input)")
    p.set_defaults(run=cmd_split)

    p = sub.add_parser("stats", help="counts, repairs and unreadable images of a dataset")
    _dataset_args(p)
    p.add_argument("--no-check-images", action="store_true", help="skip decoding every image")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_stats)

    p = sub.add_parser("show", help="draw ground truth (and sampled prompts) to a PNG")
    _dataset_args(p)
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument(
        "--index", type=int, nargs="*", help="image indices (default: the first --count)"
    )
    p.add_argument("--count", type=_count, default=8)
    p.add_argument("--columns", type=_count, default=4)
    p.add_argument("--prompts", action="store_true", help="also draw interactive prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt draw")
    _force_arg(p, "replace an existing --out file")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("fetch", help="download a named dataset into the cache (needs a network)")
    p.add_argument("name")
    p.add_argument("--root", help="folder to put it in (default: the cache)")
    _force_arg(p, "fetch again, replacing the dataset's files and same-named folders in the folder")
    p.set_defaults(run=cmd_fetch)

    p = sub.add_parser("sources", help="list the named datasets")
    p.set_defaults(run=cmd_sources)

    p = groups.add_parser("train", help="train a detector (SFT or GRQO) from a YAML config")
    p.add_argument("config", help="a YAML file listing differences from the defaults")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in train.out_dir "
        "from its latest checkpoint, with the settings it was saved with",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: apply settings "
        "that differ from the run's (new lr, weight decay, losses, ...)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="move a run already in "
        "train.out_dir to OUT_DIR.old-N (nothing is deleted); start anew",
    )
    p.set_defaults(run=cmd_train)

    p = groups.add_parser(
        "adapt",
        help="fine-tune a detector on your own labelled images within a budget of minutes",
        description="DATA: a COCO json (split 80/20), a VOC (LabelImg) or YOLO folder "
        "(converted; its own train/val splits when it has both) or a named dataset (bccd, trees). "
        "Prints the plan (resolution, batch, schedule, steps that fit the budget at a measured "
        "step time), scores the base and the adapted model on the held-out images (COCO AP, "
        "interactive and cross-image prompts) and writes a run folder with adapt.json that "
        "eval, predict, the app and fiftyone export read.",
    )
    p.add_argument("data", help="a COCO json, a VOC or YOLO folder, or a named dataset")
    p.add_argument(
        "--from",
        dest="base",
        default="models/sft",
        help="the detector to start from (default: %(default)s)",
    )
    p.add_argument("--objective", choices=["sft", "grqo"], default="sft")
    p.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="the budget for measuring and training, in minutes; evaluation comes on top "
        "(default: %(default)s)",
    )
    p.add_argument("--images", type=_count, help="train on a seeded sample of this many images")
    p.add_argument(
        "--steps",
        type=_count,
        help="train exactly this many steps instead of what fits the budget (reproducible "
        "runs; the budget still stops training)",
    )
    p.add_argument("--seed", type=int, default=0, help="data split, sample and training seed")
    p.add_argument(
        "--frozen-blocks",
        type=int,
        default=0,
        help="keep the base's weights in the MobileNetV2 backbone's first N blocks "
        "(train.frozen_backbone_blocks; fewer seconds per step; default: %(default)s)",
    )
    p.add_argument(
        "--forgetting",
        action="store_true",
        help="also score both models on the base model's own validation data",
    )
    p.add_argument(
        "--forgetting-images",
        type=_count,
        default=100,
        help="images of the base's data to score (default: %(default)s)",
    )
    p.add_argument("--out", help="the run folder (default: runs/adapt/DATA-OBJECTIVE)")
    p.add_argument(
        "--resume", action="store_true", help="continue the adapt run in --out where it stopped"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="move what --out holds to OUT.old-N (nothing is deleted) and start anew",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_adapt)

    p = groups.add_parser(
        "eval",
        help="COCO AP of a checkpoint under the visual-prompt protocols, or of a detections json",
    )
    p.add_argument("checkpoint", nargs="?", help="a run folder, a checkpoint or a saved detector")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.max_images=50")
    p.add_argument("--config", help="YAML config (default: the checkpoint's own run config)")
    p.add_argument(
        "--split",
        help="the split to evaluate (default: data.val_split); 'test' is "
        "the held-out split that model selection never sees",
    )
    p.add_argument(
        "--detections",
        help="instead of a checkpoint: score this COCO json of detections (with scores, as "
        "`predict FOLDER` writes) against --gt, images matched by file_name, classes by name",
    )
    p.add_argument("--gt", help="the ground-truth COCO json for --detections")
    p.add_argument("--out", help="write the full results as JSON")
    _force_arg(p, "replace an existing --out file")
    p.set_defaults(run=cmd_eval)

    p = groups.add_parser(
        "predict",
        help="detect what example boxes show in an image (JSON and a PNG) or a folder (COCO json)",
        description="IMAGE: writes STEM.json and STEM.png. A FOLDER: every image under it "
        "(recursively, sorted; unreadable ones skipped and named) -> one COCO json of "
        "detections (--out DETS.json), resumable: progress is kept in DETS.json.partial.jsonl "
        "and the same command picks up where a killed run stopped. Prompts are embedded once "
        'and reused for every image. PROMPTS.json: [{"name": "cat", "exemplars": '
        '[{"image": "ref.jpg", "box": [x0, y0, x1, y1]}, ...], "negative": false}, '
        "...], image paths relative to the json.",
    )
    p.add_argument("checkpoint")
    p.add_argument("image", help="an image, or a folder of images")
    p.add_argument(
        "--box",
        action="append",
        help="x0,y0,x1,y1[:name] in pixels; repeat for more boxes or classes (a folder needs "
        "--reference)",
    )
    p.add_argument("--reference", help="the boxes lie on this image instead (cross-image)")
    p.add_argument("--prompts", help="prompts from a json file (format above) instead of --box")
    p.add_argument("--bank", help="a saved prompt bank (.safetensors) instead of --box")
    p.add_argument(
        "--threshold",
        "--min-score",
        type=_fraction,
        default=SCORE_THRESHOLD,
        help="show detections scoring at least this (default: %(default)s)",
    )
    p.add_argument(
        "--merge-iou",
        type=_fraction,
        default=MERGE_IOU,
        help="one box per object: of two same-class boxes overlapping above this IoU, the "
        "lower-scoring one is dropped; 1 keeps every raw box (default: %(default)s)",
    )
    p.add_argument(
        "--max-per-class", type=_count, help="keep the best N detections of each class per image"
    )
    trained_at = "(default: the size the model was trained at, as its checkpoint records; else %s)"
    p.add_argument("--min-size", type=_count, help="shorter side " + trained_at % 800)
    p.add_argument("--max-size", type=_count, help="cap on the longer side " + trained_at % 1333)
    p.add_argument(
        "--batch-size",
        type=_count,
        default=4,
        help="a folder: images per backbone and decoder call (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a folder)")
    p.add_argument(
        "--out",
        required=True,
        help="an image: output stem, writes STEM.json and STEM.png; a folder (ending in / or "
        "existing) gets IMAGE_STEM.json and .png. A folder of images: the COCO json to write",
    )
    _force_arg(
        p,
        "replace existing output files (never an input); a folder: also discard progress kept "
        "by a run with other settings",
    )
    p.set_defaults(run=cmd_predict)
    _fiftyone_parser(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_available_cpus()
    try:
        return args.run(args)
    except USER_ERRORS as err:
        return _report(str(err))
    except OSError as err:  # a full, read-only or forbidden disk
        if err.errno not in USER_ERRNOS:
            raise
        return _report(os_error_line(err))


def _report(message: str) -> int:
    """``error: MESSAGE`` on one line of stderr; status 2."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2
