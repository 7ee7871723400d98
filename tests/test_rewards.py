"""Rewards: GRQO's per-query rewards and advantages, Vision-R1's criteria on JSON completions.

The Vision-R1 values are the worked examples of vision-r1-grpo.md §1.8 (original-image pixels,
identity rescale, one class, format reward 1).
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.rewards import (
    NO_STEP,
    REWARDS,
    STAGE_1,
    STAGE_2_CODE,
    STAGE_2_PAPER,
    StepSchedule,
    differentiate,
    group_advantages,
    iou_alignment_reward,
    matching_cost_reward,
    vision_r1_query_reward,
)
from workbench.vlm.rewards import (
    VisionR1Rules,
    completion_text,
    dual_format_reward,
    format_reward,
    match_boxes,
    parse_completion,
    recall_reward,
    score_completion,
)
from workbench.vlm.trl import vision_r1_reward_funcs

CFG = LossConfig()


def answer(boxes, label="a", fenced=True):
    body = json.dumps([{"bbox_2d": b, "label": label} for b in boxes])
    return f"```json\n{body}\n```" if fenced else body


def rewards_of(completion, solution, rules=None, step=None, **kwargs):
    """(precision, format, recall) of one completion through the TRL-convention functions."""
    state = None if step is None else SimpleNamespace(global_step=step, max_steps=3000)
    funcs = vision_r1_reward_funcs(rules, **kwargs)
    return tuple(
        f([completion], solution=[json.dumps(solution)], trainer_state=state)[0] for f in funcs
    )


EXAMPLE_A = ([[0, 0, 10, 10]], [["a", [0, 0, 10, 6]], ["a", [50, 50, 60, 60]]])
EXAMPLE_B = (
    [[0, 0, 100, 100], [200, 200, 300, 280], [400, 400, 450, 450]],
    [["a", [0, 0, 100, 100]], ["a", [200, 200, 300, 300]]],
)
ADAPTIVE = VisionR1Rules(schedule=StepSchedule(switch_step=1500))


# --- §1.8 worked examples --------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, giou",
    [
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),
        ([0, 0, 10, 10], [20, 0, 30, 10], -1 / 3),
        ([0, 0, 10, 10], [0, 0, 10, 6], 0.6),
    ],
)
def test_giou_sanity_values(a, b, giou):
    got = box_ops.generalized_box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b]))
    assert got.item() == pytest.approx(giou)


@pytest.mark.parametrize(
    "rules, step, recall, precision",
    [(VisionR1Rules(), None, 0.5, 0.6), (ADAPTIVE, 0, 0.5, 0.6), (ADAPTIVE, 1500, 0.0, 0.0)],
    ids=["adaptive_off", "stage_1", "stage_2"],
)
def test_example_a(rules, step, recall, precision):
    preds, gt = EXAMPLE_A
    assert rewards_of(answer(preds), gt, rules, step) == pytest.approx((precision, 1.0, recall))


def test_example_a_total_is_2_1_with_adaptive_off():
    preds, gt = EXAMPLE_A
    (total,) = vision_r1_reward_funcs(combine="sum")[0]([answer(preds)], solution=[gt])
    assert total == pytest.approx(2.1)
    (mean,) = vision_r1_reward_funcs(combine="mean")[0]([answer(preds)], solution=[gt])
    assert mean == pytest.approx(0.7)


@pytest.mark.parametrize(
    "rules, step, recall, precision",
    [(VisionR1Rules(), None, 1.0, 0.9), (ADAPTIVE, 1499, 1.0, 1.0), (ADAPTIVE, 1500, 1.0, 0.9)],
    ids=["adaptive_off", "stage_1", "stage_2"],
)
def test_example_b(rules, step, recall, precision):
    preds, gt = EXAMPLE_B
    assert rewards_of(answer(preds), gt, rules, step) == pytest.approx((precision, 1.0, recall))


def test_example_b_easyr1_precision_divides_by_the_predictions():
    preds, gt = EXAMPLE_B
    got = rewards_of(answer(preds), gt, precision_denominator="predicted")
    assert got[0] == pytest.approx(0.6)


# --- paper-vs-code switches ------------------------------------------------------------------


def test_iou_and_giou_scores_differ_where_the_hull_exceeds_the_union():
    gt = [["a", [5, 5, 15, 15]]]  # IoU 1/7, GIoU 1/7 - 50/225 < 0 (clamped to 0 by precision)
    assert rewards_of(answer([[0, 0, 10, 10]]), gt)[0] == 0.0
    assert rewards_of(answer([[0, 0, 10, 10]]), gt, overlap="iou")[0] == pytest.approx(1 / 7)


def test_label_term_breaks_a_near_tie_only_in_the_code_matcher():
    pred = torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64)
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5]], dtype=torch.float64)
    ids = (torch.tensor([2]), torch.tensor([1, 2]))
    assert match_boxes(pred, ids[0], gt, ids[1])[1].tolist() == [1]
    assert match_boxes(pred, ids[0], gt, ids[1], matcher="box_only")[1].tolist() == [0]


def test_stage_2_recall_map_code_keeps_stage_1_paper_raises_it():
    overlaps = torch.full((4,), 0.8, dtype=torch.float64)  # 4 TPs of 5 GT: recall 0.8
    assert recall_reward(overlaps, 5, 4, STAGE_2_CODE) == 1.0  # 0.8 > 0.75
    assert recall_reward(overlaps, 5, 4, STAGE_2_PAPER) == pytest.approx(0.8)  # 0.75 <= 0.8 < 0.9


def test_boundaries_code_is_strict_paper_inclusive():
    x = torch.tensor([0.75, 0.5])
    assert differentiate(x, 0.5, 0.75, "code").tolist() == [0.75, 0.5]
    assert differentiate(x, 0.5, 0.75, "paper").tolist() == [1.0, 0.5]
    # Recall's TP test with low == high: an overlap exactly at ξ0 counts 0.5 in the code.
    assert recall_reward(torch.tensor([0.5]), 1, 1, NO_STEP) == 0.5
    assert recall_reward(torch.tensor([0.5]), 1, 1, NO_STEP, boundaries="paper") == 1.0


def test_paper_rules_preset():
    rules = VisionR1Rules.paper()
    assert (rules.overlap, rules.matcher, rules.format_check) == ("iou", "box_only", "paper")
    assert rules.thresholds(4, 10) is STAGE_1 and rules.thresholds(5, 10) is STAGE_2_PAPER


# --- STEP ------------------------------------------------------------------------------------


def test_step_schedule_switches_at_the_configured_step():
    schedule = StepSchedule(switch_step=1500)
    assert [schedule.stage(s) for s in (0, 1499, 1500, 10_000)] == [1, 1, 2, 2]
    assert schedule.thresholds(1499) == STAGE_1 and schedule.thresholds(1500) == STAGE_2_CODE


@pytest.mark.parametrize(
    "fraction, total, last_stage_1", [(0.5, 10, 4), (1 / 3, 9, 2), (1 / 3, 10, 3)]
)
def test_step_schedule_switches_at_the_configured_fraction(fraction, total, last_stage_1):
    schedule = StepSchedule(switch_fraction=fraction)
    assert schedule.stage(last_stage_1, total) == 1
    assert schedule.stage(last_stage_1 + 1, total) == 2


def test_step_fraction_one_never_advances_and_stage_values_are_the_papers():
    assert StepSchedule(switch_fraction=1).stage(10**9, 100) == 1
    assert (STAGE_1.tp, STAGE_1.low, STAGE_1.high) == (0.5, 0.5, 0.75)
    assert (STAGE_2_PAPER.tp, STAGE_2_PAPER.low, STAGE_2_PAPER.high) == (0.75, 0.75, 0.9)


def test_step_schedule_needs_one_switch_and_a_total_for_fractions():
    with pytest.raises(ValueError, match="exactly one"):
        StepSchedule()
    with pytest.raises(ValueError, match="total"):
        StepSchedule(switch_fraction=0.5).stage(3)


def test_trl_functions_read_the_step_from_trainer_state_or_step():
    preds, gt = EXAMPLE_A
    rules = VisionR1Rules(schedule=StepSchedule(switch_fraction=0.5))
    (precision, *_) = vision_r1_reward_funcs(rules)
    state = SimpleNamespace(global_step=5, max_steps=10)
    assert precision([answer(preds)], solution=[gt], trainer_state=state) == [0.0]
    assert precision([answer(preds)], solution=[gt], trainer_state=state, step=4) == [0.6]
    with pytest.raises(ValueError, match="training step"):
        precision([answer(preds)], solution=[gt])


# --- parsing and format ----------------------------------------------------------------------

BOX = [[1, 2, 30, 40]]


@pytest.mark.parametrize("text", [answer(BOX), answer(BOX, fenced=False)], ids=["fenced", "bare"])
def test_well_formed_answers_parse_and_score_format_1(text):
    assert parse_completion(text)[0] == ((1.0, 2.0, 30.0, 40.0), "a")
    assert format_reward(text) == 1.0


def test_text_after_the_fence_is_ignored_by_parsing_but_fails_the_format():
    text = answer(BOX) + "\nThese are all the objects."
    assert len(parse_completion(text)) == 1
    assert format_reward(text) == 0.0


def test_malformed_json_scores_format_0_and_the_regex_recovers_the_objects():
    text = answer(BOX, fenced=False)[:-1]  # the closing bracket is missing
    assert format_reward(text) == 0.0
    assert parse_completion(text)[0].box_xyxy == (1.0, 2.0, 30.0, 40.0)


@pytest.mark.parametrize("text", ["", "no objects here", "```json\n", "[{]", "[" * 100_000])
def test_garbage_scores_0_without_raising(text):
    assert format_reward(text) == 0.0
    assert parse_completion(text) == []
    assert rewards_of(text, EXAMPLE_A[1]) == (0.0, 0.0, 0.0)


def test_parsing_drops_degenerate_and_malformed_items():
    items = [
        {"bbox_2d": [10, 0, 5, 9], "label": "inverted"},
        {"bbox_2d": [0, 0, 5], "label": "short"},
        {"bbox_2d": "0, 0, 5, 5", "label": "string"},
        "not a dict",
        {"bbox_2d": [0, 0, 1e308, 1e308], "label": "huge"},
        {"bbox_2d": [0.9, 0, 5.7, 5], "label": 3},
    ]
    assert parse_completion(json.dumps(items)) == [((0.0, 0.0, 5.0, 5.0), None)]


def test_code_format_check_is_lenient_and_paper_check_is_strict():
    out_of_frame = json.dumps([{"bbox_2d": [0, 0, 2000, 10], "label": "a"}])
    assert format_reward(out_of_frame) == 1.0
    assert format_reward(out_of_frame, check="paper", frame_hw=(1000, 1000)) == 0.0
    assert format_reward('{"a": 1}') == 1.0 and format_reward('{"a": 1}', check="paper") == 0.0
    assert format_reward(json.dumps([{"bbox_2d": [0, 0, 5], "label": "a"}])) == 0.0


def test_format_is_inverted_on_negative_images_in_code_mode_only():
    assert dual_format_reward(answer(BOX), num_instances=0) == 0.0
    assert dual_format_reward("nothing", num_instances=0) == 1.0
    assert dual_format_reward(answer(BOX), num_instances=0, check="paper") == 1.0


def test_predictions_are_rescaled_from_the_model_frame():
    gt = [["a", [0, 0, 100, 50]]]  # a 200 x 100 (w x h) image; the model writes 0-1000
    text = answer([[0, 0, 500, 500]])
    columns = {"solution": [gt], "width": [200], "height": [100]}
    precision, *_ = vision_r1_reward_funcs()
    assert precision([text], input_widths=[1000], input_heights=[1000], **columns) == [1.0]
    (precision,) = vision_r1_reward_funcs(pred_frame_hw=(1000, 1000))[:1]
    assert precision([text], **columns) == [1.0]
    with pytest.raises(ValueError, match="image size"):
        precision([text], solution=[gt])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["bbox_2d", "label", "x"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    assert format_reward(text) in (0.0, 1.0)
    assert format_reward(text, check="paper", frame_hw=(100, 100)) in (0.0, 1.0)
    scores = score_completion(text, ["a"], torch.tensor([[0.0, 0, 10, 10]]))
    assert 0.0 <= scores.total <= 3.0


@given(json_values, st.booleans())
def test_arbitrary_json_never_raises(value, fenced):
    text = json.dumps(value)
    text = f"```json\n{text}\n```" if fenced else text
    scores = score_completion(text, ["a"], torch.tensor([[0.0, 0, 10, 10]]), rules=ADAPTIVE)
    assert all(0.0 <= s <= 1.0 for s in (scores.format, scores.recall, scores.precision))


# --- TRL call convention ---------------------------------------------------------------------


def test_trl_call_convention_with_string_and_conversational_completions():
    preds, gt = EXAMPLE_B
    text = answer(preds)
    chat = [{"role": "assistant", "content": text}]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
    completions = [text, chat, parts, "garbage"]
    columns = {
        "prompts": ["p"] * 4,
        "completion_ids": [[1, 2]] * 4,
        "solution": [json.dumps(gt)] * 4,
        "image": [None] * 4,
        "trainer_state": SimpleNamespace(global_step=0, max_steps=10),
        "log_metric": print,
    }
    funcs = vision_r1_reward_funcs()
    assert [f.__name__ for f in funcs] == [
        "precision_reward",
        "dual_format_reward",
        "recall_reward",
    ]
    for f in funcs:
        out = f(completions=completions, **columns)
        assert isinstance(out, list) and len(out) == 4 and all(type(v) is float for v in out)
        assert out[0] == out[1] == out[2] and out[3] == 0.0


def test_completion_text_takes_the_last_assistant_message():
    chat = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "first"},
        {"role": "assistant", "content": "final"},
    ]
    assert completion_text(chat) == "final"
    assert completion_text(None) == "" and completion_text([{"role": "user"}]) == ""


# --- GRQO per-query rewards ------------------------------------------------------------------


def hand_cost(logits, box, label, gt_box, cfg=CFG):
    """DINO's matching cost of one (query, box) pair, written out from the formulas."""
    focal = 0.0
    for c, x in enumerate(logits):
        p = 1 / (1 + math.exp(-x))
        if c == label:
            focal += cfg.focal_alpha * (1 - p) ** 2 * -math.log(p + 1e-12)
        else:
            focal += (1 - cfg.focal_alpha) * p**2 * -math.log(1 - p + 1e-12)
    l1 = sum(abs(a - b) for a, b in zip(box, gt_box, strict=True))
    a = [box[0] - box[2] / 2, box[1] - box[3] / 2, box[0] + box[2] / 2, box[1] + box[3] / 2]
    b = [gt_box[0] - gt_box[2] / 2, gt_box[1] - gt_box[3] / 2]
    b += [gt_box[0] + gt_box[2] / 2, gt_box[1] + gt_box[3] / 2]
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = box[2] * box[3] + gt_box[2] * gt_box[3] - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    giou = inter / union - (hull - union) / hull
    return cfg.cost_class * focal + cfg.cost_bbox * l1 - cfg.cost_giou * giou


