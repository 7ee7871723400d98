"""``train.frozen_backbone_blocks``: the MobileNetV2's first blocks stop training and nothing else
changes; GRQO's reference continues from the policy's output of them with the same bits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workbench.config import ConfigError, DataConfig, GRQOConfig, LossConfig, TrainConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.data.transforms import train_transforms
from workbench.model.build import build_detector
from workbench.objectives import grqo as grqo_module
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective, shared_stem
from workbench.objectives.sft import SFTObjective, run_detector
from workbench.trainer import Trainer

SHAPES = ShapesConfig(image_size=64, object_size=(12, 28), objects_per_image=(2, 4), supersample=1)


def batch(seed: int = 3, size: int = 2):
    data = ShapesDataset(size, seed=seed, cfg=SHAPES)
    out = collate([data[i] for i in range(size)])
    out.prompts = sample_training_prompts(out.targets, np.random.default_rng(seed))
    return out


def small(blocks: int = 0):
    torch.manual_seed(0)
    model = build_detector("small", backbone_pretrained=False).train()
    model.freeze_backbone_blocks(blocks)
    return model


def blocks_of(model):
    return model.model.backbone.conv_encoder.features


def in_blocks(model, blocks: int) -> set[str]:
    """Names of the parameters in the backbone's first ``blocks`` blocks."""
    prefixes = tuple(f"model.backbone.conv_encoder.features.{i}." for i in range(blocks))
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


@pytest.mark.parametrize("blocks", [4, 7, 18])  # 7 and 18 hold taps (after blocks 6 and 17)
def test_frozen_blocks_change_which_weights_train_and_nothing_else(blocks):
    """The same features and loss, and the same gradient on every weight that still trains;
    the frozen blocks get none."""
    data = batch()
    plain, frozen = small(), small(blocks)
    grads, losses = {}, {}
    for name, model in (("plain", plain), ("frozen", frozen)):
        torch.manual_seed(1)  # the same denoising draws
        loss = SFTObjective(LossConfig())(model, data, StepInfo(0, 0, 1)).loss
        loss.backward()
        losses[name] = loss.detach()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    assert torch.equal(losses["plain"], losses["frozen"])
    frozen_names = in_blocks(frozen, blocks)
    assert frozen_names
    for name, grad in grads["frozen"].items():
        if name in frozen_names:
            assert grad is None, name
            assert not dict(frozen.named_parameters())[name].requires_grad
        else:
            assert grad is not None and torch.equal(grad, grads["plain"][name]), name


@pytest.mark.parametrize("blocks", [4, 7, 18])
def test_features_continued_from_a_stem_are_the_same_bits(blocks):
    model, data = small(blocks), batch()
    with torch.no_grad():
        own = model.extract_features(data.images, data.pixel_mask)
        reference = copy.deepcopy(model)
        again = reference.extract_features(data.images, data.pixel_mask, own.stem)
        plain = small().extract_features(data.images, data.pixel_mask)
    assert own.stem is not None and own.stem.blocks == blocks
    assert plain.stem is None
    for features in (again, plain):
        assert torch.equal(features.tokens, own.tokens)
        assert torch.equal(features.position, own.position)


def test_grqo_reference_continues_from_the_policy_stem_with_the_same_bits(monkeypatch):
    model, data = small(4), batch()
    cfg = GRQOConfig(reference_exemplars="shared", reference_mode="eval")  # no random draws
    objective = GRQOObjective(LossConfig(), cfg)
    objective.on_epoch_start(model, 0)
    step = run_detector(model, data)
    calls = []
    hook = blocks_of(objective.reference)[0].register_forward_hook(lambda *_: calls.append(1))
    shared = objective.reference_logits(model, data, step, StepInfo(0, 0, 1))
    assert calls == []  # the reference did not run its frozen blocks
    monkeypatch.setattr(grqo_module, "shared_stem", lambda *_: None)
    own = objective.reference_logits(model, data, step, StepInfo(0, 0, 1))
    hook.remove()
    assert calls == [1]
    assert torch.equal(shared, own)


def test_a_reference_whose_frozen_blocks_differ_computes_its_own_stem():
    model, data = small(4), batch()
    objective = GRQOObjective(LossConfig(), GRQOConfig())
    objective.on_epoch_start(model, 0)
    features = run_detector(model, data).outputs["image_features"]
    assert shared_stem(objective.reference, model, features) is features.stem
    with torch.no_grad():
        blocks_of(objective.reference)[3].conv[0][0].weight.add_(1e-3)
    assert shared_stem(objective.reference, model, features) is None


def test_an_ema_reference_keeps_the_frozen_blocks_to_the_bit():
    """The EMA moves the reference towards the policy; frozen blocks stay shared."""
    model, data = small(4), batch()
    objective = GRQOObjective(LossConfig(), GRQOConfig(reference_policy="ema", ema_decay=0.9))
    objective.on_epoch_start(model, 0)
    with torch.no_grad():  # the policy has trained
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01)
    step = run_detector(model, data)
    before = blocks_of(objective.reference)[5].conv[0][0].weight.detach().clone()
    for k in range(3):
        objective.reference_logits(model, data, step, StepInfo(k, 0, 3))
    assert not torch.equal(blocks_of(objective.reference)[5].conv[0][0].weight, before)
    features = step.outputs["image_features"]
    assert shared_stem(objective.reference, model, features) is features.stem


def test_a_training_run_leaves_the_frozen_blocks_as_they_were(tmp_path):
    aug = train_transforms(DataConfig(min_size=48, max_size=64))
    data = ShapesDataset(4, seed=0, cfg=SHAPES, transforms=aug)
    model = small()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(batch_size=2, max_steps=2, lr=1e-3, frozen_backbone_blocks=4, log_every=1)
    trainer = Trainer(
        model,
        SFTObjective(LossConfig()),
        data,
        cfg,
        run_dir=tmp_path,
        model_config={},
        progress=False,
    )
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainer.fit()
    frozen_names = in_blocks(model, 4)
    for name, param in model.named_parameters():
        frozen = name in frozen_names
        assert (id(param) in trained) is not frozen, name
        if frozen:
            assert torch.equal(param, before[name]), name
    later = "model.backbone.conv_encoder.features.4.conv.0.0.weight"
    assert not torch.equal(dict(model.named_parameters())[later], before[later])


def test_freezing_what_cannot_be_frozen_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"train\.frozen_backbone_blocks"):
        TrainConfig(frozen_backbone_blocks=-1)
    with pytest.raises(ConfigError, match="has 18 blocks; use a number from 0 to 18"):
        small().freeze_backbone_blocks(19)
    swin = build_detector("tiny")
    with pytest.raises(ConfigError, match=r"freezes MobileNetV2 blocks.*frozen_backbone_blocks=0"):
        swin.freeze_backbone_blocks(2)
