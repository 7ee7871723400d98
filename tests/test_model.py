"""The visual-prompt detector: output contract, prompt encoder, denoising, sizes, save / load."""

import pickle

import numpy as np
import pytest
import torch

from workbench.checkpoint import CheckpointError
from workbench.data.collate import collate
from workbench.data.prompts import assign_targets, sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model.build import build_detector, from_pretrained, save_pretrained
from workbench.package_files import package_file
from workbench.types import PromptSet


@pytest.fixture(scope="module")
def batch():
    data = ShapesDataset(3, seed=5, cfg=ShapesConfig(image_size=128, object_size=(16, 40)))
    batch = collate([data[i] for i in range(3)])
    batch.prompts = sample_training_prompts(batch.targets, np.random.default_rng(0))
    return batch


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_detector("tiny")


def test_tiny_is_under_two_million_parameters(tiny):
    assert sum(p.numel() for p in tiny.parameters()) < 2_000_000


def test_output_follows_the_contract(tiny, batch):
    tiny.eval()
    out = tiny(batch.images, batch.pixel_mask, batch.prompts)
    b, u, q, layers = (
        3,
        batch.prompts.num_prompts,
        tiny.config.num_queries,
        tiny.config.decoder_layers,
    )
    assert out["pred_logits"].shape == (b, q, u) and out["pred_boxes"].shape == (b, q, 4)
    assert len(out["aux_outputs"]) == layers - 1
    assert out["enc_outputs"]["pred_logits"].shape == (b, q, u)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    # queries are ordered by selection score, which is the encoder logit's max over prompts
    scores = out["select_logits"]
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    torch.testing.assert_close(scores, out["enc_outputs"]["pred_logits"].max(-1).values)
    full = tiny.selection_logits(
        tiny.extract_features(batch.images, batch.pixel_mask), out["prompt_embeddings"]["classes"]
    )
    torch.testing.assert_close(full.gather(1, out["select_index"]), scores)
    assert out["dn_outputs"] is None  # no targets, no denoising


def test_class_heads_start_at_the_prior(tiny):
    for head in [*tiny.class_embed, tiny.model.encoder_output_class_embed]:
        assert torch.sigmoid(head.bias).item() == pytest.approx(0.01, rel=1e-4)


def test_gradients_reach_every_trainable_module(batch):
    torch.manual_seed(0)
    model = build_detector("tiny").train()
    targets = assign_targets(batch.targets, batch.prompts.labels)
    out = model(batch.images, batch.pixel_mask, batch.prompts, targets)
    layers = [out, *out["aux_outputs"], out["enc_outputs"]]
    loss = sum(o["pred_logits"].sigmoid().mean() + o["pred_boxes"].mean() for o in layers)
    loss = loss + out["dn_outputs"]["pred_logits"].mean() + out["select_logits"].mean()
    loss.backward()
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert frozen == []


def test_each_exemplar_embedding_ignores_the_other_boxes(tiny, batch):
    tiny.eval()
    feats = tiny.extract_features(batch.images, batch.pixel_mask)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.2], [0.5, 0.5, 0.4, 0.4]])
    both = PromptSet(
        boxes, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    )
    alone = PromptSet(boxes[1:2], torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    with torch.no_grad():
        a = tiny.encode_prompts(feats, both).exemplars
        b = tiny.encode_prompts(feats, alone).exemplars
    torch.testing.assert_close(a[1], b[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different boxes do give different embeddings


def test_class_embedding_is_the_mean_of_its_exemplars(tiny, batch):
    feats = tiny.extract_features(batch.images, batch.pixel_mask)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.2]])
    ps = PromptSet(boxes, torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([4]))
    with torch.no_grad():
        emb = tiny.encode_prompts(feats, ps)
    torch.testing.assert_close(emb.classes[0], emb.exemplars.mean(0))


