"""GRQO: advantages, muting, the KL against the reference model, and a real training step."""

import copy
import warnings

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
from workbench.objectives.grqo import (
    GRQOObjective,
    WeakAdvantageWarning,
    k3_kl,
    mute_count,
    query_rewards,
)
from workbench.objectives.sft import SFTObjective, run_detector
from workbench.rewards import REWARDS, ROWWISE_REWARDS

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
    terms, _ = objective.grqo_terms(model, batch, step, INFO)
    terms.loss.backward()
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


def flat_grad(model, loss) -> torch.Tensor:
    """``d loss / d params`` by a plain backward, flattened in float64 (zeros where unreached)."""
    model.zero_grad()
    loss.backward(retain_graph=True)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    return torch.cat([g.flatten() for g in grads]).double()


def test_gradient_shares_equal_a_direct_autograd_computation(batch):
    model = detector().eval()
    objective = grqo(grad_norm_every=1, reference_exemplars="shared", reference_mode="eval")
    objective.on_epoch_start(model, 0)
    with torch.no_grad():
        model.model.encoder_output_class_embed.bias += 0.5  # drift from the reference: KL > 0
    measured = objective(model, batch, INFO).metrics
    step = run_detector(model, batch)  # the same forward again (eval mode: deterministic)
    sft_loss, _ = objective.sft.detection_losses(step, INFO)
    terms, _ = objective.grqo_terms(model, batch, step, INFO)
    sft, adv, kl = (flat_grad(model, x) for x in (sft_loss, terms.advantage.sum(), terms.kl.sum()))
    grqo_grad = flat_grad(model, terms.loss)
    norm = torch.linalg.vector_norm
    expected = {
        "grad_norm_sft": norm(sft),
        "grad_norm_adv": norm(adv),
        "grad_norm_kl": norm(kl),
        "grad_norm_grqo": norm(grqo_grad),
        "grad_cos_adv_sft": adv @ sft / (norm(adv) * norm(sft)),
        "grad_cos_kl_sft": kl @ sft / (norm(kl) * norm(sft)),
        "grad_share_adv": norm(adv) / norm(sft),
        "grad_share_kl": norm(kl) / norm(sft),
    }
    assert min(float(v) for k, v in expected.items() if "norm" in k) > 0
    for key, value in expected.items():
        assert measured[key] == pytest.approx(float(value), rel=1e-5, abs=1e-9), key


def test_gradients_are_measured_every_n_steps_on_the_first_micro_batch():
    objective, every = grqo(), GRQOConfig().grad_norm_every
    assert every > 0  # on by default
    # The last step of each block of N (0-based N-1, 2N-1, ...): a step the trainer logs when
    # train.log_every divides N.
    ends = (every - 1, 2 * every - 1, 3 * every - 1)
    at = [StepInfo(k, 0, 200, micro_batch=m) for k in ends for m in (0, 1)]
    assert [objective.measures_gradients(i) for i in at] == [True, False] * 3
    assert not any(objective.measures_gradients(StepInfo(k, 0, 200)) for k in (0, every))
    assert not grqo(grad_norm_every=0).measures_gradients(INFO)
    assert grqo(grad_norm_every=1).measures_gradients(INFO)


def test_zero_alpha_and_beta_give_exactly_the_sft_gradient(batch):
    """Bitwise: GRQO's extra graph then sends back exact zeros (0 * x = +-0, and g + +-0 = g in
    IEEE arithmetic), the reference model is not run (no extra random draw before dropout), the
    gradient measurement at step 0 writes no .grad, and the SFT part is the same operations in
    the same order."""
    model = detector().train()
    grads = {}
    measured = grqo(alpha=0, beta=0, grad_norm_every=1)  # measures at step 0
    for name, objective in (("sft", SFTObjective(LossConfig())), ("grqo", measured)):
        torch.manual_seed(1)  # the same dropout and denoising draws
        model.zero_grad()
        objective(model, batch, INFO).loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["sft"].keys() == grads["grqo"].keys()
    for key, grad in grads["sft"].items():
        assert torch.equal(grads["grqo"][key], grad), key


def sgd_step(model, objective, batch, lr):
    """One plain SGD step; returns the parameters after it, flattened in float64."""
    torch.manual_seed(1)
    objective(model, batch, INFO).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return torch.cat([p.detach().flatten() for p in model.parameters()]).double()


