"""One training loop for every objective: the objective turns (model, batch) into a loss.

A step consumes ``batch_size`` images per process in ``grad_accum`` micro-batches. Micro-batch
``m`` of rank ``r`` is global micro-batch ``g = r * grad_accum + m``, and everything random about
it is a function of ``(seed, step, g)``: its images (data/loader.py), its prompts
(``default_rng([seed, step, g])``) and torch's generator during its forward pass (dropout).
Each micro-batch loss is scaled by ``1 / grad_accum`` before backward and DDP averages gradients
over the W ranks, so every process applies ``(1 / (W * A)) * sum_g grad(loss_g)``: one process
with ``grad_accum = W`` computes the update of W processes with ``grad_accum = 1``. Objectives
that sum over boxes divide by ``StepInfo.num_boxes``, the step's box count over all W * A
micro-batches divided by W * A; the step's gradient is then the sum over its boxes divided by
their number, whatever the layout.

A resumed run restores weights, optimizer, schedule, RNG states, objective state and the data
position, so it ends with the same parameters as an uninterrupted run; it refuses settings that
differ from the checkpoint's unless ``allow_changes``, which puts the new learning rates and
weight decays into the restored optimizer (:mod:`workbench.run_folder`). A new run refuses a
folder that already holds checkpoints or a metrics log. A step whose loss or gradient norm is not
finite (or whose matching cost is: a diverging model) applies no update but still consumes its
data and advances the schedule and the step count.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import workbench.checkpoint as ckpt
from workbench.config import ConfigError, TrainConfig, to_dict
from workbench.data.dataset import DatasetError, DetectionDataset
from workbench.data.loader import SEED_FORWARD, derive_seed, make_loader, steps_per_epoch
from workbench.data.prompts import sample_training_prompts
from workbench.objectives.base import Objective, StepInfo, objective_hooks
from workbench.optim import default_param_groups, lr_factor, setup_distributed
from workbench.run_folder import check_changes, prepare
from workbench.training_state import restore_training_state, training_state, truncate_jsonl


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss or gradient norm."""


_TRAINER_FILES = ("checkpoints", "metrics.jsonl")  # what a new run would replace or append to
# A resumed run must cut the data into the same steps and micro-batches.
_SAME_ON_RESUME = ("global_batch", "micro_batch", "steps_per_epoch")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _require_boxes(dataset: DetectionDataset) -> None:
    """Refuse a training set without one usable (non-crowd) box: it would train at loss 0.
    Reads targets only, and stops at the first image with a box."""
    for index in range(len(dataset)):
        target = dataset.target(index)
        if len(target) and not bool(target.iscrowd.all()):
            return
    name = getattr(dataset, "source", type(dataset).__name__)
    raise DatasetError(
        f"the training set {name} ({len(dataset)} images) has no usable box (none left after "
        "repairs, or all crowd); check its annotations, data.min_box_size and the train json"
    )


