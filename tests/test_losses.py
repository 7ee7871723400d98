"""Set criterion: focal formula, normalisation, suffixes, denoising terms and edge cases."""

import dataclasses

import pytest
import torch
import torch.distributed as dist

from workbench import boxes as box_ops
from workbench.config import LossConfig
from workbench.losses import (
    SetCriterion,
    global_num_boxes,
    sigmoid_focal_loss,
    weighted_loss,
)
from workbench.matching import HungarianMatcher
from workbench.types import Target

CFG = LossConfig()
TERMS = ("loss_class", "loss_bbox", "loss_giou")


def make_target(labels, boxes_cxcywh, iscrowd=None):
    return Target(
        boxes_cxcywh=torch.as_tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4),
        labels=torch.as_tensor(labels, dtype=torch.int64),
        image_id=0,
        size=(64, 64),
        orig_size=(64, 64),
        iscrowd=None if iscrowd is None else torch.as_tensor(iscrowd, dtype=torch.bool),
    )


def random_boxes(*shape, g):
    centre = torch.rand(*shape, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(*shape, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def head(bsz, num_queries, num_prompts, g):
    return {
        "pred_logits": torch.randn(bsz, num_queries, num_prompts, generator=g).requires_grad_(),
        "pred_boxes": random_boxes(bsz, num_queries, g=g).requires_grad_(),
    }


def dn_outputs(targets, num_layers, num_prompts, num_groups, g):
    """DINO's layout: each group has max_n positive then max_n negative slots; unused = padding."""
    max_n = max(len(t) for t in targets)
    num_dn = num_groups * 2 * max_n
    pos, pos_t, neg = [], [], []
    for t in targets:
        n = len(t)
        starts = torch.arange(num_groups) * 2 * max_n
        pos.append((starts[:, None] + torch.arange(n)).flatten())
        pos_t.append(torch.arange(n).repeat(num_groups))
        neg.append((starts[:, None] + max_n + torch.arange(n)).flatten())
    bsz = len(targets)
    return {
        "pred_logits": torch.randn(
            num_layers, bsz, num_dn, num_prompts, generator=g
        ).requires_grad_(),
        "pred_boxes": random_boxes(num_layers, bsz, num_dn, g=g).requires_grad_(),
        "positive_index": pos,
        "positive_target": pos_t,
        "negative_index": neg,
        "num_groups": num_groups,
    }


def full_case(seed=0, num_layers=3, num_prompts=3, sizes=(2, 3), num_queries=6):
    g = torch.Generator().manual_seed(seed)
    targets = [
        make_target(torch.randint(0, num_prompts, (n,), generator=g), random_boxes(n, g=g))
        for n in sizes
    ]
    bsz = len(sizes)
    outputs = head(bsz, num_queries, num_prompts, g)
    outputs["aux_outputs"] = [head(bsz, num_queries, num_prompts, g) for _ in range(num_layers - 1)]
    outputs["enc_outputs"] = head(bsz, num_queries, num_prompts, g)
    outputs["dn_outputs"] = dn_outputs(targets, num_layers, num_prompts, 2, g)
    return outputs, targets


def criterion(outputs, targets, cfg=CFG, **kwargs):
    return SetCriterion(cfg)(outputs, targets, HungarianMatcher(cfg), **kwargs)


def test_sigmoid_focal_loss_equals_the_textbook_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(50, generator=g) > 0.5).double()
    p = logits.sigmoid()
    alpha, gamma = 0.3, 1.5
    expected = torch.where(
        targets == 1,
        -alpha * (1 - p) ** gamma * p.log(),
        -(1 - alpha) * p**gamma * (1 - p).log(),
    )
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha, gamma), expected)


def test_keys_name_every_layer_and_output():
    outputs, targets = full_case(num_layers=3)
    losses = criterion(outputs, targets)
    suffixes = ["", "_0", "_1", "_enc", "_dn_0", "_dn_1", "_dn_2"]
    expected = {t + s for t in TERMS for s in suffixes} | {"cardinality_error", "matched_iou"}
    assert set(losses) == expected
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in losses.values())
    off = LossConfig(aux_loss=False, enc_loss=False, dn_loss=False)
    assert set(criterion(outputs, targets, off)) == {*TERMS, "cardinality_error", "matched_iou"}


