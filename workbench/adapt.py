"""Teaching a trained detector new objects within a time budget: ``python -m workbench adapt``.

DATA -> ``OUT/data/`` (a training and a held-out json) -> a plan chosen from the data and a
measured step, printed before anything trains -> COCO AP of the base model on the held-out split
-> a fine-tune (SFT or GRQO) that stops when its minutes are spent (``train.max_minutes``) -> COCO
AP of the adapted model -> with ``forgetting``, AP of both on the base model's own validation data
-> ``OUT/adapt.json``.

DATA is one of
- a named dataset of :mod:`workbench.data.sources` (``bccd``, ``trees``): its train split
  trains, its val split is held out;
- a COCO json (``file_name`` relative to the json): split 80/20, seeded, by
  :func:`~workbench.data.split.split_coco`;
- a folder in a VOC (LabelImg) or YOLO layout: converted with images linked, not copied
  (:func:`~workbench.data.voc.convert_voc`, :func:`~workbench.data.yolo.convert_yolo`); its own
  train and val splits when it has both, else split 80/20.
``images=K`` trains on a seeded sample of K training images; the held-out split stays whole.

The plan (:class:`Plan`), printed with the reason for each choice:
- resolution: the base model's shorter side, with a longer-side cap the data's median image
  fits, raised (to at most 512 px on the shorter side) when the median box's shorter side would
  be under 16 px there;
- batch 8 (fewer for a smaller set); lr 1e-4 with the backbone at 0.1x, a warm-up over a tenth of
  the steps, x0.1 for the last fifth: the fine-tune recipe of the ``bccd_ft`` arms of
  ``benchmarks/grqo_sweep.py``, with its horizontal flips (0.5) and crops (0.3);
- steps: what fits the budget at the step time of 3 steps of the real model on the real data,
  measured first. Three steps read the pace up to a third off, and the first epochs run slower
  than the rest, so the rest is re-planned from the wall-clock pace the run logs: once the
  warm-up (a tenth of the steps) has trained, and again halfway through the rest. Each re-plan
  keeps the learning rates of the steps taken and fits the step count and the drop to what is
  left of the budget; ``train.max_minutes`` stops training at the budget whatever happens.

OUT is an ordinary run folder (``config.yaml``, ``checkpoints/``, ``metrics.jsonl``) that ``eval``,
``predict``, the app (``python app.py --sft OUT``), the notebooks and ``fiftyone export
--model`` read, plus ``data/`` and ``adapt.json``.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from workbench.config import Config, TrainConfig, load_config, to_dict
from workbench.data.coco import CocoDetection
from workbench.data.coco_json import load_coco_json
from workbench.data.dataset import DatasetError, DetectionDataset
from workbench.inputs import InputError
from workbench.run_folder import run_files
from workbench.safe_paths import move_aside, write_atomic

HELD_OUT = 0.2  # the held-out share of a json or folder without its own splits
MIN_BOX_PX = 16  # the median box's shorter side, in model input pixels, below which we upsize
MAX_MIN_SIZE = 512
PROBE_STEPS = 3
REPLAN_MIN_STEPS = 4  # fewer steps are too few to time: the plan stands
# The share of the time left that a re-plan fills: the pace it measured already counts the
# checkpoints, so this is for the noise of a pace.
MARGIN = 0.97
LR = 1e-4
PROTOCOLS = ("interactive", "cross_image")


@dataclass(frozen=True)
class AdaptData:
    """The jsons and image folders an adapt run trains and evaluates on."""

    description: str
    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path


@dataclass(frozen=True)
class Plan:
    """What ``adapt`` will do, chosen from the data, the base model and a measured step."""

    objective: str
    minutes: float
    train_images: int
    held_out_images: int
    categories: list[str]
    min_size: int
    max_size: int
    median_box_px: float  # the median box's shorter side at min_size / max_size
    batch_size: int
    lr: float
    warmup_steps: int
    lr_drop_epochs: list[int]
    steps: int
    epochs: int
    seconds_per_step: float
    setup_seconds: float  # the measuring steps and model loading, taken from the budget
    train_minutes: float  # the hard limit on training itself (train.max_minutes)
    hflip_prob: float
    crop_prob: float
    frozen_backbone_blocks: int  # the backbone's first blocks that keep the base's weights
    # The warm-up steps after which the rest is first re-planned (None: ``--steps`` fixed the
    # count, or the warm-up is under REPLAN_MIN_STEPS steps).
    replan_after: int | None = None

    def lines(self, base: str) -> list[str]:
        drop = f", x0.1 from epoch {self.lr_drop_epochs[0]}" if self.lr_drop_epochs else ", no drop"
        return [
            f"plan ({self.objective}, {self.minutes:g} min on this machine, from {base}):",
            f"  data: {self.train_images} training images, {self.held_out_images} held out; "
            f"{len(self.categories)} class{'' if len(self.categories) == 1 else 'es'}: "
            f"{', '.join(self.categories)}",
            f"  resolution {self.min_size}/{self.max_size} px: the median box is "
            f"{self.median_box_px:.0f} px on its shorter side there (raised when under "
            f"{MIN_BOX_PX} px)",
            f"  batch {self.batch_size}, lr {self.lr:g} (backbone x0.1), warm-up "
            f"{self.warmup_steps} steps{drop}",
            f"  augmentation: horizontal flips {self.hflip_prob:g}, crops {self.crop_prob:g}",
            *(
                [f"  backbone: its first {self.frozen_backbone_blocks} blocks frozen"]
                if self.frozen_backbone_blocks
                else []
            ),
            *(
                ["  GRQO: its KL reference is the base model, frozen"]
                if self.objective == "grqo"
                else []
            ),
            f"  measured {self.seconds_per_step:.2f} s per step ({PROBE_STEPS} steps, "
            f"{self.setup_seconds:.0f} s with loading) -> {self.steps} steps "
            f"({self.epochs} epochs) in the {self.train_minutes:.1f} min left"
            + (
                f", re-planned from the pace after the {self.replan_after} warm-up steps and "
                "again halfway"
                if self.replan_after
                else ""
            )
            + "; training stops at the budget in any case",
        ]


# --- data -------------------------------------------------------------------------------------


def prepare_data(data: str, folder: Path, *, images: int | None = None, seed: int = 0) -> AdaptData:
    """Training and held-out jsons for DATA (see the module docstring) under ``folder``."""
    from workbench.data.split import split_coco

    folder.mkdir(parents=True, exist_ok=True)
    path = Path(data)
    if path.is_dir():
        written = _convert_folder(path, folder / "converted")
        if {"train", "val"} <= written.keys():
            train, val = Path(written["train"]), Path(written["val"])
            description = f"{data} (its own train and val splits)"
        else:
            parts = split_coco(
                written["annotations"], folder, val=HELD_OUT, test=0.0, seed=seed, overwrite=True
            )
            train, val = Path(parts["train"]), Path(parts["val"])
            description = f"{data} (split {1 - HELD_OUT:.0%}/{HELD_OUT:.0%}, seed {seed})"
        found = AdaptData(description, train, train.parent, val, val.parent)
    elif path.is_file():
        parts = split_coco(path, folder, val=HELD_OUT, test=0.0, seed=seed, overwrite=True)
        train, val = Path(parts["train"]), Path(parts["val"])
        description = f"{data} (split {1 - HELD_OUT:.0%}/{HELD_OUT:.0%}, seed {seed})"
        found = AdaptData(description, train, folder, val, folder)
    else:
        found = _named(data)
    if images is not None:
        found = _sample(found, folder, images, seed)
    return found


def _named(name: str) -> AdaptData:
    from workbench.data.sources import get_source, locate

    try:
        get_source(name)
    except DatasetError as err:
        raise InputError(
            f"adapt: {name!r} is no file or folder, and {err}; give a COCO json, a VOC or "
            "YOLO folder, or a named dataset"
        ) from err
    train, val = locate(name, "train"), locate(name, "val")
    return AdaptData(
        f"{name} (its train split; its val split held out)",
        train.json_path,
        train.image_root,
        val.json_path,
        val.image_root,
    )


def _convert_folder(path: Path, out: Path) -> dict[str, Any]:
    """A VOC folder (any XML below it) or else a YOLO one, converted into ``out``."""
    from workbench.data.user_folders import files_below
    from workbench.data.voc import convert_voc
    from workbench.data.yolo import convert_yolo

    convert = convert_voc if files_below(path, ".xml", depth=3) else convert_yolo
    return dict(convert(path, out, link_images=True, overwrite=True))


def _sample(found: AdaptData, folder: Path, images: int, seed: int) -> AdaptData:
    """The first ``images`` of a seeded shuffle of the training json's images."""
    data = load_coco_json(found.train_json)
    if images > len(data["images"]):
        raise InputError(
            f"--images {images}: the training split has {len(data['images'])} images; ask for "
            "at most that many"
        )
    order = sorted(data["images"], key=lambda im: str(im["id"]))
    random.Random(seed).shuffle(order)
    keep = {im["id"] for im in order[:images]}
    subset = {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a.get("image_id") in keep],
    }
    path = write_atomic(folder / f"train_{images}_images.json", json.dumps(subset))
    return replace(
        found,
        description=f"{found.description}; {images} training images (seed {seed})",
        train_json=path,
    )


