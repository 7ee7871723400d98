"""``adapt``: a user's labelled folder -> a plan that fits the budget -> a fine-tuned run folder
scored before and after on held-out images."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from testing_constants import QUICK_SHAPES, TINY
from testing_constants import cli_in_process as cli

from workbench.adapt import (
    MIN_BOX_PX,
    adapt,
    adapt_config,
    base_config,
    logged_pace,
    make_plan,
    prepare_data,
    replan,
    resolution,
    schedule,
)
from workbench.config import load_config
from workbench.data.coco import CocoDetection
from workbench.inputs import InputError
from workbench.optim import lr_factor
from workbench.predictor import Predictor
from workbench.run_folder import RunFolderError

REPO = Path(__file__).resolve().parents[1]
SFT = REPO / "models" / "sft"


def labelimg_folder(bccd_voc: Path, root: Path, count: int) -> Path:
    """The first ``count`` BCCD images as LabelImg leaves them: ``images/`` + ``annotations/``."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for xml in sorted((bccd_voc / "Annotations").glob("*.xml"))[:count]:
        shutil.copy(bccd_voc / "JPEGImages" / f"{xml.stem}.jpg", root / "images")
        shutil.copy(xml, root / "annotations")
    return root


def test_a_labelimg_folder_becomes_a_seeded_80_20_split_and_a_sample(tmp_path, bccd_voc):
    folder = labelimg_folder(bccd_voc, tmp_path / "cells", 20)
    found = prepare_data(str(folder), tmp_path / "a" / "data", seed=3)
    train, held = CocoDetection(found.train_json), CocoDetection(found.val_json)
    assert (len(train), len(held)) == (16, 4)
    names = {train.image_info(i)["file_name"] for i in range(len(train))}
    assert not names & {held.image_info(i)["file_name"] for i in range(len(held))}
    again = prepare_data(str(folder), tmp_path / "b" / "data", seed=3)
    assert (
        json.loads(again.val_json.read_text())["images"]
        == json.loads(found.val_json.read_text())["images"]
    )
    sample = prepare_data(str(folder), tmp_path / "c" / "data", images=5, seed=3)
    sampled = CocoDetection(sample.train_json, sample.train_images)
    assert len(sampled) == 5 and len(CocoDetection(sample.val_json)) == 4
    assert {sampled.image_info(i)["file_name"] for i in range(5)} <= names
    with pytest.raises(InputError, match="--images 17: the training split has 16 images"):
        prepare_data(str(folder), tmp_path / "d" / "data", images=17)
    with pytest.raises(InputError, match=r"'no-such-set' is no file or folder.*COCO json"):
        prepare_data("no-such-set", tmp_path / "e" / "data")


def test_small_objects_raise_the_resolution_until_the_median_box_is_16_px(tmp_path, bccd_voc):
    found = prepare_data(str(labelimg_folder(bccd_voc, tmp_path / "cells", 10)), tmp_path / "d")
    train = CocoDetection(found.train_json)
    base = base_config(str(SFT))
    min_size, max_size, box = resolution(base, train)
    assert (min_size, max_size) == (base.data.min_size, base.data.max_size) and box > MIN_BOX_PX
    # The same photos with every box shrunk to a tenth around its centre.
    data = json.loads(found.train_json.read_text())
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x + 0.45 * w, y + 0.45 * h, w / 10, h / 10]
    small = tmp_path / "d" / "small.json"
    small.write_text(json.dumps(data))
    min_size, max_size, box = resolution(base, CocoDetection(small, found.train_images))
    assert min_size > base.data.min_size and min_size % 32 == 0 and min_size <= 512
    assert box >= MIN_BOX_PX or min_size == 512
    assert max_size / min_size == pytest.approx(base.data.max_size / base.data.min_size, 0.01)


def sixteen_photos(bccd_voc: Path, tmp_path: Path, objective: str, frozen_blocks: int = 0):
    """The adapt config of models/sft on 16 of 20 BCCD photos in a LabelImg folder, 256 px."""
    found = prepare_data(str(labelimg_folder(bccd_voc, tmp_path / "cells", 20)), tmp_path / "d")
    return adapt_config(
        str(SFT),
        found,
        tmp_path / "run",
        objective=objective,
        seed=0,
        train_images=16,
        min_size=256,
        max_size=342,
        frozen_blocks=frozen_blocks,
    )


