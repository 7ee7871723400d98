"""Real Grounding-DINO checkpoints (transformers format) load into the visual-prompt detector."""

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    SwinConfig,
)

from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model.grounding_dino import from_grounding_dino


@pytest.fixture(scope="module")
def saved_gdino(tmp_path_factory):
    """A tiny random Grounding DINO saved by transformers' own save_pretrained."""
    torch.manual_seed(0)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=24,
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 2, 4],
            window_size=4,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=1100,
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=128,
        ),
        d_model=64,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        num_queries=30,
        max_text_len=32,
    )
    model = GroundingDinoForObjectDetection(cfg)
    folder = tmp_path_factory.mktemp("gdino")
    model.save_pretrained(folder)
    return folder, model.state_dict()


def test_every_shared_tensor_loads_unchanged(saved_gdino):
    folder, reference = saved_gdino
    model, _ = from_grounding_dino(str(folder))
    ours = model.state_dict()
    shared = [k for k in reference if k in ours]
    # everything but transformers' tied duplicate of the box heads exists in our model
    assert {k for k in reference if k not in ours} == {
        k for k in reference if k.startswith("model.decoder.bbox_embed.")
    }
    assert len(shared) > 250
    for key in shared:
        assert torch.equal(ours[key], reference[key]), key
    # the text encoder of the alignment loss is the checkpoint's BERT
    assert any(k.startswith("model.text_backbone.") for k in shared)


def test_the_report_names_what_stayed_new(saved_gdino):
    folder, _ = saved_gdino
    _, report = from_grounding_dino(str(folder))
    assert set(report.new) == {
        "model.prompt_encoder",
        "model.encoder_output_class_embed",
        "model.dn_content_proj",
        "model.align_logit_scale",
        "class_embed.0",
        "class_embed.1",
    }
    assert {"model.backbone", "model.encoder", "model.decoder", "bbox_embed.0"} <= set(
        report.loaded
    )
    assert report.mismatched == [] and report.unused == []
    assert "model.prompt_encoder" in str(report).split("new: ")[1]


def test_the_loaded_detector_detects_with_visual_prompts(saved_gdino):
    folder, _ = saved_gdino
    model, _ = from_grounding_dino(str(folder), dn_number=10)
    data = ShapesDataset(2, seed=0, cfg=ShapesConfig(image_size=128, object_size=(16, 40)))
    batch = collate([data[0], data[1]])
    prompts = sample_training_prompts(batch.targets, np.random.default_rng(0))
    with torch.no_grad():
        out = model.eval()(batch.images, batch.pixel_mask, prompts)
    assert out["pred_logits"].shape == (2, 30, prompts.num_prompts)
    assert torch.isfinite(out["pred_logits"]).all()