# --- the plan ---------------------------------------------------------------------------------


def base_config(base: str) -> Config:
    """The base model's run config (its sizes, losses, GRQO settings), or the defaults."""
    from workbench.model.build import read_run_config

    return read_run_config(base) or load_config()


def median_box_px(train: DetectionDataset, min_size: int, max_size: int) -> float:
    """The median box's shorter side after the image is resized to ``min_size``/``max_size``."""
    sides = []
    for item in train.instances():
        if item.iscrowd:
            continue
        info = train.image_info(item.image_index)
        h, w = info["height"], info["width"]
        scale = min(min_size / min(h, w), max_size / max(h, w))
        x0, y0, x1, y1 = item.box_xyxy
        sides.append(min(x1 - x0, y1 - y0) * scale)
    if not sides:
        raise DatasetError("the training split has no boxes: annotate some objects first")
    return statistics.median(sides)


def adapt_config(
    base: str,
    data: AdaptData,
    out: Path,
    *,
    objective: str,
    seed: int,
    train_images: int,
    min_size: int,
    max_size: int,
    frozen_blocks: int = 0,
) -> Config:
    """The base's run config, pointed at the user's data with the fine-tune recipe."""
    cfg = base_config(base)
    batch = min(8, train_images)
    return replace(
        cfg,
        data=replace(
            cfg.data,
            name="coco_json",
            val_name=None,
            train_json=str(data.train_json),
            train_images=str(data.train_images),
            val_json=str(data.val_json),
            val_images=str(data.val_images),
            train_split="train",
            val_split="val",
            min_size=min_size,
            max_size=max_size,
            train_scales=(),
            hflip_prob=0.5,
            crop_prob=0.3,
            num_workers=0,
        ),
        eval=replace(cfg.eval, protocols=PROTOCOLS, pool_split="train", max_images=None),
        model=replace(cfg.model, init_from=str(base)),
        # GRQO's KL pulls towards the base itself, not a per-epoch copy (an epoch of a few
        # images is a step or two, which would make the reference the model of a step ago).
        grqo=replace(cfg.grqo, reference_policy="frozen"),
        train=replace(
            cfg.train,
            objective=objective,
            batch_size=batch,
            grad_accum=1,
            lr=LR,
            backbone_lr_mult=0.1,
            warmup_factor=0.1,
            lr_drop_factor=0.1,
            seed=seed,
            out_dir=str(out),
            eval_every_epochs=0,
            keep_checkpoints=1,
            amp="off",
            frozen_backbone_blocks=frozen_blocks,
        ),
    )