def test_the_plan_fits_the_steps_to_the_budget_and_drops_the_lr_for_the_last_fifth(
    tmp_path, bccd_voc
):
    cfg = sixteen_photos(bccd_voc, tmp_path, "grqo")
    assert cfg.train.batch_size == 8 and cfg.grqo.reference_policy == "frozen"
    common = dict(held_out=4, categories=["RBC"], box_px=40.0, train_images=16)
    plan, planned = make_plan(cfg, minutes=10, seconds_per_step=3.0, setup_seconds=60.0, **common)
    # 540 s left, 95 % of it at 3 s a step; 2 steps an epoch; the drop at 80 % of the steps.
    assert plan.steps == int(0.95 * 540 / 3.0) == planned.train.max_steps
    assert planned.train.max_minutes == pytest.approx(9.0)
    assert plan.epochs == -(-plan.steps // 2) and plan.lr_drop_epochs == [round(0.8 * 171 / 2)]
    assert planned.train.warmup_steps == plan.steps // 10 == plan.replan_after
    text = "\n".join(plan.lines("models/sft"))
    assert "171 steps" in text and "KL reference is the base model" in text
    assert "re-planned from the pace after the 17 warm-up steps and again halfway" in text
    fixed, limited = make_plan(
        cfg, minutes=10, seconds_per_step=3.0, setup_seconds=60.0, steps=7, **common
    )
    assert fixed.steps == limited.train.max_steps == 7 and limited.train.max_minutes == 9.0
    assert fixed.replan_after is None  # --steps is a count to keep
    with pytest.raises(InputError, match="--minutes 1 leaves 0 s after 70 s"):
        make_plan(cfg, minutes=1, seconds_per_step=3.0, setup_seconds=70.0, **common)


def test_frozen_backbone_blocks_reach_the_config_and_the_printed_plan(tmp_path, bccd_voc):
    cfg = sixteen_photos(bccd_voc, tmp_path, "sft", frozen_blocks=4)
    common = dict(held_out=4, categories=["RBC"], box_px=40.0, train_images=16)
    plan, planned = make_plan(cfg, minutes=10, seconds_per_step=3.0, setup_seconds=60.0, **common)
    assert planned.train.frozen_backbone_blocks == plan.frozen_backbone_blocks == 4
    assert "backbone: its first 4 blocks frozen" in "\n".join(plan.lines("models/sft"))
    with pytest.raises(InputError, match="--frozen-blocks -1: give a number of blocks >= 0"):
        adapt("bccd", str(SFT), tmp_path / "never", frozen_blocks=-1)
    assert not (tmp_path / "never").exists()


def test_after_the_warm_up_the_rest_is_replanned_from_its_pace(tmp_path, bccd_voc):
    cfg = sixteen_photos(bccd_voc, tmp_path, "sft")
    common = dict(held_out=4, categories=["RBC"], box_px=40.0, train_images=16)
    plan, planned = make_plan(cfg, minutes=10, seconds_per_step=3.0, setup_seconds=60.0, **common)
    assert (plan.steps, plan.replan_after) == (171, 17)
    # The 17 warm-up steps ran at 2 s a step; a start of training costs 3 s (the rest's, and
    # the next re-plan's, halfway through the rest); 500 s are left.
    faster, first = replan(
        planned, trained=17, images=16, pace=2.0, left=500.0, starting=3.0, last=False
    )
    assert first["steps"] == 17 + int(0.97 * (500 - 2 * 3) / 2.0) == 256
    assert first["next_at"] == (17 + 256) // 2 == 136
    train = faster.train
    assert (train.max_steps, train.warmup_steps, train.epochs) == (256, 17, 128)
    assert train.max_minutes == pytest.approx(500 / 60) and train.lr_drop_epochs == (102,)
    # The steps taken keep their learning rates; the drop moved with the step count.
    assert all(lr_factor(s, train, 2) == lr_factor(s, planned.train, 2) for s in range(17))
    assert planned.train.lr_drop_epochs == (68,) and lr_factor(140, train, 2) == 1.0
    # Halfway, a faster pace buys more steps, and the plan is final.
    final, second = replan(
        faster, trained=136, images=16, pace=1.8, left=260.0, starting=3.0, last=True
    )
    assert second["steps"] == 136 + int(0.97 * 257 / 1.8) == 274 and second["next_at"] is None
    assert final.train.warmup_steps == 17 and final.train.lr_drop_epochs == (110,)
    assert all(lr_factor(s, final.train, 2) == lr_factor(s, train, 2) for s in range(136))
    # Far slower than the probe: 3 steps are left, too few to re-plan again halfway, and the
    # drop cannot move into the warm-up's epochs (round(0.8 * 20 / 2) = 8 starts at step 16):
    # it waits for epoch 9, at step 18.
    slower, record = replan(
        planned, trained=17, images=16, pace=2.0, left=6.4, starting=0.0, last=False
    )
    assert record["steps"] == slower.train.max_steps == 20 and record["next_at"] is None
    assert slower.train.lr_drop_epochs == (9,)
    assert all(lr_factor(s, slower.train, 2) == lr_factor(s, planned.train, 2) for s in range(17))


def test_a_re_planned_run_trains_what_its_final_plan_would_have_from_the_start(tmp_path):
    """Warm-up, re-plan, then the rest resumed under the new schedule: the same weights, bit for
    bit, as one run planned that way from the start (the tiny detector on 16 shapes images)."""
    from workbench.experiment import train
    from workbench.model.build import from_pretrained

    cfg = load_config(
        TINY, [*QUICK_SHAPES, "train.eval_every_epochs=0", f"train.out_dir={tmp_path / 'split'}"]
    )
    # 12 steps of 4 images (4 an epoch), a warm-up of 6 steps, the drop at epoch 2 (step 8).
    planned = replace(cfg, train=schedule(cfg.train, 12, 16, 6, 600.0))
    assert planned.train.lr_drop_epochs == (2,)
    train(replace(planned, train=replace(planned.train, max_steps=6, log_every=1)), progress=False)
    pace, seconds = logged_pace(tmp_path / "split", 0, 6, 4)
    assert 0 < 5 * pace < seconds  # the first step also started the data
    # At 1 s a step, 16.9 s left buy 16 more steps: 22 in all, the drop moved to epoch 4.
    final, _ = replan(planned, trained=6, images=16, pace=1.0, left=16.9, starting=0.0, last=True)
    final = replace(final, train=replace(final.train, max_minutes=None))  # steps decide here
    assert (final.train.max_steps, final.train.lr_drop_epochs) == (22, (4,))
    with pytest.raises(RunFolderError, match="lr_drop_epochs"):  # why adapt allows the change
        train(final, resume=True, progress=False)
    train(final, resume=True, allow_changes=True, progress=False)
    straight = replace(final, train=replace(final.train, out_dir=str(tmp_path / "straight")))
    train(straight, progress=False)

    def lrs(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["lr"] for r in rows}

    split, one = lrs(tmp_path / "split"), lrs(tmp_path / "straight")
    assert max(split) == max(one) == 21 and all(split[s] == one[s] for s in split.keys() & one)
    a = from_pretrained(tmp_path / "split").state_dict()
    b = from_pretrained(tmp_path / "straight").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, bccd_voc):
    """One real adapt run of models/sft on 20 BCCD photos in a LabelImg folder, 2 minutes."""
    root = tmp_path_factory.mktemp("adapt")
    folder = labelimg_folder(bccd_voc, root / "cells", 20)
    return folder, root / "run"


