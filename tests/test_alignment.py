"""DINO-R1's text-visual alignment: the frozen MiniLM name encoder and the contrastive loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.config import LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.losses import text_visual_alignment_loss
from workbench.model.build import build_detector
from workbench.model.text import NameEncoder
from workbench.objectives.base import StepInfo
from workbench.objectives.sft import SFTObjective


def test_alignment_loss_matches_the_formula():
    visual = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])  # class 5 twice, class 7 once
    labels = torch.tensor([5, 5, 7])
    text = torch.zeros(8, 2)
    text[5], text[7] = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    scale = torch.tensor(math.log(10.0))
    loss = text_visual_alignment_loss(visual, labels, text, scale)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # normalised class means
    t = F.normalize(text[[5, 7]], dim=-1)
    logits = 10.0 * t @ v.T
    expected = (
        F.cross_entropy(logits, torch.arange(2)) + F.cross_entropy(logits.T, torch.arange(2))
    ) / 2
    torch.testing.assert_close(loss, expected)


def test_one_class_has_nothing_to_contrast():
    scale = torch.tensor(1.0, requires_grad=True)
    visual = torch.randn(3, 4, requires_grad=True)
    loss = text_visual_alignment_loss(visual, torch.tensor([2, 2, 2]), torch.randn(5, 4), scale)
    loss.backward()
    assert loss.item() == 0 and visual.grad is not None


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return build_detector("tiny", text_encoder="minilm")


def test_minilm_name_embeddings_carry_meaning(detector):
    encoder = NameEncoder.for_detector(detector)
    e = F.normalize(encoder(["red solid circle", "red striped circle", "Platelets"]), dim=-1)
    assert e.shape == (3, detector.config.d_model)
    assert e[0] @ e[1] > 0.5 > e[0] @ e[2]  # related names are close, unrelated ones are not
    assert torch.equal(encoder(["Platelets"])[0], encoder(["Platelets"])[0])


def test_sft_with_alignment_trains_the_visual_side_only(detector):
    data = ShapesDataset(2, seed=1, cfg=ShapesConfig(image_size=96, object_size=(12, 40)))
    batch = collate([data[0], data[1]])
    batch.prompts = sample_training_prompts(batch.targets, np.random.default_rng(0))
    names = NameEncoder.for_detector(detector)([c.name for c in data.categories])
    objective = SFTObjective(LossConfig(align_weight=100.0), name_embeddings=names)
    detector.train().zero_grad()
    out = objective(detector, batch, StepInfo(0, 0, 1))
    out.loss.backward()
    assert out.metrics["loss_align"] > 0 and math.isfinite(out.loss.item())
    assert detector.model.align_logit_scale.grad is not None
    assert detector.model.prompt_encoder.content.weight.grad.abs().sum() > 0
    frozen = [
        *detector.model.text_backbone.parameters(),
        *detector.model.text_projection.parameters(),
    ]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_alignment_needs_the_names():
    with pytest.raises(ValueError, match="text embeddings"):
        SFTObjective(LossConfig(align_weight=1.0))
