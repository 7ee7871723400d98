"""The speed-ups change no result beyond float rounding: the same losses with and without them.

``workbench.model.fastpath`` switches them all (the deformable-attention kernel, channels-last
backbone convolutions, GRQO's shortened reference forward). Tolerance: 1e-4 relative on every
step's loss and 1e-3 on its gradient norm, over 20 optimizer steps (float32 sums taken in another
order differ by about 1e-6; a wrong kernel or a skipped term moves them by far more).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from workbench.config import GRQOConfig, LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model import deformable, fastpath
from workbench.model.build import build_detector
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective
from workbench.objectives.sft import SFTObjective, run_detector


def batches(image_size: int, count: int, batch_size: int = 2):
    cfg = ShapesConfig(
        image_size=image_size, object_size=(12, 28), objects_per_image=(2, 4), supersample=1
    )
    data = ShapesDataset(count * batch_size, seed=3, cfg=cfg)
    out = []
    for k in range(count):
        batch = collate([data[k * batch_size + i] for i in range(batch_size)])
        batch.prompts = sample_training_prompts(batch.targets, np.random.default_rng(k))
        out.append(batch)
    return out


def trajectory(size: str, objective: str, steps: int, image_size: int):
    """Per step, the loss and gradient norm with and without the speed-ups on the same weights;
    the plain path's gradient takes the optimizer step, so both follow one trajectory (two
    separate runs would drift apart wherever a near-tie flips a Hungarian assignment)."""
    torch.manual_seed(0)
    model = build_detector(size, backbone_pretrained=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if objective == "sft":
        run = SFTObjective(LossConfig())
    else:  # an alpha large enough for the advantage term to matter
        run = GRQOObjective(LossConfig(), GRQOConfig(alpha=1.0, grad_norm_every=0))
        run.on_epoch_start(model, 0)
    data, fast, plain = batches(image_size, 4), [], []
    for k in range(steps):
        for path, record in ((contextlib.nullcontext, fast), (fastpath.disabled, plain)):
            optimizer.zero_grad()
            torch.manual_seed(k)  # the reference's own exemplar draw
            with path():
                loss = run(model, data[k % len(data)], StepInfo(k, 0, steps)).loss
                loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            record.append((float(loss.detach()), float(torch.nn.utils.get_total_norm(grads))))
        optimizer.step()
    return np.array(fast), np.array(plain)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "objective", "steps", "image_size"),
    [("tiny", "sft", 20, 96), ("tiny", "grqo", 20, 96), ("small", "grqo", 4, 64)],
)
def test_the_same_losses_with_and_without_the_speedups(size, objective, steps, image_size):
    if deformable.load_kernel() is None:
        pytest.fail(f"the CPU kernel did not build here: {deformable.kernel_status()}")
    fast, plain = trajectory(size, objective, steps, image_size)
    np.testing.assert_allclose(fast[:, 0], plain[:, 0], rtol=1e-4)  # losses
    np.testing.assert_allclose(fast[:, 1], plain[:, 1], rtol=1e-3)  # gradient norms
    assert len(set(plain[:, 0])) > 1  # the model trains: the comparison is not of constants


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_reference_selection_at_chosen_tokens_equals_the_full_computation(size, monkeypatch):
    torch.manual_seed(0)
    model = build_detector(size, backbone_pretrained=False).train()
    batch = batches(64, 1)[0]
    calls = []
    monkeypatch.setattr(
        model, "_enhance_at", lambda *a: calls.append(1) or type(model)._enhance_at(model, *a)
    )
    with torch.no_grad():
        features = model.extract_features(batch.images, batch.pixel_mask)
        classes = model.encode_prompts(features, batch.prompts).classes
        full = model.selection_logits(features, classes)
        index = torch.topk(full, 20, dim=1).indices.flip(1)  # any order of any tokens
        fast = model.selection_logits(features, classes, index)
    assert calls  # the shortened path ran
    torch.testing.assert_close(fast, full.gather(1, index), rtol=1e-5, atol=1e-5)


def test_reference_on_the_policy_features_skips_its_backbone():
    """``grqo.reference_features=policy`` (a documented deviation) reuses the policy's image
    features: equal to the reference's own while both models are the same, no backbone run."""
    torch.manual_seed(0)
    model = build_detector("tiny", backbone_pretrained=False).eval()  # no random drop-path
    batch = batches(64, 1)[0]
    step = run_detector(model, batch)
    logits, backbone_calls = {}, {}
    for features in ("own", "policy"):
        cfg = GRQOConfig(
            reference_features=features, reference_exemplars="shared", reference_mode="eval"
        )
        objective = GRQOObjective(LossConfig(), cfg)
        objective.on_epoch_start(model, 0)
        calls = backbone_calls[features] = []
        hook = objective.reference.model.backbone.register_forward_hook(
            lambda *_, c=calls: c.append(1)
        )
        logits[features] = objective.reference_logits(model, batch, step, StepInfo(0, 0, 1))
        hook.remove()
    assert backbone_calls == {"own": [1], "policy": []}
    torch.testing.assert_close(logits["own"], logits["policy"], rtol=1e-5, atol=1e-5)
