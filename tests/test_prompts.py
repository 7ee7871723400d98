import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from workbench.data.dataset import Category, Instance
from workbench.data.prompts import (
    assign_targets,
    build_prompt_set,
    cross_image_prompts,
    interactive_prompts,
    one_hot_targets,
    sample_training_prompts,
)
from workbench.types import Exemplar, Target, VisualPrompt

CATS = [Category(id=10 + i, name=f"c{i}", label=i) for i in range(5)]


def make_target(labels, image_id=1, crowd=None, size=(100, 200)):
    n = len(labels)
    g = torch.Generator().manual_seed(image_id)
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=g)
    wh = 0.05 + 0.1 * torch.rand(n, 2, generator=g)
    return Target(
        boxes_cxcywh=torch.cat([centre, wh], 1),
        labels=torch.tensor(labels, dtype=torch.int64),
        image_id=image_id,
        size=size,
        orig_size=size,
        iscrowd=None if crowd is None else torch.tensor(crowd),
        annotation_ids=torch.arange(n) + 100 * image_id,
    )


labels_st = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=8), min_size=1, max_size=4)


@given(labels_st, st.integers(0, 2**31))
def test_one_instance_per_present_class_shared_by_the_batch(batch_labels, seed):
    targets = [make_target(lab, image_id=i + 1) for i, lab in enumerate(batch_labels)]
    prompts = sample_training_prompts(targets, np.random.default_rng(seed))
    present = sorted({x for lab in batch_labels for x in lab})
    assert prompts.labels.tolist() == present
    assert prompts.num_exemplars == prompts.num_prompts == len(present)
    assert prompts.prompt_index.tolist() == list(range(len(present)))
    for u in range(len(present)):
        b = int(prompts.image_index[u])
        rows = (targets[b].labels == prompts.labels[u]).nonzero().flatten()
        # the chosen box is one of that class's boxes in its source image
        assert any(torch.equal(targets[b].boxes_cxcywh[r], prompts.boxes_cxcywh[u]) for r in rows)


@given(labels_st, st.integers(0, 2**31))
def test_sampling_is_reproducible_from_its_seed(batch_labels, seed):
    targets = [make_target(lab, image_id=i + 1) for i, lab in enumerate(batch_labels)]
    a = sample_training_prompts(targets, np.random.default_rng(seed))
    b = sample_training_prompts(targets, np.random.default_rng(seed))
    assert torch.equal(a.boxes_cxcywh, b.boxes_cxcywh) and torch.equal(a.image_index, b.image_index)


def test_every_instance_can_be_chosen_roughly_uniformly():
    targets = [make_target([0, 0, 1]), make_target([0], image_id=2)]
    counts = {}
    for seed in range(3000):
        p = sample_training_prompts(targets, np.random.default_rng(seed))
        key = int(p.annotation_ids[0])
        counts[key] = counts.get(key, 0) + 1
    assert sorted(counts) == [100, 101, 200]  # the three class-0 instances, across both images
    assert all(800 < c < 1200 for c in counts.values())


def test_crowd_boxes_are_never_prompts():
    targets = [make_target([0, 0, 1], crowd=[True, False, True])]
    for seed in range(50):
        p = sample_training_prompts(targets, np.random.default_rng(seed))
        assert p.labels.tolist() == [0] and int(p.annotation_ids[0]) == 101


def test_targets_become_one_hot_over_prompts_and_absent_classes_are_negatives():
    targets = [make_target([3, 1, 3]), make_target([4], image_id=2)]
    prompts = sample_training_prompts(targets, np.random.default_rng(0))
    assert prompts.labels.tolist() == [1, 3, 4]
    first, second = assign_targets(targets, prompts.labels)
    assert first.labels.tolist() == [1, 0, 1]
    assert one_hot_targets(first, 3).tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]
    # image 2 has no class-1 or class-3 object: those prompts are its negatives (all-zero columns)
    assert one_hot_targets(second, 3).sum(0).tolist() == [0, 0, 1]


def test_swapping_the_exemplar_changes_prompts_not_targets():
    targets = [make_target([0, 0, 1]), make_target([0, 1], image_id=2)]
    draws = [sample_training_prompts(targets, np.random.default_rng(s)) for s in range(20)]
    assert len({tuple(d.annotation_ids.tolist()) for d in draws}) > 1
    assigned = [assign_targets(targets, d.labels) for d in draws]
    for other in assigned[1:]:
        for a, b in zip(assigned[0], other, strict=True):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.boxes_cxcywh, b.boxes_cxcywh)


def test_unprompted_classes_are_dropped_from_targets():
    (t,) = assign_targets([make_target([0, 2, 4])], torch.tensor([4, 0]))
    assert t.labels.tolist() == [1, 0] and t.annotation_ids.tolist() == [100, 102]


def test_interactive_prompts_come_from_the_image_and_are_seeded():
    target = make_target([0, 0, 0, 2], image_id=7)
    prompts = interactive_prompts(target, CATS, exemplars_per_class=2, seed=3)
    assert [p.label for p in prompts] == [0, 2]
    assert [len(p.exemplars) for p in prompts] == [2, 1]
    assert all(e.image_id is None for p in prompts for e in p.exemplars)
    boxes = target.boxes_xyxy().tolist()
    for p in prompts:
        for e in p.exemplars:
            assert list(e.box_xyxy) == pytest.approx(boxes[e.annotation_id - 700])
    again = interactive_prompts(target, CATS, exemplars_per_class=2, seed=3)
    assert again == prompts
    others = {interactive_prompts(target, CATS, seed=s)[0].exemplars for s in range(20)}
    assert len(others) > 1


def test_cross_image_prompts_use_other_images_and_spread_over_them():
    insts = [
        Instance(
            image_index=i,
            image_id=i + 1,
            annotation_id=10 * i + j,
            label=j % 2,
            box_xyxy=(1.0, 2.0, 3.0, 4.0),
        )
        for i in range(4)
        for j in range(3)
    ]
    prompts = cross_image_prompts(insts, CATS, exemplars_per_class=3, seed=1, exclude_image_ids=[2])
    assert [p.label for p in prompts] == [0, 1]
    for p in prompts:
        ids = [e.image_id for e in p.exemplars]
        assert 2 not in ids and len(set(ids)) == 3  # three distinct images among {1, 3, 4}
    assert (
        cross_image_prompts(insts, CATS, exemplars_per_class=3, seed=1, exclude_image_ids=[2])
        == prompts
    )


def test_build_prompt_set_normalises_per_source_image():
    prompts = [
        VisualPrompt("a", (Exemplar((10, 20, 30, 60), None), Exemplar((0, 0, 50, 50), "ref"))),
        VisualPrompt("b", (Exemplar((0, 0, 100, 100), "ref"),), prompt_id=1),
    ]
    ps = build_prompt_set(prompts, [None, "ref"], {None: (100, 200), "ref": (50, 50)})
    assert ps.prompt_index.tolist() == [0, 0, 1] and ps.image_index.tolist() == [0, 1, 1]
    torch.testing.assert_close(ps.boxes_cxcywh[0], torch.tensor([0.1, 0.4, 0.1, 0.4]))
    torch.testing.assert_close(ps.boxes_cxcywh[1], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    with pytest.raises(KeyError, match="pass that image as a reference"):
        build_prompt_set(prompts, [None], {None: (100, 200)})


def test_a_prompt_needs_a_box():
    with pytest.raises(ValueError, match="draw at least one box"):
        VisualPrompt("empty", ())
