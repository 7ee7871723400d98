"""The trainer: exact resume, DDP = gradient accumulation, non-finite guard, AMP, schedule.

A tiny stand-in detector and objective run on real Batches of the shapes dataset. This file is
also the script the 2-process torchrun test launches (see ``__main__`` at the bottom).
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from workbench.checkpoint import CheckpointError
from workbench.config import ConfigError, DataConfig, TrainConfig
from workbench.data.dataset import DatasetError
from workbench.data.prompts import assign_targets
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.data.transforms import train_transforms
from workbench.objectives.base import ObjectiveOutput
from workbench.run_folder import RunFolderError
from workbench.trainer import NonFiniteLossError, Trainer, lr_factor

SHAPES = ShapesConfig(
    image_size=64,
    object_size=(8, 24),
    objects_per_image=(2, 5),
    distractors_per_image=(0, 1),
    supersample=1,
)


def shapes(num_images: int = 24) -> ShapesDataset:
    aug = train_transforms(DataConfig(min_size=40, max_size=64, crop_prob=0.5))
    return ShapesDataset(num_images, seed=0, cfg=SHAPES, transforms=aug)


class TinyDetector(nn.Module):
    """Pooled conv features of each image, shifted by the mean prompt-box embedding, -> Q boxes."""

    def __init__(self, queries: int = 2, width: int = 8):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 8, stride=8), nn.ReLU())
        self.norm = nn.LayerNorm(width)
        self.prompt = nn.Linear(4, width)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(width, 4 * queries)
        self.queries, self.out_dtypes = queries, set()

    def forward(self, images, pixel_mask, prompts):
        features = self.backbone(images).mean((2, 3))
        prompt = self.prompt(prompts.boxes_cxcywh).mean(0)
        out = self.head(self.dropout(self.norm(features) + prompt))
        self.out_dtypes.add(out.dtype)
        return out.float().sigmoid().view(len(images), self.queries, 4)


class CrashError(Exception):
    pass


class ReferenceL1:
    """L1 from query 0 to each image's box of the first prompt it answers, plus a pull towards
    a copy of the weights taken at every epoch start (the shape of GRQO's reference model)."""

    def __init__(self, nan_steps=(), crash_at: int | None = None):
        self.nan_steps, self.crash_at = set(nan_steps), crash_at
        self.reference, self.starts, self.snapshots, self.boxes = None, 0, {}, {}

    def on_epoch_start(self, model, epoch):
        self.reference = [p.detach().clone() for p in model.parameters()]
        self.starts += 1

    def state_dict(self):
        return {"reference": self.reference, "starts": self.starts}

    def load_state_dict(self, state):
        self.reference, self.starts = state["reference"], state["starts"]

    def __call__(self, model, batch, info):
        if info.step == self.crash_at:
            raise CrashError(f"crash at step {info.step}")
        if info.micro_batch == 0:
            self.snapshots[info.step] = [p.detach().clone() for p in model.parameters()]
        boxes = model(batch.images, batch.pixel_mask, batch.prompts)
        targets = assign_targets(batch.targets, batch.prompts.labels)
        goal = torch.stack([t.boxes_cxcywh[t.labels.argmin()] for t in targets])
        # Images weighted by their box count, over the step's boxes per micro-batch (like SFT).
        counts = torch.tensor([float(len(t)) for t in batch.targets])
        l1 = ((boxes[:, 0] - goal).abs().mean(-1) * counts).sum() / info.num_boxes
        self.boxes[info.step, info.micro_batch] = (float(counts.sum()), info.num_boxes)
        pull = sum(
            ((p - r) ** 2).sum() for p, r in zip(model.parameters(), self.reference, strict=True)
        )
        loss = l1 + 0.1 * pull
        if info.step in self.nan_steps:
            loss = loss * float("nan")
        return ObjectiveOutput(
            loss, {"l1": float(l1.detach()), "prompts": batch.prompts.num_prompts}
        )


def config(**changes) -> TrainConfig:
    base = dict(
        batch_size=4,
        grad_accum=2,
        lr=0.02,
        epochs=2,
        warmup_steps=2,
        seed=7,
        clip_grad_norm=1.0,
        log_every=1,
        checkpoint_every=3,
        device="cpu",
    )
    return TrainConfig(**(base | changes))


def trainer(run_dir, cfg, objective=None, **kwargs) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        TinyDetector(),
        objective or ReferenceL1(),
        shapes(),
        cfg,
        run_dir=run_dir,
        model_config={"queries": 2},
        **kwargs,
    )