LOGITS = [[2.0, -1.0], [0.0, 0.5], [-3.0, 1.0]]
PRED = [[0.5, 0.5, 0.2, 0.2], [0.33, 0.3, 0.2, 0.24], [0.8, 0.7, 0.1, 0.3]]
GT_LABELS, GT_BOXES = [0, 1], [[0.5, 0.5, 0.2, 0.2], [0.35, 0.3, 0.2, 0.2]]


def query_case(requires_grad=False):
    logits = torch.tensor(LOGITS, requires_grad=requires_grad)
    boxes = torch.tensor(PRED, requires_grad=requires_grad)
    return logits, boxes, torch.tensor(GT_LABELS), torch.tensor(GT_BOXES)


def test_matching_cost_reward_is_minus_the_smallest_hand_computed_cost():
    expected = [
        -min(hand_cost(LOGITS[i], PRED[i], GT_LABELS[j], GT_BOXES[j]) for j in range(2))
        for i in range(3)
    ]
    assert matching_cost_reward(*query_case(), CFG).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_gradient_reaches_logits_and_boxes(name):
    logits, boxes, labels, gt = query_case(requires_grad=True)
    REWARDS[name](logits, boxes, labels, gt, CFG).sum().backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_an_image_without_ground_truth_gets_nan(name):
    logits, boxes, _, _ = query_case()
    got = REWARDS[name](logits, boxes, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), CFG)
    assert got.shape == (3,) and torch.isnan(got).all()


