"""Checkpoints: exact round trips without pickle, atomic writes, clear refusals."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from workbench import checkpoint as ckpt
from workbench.checkpoint import (
    CheckpointError,
    find_latest,
    load_checkpoint,
    load_legacy_state_dict,
    save_checkpoint,
    save_run_checkpoint,
)
from workbench.training_state import restore_training_state, training_state


class Tied(nn.Module):
    """A backbone, a norm and a head whose weight is the embedding table (tied)."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.embed = nn.Embedding(5, width)
        self.backbone = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.norm(self.backbone(self.embed(x))))


def trained(
    seed: int = 0,
) -> tuple[Tied, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    for _ in range(3):
        model(torch.tensor([1, 2, 3])).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def save(path, model, opt, sched, **kw):
    state = training_state(opt, sched, position={"global_step": 3})
    objective = {"reference": [p.detach().clone() for p in model.parameters()], "count": 2}
    return save_checkpoint(path, model, {"width": 6}, state, objective, **kw)


def test_round_trip_is_exact_and_uses_no_pickle(tmp_path):
    model, opt, sched = trained()
    random.seed(4)
    np.random.seed(4)
    torch.manual_seed(4)
    path = save(tmp_path / "c", model, opt, sched, full_config={"train": {"lr": 0.01}})
    expected = (random.random(), np.random.rand(), torch.rand(2))  # drawn after the save
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint.json",
        "model.safetensors",
        "state.json",
        "state.safetensors",
    ]
    structure = json.loads((path / "state.json").read_text())
    optimizer_json = structure["trainer"]["optimizer"]
    # Step counts and hyper-parameters live in JSON, moments in safetensors by parameter index.
    assert optimizer_json["state"]["__intkeys__"]["0"]["step"]["__scalar__"] == 3.0
    assert optimizer_json["state"]["__intkeys__"]["0"]["exp_avg"] == {
        "__tensor__": "/trainer/optimizer/state/0/exp_avg"
    }
    assert optimizer_json["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]

    fresh, fresh_opt, fresh_sched = trained(seed=1)
    loaded = load_checkpoint(path, fresh)
    restore_training_state(loaded.trainer_state, loaded.path, fresh_opt, fresh_sched)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])
    assert fresh.head.weight is fresh.embed.weight  # still tied
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert str(fresh_opt.state_dict()) == str(opt.state_dict())
    assert fresh_sched.state_dict() == sched.state_dict()
    assert loaded.model_config == {"width": 6}
    assert loaded.full_config == {"train": {"lr": 0.01}}
    assert loaded.objective_state["count"] == 2
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.objective_state["reference"], model.parameters(), strict=True)
    )


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = trained()[0]
    first = save_run_checkpoint(tmp_path, 1, model, {"width": 6}, keep=3)
    before = model.backbone.weight.detach().clone()
    with torch.no_grad():
        model.backbone.weight.add_(1.0)

    def crash(*args, **kwargs):  # the model file is already written when the state file fails
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_run_checkpoint(tmp_path, 2, model, {"width": 6}, {"position": 2}, keep=3)
    assert find_latest(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", first.name]
    fresh = Tied()
    load_checkpoint(tmp_path, fresh)
    assert torch.equal(fresh.backbone.weight, before)

    # A hard kill leaves a temporary directory and no pointer update: both are ignored.
    (tmp_path / "checkpoints" / ".tmp-step_000000002-99").mkdir()
    (tmp_path / "checkpoints" / "step_000000003").mkdir()  # no checkpoint.json: incomplete
    assert find_latest(tmp_path) == first


def test_latest_pointer_and_pruning(tmp_path):
    model = Tied()
    for step in (1, 2, 3, 4):
        save_run_checkpoint(tmp_path, step, model, {}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_000000003", "step_000000004"]
    assert find_latest(tmp_path).name == "step_000000004"
    # A run resumed from an earlier point abandons the later checkpoints.
    save_run_checkpoint(tmp_path, 2, model, {}, keep=2)
    assert find_latest(tmp_path).name == "step_000000002"
    assert not (tmp_path / "checkpoints" / "step_000000004").exists()


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    with evil.open("wb") as f:
        pickle.dump({"w": Exploit(marker)}, f, protocol=2)
    zipped = tmp_path / "weights_zip.pth"
    torch.save({"w": Exploit(marker)}, zipped)
    marker.unlink(missing_ok=True)  # torch.save does not run __reduce__'s callable, but be sure

    for path in (evil, zipped):
        with pytest.raises(CheckpointError, match="refused") as err:
            load_checkpoint(path, Tied())
        assert str(path) in str(err.value) and "load_legacy_state_dict" in str(err.value)
        with pytest.raises(CheckpointError, match="refused"):
            load_legacy_state_dict(path)
    # Disguised as the weights of a checkpoint directory.
    good = save_checkpoint(tmp_path / "c", Tied(), {})
    os.replace(evil, good / "model.safetensors")
    with pytest.raises(CheckpointError, match="Python pickle"):
        load_checkpoint(good, Tied())
    assert not marker.exists()


def test_legacy_tensors_load_with_weights_only(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    assert torch.equal(load_legacy_state_dict(tmp_path / "ok.pth")["w"], torch.ones(2))


def test_damaged_or_missing_files_and_mismatched_models_give_clear_errors(tmp_path):
    model, opt, sched = trained()
    path = save(tmp_path / "c", model, opt, sched)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(path, Tied())
    assert str(weights) in str(err.value) and "earlier checkpoint" in str(err.value)

    path = save(tmp_path / "flipped", model, opt, sched)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one weight changed
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(path, Tied())

    bare = tmp_path / "bare.safetensors"  # no manifest: safetensors itself finds the damage
    save_file({"w": torch.ones(100)}, bare)
    bare.write_bytes(bare.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(bare, nn.Linear(10, 10))

    path = save(tmp_path / "d", model, opt, sched)
    (path / "state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"state\.safetensors is missing"):
        load_checkpoint(path)

    path = save(tmp_path / "e", model, opt, sched)
    with pytest.raises(CheckpointError, match=r"differ in shape .*backbone.weight.*model_config"):
        load_checkpoint(path, Tied(width=8))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "empty_run")


def test_saving_never_deletes_a_folder_that_is_not_a_checkpoint(tmp_path):
    model = trained()[0]
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match=r"is not a saved detector.*notes\.txt.*new or empty"):
        save_checkpoint(folder, model, {"width": 6})
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    (folder / "notes.txt").unlink()
    save_checkpoint(folder, model, {"width": 6})  # an empty folder is fine
    # A checkpoint that also holds a file of the user's: refused too, the file kept.
    (folder / "README.md").write_text("about this model")
    with pytest.raises(CheckpointError, match=r"also holds README\.md"):
        save_checkpoint(folder, model, {"width": 6})
    assert (folder / "README.md").read_text() == "about this model"
    with pytest.raises(CheckpointError, match="is a file"):
        save_checkpoint(folder / "README.md", model, {"width": 6})


def test_a_checkpoint_is_replaced_in_one_step(tmp_path, monkeypatch):
    first, second = trained(0)[0], trained(1)[0]
    folder = save_checkpoint(tmp_path / "model", first, {"width": 6})
    swaps = []
    real = ckpt._exchange
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: swaps.append((a, b)) or real(a, b))
    save_checkpoint(folder, second, {"width": 6})
    assert [b for _, b in swaps] == [folder]
    loaded = Tied()
    load_checkpoint(folder, loaded)
    assert torch.equal(loaded.backbone.weight, second.backbone.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it


def test_save_pretrained_and_export_refuse_what_they_would_destroy(tmp_path):
    from workbench.model.build import build_detector, save_pretrained
    from workbench.model.export import export_half, main
    from workbench.safe_paths import OutputError

    run = tmp_path / "run"  # a training run's folder is not a detector folder
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    model = build_detector("tiny")
    with pytest.raises(CheckpointError, match="is not a saved detector"):
        save_pretrained(model, run)
    assert (run / "metrics.jsonl").read_text() == "{}\n"
    source = save_pretrained(model, tmp_path / "sft")
    save_pretrained(model, source)  # a detector folder is replaced
    half = export_half(source, tmp_path / "half")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        export_half(source, half)
    assert main([str(source), str(half), "--force"]) == 0
    with pytest.raises(OutputError, match="is the source"):
        export_half(source, source, force=True)
