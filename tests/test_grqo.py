"""GRQO: advantages, muting, the KL against the reference model, and a real training step."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from workbench.config import GRQOConfig, LossConfig
from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model.build import build_detector
from workbench.objectives.base import StepInfo
from workbench.objectives.grqo import GRQOObjective, k3_kl, mute_count
from workbench.objectives.sft import run_detector

INFO = StepInfo(step=0, epoch=0, total_steps=10)


@pytest.fixture(scope="module")
def batch():
    data = ShapesDataset(3, seed=4, cfg=ShapesConfig(image_size=96, object_size=(12, 40)))
    batch = collate([data[i] for i in range(3)])
    batch.prompts = sample_training_prompts(batch.targets, np.random.default_rng(0))
    return batch


def detector():
    torch.manual_seed(0)
    return build_detector("tiny")


def grqo(**kw):
    return GRQOObjective(LossConfig(), GRQOConfig(**kw))


def test_mute_scales_the_papers_300_of_900():
    assert mute_count(GRQOConfig(), 900) == 300 and mute_count(GRQOConfig(), 50) == 17
    assert mute_count(GRQOConfig(mute=0), 900) == 0


@given(
    st.lists(st.floats(-30, 30), min_size=1, max_size=20),
    st.lists(st.floats(-30, 30), min_size=1, max_size=20),
)
def test_k3_kl_is_never_negative_and_zero_at_equality(a, b):
    n = min(len(a), len(b))
    x, y = torch.tensor(a[:n]), torch.tensor(b[:n])
    assert (k3_kl(x, y) >= 0).all()
    assert torch.equal(k3_kl(x, x), torch.zeros(n))


def test_advantages_have_zero_mean_per_group_before_muting(batch):
    model = detector().eval()
    objective = grqo(mute=0, kl=False)
    out = objective(model, batch, INFO)
    rewards, advantages, _ = out.extras["rewards"]
    assert rewards.shape[:2] == (model.config.decoder_layers, 3)
    torch.testing.assert_close(
        advantages.mean(-1), torch.zeros(advantages.shape[:2]), atol=1e-5, rtol=0
    )
    std = advantages.std(-1)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-3, rtol=0)
    muted = grqo(kl=False)(model, batch, INFO).extras["rewards"][1]
    assert (muted[..., -mute_count(GRQOConfig(), muted.shape[-1]) :] == 0).all()


def advantage_gradient(model, batch, mute):
    """Gradient norm of the advantage term alone (KL off, SFT excluded)."""
    objective = grqo(mute=mute, kl=False)
    step = run_detector(model, batch)
    model.zero_grad()
    term, _ = objective.grqo_terms(model, batch, step, INFO)
    term.backward()
    return torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))


def test_the_advantage_term_needs_muting_to_have_a_gradient(batch):
    model = detector().eval()
    assert advantage_gradient(model, batch, mute=0) < 1e-6
    assert advantage_gradient(model, batch, mute=None) > 1e-4


def test_kl_is_zero_against_an_identical_reference_and_grows_with_drift(batch):
    model = detector().eval()
    objective = grqo(reference_exemplars="shared", reference_mode="eval")
    objective.on_epoch_start(model, 0)
    out = objective(model, batch, INFO)
    assert out.metrics["kl_mean"] == 0.0
    with torch.no_grad():
        model.model.encoder_output_class_embed.bias += 1.0  # the policy drifts
    assert objective(model, batch, INFO).metrics["kl_mean"] > 1e-3


def test_the_reference_gets_no_gradient_and_follows_its_policy(batch):
    model = detector().train()
    refreshed, frozen = grqo(), grqo(reference_policy="frozen")
    for objective in (refreshed, frozen):
        objective.on_epoch_start(model, 0)
        objective(model, batch, INFO).loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in objective.reference.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    for objective in (refreshed, frozen):
        objective.on_epoch_start(model, 1)
    bias = model.model.encoder_output_class_embed.bias
    assert torch.equal(refreshed.reference.model.encoder_output_class_embed.bias, bias)
    assert not torch.equal(frozen.reference.model.encoder_output_class_embed.bias, bias)


def test_reference_state_round_trips_for_exact_resume(batch):
    model = detector().eval()
    objective = grqo()
    objective.on_epoch_start(model, 0)
    state = objective.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    restored = grqo()
    restored.load_state_dict(state)
    restored(model, batch, INFO)  # the reference is rebuilt from the saved weights, not the model
    for key, value in objective.reference.state_dict().items():
        assert torch.equal(restored.reference.state_dict()[key], value)


@pytest.mark.parametrize("reward", ["matching_cost", "iou_alignment", "vision_r1"])
@pytest.mark.parametrize("mode", ["through_reward", "policy_gradient"])
def test_a_grqo_step_changes_the_parameters_and_stays_finite(batch, reward, mode):
    model = detector().train()
    objective = grqo(reward=reward, advantage_mode=mode)
    objective.on_epoch_start(model, 0)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = objective(model, batch, INFO)
    out.loss.backward()
    optimizer.step()
    assert torch.isfinite(out.loss) and out.metrics["grqo_active"] == 1.0
    for key in ("kl_mean", "zero_spread_share", "advantage_abs_mean", "reward_mean_0"):
        assert np.isfinite(out.metrics[key]), key
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "model.prompt_encoder.content.weight" in changed


def test_warmup_steps_run_sft_only(batch):
    model = detector().eval()
    objective = grqo(warmup_epochs=1)
    out = objective(model, batch, INFO)
    assert out.metrics["grqo_active"] == 0.0 and "kl_mean" not in out.metrics
    later = objective(model, batch, StepInfo(step=5, epoch=1, total_steps=10))
    assert later.metrics["grqo_active"] == 1.0


def test_gradient_norms_of_both_terms_are_logged(batch):
    model = detector().train()
    out = grqo(grad_norm_every=1)(model, batch, INFO)
    assert out.metrics["grad_norm_sft"] > 0 and out.metrics["grad_norm_grqo"] > 0


def test_images_without_boxes_get_no_advantage(batch):
    model = detector().eval()
    empty = copy.copy(batch)
    empty.targets = [
        batch.targets[0],
        batch.targets[1].select(torch.zeros(len(batch.targets[1]), dtype=torch.bool)),
        batch.targets[2],
    ]
    empty.prompts = sample_training_prompts(empty.targets, np.random.default_rng(0))
    out = grqo(kl=False)(model, empty, INFO)
    rewards, advantages, _ = out.extras["rewards"]
    assert torch.isnan(rewards[:, 1]).all() and (advantages[:, 1] == 0).all()
    assert out.metrics["images_with_reward"] == 2.0