def test_iou_alignment_is_best_iou_times_the_prompt_score():
    logits = torch.tensor([[0.0, 5.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])  # IoU 1/3 with the first
    got = iou_alignment_reward(logits, boxes, torch.tensor([0, 1]), gt)
    assert got.item() == pytest.approx(1 / 3 * 0.5)
    assert iou_alignment_reward(
        logits, boxes, torch.tensor([0, 1]), gt, use_scores=False
    ).item() == (pytest.approx(1 / 3))


def test_vision_r1_query_reward_credits_the_matched_query_by_stage():
    logits = torch.zeros(3, 1)  # every score 0.5
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.2]])  # xyxy (0.4, 0.4, 0.6, 0.6)
    inside = [0.5, 0.46, 0.2, 0.12]  # xyxy (0.4, 0.4, 0.6, 0.52): IoU = GIoU = 0.6
    shifted = [0.47, 0.5, 0.2, 0.2]  # xyxy (0.37, 0.4, 0.57, 0.6): IoU = GIoU = 17/23, closer
    boxes = torch.tensor([inside, shifted, [0.9, 0.9, 0.1, 0.1]])
    labels = torch.tensor([0])
    reward = vision_r1_query_reward(logits, boxes, labels, gt, CFG, weight_by_score=False)
    assert reward.tolist() == pytest.approx([0.0, 17 / 23, 0.0])  # the closer box wins the GT
    one_query = (logits[:1], boxes[:1], labels, gt, CFG)
    assert vision_r1_query_reward(*one_query).item() == pytest.approx(0.6 * 0.5)
    assert vision_r1_query_reward(*one_query, thresholds=STAGE_2_CODE).item() == 0.0