@pytest.mark.slow
def test_adapt_trains_within_its_budget_and_scores_before_and_after(adapted, capsys):
    folder, out = adapted
    status, printed, err = cli(
        capsys, "adapt", folder, "--from", SFT, "--minutes", "2", "--out", out, "--no-progress"
    )
    assert status == 0, err
    assert "plan (sft, 2 min on this machine" in printed and "measured" in printed
    record = json.loads((out / "adapt.json").read_text())
    plan, trained = record["plan"], record["train"]
    assert (plan["train_images"], plan["held_out_images"]) == (16, 4)
    # A warm-up of 4 steps or more re-plans the rest from the pace the run logs.
    replans = record.get("replans", [])
    final = replans[-1] if replans else plan
    assert ("re-planned at step" in printed) == bool(plan["replan_after"]) == bool(replans)
    # After the warm-up, then where each re-plan said the next would be, the last saying none.
    points = [r["after_steps"] for r in replans]
    if replans:
        assert points == [plan["replan_after"], *[r["next_at"] for r in replans[:-1]]]
    assert not replans or replans[-1]["next_at"] is None
    assert 1 <= trained["steps"] <= final["steps"] == trained["planned_steps"]
    # Either every planned step ran or the time limit stopped it: never more than planned.
    assert trained["stopped_by_time_limit"] or trained["steps"] == final["steps"]
    # Every warm-up step was logged, with the learning rates of the schedule it started with.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in rows if r["step"] < (plan["replan_after"] or 0)]
    assert [r["step"] for r in warm] == list(range(plan["replan_after"] or 0))
    assert all(
        r["lr"] == pytest.approx(plan["lr"] * (0.1 + 0.9 * r["step"] / plan["warmup_steps"]))
        for r in warm
    )
    for when in ("before", "after"):
        assert set(record[when]) == {"interactive", "cross_image"}
        for scores in record[when].values():
            assert 0 <= scores["AP"] <= scores["AP50"] <= 1 and scores["images"] == 4
    # The run folder is an ordinary one: the predictor loads it at the planned sizes.
    predictor = Predictor.from_checkpoint(out)
    assert predictor.min_size == plan["min_size"]
    # Its weights moved away from the base's.
    base = Predictor.from_checkpoint(SFT)
    moved = [
        (a - b.to(a.dtype)).abs().max().item()
        for (name, a), b in zip(
            predictor.model.state_dict().items(), base.model.state_dict().values(), strict=True
        )
        if a.is_floating_point() and "prompt" in name
    ]
    assert max(moved) > 0


@pytest.mark.slow
def test_an_adapt_folder_is_never_overwritten_and_resume_checks_the_base(adapted, capsys, tmp_path):
    folder, out = adapted
    before = sorted(p.name for p in out.iterdir())
    status, _, err = cli(capsys, "adapt", folder, "--from", SFT, "--out", out)
    assert status == 2 and "is not empty; --resume continues" in err
    assert sorted(p.name for p in out.iterdir()) == before
    status, _, err = cli(
        capsys, "adapt", folder, "--from", REPO / "models" / "grqo", "--out", out, "--resume"
    )
    assert status == 2 and "pass --from" in err
    status, _, err = cli(
        capsys, "adapt", folder, "--from", SFT, "--out", tmp_path / "x", "--resume"
    )
    assert status == 2 and "holds no adapt run" in err