def rows(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weight_sum(model, epoch):
    return {"weight_sum": sum(float(p.detach().sum()) for p in model.parameters())}


@pytest.mark.parametrize(
    ("how", "at"),
    [("crash", 5), ("crash", 7), ("stop", 4)],
    ids=["crash_mid_epoch", "crash_after_epoch_end", "stop_at_max_steps"],
)
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, how, at):
    # 24 images / 4 per step = 6 steps per epoch, 12 in all; checkpoints after steps 3, 6, 9, 12
    # (and after the last step of a run stopped by max_steps).
    full = trainer(tmp_path / "full", config(), eval_fn=weight_sum)
    full.fit()
    if how == "crash":
        with pytest.raises(CrashError):
            cut = trainer(tmp_path / "cut", config(), ReferenceL1(crash_at=at), eval_fn=weight_sum)
            cut.fit()
    else:
        trainer(tmp_path / "cut", config(max_steps=at), eval_fn=weight_sum).fit()
    objective = ReferenceL1()
    resumed = trainer(tmp_path / "cut", config(), objective, eval_fn=weight_sum, resume=True)
    summary = resumed.fit()
    assert summary["global_step"] == 12
    for a, b in zip(full.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(a, b)
    # on_epoch_start ran once per epoch in all: not again mid-epoch, not skipped at epoch 1.
    assert objective.starts == full.objective.starts == 2
    cut, uncut = rows(tmp_path / "cut"), rows(tmp_path / "full")
    assert [r["step"] for r in cut if "loss" in r] == list(range(12))  # no duplicates
    assert [r.get("loss") for r in cut] == [r.get("loss") for r in uncut]
    assert [r.get("eval/weight_sum") for r in cut] == [r.get("eval/weight_sum") for r in uncut]


def test_a_time_limit_stops_after_the_step_that_passes_it_with_a_checkpoint(tmp_path):
    # A limit of a microsecond has passed by the end of the first step: one step, then saved.
    summary = trainer(tmp_path / "limited", config(max_minutes=1e-8)).fit()
    assert summary["global_step"] == 1 and summary["stopped_by_time_limit"]
    assert summary["checkpoint"] is not None and Path(summary["checkpoint"]).name.endswith("1")
    # The run resumes from there, under a new invocation's limit (none: to the planned end).
    resumed = trainer(tmp_path / "limited", config(), resume=True)
    summary = resumed.fit()
    assert summary["global_step"] == resumed.total_steps > 1
    assert not summary["stopped_by_time_limit"]
    with pytest.raises(ConfigError, match=r"train\.max_minutes"):
        config(max_minutes=0)


def test_resuming_with_another_global_batch_is_refused(tmp_path):
    trainer(tmp_path, config(max_steps=3)).fit()
    other = trainer(tmp_path, config(batch_size=2, grad_accum=1), resume=True)
    with pytest.raises(RunFolderError, match=r"train\.batch_size: 4 -> 2; train\.grad_accum"):
        other.fit()
    allowed = trainer(tmp_path, config(batch_size=2, grad_accum=1), resume=True, allow_changes=True)
    with pytest.raises(CheckpointError, match="global_batch=4, this run has 2"):
        allowed.fit()


def test_a_changed_lr_on_resume_is_refused_unless_allowed_then_the_optimizer_uses_it(tmp_path):
    trainer(tmp_path, config(max_steps=3)).fit()
    changed = config(lr=0.05, weight_decay=0.3)
    with pytest.raises(RunFolderError, match=r"train\.lr: 0\.02 -> 0\.05; train\.weight_decay"):
        trainer(tmp_path, changed, resume=True).fit()
    run = trainer(tmp_path, changed, resume=True, allow_changes=True)
    assert run.resume()
    groups = {g["name"]: g for g in run.optimizer.param_groups}
    # step 3 is past the 2 warm-up steps: the full new lr, the backbone at its 0.1 ratio
    assert groups["main"]["lr"] == pytest.approx(0.05)
    assert groups["backbone"]["lr"] == pytest.approx(0.005)
    assert groups["main"]["weight_decay"] == 0.3 and groups["main_no_decay"]["weight_decay"] == 0
    assert run.optimizer.state  # Adam's moments came back from the checkpoint
    run.fit()
    lrs = sorted({g["lr"] for g in run.optimizer.param_groups})
    assert lrs == pytest.approx([0.005, 0.05])
    logged = [r["lr"] for r in rows(tmp_path) if "loss" in r]
    assert logged[3:] == pytest.approx([0.05] * (len(logged) - 3))


def test_an_unchanged_resume_continues_and_run_length_may_change(tmp_path):
    trainer(tmp_path, config(max_steps=3)).fit()
    run = trainer(tmp_path, config(max_steps=5, log_every=2), resume=True)
    assert run.fit()["global_step"] == 5


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    trainer(tmp_path, config(max_steps=2)).fit()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    log = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a run.*--resume.*--overwrite"):
        trainer(tmp_path, config(max_steps=1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert (tmp_path / "metrics.jsonl").read_bytes() == log


def test_resume_of_a_start_cut_before_its_first_checkpoint_starts_over(tmp_path):
    tmp_path.joinpath("metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    trainer(tmp_path, config(max_steps=2), resume=True).fit()
    assert [r["step"] for r in rows(tmp_path)] == [0, 1]  # one history, not two


def test_a_diverging_matching_cost_ends_in_the_nonfinite_guard(tmp_path):
    class Diverging(ReferenceL1):
        def __call__(self, model, batch, info):
            if info.step >= 1:
                raise FloatingPointError("the matching cost of image 0 holds NaN or inf")
            return super().__call__(model, batch, info)

    run = trainer(tmp_path, config(max_nonfinite_streak=3), Diverging())
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps \(1\.\.3.*train\.lr"):
        run.fit()
    assert [r["skipped"] for r in rows(tmp_path)] == [False, True, True]


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
    ],
    ids=["oserror", "safetensors"],
)
def test_a_full_disk_during_a_checkpoint_is_one_clear_error(tmp_path, monkeypatch, failure):
    import workbench.checkpoint as ckpt

    run = trainer(tmp_path, config(max_steps=6))
    real, calls = ckpt.save_model, []

    def save_model(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the second checkpoint (after step 6) hits a full disk
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_model", save_model)
    with pytest.raises(
        CheckpointError,
        match=r"after step 6 could not be written.*No space left"
        r".*step_000000003, is intact.*--resume",
    ):
        run.fit()
    assert ckpt.find_latest(tmp_path).name == "step_000000003"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_training_set_without_a_usable_box_is_refused(tmp_path):
    from workbench.data.coco import CocoDetection

    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 1}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    empty = CocoDetection(data, tmp_path)
    with pytest.raises(DatasetError, match="has no usable box"):
        Trainer(TinyDetector(), ReferenceL1(), empty, config(), run_dir=tmp_path, model_config={})


def test_a_dataset_smaller_than_one_batch_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=r"fewer than one global batch.*train\.batch_size=4"):
        Trainer(
            TinyDetector(), ReferenceL1(), shapes(3), config(), run_dir=tmp_path, model_config={}
        )


def test_nonfinite_steps_are_skipped_and_counted_and_a_streak_stops_the_run(tmp_path):
    objective = ReferenceL1(nan_steps={2, 3})
    run = trainer(tmp_path / "a", config(max_steps=5), objective)
    assert run.fit()["nonfinite_steps"] == 2
    logged = rows(tmp_path / "a")
    assert [r["skipped"] for r in logged] == [False, False, True, True, False]
    assert [r["nonfinite_steps"] for r in logged] == [0, 0, 1, 2, 2]
    assert logged[2]["loss"] is None and logged[4]["loss"] is not None
    before_2, before_4 = objective.snapshots[2], objective.snapshots[4]
    assert all(torch.equal(a, b) for a, b in zip(before_2, before_4, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(objective.snapshots[1], before_2, strict=True))
    assert {int(s["step"]) for s in run.optimizer.state.values()} == {3}  # Adam steps applied

    streak = trainer(tmp_path / "b", config(max_nonfinite_streak=3), ReferenceL1(range(1, 99)))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps \(1\.\.3"):
        streak.fit()


def test_bf16_autocast_runs_on_cpu_and_trains(tmp_path):
    run = trainer(tmp_path, config(amp="bf16", max_steps=2))
    before = [p.detach().clone() for p in run.module.parameters()]
    summary = run.fit()
    assert run.module.out_dtypes == {torch.bfloat16}
    assert math.isfinite(summary["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, run.module.parameters(), strict=True))


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"fp16 needs a CUDA device.*bf16"):
        trainer(tmp_path, config(amp="fp16"))


def test_schedule_parameter_groups_and_logged_fields(tmp_path):
    cfg = TrainConfig(warmup_steps=4, warmup_factor=0.1, lr_drop_epochs=(2, 3), lr_drop_factor=0.5)
    factors = [lr_factor(s, cfg, steps_in_epoch=5) for s in (0, 2, 4, 9, 10, 14, 15)]
    assert factors == pytest.approx([0.1, 0.55, 1.0, 1.0, 0.5, 0.5, 0.25])

    cfg = config(
        lr=0.01,
        backbone_lr_mult=0.1,
        weight_decay=0.05,
        warmup_steps=3,
        lr_drop_epochs=(1,),
        checkpoint_every=0,
    )
    run = trainer(tmp_path, cfg, eval_fn=weight_sum)
    names = {n: p for n, p in run.module.named_parameters()}
    groups = {g["name"]: g for g in run.optimizer.param_groups}
    assert groups["backbone"]["params"] == [names["backbone.0.weight"]]
    assert groups["backbone_no_decay"]["params"] == [names["backbone.0.bias"]]
    assert groups["main"]["params"] == [names["prompt.weight"], names["head.weight"]]
    assert {g["weight_decay"] for n, g in groups.items() if "no_decay" in n} == {0.0}
    assert groups["main"]["weight_decay"] == 0.05
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * 0.1 * 0.1)  # warm-up starts at 0.1
    run.fit()
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * 0.1 * 0.1)  # after the drop
    assert groups["main_no_decay"]["lr"] == pytest.approx(0.01 * 0.1)
    logged = rows(tmp_path)
    train = [r for r in logged if "loss" in r]
    assert [r["lr"] for r in train[:4]] == pytest.approx([0.001, 0.004, 0.007, 0.01])
    assert train[6]["lr"] == pytest.approx(0.001)
    assert {
        "step",
        "epoch",
        "lr",
        "loss",
        "l1",
        "prompts",
        "grad_norm",
        "step_time",
        "samples_per_s",
        "nonfinite_steps",
    } <= set(train[0])
    assert [(r["step"], r["epoch"]) for r in logged if "eval/weight_sum" in r] == [(5, 0), (11, 1)]
    boxes = run.objective.boxes  # (step, micro-batch) -> (its boxes, StepInfo.num_boxes)
    for step in range(12):
        (n0, norm0), (n1, norm1) = boxes[step, 0], boxes[step, 1]
        assert norm0 == norm1 == (n0 + n1) / 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
        "step_000000006",
        "step_000000012",
    ]


# --- two processes under torchrun = one process accumulating two micro-batches ----------------

DDP_STEPS = 4


def _ddp_run(out_dir: str) -> None:
    """Run by torchrun: 2 processes x 2 images; rank 0 saves the final parameters."""
    cfg = config(batch_size=2, grad_accum=1, max_steps=DDP_STEPS, checkpoint_every=0)
    run = trainer(out_dir, cfg)
    run.fit()
    if int(os.environ["RANK"]) == 0:
        params = {n: p.detach().contiguous() for n, p in run.module.named_parameters()}
        save_file(params, str(Path(out_dir) / "final.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_process_with_gradient_accumulation(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        __file__,
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the torchrun workers: the same float operations
    try:
        single = trainer(
            tmp_path / "one",
            config(batch_size=4, grad_accum=2, max_steps=DDP_STEPS, checkpoint_every=0),
        )
        single.fit()
    finally:
        torch.set_num_threads(threads)
    ddp = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    for name, param in single.module.named_parameters():
        assert torch.equal(param.detach(), ddp[name]), name
    losses = [(r["step"], r["loss"], r["l1"]) for r in rows(tmp_path / "ddp")]
    assert losses == [(r["step"], r["loss"], r["l1"]) for r in rows(tmp_path / "one")]
    assert len(losses) == DDP_STEPS


if __name__ == "__main__":
    _ddp_run(sys.argv[1])


def test_settings_added_to_the_code_since_a_checkpoint_do_not_block_its_resume():
    from workbench.run_folder import config_changes

    saved = {"train": {"lr": 0.02}, "grqo": {"alpha": 0.01}}
    current = {"train": {"lr": 0.02, "new_option": 3}, "grqo": {"alpha": 0.01}}
    assert config_changes(saved, current) == []
    assert config_changes(saved, {**current, "grqo": {"alpha": 1.0}}) == ["grqo.alpha: 0.01 -> 1.0"]
