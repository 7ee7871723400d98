"""The measurements behind notebook 04's GRQO-versus-SFT comparison."""

import copy
import math

import pytest
import torch

from workbench.config import DataConfig, GRQOConfig, LossConfig, TrainConfig
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.data.transforms import train_transforms
from workbench.grqo_probes import (
    GRADIENT_METRICS,
    final_lr,
    fixed_batches,
    gradient_shares,
    measure_gradient_shares,
    probe,
    run_schedule,
)
from workbench.model.build import build_detector
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective


def test_final_lr_counts_the_drops_the_run_reached():
    assert final_lr(TrainConfig(epochs=6, lr=2e-4, lr_drop_epochs=(5,))) == pytest.approx(2e-5)
    assert final_lr(TrainConfig(epochs=6, lr=2e-4, lr_drop_epochs=(6,))) == 2e-4  # never reached
    two = TrainConfig(epochs=4, lr=1e-3, lr_drop_epochs=(1, 3), lr_drop_factor=0.5)
    assert final_lr(two) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="max_steps"):
        final_lr(TrainConfig(max_steps=10))


def test_run_schedule_counts_epochs_and_reference_copies():
    short = run_schedule(256, 2, 20)
    assert short == {"steps_per_epoch": 128, "epochs": 20 / 128, "reference_copies": 1}
    assert run_schedule(2000, 8, 1250)["epochs"] == 5
    assert run_schedule(2000, 8, 1250)["reference_copies"] == 5
    assert run_schedule(2000, 8, 251)["reference_copies"] == 2  # one step into the second epoch
    with pytest.raises(ValueError, match="batch of 8"):
        run_schedule(4, 8, 1)


def test_gradient_shares_average_what_was_logged():
    records = [
        {"step": 0, "grad_norm_sft": 6.0, "grad_norm_adv": 0.01, "grad_norm_kl": 0.09},
        {"step": 1, "grad_norm_sft": None},  # a step that measured nothing
        {"step": 5, "grad_norm_sft": 2.0, "grad_norm_adv": 0.03, "grad_norm_kl": 0.07},
    ]
    for record in (records[0], records[2]):
        record["grad_norm_grqo"] = 0.1
    shares = gradient_shares(records)
    assert set(GRADIENT_METRICS) <= set(shares)
    assert shares["grad_norm_sft"] == 4.0
    assert shares["sft_over_grqo"] == pytest.approx(40.0)
    assert shares["kl_share"] == pytest.approx(0.8)
    assert math.isnan(gradient_shares([{"step": 0, "loss": 1.0}])["kl_share"])


def test_fixed_batches_are_the_same_at_every_call_despite_random_flips():
    data_cfg = DataConfig(hflip_prob=0.5, min_size=64, max_size=64)
    shapes = ShapesConfig(image_size=64, object_size=(10, 30))
    data = ShapesDataset(8, seed=1, cfg=shapes, transforms=train_transforms(data_cfg))
    first, second = (fixed_batches(data, 2, 3, seed=5) for _ in range(2))
    assert len(first) == 3 and all(len(b) == 2 for b in first)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.prompts.boxes_cxcywh, b.prompts.boxes_cxcywh)
    flips = [fixed_batches(data, 2, 1, seed=s)[0].images for s in range(6)]
    assert any(not torch.equal(flips[0], other) for other in flips[1:])  # flips do happen


def test_probe_is_zero_kl_against_itself_and_grows_with_drift():
    data = ShapesDataset(2, seed=2, cfg=ShapesConfig(image_size=64, object_size=(10, 30)))
    batches = fixed_batches(data, 2, 1, seed=0)
    torch.manual_seed(0)
    model = build_detector("tiny")
    same = probe(model, model, batches, LossConfig())
    layers = model.config.decoder_layers
    assert set(same) == {"kl_mean", *(f"reward_mean_{i}" for i in range(layers))}
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-7)
    assert all(math.isfinite(v) for v in same.values())
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert probe(moved, model, batches, LossConfig())["kl_mean"] > 1e-4


def test_measured_gradient_shares_average_the_objectives_own_and_change_nothing():
    data = ShapesDataset(4, seed=3, cfg=ShapesConfig(image_size=64, object_size=(10, 30)))
    batches = fixed_batches(data, 2, 2, seed=0)
    torch.manual_seed(0)
    model = build_detector("tiny").train()
    objective = GRQOObjective(LossConfig(), GRQOConfig(alpha=1.0, grad_norm_every=1))
    objective.on_epoch_start(model, 0)
    info = StepInfo(step=7, epoch=0, total_steps=8)
    before = copy.deepcopy(model.state_dict())
    shares = measure_gradient_shares(model, objective, batches, info, seed=4)
    each = []
    for batch in batches:
        torch.manual_seed(4)
        each.append(objective(model, batch, info).metrics)
    assert set(shares) >= {"grad_norm_sft", "grad_norm_adv", "grad_share_adv", "grad_cos_kl_sft"}
    for key, value in shares.items():
        assert value == pytest.approx(sum(m[key] for m in each) / 2, rel=1e-6), key
    assert shares["grad_norm_adv"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    quiet = GRQOObjective(LossConfig(), GRQOConfig(grad_norm_every=0))
    with pytest.raises(ValueError, match="grad_norm_every=1"):
        measure_gradient_shares(model, quiet, batches, info)