def test_denoising_queries_do_not_leak_into_matching_queries(batch):
    torch.manual_seed(0)
    model = build_detector("tiny").train()
    targets = assign_targets(batch.targets, batch.prompts.labels)
    with torch.no_grad():
        torch.manual_seed(1)  # the same stochastic depth in the backbone for both passes
        plain = model(batch.images, batch.pixel_mask, batch.prompts)
        torch.manual_seed(1)
        with_dn = model(batch.images, batch.pixel_mask, batch.prompts, targets)
    dn = with_dn["dn_outputs"]
    assert dn is not None and dn["pred_logits"].shape[0] == model.config.decoder_layers
    # the attention mask hides the denoising queries: matching queries compute the same thing
    torch.testing.assert_close(with_dn["pred_logits"], plain["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(with_dn["pred_boxes"], plain["pred_boxes"], rtol=1e-4, atol=1e-4)
    for b, t in enumerate(targets):
        assert len(dn["positive_index"][b]) == len(t) * dn["num_groups"]
        assert set(dn["positive_index"][b].tolist()).isdisjoint(dn["negative_index"][b].tolist())


def test_no_prompt_is_a_clear_error(tiny, batch):
    feats = tiny.extract_features(batch.images, batch.pixel_mask)
    with pytest.raises(ValueError, match="no prompts"):
        tiny.detect(feats, torch.zeros(0, tiny.config.d_model))


def test_save_and_load_round_trip(tmp_path, tiny, batch):
    tiny.eval()
    save_pretrained(tiny, tmp_path / "det")
    loaded = from_pretrained(tmp_path / "det")
    for (name, a), (_, b) in zip(
        tiny.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with torch.no_grad():
        x = tiny(batch.images, batch.pixel_mask, batch.prompts)["pred_logits"]
        y = loaded(batch.images, batch.pixel_mask, batch.prompts)["pred_logits"]
    assert torch.equal(x, y)


class _Exploit:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickled_checkpoint_is_refused_without_running_it(tmp_path, tiny):
    folder = save_pretrained(tiny, tmp_path / "det")
    exploit = _Exploit()
    exploit.marker = str(tmp_path / "pwned")
    (folder / "model.safetensors").write_bytes(pickle.dumps(exploit))
    with pytest.raises(CheckpointError, match="pickle"):
        from_pretrained(folder)
    assert not (tmp_path / "pwned").exists()


def test_truncated_weights_and_bad_manifests_are_named(tmp_path, tiny):
    folder = save_pretrained(tiny, tmp_path / "det")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        from_pretrained(folder)
    (folder / "checkpoint.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"checkpoint\.json"):
        from_pretrained(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")


def test_small_uses_the_imagenet_mobilenet():
    from workbench.model.backbone import MOBILENET_DIST, MOBILENET_FILE

    model = build_detector("small")
    state = torch.load(package_file(MOBILENET_DIST, MOBILENET_FILE), weights_only=True)
    conv = model.model.backbone.conv_encoder.features[0][0].weight
    assert torch.equal(conv, state["features.0.0.weight"])


@pytest.mark.slow
def test_paper_size_t_builds_and_runs_a_forward_pass():
    data = ShapesDataset(1, seed=2, cfg=ShapesConfig(image_size=320))
    one = collate([data[0]])
    prompts = sample_training_prompts(one.targets, np.random.default_rng(0))
    model = build_detector("T").eval()
    assert model.config.num_queries == 900 and len(model.model.decoder.layers) == 6
    with torch.no_grad():
        out = model(one.images, one.pixel_mask, prompts)
    assert out["pred_logits"].shape == (1, 900, prompts.num_prompts)
    assert torch.isfinite(out["pred_boxes"]).all() and torch.isfinite(out["pred_logits"]).all()


def test_a_trusted_legacy_state_dict_converts_to_safetensors(tmp_path, tiny):
    from workbench.model.build import convert_legacy

    torch.save({"model": tiny.state_dict()}, tmp_path / "legacy.pth")
    convert_legacy(tmp_path / "legacy.pth", tiny.config, tmp_path / "converted")
    loaded = from_pretrained(tmp_path / "converted")
    pairs = zip(tiny.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_half_precision_export_halves_the_file_and_loads_back(tmp_path, tiny):
    from workbench.model.export import main as export_main

    save_pretrained(tiny, tmp_path / "full")
    assert export_main([str(tmp_path / "full"), str(tmp_path / "half")]) == 0
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    half = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half < 0.55 * full
    loaded = from_pretrained(tmp_path / "half")
    for key, value in tiny.state_dict().items():
        if value.is_floating_point():
            assert loaded.state_dict()[key].dtype == torch.float32
            torch.testing.assert_close(loaded.state_dict()[key], value, atol=2e-3, rtol=1e-3)