class Trainer:
    """Trains ``model`` with ``objective`` on ``train_dataset`` (a DetectionDataset).

    Args:
        run_dir: metrics.jsonl, checkpoints/ and tensorboard/ go here (rank 0 writes).
        model_config: JSON-able architecture config, saved with every checkpoint.
        param_groups_fn: ``(model, cfg) -> AdamW param groups``; default:
            :func:`workbench.optim.default_param_groups`.
        eval_fn: ``(model, epoch) -> {name: float}``, on rank 0 every ``eval_every_epochs``.
        full_config: the resolved experiment config saved with checkpoints (default: ``cfg``).
        resume: True: continue from the latest checkpoint in run_dir if any; a path: from it.
            Without it, a run_dir holding checkpoints or metrics.jsonl is refused.
        allow_changes: resume even if ``full_config`` differs from the checkpoint's (other than
            in the settings :data:`workbench.run_folder.MAY_CHANGE_ON_RESUME`), applying it.
        num_workers: DataLoader workers (the data is the same for any number).
        find_unused_parameters: passed to DDP; only for models with unused parameters.
        progress: draw the tqdm progress bar (off in notebooks, whose stderr it would fill).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_dataset: DetectionDataset,
        cfg: TrainConfig,
        *,
        run_dir: str | Path,
        model_config: dict,
        param_groups_fn=None,
        eval_fn=None,
        full_config: dict | None = None,
        resume: bool | str | Path = False,
        num_workers: int = 0,
        find_unused_parameters: bool = False,
        allow_changes: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg, self.objective, self.eval_fn = cfg, objective, eval_fn
        self.progress = progress
        self.param_groups_fn = param_groups_fn or default_param_groups
        self.allow_changes = allow_changes
        _require_boxes(train_dataset)
        self.dataset = train_dataset
        self.run_dir, self.resume_from, self.num_workers = Path(run_dir), resume, num_workers
        # Before joining the process group, so no process has written anything yet.
        prepare(self.run_dir, resume=bool(resume), overwrite=False, files=_TRAINER_FILES)
        self.model_config, self.full_config = model_config, full_config or {"train": to_dict(cfg)}
        self.dist = setup_distributed(cfg.device)
        self.device, world = self.dist.device, self.dist.world_size
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                f"train.amp=fp16 needs a CUDA device (float16 autocast with a GradScaler); the "
                f"device is {self.device}: use train.amp=bf16 or train.amp=off on CPU"
            )
        self.module = self.model = model.to(self.device)
        if cfg.frozen_backbone_blocks:
            freeze = getattr(self.module, "freeze_backbone_blocks", None)
            if freeze is None:
                raise ConfigError(
                    f"train.frozen_backbone_blocks={cfg.frozen_backbone_blocks}: "
                    f"{type(self.module).__name__} has no backbone blocks to freeze; set it to 0"
                )
            freeze(cfg.frozen_backbone_blocks)
        groups = self.param_groups_fn(self.module, cfg)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(
                self.module, device_ids=ids, find_unused_parameters=find_unused_parameters
            )
        self.steps_per_epoch = spe = steps_per_epoch(len(train_dataset), cfg.batch_size, world)
        self.total_steps = min(cfg.epochs * spe, cfg.max_steps or math.inf)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, cfg, spe)
        )
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.hooks = objective_hooks(objective)
        cats = sorted(getattr(train_dataset, "categories", []), key=lambda c: c.label)
        self.names = [c.name for c in cats] or None
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.nonfinite_total = self.nonfinite_streak = 0
        # Metrics of the steps since the last metrics.jsonl line, for the keys a step measured
        # that the logged step did not (e.g. GRQO's gradient shares, measured every N steps).
        self.unlogged: dict[str, list] = {}
        self.saved_step, self.last_checkpoint, self.last_record, self.last_eval = -1, None, {}, {}

    # --- the loop ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train for ``epochs`` (or up to ``max_steps``, or until ``max_minutes`` have passed);
        returns a summary of the run."""
        resumed = False
        if self.resume_from:
            resumed = self.resume(None if self.resume_from is True else self.resume_from)
        if self.resume_from and not resumed and self.dist.rank == 0:
            truncate_jsonl(self.run_dir / "metrics.jsonl", 0)  # a start cut before step 1
        self.module.train()
        self._open_logs()
        minutes = self.cfg.max_minutes
        self.deadline = math.inf if minutes is None else time.monotonic() + 60 * minutes
        self.out_of_time = False
        try:
            while self.global_step < self.total_steps:
                self._run_epoch()
            if self.saved_step != self.global_step:
                self._save()
            if self.dist.world_size > 1:
                dist.barrier()  # every rank's last collective has finished
        finally:
            self._close_logs()
            if self.dist.owns_group:
                self._end_group()
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "loss": self.last_record.get("loss"),
            "nonfinite_steps": self.nonfinite_total,
            "checkpoint": self.last_checkpoint,
            "eval": self.last_eval,
            "stopped_by_time_limit": self.out_of_time,
        }

    def _end_group(self) -> None:
        """Drop the DistributedDataParallel wrapper while the process group lives, then end the
        group. Freed the other way round, the wrapper's Reducer holds the group's last reference
        and frees it while holding the GIL, joining gloo's threads, one of which may be waiting
        for the GIL to release a tensor: the process then hangs at exit (seen with torch 2.13)."""
        self.model = self.module
        gc.collect()
        dist.destroy_process_group()

    def _run_epoch(self) -> None:
        epoch, start = self.epoch, self.step_in_epoch
        if start == 0 and "on_epoch_start" in self.hooks:  # mid-epoch: state came from checkpoint
            self.hooks["on_epoch_start"](self.module, epoch)
        rank, world = self.dist.rank, self.dist.world_size
        for micro_batches in make_loader(
            self.dataset, self.cfg, epoch, start, rank, world, self.num_workers
        ):
            self._train_step(micro_batches)
            if self.global_step >= self.total_steps:
                break
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch, self.step_in_epoch = epoch + 1, 0
            every = self.cfg.checkpoint_every
            # Saved at every epoch end, except in epochs shorter than checkpoint_every (a few
            # images: a step or two each), where it waits for checkpoint_every steps or an eval.
            long_epochs = every <= 0 or self.steps_per_epoch >= every
            passed = self.global_step - self.saved_step >= every
            if self._evaluate(epoch) or long_epochs or passed:
                self._save()

    def _train_step(self, micro_batches: list) -> None:
        step, started, accum = self.global_step, time.perf_counter(), len(micro_batches)
        # Loss normaliser (StepInfo.num_boxes): non-crowd boxes per micro-batch over the step.
        boxes = sum(int((~t.iscrowd).sum()) for b in micro_batches for t in b.targets)
        num_boxes = max(self._sum_over_ranks(boxes) / (accum * self.dist.world_size), 1.0)
        sums: dict[str, list] = defaultdict(lambda: [0.0, 0])  # name -> [sum, count]
        for m, batch in enumerate(micro_batches):
            g = self.dist.rank * accum + m  # global micro-batch index
            info = StepInfo(step, self.epoch, self.total_steps, g, num_boxes)
            loss, metrics = self._micro_step(batch, info)
            for key, value in {**metrics, "loss": loss}.items():
                sums[key][0] += float(value)
                sums[key][1] += 1
        applied, grad_norm = self._update(sums["loss"][0], step)
        self.scheduler.step()
        self.global_step, self.step_in_epoch = step + 1, self.step_in_epoch + 1
        self.bar.update(1)
        if (step + 1) % max(1, self.cfg.log_every) == 0 or step + 1 == self.total_steps:
            sums = self.unlogged | sums  # a metric measured in between keeps its latest value
            self.unlogged = {}
            self._log(step, sums, grad_norm, applied, time.perf_counter() - started)
        else:
            self.unlogged |= sums
        every, epoch_end = self.cfg.checkpoint_every, self.step_in_epoch == self.steps_per_epoch
        if every > 0 and self.global_step % every == 0 and not epoch_end:  # epoch end saves too
            self._save()
        if self.global_step < self.total_steps and self._past_deadline():
            self.total_steps, self.out_of_time = self.global_step, True  # fit() saves and stops

    def _past_deadline(self) -> bool:
        """``train.max_minutes`` has passed; every rank follows rank 0's clock."""
        if self.deadline == math.inf:
            return False
        late = time.monotonic() > self.deadline
        if self.dist.world_size > 1:
            flag = torch.tensor([float(late)], device=self.device)
            dist.broadcast(flag, 0)
            late = bool(flag.item())
        return late

    def _micro_step(self, batch, info: StepInfo) -> tuple[float, dict]:
        """Forward and backward of global micro-batch ``info.micro_batch`` (the same index
        under any process layout, so are its prompts and its dropout masks)."""
        step, g, accum = info.step, info.micro_batch, self.cfg.grad_accum
        rng = np.random.default_rng([self.cfg.seed, step, g])
        batch.prompts = sample_training_prompts(batch.targets, rng, self.names)
        batch = batch.to(self.device)
        torch.manual_seed(derive_seed(SEED_FORWARD, self.cfg.seed, step, g))
        last = (g + 1) % accum == 0  # DDP all-reduces the gradients in the last backward only
        with self.model.no_sync() if self.dist.world_size > 1 and not last else nullcontext():
            try:
                with self._autocast():
                    out = self.objective(self.model, batch, info)
            except FloatingPointError as err:  # the matcher's cost is NaN/inf: diverging
                if self.dist.world_size > 1:  # the other processes cannot skip this step too
                    raise NonFiniteLossError(f"step {step}: {err}. Lower train.lr") from err
                return math.nan, {}
            if not out.loss.requires_grad:
                raise RuntimeError("the objective's loss has no gradient; was it detached?")
            loss = out.loss.float() / accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return float(out.loss.detach()), out.metrics

    def _sum_over_ranks(self, value: float) -> float:
        if self.dist.world_size == 1:
            return float(value)
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item())

    def _autocast(self):
        if self.cfg.amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _update(self, local_loss: float, step: int) -> tuple[bool, float]:
        """Clip and step, unless the loss (on any rank) or the gradient norm is not finite."""
        bad = self._sum_over_ranks(not math.isfinite(local_loss)) > 0
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip = self.cfg.clip_grad_norm
        norm = float(
            torch.nn.utils.clip_grad_norm_(params, clip)
            if clip > 0
            else torch.nn.utils.get_total_norm([p.grad for p in params])
        )
        bad = bad or (self.scaler is None and not math.isfinite(norm))  # fp16: the scaler's job
        if not bad:
            self.scaler.step(self.optimizer) if self.scaler else self.optimizer.step()
        if self.scaler:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_total += bad
        self.nonfinite_streak = self.nonfinite_streak + 1 if bad else 0
        if self.nonfinite_streak >= self.cfg.max_nonfinite_streak:
            raise NonFiniteLossError(
                f"the loss or gradient norm was NaN/inf at {self.nonfinite_streak} consecutive "
                f"steps ({step - self.nonfinite_streak + 1}..{step}; train.max_nonfinite_streak="
                f"{self.cfg.max_nonfinite_streak}); those steps applied no update. Lower train.lr, "
                "keep train.clip_grad_norm > 0, try train.amp=off, or check the data. Latest "
                f"checkpoint: {ckpt.find_latest(self.run_dir)}"
            )
        return not bad, norm

    def _evaluate(self, epoch: int) -> bool:
        """Evaluate at the end of ``epoch`` when ``eval_every_epochs`` says so; True if it did."""
        every = self.cfg.eval_every_epochs
        if self.eval_fn is None or every <= 0 or (epoch + 1) % every:
            return False
        if self.dist.rank == 0:
            self.module.eval()
            self.last_eval = {k: float(v) for k, v in self.eval_fn(self.module, epoch).items()}
            self.module.train()
            evals = {f"eval/{k}": _finite(v) for k, v in self.last_eval.items()}
            self._write({"step": self.global_step - 1, "epoch": epoch, **evals})
        if self.dist.world_size > 1:
            dist.barrier()
        return True

    # --- logs ----------------------------------------------------------------------------------

    def _open_logs(self) -> None:
        rank0, self.metrics_file, self.tb = self.dist.rank == 0, None, None
        if rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics_file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
            try:  # optional: tensorboard is not a dependency
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.global_step)
            except ImportError:
                pass
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            disable=not (rank0 and self.progress),
            desc="train",
            dynamic_ncols=True,
        )
        self.last_log_time, self.last_log_step = time.perf_counter(), self.global_step

    def _close_logs(self) -> None:
        for handle in (self.bar, self.metrics_file, self.tb):
            if handle is not None:
                handle.close()

    def _write(self, record: dict) -> None:
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        for key, value in record.items() if self.tb else ():
            if key not in ("step", "epoch") and isinstance(value, int | float):
                self.tb.add_scalar(key, value, record["step"])

    def _log(self, step: int, sums: dict, grad_norm: float, applied: bool, seconds: float) -> None:
        """One metrics.jsonl line for ``step``: means over the micro-batches of all ranks."""
        if self.dist.world_size > 1:
            parts: list = [None] * self.dist.world_size
            dist.all_gather_object(parts, dict(sums))
            sums = defaultdict(lambda: [0.0, 0])
            for part in parts:  # rank order: the same sums as one process accumulating them
                for key, (total, count) in part.items():
                    sums[key] = [sums[key][0] + total, sums[key][1] + count]
        now, images = time.perf_counter(), self.cfg.batch_size * self.dist.world_size
        record = {k: _finite(total / count) for k, (total, count) in sums.items()} | {
            "step": step,
            "epoch": self.epoch,
            "grad_norm": _finite(grad_norm),
            "lr": self.cfg.lr * lr_factor(step, self.cfg, self.steps_per_epoch),
            "skipped": not applied,
            "nonfinite_steps": self.nonfinite_total,
            "step_time": seconds,
            "samples_per_s": images
            * (self.global_step - self.last_log_step)
            / max(now - self.last_log_time, 1e-9),
        }
        self.last_log_time, self.last_log_step, self.last_record = now, self.global_step, record
        if self.dist.rank == 0:
            self._write(record)
            self.bar.set_postfix(loss=record["loss"], lr=f"{record['lr']:.2e}")

    # --- checkpoints ---------------------------------------------------------------------------

    def _position(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.cfg.batch_size * self.dist.world_size,
            "micro_batch": self.cfg.batch_size // self.cfg.grad_accum,
        }

    def _save(self) -> None:
        self.saved_step = self.global_step
        if self.dist.rank != 0:
            return
        state = training_state(
            self.optimizer,
            self.scheduler,
            self.scaler,
            position=self._position(),
            nonfinite={"total": self.nonfinite_total, "streak": self.nonfinite_streak},
        )
        objective_state = self.hooks["state_dict"]() if "state_dict" in self.hooks else None
        try:
            path = ckpt.save_run_checkpoint(
                self.run_dir,
                self.global_step,
                self.module,
                self.model_config,
                state,
                objective_state,
                full_config=self.full_config,
                keep=self.cfg.keep_checkpoints,
            )
        except (OSError, SafetensorError) as err:  # a full or failing disk
            reason = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
            latest = ckpt.find_latest(self.run_dir)
            kept = f"the previous one, {latest}, is intact" if latest else "none was written before"
            raise ckpt.CheckpointError(
                f"the checkpoint after step {self.global_step} could not be written to "
                f"{ckpt.checkpoint_path(self.run_dir, self.global_step)} ({reason}); {kept}. Free "
                "disk space or set train.out_dir to another disk, then run again with --resume"
            ) from err
        self.last_checkpoint = str(path)

    def _apply_hyperparameters(self, step: int) -> None:
        """Put this run's lr and weight decay into the restored optimizer's groups (which hold
        the checkpoint's) and the scheduler's base lrs, at the schedule's point ``step``."""
        fresh = self.param_groups_fn(self.module, self.cfg)
        factor = lr_factor(step, self.cfg, self.steps_per_epoch)
        for group, new in zip(self.optimizer.param_groups, fresh, strict=True):
            group["initial_lr"], group["weight_decay"] = new["lr"], new["weight_decay"]
            group["lr"] = new["lr"] * factor
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def resume(self, checkpoint: str | Path | None = None) -> bool:
        """Restore everything from ``checkpoint`` (default: the latest in run_dir). Returns
        False, changing nothing, when run_dir holds no checkpoint."""
        path = ckpt.find_latest(self.run_dir) if checkpoint is None else Path(checkpoint)
        if path is None:
            return False
        loaded = ckpt.load_checkpoint(path, self.module, device=self.device)
        state = loaded.trainer_state
        if state is None:
            raise ckpt.CheckpointError(f"{loaded.path} holds weights only; it cannot resume a run")
        changes = check_changes(
            loaded.full_config, self.full_config, loaded.path, allow=self.allow_changes
        )
        here = {k: self._position()[k] for k in _SAME_ON_RESUME}
        restore_training_state(
            state, loaded.path, self.optimizer, self.scheduler, self.scaler, expect=here
        )
        if changes:
            self._apply_hyperparameters(state["position"]["global_step"])
        pos = state["position"]
        if loaded.objective_state is not None and "load_state_dict" in self.hooks:
            self.hooks["load_state_dict"](loaded.objective_state)
        self.epoch, self.step_in_epoch = pos["epoch"], pos["step_in_epoch"]
        self.global_step = self.saved_step = pos["global_step"]
        counts = state["nonfinite"]
        self.nonfinite_total, self.nonfinite_streak = counts["total"], counts["streak"]
        self.last_checkpoint = str(loaded.path)
        if self.dist.rank == 0:
            truncate_jsonl(self.run_dir / "metrics.jsonl", self.global_step)
        return True