# --- group advantages ------------------------------------------------------------------------


def test_advantages_have_zero_mean_and_unit_unbiased_std():
    adv = group_advantages(torch.tensor([1.0, 2.0, 4.0, 8.0, -3.0], dtype=torch.float64))
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert adv.std().item() == pytest.approx(1.0, rel=1e-6)
    biased = group_advantages(torch.tensor([1.0, 3.0], dtype=torch.float64), unbiased=False)
    assert biased.tolist() == pytest.approx([-1.0, 1.0], rel=1e-6)


def test_muting_zeroes_the_last_k_after_normalisation():
    rewards = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
    full, muted = group_advantages(rewards), group_advantages(rewards, mute=2)
    assert muted[-2:].tolist() == [0.0, 0.0]
    assert torch.equal(muted[:-2], full[:-2])


def test_without_muting_the_summed_advantage_has_no_gradient():
    rewards = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0], requires_grad=True)
    (grad,) = torch.autograd.grad(group_advantages(rewards).sum(), rewards)
    assert grad.abs().max() < 1e-5
    (grad,) = torch.autograd.grad(group_advantages(rewards, mute=2).sum(), rewards)
    assert grad.abs().max() > 1e-2


def test_zero_spread_and_nan_groups_give_zeros_with_finite_gradients():
    rewards = torch.tensor(
        [[0.1, 0.1, 0.1], [1.0, float("nan"), 2.0], [1.0, 2.0, 3.0]], requires_grad=True
    )
    adv = group_advantages(rewards)
    assert adv[:2].tolist() == [[0.0] * 3] * 2
    assert torch.equal(adv[2], group_advantages(torch.tensor([1.0, 2.0, 3.0])))
    (grad,) = torch.autograd.grad((adv * torch.arange(3.0)).sum(), rewards)
    assert torch.isfinite(grad).all()


def test_mute_outside_the_group_is_refused():
    with pytest.raises(ValueError, match="mute"):
        group_advantages(torch.zeros(4), mute=5)