def test_class_loss_uses_deformable_detr_normalisation():
    outputs, targets = full_case(seed=1)
    losses = criterion(outputs, targets)
    indices = HungarianMatcher(CFG)(outputs, targets)
    logits = outputs["pred_logits"].detach()
    onehot = torch.zeros_like(logits)
    for b, (rows, cols) in enumerate(indices):
        onehot[b, rows, targets[b].labels[cols]] = 1
    num_boxes, num_queries = 5, logits.shape[1]
    focal = sigmoid_focal_loss(logits, onehot, CFG.focal_alpha, CFG.focal_gamma)
    expected = focal.mean(1).sum() / num_boxes * num_queries
    assert losses["loss_class"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_perfect_predictions_have_zero_box_loss_and_lower_class_loss():
    gt = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.4]])
    target = make_target([1, 0], gt)
    boxes = torch.tensor([[0.5, 0.5, 0.6, 0.6]]).repeat(4, 1)
    logits = torch.full((4, 2), -9.0)
    boxes[[3, 1]] = gt
    logits[[3, 1], [1, 0]] = 9.0
    perfect = criterion({"pred_logits": logits[None], "pred_boxes": boxes[None]}, [target])
    g = torch.Generator().manual_seed(0)
    rand = criterion(
        {"pred_logits": torch.randn(1, 4, 2, generator=g), "pred_boxes": random_boxes(1, 4, g=g)},
        [target],
    )
    assert perfect["loss_bbox"].item() == 0.0
    assert perfect["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert perfect["loss_class"] < rand["loss_class"]
    assert perfect["matched_iou"].item() == pytest.approx(1.0)
    assert perfect["cardinality_error"].item() == 0.0


def test_gradients_reach_every_output():
    outputs, targets = full_case(seed=2)
    weighted_loss(criterion(outputs, targets), CFG).backward()
    heads = [outputs, outputs["enc_outputs"], outputs["dn_outputs"], *outputs["aux_outputs"]]
    for out in heads:
        assert out["pred_logits"].grad.abs().sum() > 0
        assert out["pred_boxes"].grad.abs().sum() > 0


def test_dn_losses_match_a_hand_computation():
    outputs, targets = full_case(seed=3, num_layers=2, sizes=(1, 3))
    dn = outputs["dn_outputs"]
    losses = criterion(outputs, targets)
    norm = 4 * dn["num_groups"]  # 4 boxes in the batch, each rebuilt once per group
    for layer in range(2):
        logits = dn["pred_logits"][layer].detach()
        boxes = dn["pred_boxes"][layer].detach()
        onehot = torch.zeros_like(logits)  # negatives and padding stay all-zero
        l1 = giou = 0.0
        for b, t in enumerate(targets):
            for q, j in zip(dn["positive_index"][b], dn["positive_target"][b], strict=True):
                onehot[b, q, t.labels[j]] = 1
                l1 += (boxes[b, q] - t.boxes_cxcywh[j]).abs().sum()
                pair = box_ops.cxcywh_to_xyxy(torch.stack([boxes[b, q], t.boxes_cxcywh[j]]))
                giou += 1 - box_ops.generalized_box_iou(pair[:1], pair[1:])[0, 0]
        focal = sigmoid_focal_loss(logits, onehot, CFG.focal_alpha, CFG.focal_gamma).sum().item()
        l1, giou = float(l1), float(giou)
        assert losses[f"loss_class_dn_{layer}"].item() == pytest.approx(focal / norm, rel=1e-5)
        assert losses[f"loss_bbox_dn_{layer}"].item() == pytest.approx(l1 / norm, rel=1e-5)
        assert losses[f"loss_giou_dn_{layer}"].item() == pytest.approx(giou / norm, rel=1e-5)


def test_dn_targets_out_of_range_are_rejected():
    outputs, targets = full_case(seed=4)
    outputs["dn_outputs"]["positive_target"][0] = torch.tensor([0, 5, 0, 1])
    with pytest.raises(ValueError, match="same targets as the model"):
        criterion(outputs, targets)


def test_weighted_loss_is_the_hand_weighted_sum():
    cfg = LossConfig(loss_class=2.0, loss_bbox=3.0, loss_giou=0.5)
    terms = {
        "loss_class": torch.tensor(1.0),
        "loss_bbox_0": torch.tensor(2.0),
        "loss_giou_enc": torch.tensor(4.0),
        "loss_class_dn_3": torch.tensor(8.0),
        "matched_iou": torch.tensor(100.0),
        "loss_align": torch.tensor(1000.0),
    }
    assert weighted_loss(terms, cfg).item() == 2.0 * 1 + 3.0 * 2 + 0.5 * 4 + 2.0 * 8
    with pytest.raises(ValueError, match="no loss term"):
        weighted_loss({"matched_iou": torch.tensor(1.0)}, cfg)


def test_images_without_targets_push_every_logit_down():
    g = torch.Generator().manual_seed(5)
    outputs = head(2, 5, 3, g)
    targets = [make_target([], torch.zeros(0, 4)) for _ in range(2)]
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_class"] > 0 and losses["loss_bbox"] == 0 and losses["loss_giou"] == 0
    weighted_loss(losses, CFG).backward()
    assert (outputs["pred_logits"].grad > 0).all()  # descent lowers every score
    assert (outputs["pred_boxes"].grad == 0).all()


def test_zero_prompts_give_zero_losses_that_still_backpropagate():
    g = torch.Generator().manual_seed(6)
    outputs = head(2, 4, 0, g)
    targets = [make_target([], torch.zeros(0, 4)) for _ in range(2)]
    losses = criterion(outputs, targets)
    assert all(losses[t].item() == 0 and losses[t].requires_grad for t in TERMS)
    weighted_loss(losses, CFG).backward()
    assert outputs["pred_boxes"].grad is not None


def test_crowd_boxes_are_dropped_and_not_counted():
    g = torch.Generator().manual_seed(7)
    outputs = head(1, 6, 2, g)
    plain = make_target([0, 1], random_boxes(2, g=g))
    crowd_box = torch.tensor([[0.5, 0.5, 0.9, 0.9]])
    crowded = make_target(
        [0, 1, 1], torch.cat([plain.boxes_cxcywh, crowd_box]), iscrowd=[False, False, True]
    )
    with_crowd, without = criterion(outputs, [crowded]), criterion(outputs, [plain])
    for key in (*TERMS, "matched_iou", "cardinality_error"):
        torch.testing.assert_close(with_crowd[key], without[key])


def test_dn_positive_on_a_crowd_box_is_ignored():
    outputs, targets = full_case(seed=8, sizes=(2, 2))
    crowded = [dataclasses.replace(t, iscrowd=torch.tensor([False, True])) for t in targets]
    losses = criterion(outputs, crowded)
    dn = outputs["dn_outputs"]
    dn["pred_logits"].grad = None
    losses["loss_class_dn_0"].backward()
    crowd_queries = dn["positive_index"][0][dn["positive_target"][0] == 1]
    assert len(crowd_queries) == dn["num_groups"]
    assert (dn["pred_logits"].grad[0, 0, crowd_queries] == 0).all()


def test_num_boxes_override_rescales_every_term():
    outputs, targets = full_case(seed=9)
    base = criterion(outputs, targets)  # 5 boxes
    halved = criterion(outputs, targets, num_boxes=10.0)
    for key in (k for k in base if k.startswith("loss_")):
        assert halved[key].item() == pytest.approx(base[key].item() / 2, rel=1e-5)
    tiny = criterion(outputs, targets, num_boxes=0.25)  # clamped to 1, as DETR does
    assert tiny["loss_bbox"].item() == pytest.approx(base["loss_bbox"].item() * 5, rel=1e-5)


def test_num_boxes_is_averaged_over_processes(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert global_num_boxes(7) == 7.0
        assert global_num_boxes(0) == 1.0
    finally:
        dist.destroy_process_group()


def test_losses_are_float32_under_bf16_autocast():
    outputs, targets = full_case(seed=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
        low = {k: v.bfloat16() for k, v in low.items()}
        losses = criterion(low, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
