"""GRQO's reference model survives a resume: for every reference policy, a run resumed from a
mid-epoch or an epoch-end checkpoint ends with the model weights *and* the reference weights of
an uninterrupted run, bit for bit."""

import pytest
import torch
from test_trainer import config, shapes

from workbench.checkpoint import checkpoint_path
from workbench.config import GRQOConfig, LossConfig
from workbench.model.build import FORMAT, build_detector
from workbench.objectives.grqo import GRQOObjective
from workbench.trainer import Trainer

# 6 images, 2 per step: 3 steps per epoch, 6 in all. Checkpoints after steps 2 and 4 and at the
# epoch ends (3, 6). From the one after step 3 the trainer starts epoch 1 (on_epoch_start runs);
# from the one after step 4 it continues epoch 1 where it was.
CUTS = {"epoch_end": 3, "mid_epoch": 4}
POLICIES = ["epoch_refresh", "frozen", "ema"]


def grqo_run(run_dir, policy: str, resume=False) -> Trainer:
    """A finished GRQO run (default settings but the reference policy) of the tiny detector."""
    torch.manual_seed(0)
    model = build_detector("tiny")
    objective = GRQOObjective(LossConfig(), GRQOConfig(reference_policy=policy, ema_decay=0.9))
    cfg = config(batch_size=2, grad_accum=1, lr=1e-3, checkpoint_every=2, keep_checkpoints=0)
    model_config = {"format": FORMAT, **model.config.to_dict()}
    run = Trainer(
        model, objective, shapes(6), cfg, run_dir=run_dir, model_config=model_config, resume=resume
    )
    run.fit()
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``policy -> (finished Trainer, its run folder)``, one uninterrupted run per policy."""
    runs = {}

    def get(policy: str):
        if policy not in runs:
            run_dir = tmp_path_factory.mktemp(policy)
            runs[policy] = grqo_run(run_dir, policy), run_dir
        return runs[policy]

    return get


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    differ = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert differ == [], f"{len(differ)} of {len(state_a)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_a_resumed_grqo_run_ends_with_the_uninterrupted_model_and_reference(
    tmp_path, uninterrupted, policy, cut
):
    full, full_dir = uninterrupted(policy)
    resumed = grqo_run(tmp_path, policy, resume=checkpoint_path(full_dir, CUTS[cut]))
    assert resumed.global_step == full.global_step == 6
    assert_same_weights(resumed.module, full.module)
    assert_same_weights(resumed.objective.reference, full.objective.reference)
    # the reference is not the final model, so the comparison above tells the two apart
    current = full.module.state_dict()
    reference = full.objective.reference.state_dict()
    assert any(not torch.equal(current[k], v) for k, v in reference.items())


def test_gradient_shares_reach_the_metrics_log_between_logged_steps(tmp_path):
    """Measured every 3 steps, logged every 2: a measurement on a step the trainer does not log
    reaches the next logged line, and one on a logged step appears there."""
    import json

    torch.manual_seed(0)
    model = build_detector("tiny")
    objective = GRQOObjective(LossConfig(), GRQOConfig(grad_norm_every=3))
    cfg = config(batch_size=2, grad_accum=1, lr=1e-3, log_every=2, checkpoint_every=0)
    model_config = {"format": FORMAT, **model.config.to_dict()}
    Trainer(model, objective, shapes(6), cfg, run_dir=tmp_path, model_config=model_config).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # 6 steps (0-5); logged: 1, 3, 5; measured: 2 (carried to 3) and 5.
    assert [r["step"] for r in rows] == [1, 3, 5]
    assert ["grad_share_adv" in r for r in rows] == [False, True, True]
    assert all(r["grad_norm_sft"] > 0 for r in rows[1:])
    assert rows[1]["grad_share_adv"] != rows[2]["grad_share_adv"]