@pytest.mark.parametrize("alpha", [0.01, 1.0])
def test_a_grqo_step_moves_the_model_off_the_sft_step_along_the_advantage_gradient(batch, alpha):
    """From the same weights on the same batch (KL off): GRQO's step differs from SFT's by
    -lr times the advantage part's gradient."""
    start, lr = detector().train(), 0.1
    sft = sgd_step(copy.deepcopy(start), SFTObjective(LossConfig()), batch, lr)
    objective = grqo(alpha=alpha, kl=False)
    moved = sgd_step(copy.deepcopy(start), objective, batch, lr)
    model = copy.deepcopy(start)
    torch.manual_seed(1)
    terms, _ = objective.grqo_terms(model, batch, run_detector(model, batch), INFO)
    expected = -lr * flat_grad(model, terms.advantage.sum())
    difference = moved - sft
    assert difference.abs().max() > 0
    cosine = difference @ expected / (difference.norm() * expected.norm())
    assert cosine > 0.999
    assert difference.norm() == pytest.approx(float(expected.norm()), rel=1e-3)


@pytest.mark.parametrize(("alpha", "warns"), [(0.01, True), (10.0, False)])
def test_a_weak_advantage_term_warns_once_naming_alpha(batch, alpha, warns):
    model = detector().eval()
    objective = grqo(alpha=alpha, kl=False, grad_norm_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shares = [
            objective(model, batch, StepInfo(k, 0, 10)).metrics["grad_share_adv"] for k in range(5)
        ]
    weak = [str(w.message) for w in caught if w.category is WeakAdvantageWarning]
    if warns:  # after the third measurement below 1 %, and not again
        assert max(shares) < 0.01 and len(weak) == 1
        assert "grqo.alpha=0.01" in weak[0] and f"{shares[2]:.1e}" in weak[0]
    else:
        assert min(shares) > 0.01 and weak == []


def test_only_rewards_without_a_matching_among_the_queries_are_row_wise():
    assert {name for name, fn in REWARDS.items() if fn in ROWWISE_REWARDS} == {
        "matching_cost",
        "iou_alignment",
    }


@pytest.mark.parametrize("reward", ["matching_cost", "iou_alignment"])
def test_rowwise_rewards_score_all_layers_at_once_with_the_same_values(batch, reward):
    """A reward of ROWWISE_REWARDS is computed per image over every layer's queries stacked:
    the same rewards and gradients as layer by layer (an image without boxes included)."""
    model = detector().eval()
    step = run_detector(model, batch)
    last = step.targets[2]  # prompt-index labels
    targets = [*step.targets[:2], last.select(torch.zeros(len(last), dtype=torch.bool))]
    fn = REWARDS[reward]

    def one_by_one(*args):  # the same function, not recognised as row-wise
        return fn(*args)

    got = query_rewards(step.outputs, targets, fn, LossConfig())
    want = query_rewards(step.outputs, targets, one_by_one, LossConfig())
    assert got.shape == want.shape == (len(step.outputs["aux_outputs"]) + 1, 3, want.shape[-1])
    assert torch.isnan(got[:, 2]).all() and torch.isfinite(got[:, :2]).all()
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    logits = step.outputs["pred_logits"]
    (g1,) = torch.autograd.grad(got[:, :2].sum(), logits, retain_graph=True)
    (g2,) = torch.autograd.grad(want[:, :2].sum(), logits)
    torch.testing.assert_close(g1, g2)


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


def test_a_grqo_step_moves_a_weight_that_an_sft_step_leaves_alone(batch):
    """With loss.enc_loss off, the encoder's class head (the logits query selection ranks tokens
    by) gets gradient from GRQO's KL term only: from the same weights and batch, an SFT step
    leaves it where it was and a GRQO step moves it."""
    reference = detector().train()
    start = copy.deepcopy(reference)
    with torch.no_grad():  # the policy has drifted from its reference: the KL has a gradient
        start.model.encoder_output_class_embed.bias += 0.5
    no_enc = LossConfig(enc_loss=False)
    objective = GRQOObjective(no_enc, GRQOConfig())
    objective.on_epoch_start(reference, 0)
    moved = {}
    for name, step_objective in (("sft", SFTObjective(no_enc)), ("grqo", objective)):
        model = copy.deepcopy(start)
        head = dict(model.model.encoder_output_class_embed.named_parameters())
        before = {n: p.detach().clone() for n, p in head.items()}
        sgd_step(model, step_objective, batch, lr=0.1)
        moved[name] = {n: not torch.equal(p, before[n]) for n, p in head.items()}
    assert set(moved["sft"]) == {"bias"}  # the contrastive head's one parameter
    assert not any(moved["sft"].values()) and all(moved["grqo"].values())