def resolution(base_cfg: Config, train: DetectionDataset) -> tuple[int, int, float]:
    """The base's shorter side, with a longer-side cap that lets the data's median image reach
    it (a base trained on square images would otherwise shrink wide photos further), scaled up
    (multiples of 32, at most 512) until the median box is ``MIN_BOX_PX`` on its shorter side."""
    min_size = base_cfg.data.min_size
    infos = [train.image_info(i) for i in range(len(train))]
    aspect = statistics.median(
        max(i["height"], i["width"]) / min(i["height"], i["width"]) for i in infos
    )
    max_size = max(base_cfg.data.max_size, math.ceil(min_size * aspect))
    box = median_box_px(train, min_size, max_size)
    if box < MIN_BOX_PX and min_size < MAX_MIN_SIZE:
        wanted = min(MAX_MIN_SIZE, 32 * math.ceil(min_size * MIN_BOX_PX / box / 32))
        max_size = round(max_size * wanted / min_size)
        min_size = wanted
        box = median_box_px(train, min_size, max_size)
    return min_size, max_size, box


def measure_step(cfg: Config) -> tuple[float, float]:
    """Seconds per optimizer step (the median of steps after the first) and seconds in all, of
    ``PROBE_STEPS`` steps of ``cfg`` in a temporary folder."""
    from workbench.experiment import train

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="workbench-adapt-probe-") as tmp:
        probe = replace(
            cfg,
            train=replace(
                cfg.train,
                out_dir=tmp,
                epochs=PROBE_STEPS,
                max_steps=PROBE_STEPS,
                max_minutes=None,
                log_every=1,
                checkpoint_every=0,
                warmup_steps=0,
                lr_drop_epochs=(),
            ),
        )
        train(probe, progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").open()]
    times = [r["step_time"] for r in rows if "step_time" in r and r["step"] >= 1]
    return statistics.median(times), time.monotonic() - started


def make_plan(
    cfg: Config,
    *,
    minutes: float,
    held_out: int,
    categories: list[str],
    box_px: float,
    train_images: int,
    seconds_per_step: float,
    setup_seconds: float,
    steps: int | None = None,
) -> tuple[Plan, Config]:
    """The steps that fit what is left of ``minutes`` after setup (or exactly ``steps``, which
    the budget still stops), and the schedule over them."""
    left = minutes * 60 - setup_seconds
    if left < 2 * seconds_per_step:
        raise InputError(
            f"--minutes {minutes:g} leaves {max(left, 0):.0f} s after {setup_seconds:.0f} s of "
            f"loading and measuring, under two steps of {seconds_per_step:.1f} s: give more "
            "minutes"
        )
    fixed = steps is not None
    if steps is None:
        steps = max(2, int(0.95 * left / seconds_per_step))  # 5 %: checkpoints, the last save
    warmup = max(1, steps // 10)
    cfg = replace(cfg, train=schedule(cfg.train, steps, train_images, warmup, left))
    plan = Plan(
        objective=cfg.train.objective,
        minutes=minutes,
        train_images=train_images,
        held_out_images=held_out,
        categories=categories,
        min_size=cfg.data.min_size,
        max_size=cfg.data.max_size,
        median_box_px=box_px,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        warmup_steps=warmup,
        lr_drop_epochs=list(cfg.train.lr_drop_epochs),
        steps=steps,
        epochs=cfg.train.epochs,
        seconds_per_step=seconds_per_step,
        setup_seconds=setup_seconds,
        train_minutes=left / 60,
        hflip_prob=cfg.data.hflip_prob,
        crop_prob=cfg.data.crop_prob,
        frozen_backbone_blocks=cfg.train.frozen_backbone_blocks,
        replan_after=None if fixed or warmup < REPLAN_MIN_STEPS else warmup,
    )
    return plan, cfg


def schedule(
    train: TrainConfig, steps: int, images: int, warmup: int, seconds: float, trained: int = 0
) -> TrainConfig:
    """``train`` set to ``steps`` steps within ``seconds`` on ``images`` training images:
    a warm-up over ``warmup`` steps, x0.1 from the epoch at 80 % of the steps (never one that
    starts before step ``trained``, whose learning rates are spent), a log line every 5 % of the
    steps (at most every 10) and a checkpoint every 20 %."""
    from workbench.data.loader import steps_per_epoch

    per_epoch = steps_per_epoch(images, train.batch_size)
    epochs = math.ceil(steps / per_epoch)
    drop = max(round(0.8 * steps / per_epoch), math.ceil(trained / per_epoch))
    return replace(
        train,
        max_steps=steps,
        epochs=epochs,
        warmup_steps=warmup,
        lr_drop_epochs=(drop,) if 1 <= drop < epochs else (),
        max_minutes=seconds / 60,
        log_every=max(1, min(10, steps // 20)),
        checkpoint_every=max(10, steps // 5),
    )


def logged_pace(run: Path, start: int, end: int, batch_size: int) -> tuple[float, float]:
    """Wall-clock seconds per step that ``run``'s metrics log for steps ``start`` to ``end - 1``,
    from one log line to the next, so what a step's own timer leaves out counts too (loading its
    batch, a checkpoint, GRQO's gradient measurement every ``grqo.grad_norm_every`` steps), and
    the seconds in all. The first line after ``start`` also times starting the data: it counts
    in all, and in the pace only when it is the only line."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if start <= r.get("step", -1) < end]
    previous = [start - 1] + [r["step"] for r in rows[:-1]]
    steps = [r["step"] - before for r, before in zip(rows, previous, strict=True)]
    seconds = [n * batch_size / r["samples_per_s"] for n, r in zip(steps, rows, strict=True)]
    timed = (seconds[1:], steps[1:]) if len(rows) > 1 else (seconds, steps)
    return sum(timed[0]) / sum(timed[1]), sum(seconds)


def replan(
    cfg: Config,
    *,
    trained: int,
    images: int,
    pace: float,
    left: float,
    starting: float,
    last: bool,
) -> tuple[Config, dict[str, Any]]:
    """``cfg`` after ``trained`` steps with ``left`` seconds of training to go: the steps that fit
    at ``pace`` seconds a step, less ``starting`` seconds for each start of training still to
    come (building the model, the last save: the rest's, and unless ``last`` the next
    re-plan's, halfway through the rest). The warm-up is kept, the drop moves."""
    starts = 1 if last else 2
    steps = trained + max(0, int(MARGIN * (left - starts * starting) / pace))
    train = schedule(cfg.train, steps, images, cfg.train.warmup_steps, left, trained=trained)
    half = (trained + steps) // 2
    record = {
        "after_steps": trained,
        "seconds_per_step": pace,
        "steps": steps,
        "epochs": train.epochs,
        "lr_drop_epochs": list(train.lr_drop_epochs),
        "train_minutes": left / 60,
        "next_at": None if last or half - trained < REPLAN_MIN_STEPS else half,
    }
    return replace(cfg, train=train), record


# --- evaluation -------------------------------------------------------------------------------


def ap_of(checkpoint: str | Path, cfg: Config, split: str | None = None) -> dict[str, dict]:
    """``{protocol: {"AP": .., "AP50": ..}}`` of a checkpoint on ``cfg``'s evaluation data, at
    ``cfg``'s sizes."""
    from workbench.experiment import open_evaluation_data, run_evaluation
    from workbench.predictor import Predictor

    evaluated, pool = open_evaluation_data(cfg, split)
    predictor = Predictor.from_checkpoint(
        checkpoint, min_size=cfg.data.min_size, max_size=cfg.data.max_size
    )
    results = run_evaluation(predictor, cfg, evaluated, pool)
    return {p: {"AP": r.AP, "AP50": r.AP50, "images": r.num_images} for p, r in results.items()}


def _ap_line(label: str, scores: dict[str, dict]) -> str:
    parts = [f"{p}: AP {s['AP']:.3f} AP50 {s['AP50']:.3f}" for p, s in scores.items()]
    return f"  {label}: " + "  |  ".join(parts)


# --- the command ------------------------------------------------------------------------------


def adapt(
    data: str,
    base: str,
    out: str | Path,
    *,
    objective: str = "sft",
    minutes: float = 10.0,
    images: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    frozen_blocks: int = 0,
    forgetting: bool = False,
    forgetting_images: int = 100,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    say=print,
) -> dict[str, Any]:
    """Adapt ``base`` to ``data`` in ``minutes``; returns (and writes to ``OUT/adapt.json``) the
    plan, AP before and after, and with ``forgetting`` AP on the base's own validation data."""

    if not minutes > 0 or not math.isfinite(minutes):
        raise InputError(f"--minutes {minutes}: give a number of minutes > 0")
    if steps is not None and steps < 1:
        raise InputError(f"--steps {steps}: give a number of steps >= 1")
    if images is not None and images < 1:
        raise InputError(f"--images {images}: give a number of training images >= 1")
    if objective not in ("sft", "grqo"):
        raise InputError(f"--objective {objective!r}: choose sft or grqo")
    if frozen_blocks < 0:
        raise InputError(f"--frozen-blocks {frozen_blocks}: give a number of blocks >= 0")
    out = Path(out)
    record_path = out / "adapt.json"
    if resume:
        return _resume(out, base, forgetting, forgetting_images, progress, say)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(
                f"--out {out} is not empty; --resume continues an adapt run there, --overwrite "
                f"moves it to {out.name}.old-N (nothing is deleted), or choose another --out"
            )
        say(f"moved what was in {out} to {move_aside(out)}")
    base_cfg = base_config(base)
    found = prepare_data(data, out / "data", images=images, seed=seed)
    train_set = CocoDetection(found.train_json, found.train_images)
    held_out = CocoDetection(found.val_json, found.val_images)
    min_size, max_size, box_px = resolution(base_cfg, train_set)
    cfg = adapt_config(
        base,
        found,
        out,
        objective=objective,
        seed=seed,
        train_images=len(train_set),
        min_size=min_size,
        max_size=max_size,
        frozen_blocks=frozen_blocks,
    )
    say(f"adapting {base} to {found.description}; measuring {PROBE_STEPS} steps ...")
    seconds_per_step, setup = measure_step(cfg)
    categories = [c.name for c in sorted(train_set.categories, key=lambda c: c.label)]
    plan, cfg = make_plan(
        cfg,
        minutes=minutes,
        held_out=len(held_out),
        categories=categories,
        box_px=box_px,
        train_images=len(train_set),
        seconds_per_step=seconds_per_step,
        setup_seconds=setup,
        steps=steps,
    )
    for line in plan.lines(base):
        say(line)
    record: dict[str, Any] = {
        "data": found.description,
        "base": str(base),
        "plan": asdict(plan),
        "config": to_dict(cfg),
    }
    write_atomic(record_path, json.dumps(record, indent=2))
    started = time.monotonic()
    record["before"] = ap_of(base, cfg)
    say(_ap_line("before (the base, held-out split)", record["before"]))
    record["eval_seconds"] = time.monotonic() - started
    write_atomic(record_path, json.dumps(record, indent=2))
    return _train_and_score(out, cfg, record, forgetting, forgetting_images, progress, say)


def _resume(out: Path, base: str, forgetting, forgetting_images, progress, say) -> dict:
    record_path = out / "adapt.json"
    if not record_path.is_file() or not run_files(out):
        raise InputError(
            f"--resume: {out} holds no adapt run to continue (no adapt.json and run); drop "
            "--resume to start one"
        )
    record = json.loads(record_path.read_text())
    if record["base"] != str(base):
        raise InputError(
            f"--resume: {out} adapts {record['base']}, not {base}; pass --from {record['base']}"
        )
    cfg = load_config(None, (), base=_config_from(record["config"]))
    say(f"resuming the adapt run in {out} ({record['data']})")
    if "before" not in record:
        record["before"] = ap_of(base, cfg)
        say(_ap_line("before (the base, held-out split)", record["before"]))
    return _train_and_score(
        out, cfg, record, forgetting, forgetting_images, progress, say, resume=True
    )


def _config_from(tree: dict) -> Config:
    from workbench.config import config_from_record

    cfg = config_from_record(tree)
    assert cfg is not None  # adapt.json always records a full config
    return cfg


def _train_and_score(
    out: Path,
    cfg: Config,
    record: dict,
    forgetting: bool,
    forgetting_images: int,
    progress: bool,
    say,
    resume: bool = False,
) -> dict[str, Any]:
    record_path = out / "adapt.json"
    started = time.monotonic()
    cfg, summary = _train_replanning(out, cfg, record, resume, progress, say)
    record["train"] = {
        "steps": summary["global_step"],
        "planned_steps": cfg.train.max_steps,
        "stopped_by_time_limit": summary["stopped_by_time_limit"],
        "seconds": time.monotonic() - started,
        "checkpoint": summary["checkpoint"],
    }
    ended = "at the time limit" if summary["stopped_by_time_limit"] else "as planned"
    say(
        f"trained {summary['global_step']} of {cfg.train.max_steps} steps in "
        f"{record['train']['seconds'] / 60:.1f} min ({ended})"
    )
    started = time.monotonic()
    record["after"] = ap_of(out, cfg)
    say(_ap_line("after (the adapted model, held-out split)", record["after"]))
    record["eval_seconds"] = record.get("eval_seconds", 0.0) + time.monotonic() - started
    if forgetting:
        record["forgetting"] = _forgetting(record["base"], out, forgetting_images, say)
    write_atomic(record_path, json.dumps(record, indent=2))
    say(f"wrote {record_path}; the adapted model is the run folder {out}")
    return record


def _train_replanning(
    out: Path, cfg: Config, record: dict, resume: bool, progress: bool, say
) -> tuple[Config, dict]:
    """Train ``cfg``: a new run with a re-plan point (the warm-up's end) trains up to it, fits
    the rest to what is left of the budget at the pace measured since the last point, and does
    so once more halfway through the rest (each re-plan is kept in adapt.json's ``replans``,
    the config with it). A resumed run trains to its last plan. Returns the config trained and
    the training summary."""
    from workbench.experiment import train

    budget, started = 60 * record["plan"]["train_minutes"], time.monotonic()
    point = None if resume else record["plan"].get("replan_after")
    mark, starting = 0, 0.0
    while point:
        begun = time.monotonic()
        log_every = 1 if mark == 0 else cfg.train.log_every  # a short warm-up: log each step
        stage = replace(cfg, train=replace(cfg.train, max_steps=point, log_every=log_every))
        summary = train(stage, resume=mark > 0, allow_changes=mark > 0, progress=progress)
        if summary["stopped_by_time_limit"]:
            return cfg, summary
        pace, stepping = logged_pace(out, mark, point, cfg.train.batch_size)
        starting = max(starting, time.monotonic() - begun - stepping)
        cfg, done = replan(
            cfg,
            trained=point,
            images=record["plan"]["train_images"],
            pace=pace,
            left=budget - (time.monotonic() - started),
            starting=starting,
            last=mark > 0,
        )
        record.setdefault("replans", []).append(done)
        record["config"] = to_dict(cfg)
        write_atomic(out / "adapt.json", json.dumps(record, indent=2))
        say(_replan_line(done))
        mark, point = point, done["next_at"]
    # After a re-plan the last checkpoint may be an earlier stage's, saved with its schedule.
    changed = bool(record.get("replans"))
    summary = train(cfg, resume=resume or mark > 0, allow_changes=changed, progress=progress)
    return cfg, summary


def _replan_line(done: dict) -> str:
    drop = f", x0.1 from epoch {done['lr_drop_epochs'][0]}" if done["lr_drop_epochs"] else ""
    again = f"; again at step {done['next_at']}" if done["next_at"] else ""
    return (
        f"re-planned at step {done['after_steps']}: {done['seconds_per_step']:.2f} s per step "
        f"-> {done['steps']} steps ({done['epochs']} epochs{drop}) in the "
        f"{done['train_minutes']:.1f} min left{again}"
    )


def _forgetting(base: str, adapted: Path, images: int, say) -> dict[str, Any]:
    """AP of the base and the adapted model on the first ``images`` of the base's validation
    data, at the base's sizes: how much of its own domain the fine-tune kept."""
    from workbench.model.build import read_run_config

    cfg = read_run_config(base)
    if cfg is None:
        say("  forgetting: the base records no run config, so no data of its own to score")
        return {"skipped": "the base records no run config"}
    cfg = replace(cfg, eval=replace(cfg.eval, max_images=images))
    result = {"data": cfg.data.val_name or cfg.data.name, "images": images}
    result["before"] = ap_of(base, cfg)
    result["after"] = ap_of(adapted, cfg)
    say(_ap_line(f"base domain ({result['data']}), the base", result["before"]))
    say(_ap_line(f"base domain ({result['data']}), adapted", result["after"]))
    return result
