"""The decoder's box chaining is DINO's "look forward twice": layer i's output box is built on
layer i-1's refined box with its gradient, and the box gradient goes back exactly one layer."""

import numpy as np
import pytest
import torch
from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoDecoder

from workbench.data.collate import collate
from workbench.data.prompts import sample_training_prompts
from workbench.data.synthetic import ShapesConfig, ShapesDataset
from workbench.model.build import build_detector


@pytest.fixture(scope="module")
def decoder_call():
    """A tiny 3-layer detector with one box head per layer and the arguments its decoder received
    on a real batch. The box heads and the output LayerNorm are randomised: at initialisation
    every box delta is zero and the LayerNorm (after the layers' own) is nearly the identity."""
    torch.manual_seed(0)
    model = build_detector("tiny", decoder_layers=3, decoder_bbox_embed_share=False).eval()
    with torch.no_grad():
        for p in [*model.bbox_embed.parameters(), *model.model.decoder.layer_norm.parameters()]:
            p.normal_(0, 0.2)
    data = ShapesDataset(2, seed=3, cfg=ShapesConfig(image_size=96, object_size=(12, 40)))
    batch = collate([data[0], data[1]])
    prompts = sample_training_prompts(batch.targets, np.random.default_rng(0))
    captured = {}

    def capture(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs

    hook = model.model.decoder.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(batch.images, batch.pixel_mask, prompts)
    hook.remove()
    return model, captured["args"], captured["kwargs"]


def run_decoder(decoder_call, reference_requires_grad=False):
    """``(boxes per layer, initial reference)`` with gradients enabled."""
    model, args, kwargs = decoder_call
    queries, reference, *rest = args
    reference = reference.clone().requires_grad_(reference_requires_grad)
    _, boxes = model.model.decoder(queries, reference, *rest, **kwargs)
    return boxes, reference


def grads(output, module):
    """Gradient of ``output.sum()`` w.r.t. each parameter of ``module``; None where unreached."""
    params = list(module.parameters())
    return torch.autograd.grad(output.sum(), params, allow_unused=True, retain_graph=True)


def test_a_layers_box_loss_trains_the_previous_box_head_and_not_the_initial_reference(
    decoder_call,
):
    boxes, reference = run_decoder(decoder_call, reference_requires_grad=True)
    heads = decoder_call[0].bbox_embed
    assert all(g is not None and g.abs().sum() > 0 for g in grads(boxes[1], heads[0]))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(boxes[1], heads[1]))
    for box in boxes:  # the initial reference is detached on entry
        assert torch.autograd.grad(box.sum(), reference, allow_unused=True)[0] is None


def test_the_box_gradient_goes_back_exactly_one_layer(decoder_call):
    boxes, _ = run_decoder(decoder_call)
    heads = decoder_call[0].bbox_embed
    assert all(g is None for g in grads(boxes[2], heads[0]))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(boxes[2], heads[1]))
    assert all(g is None for g in grads(boxes[0], heads[1]))  # no gradient looks backwards


def test_boxes_equal_transformers_decoder_with_dinos_output_rule(decoder_call):
    """Independent forward: transformers' decoder refines the references (from the un-normed
    states); DINO's output rule puts each layer's delta, on the normed state, on the previous
    layer's refined reference (on the initial one for layer 0)."""
    model, (queries, reference, memory, features, prompts, heads), kwargs = decoder_call
    ours = model.model.decoder
    hf = GroundingDinoDecoder(model.config.to_hf()).eval()
    hf.layers, hf.layer_norm = ours.layers, ours.layer_norm
    hf.reference_points_head, hf.bbox_embed = ours.reference_points_head, heads
    assert kwargs.get("self_attn_mask") is None  # eval mode: no denoising queries
    with torch.no_grad():
        out = hf(
            inputs_embeds=queries,
            vision_encoder_hidden_states=memory,
            vision_encoder_attention_mask=features.valid,
            text_encoder_hidden_states=prompts,
            reference_points=reference,
            spatial_shapes=features.spatial_shapes,
            spatial_shapes_list=list(features.spatial_shapes_list),
            level_start_index=features.level_start_index,
            valid_ratios=features.valid_ratios,
            return_dict=True,
        )
        bases = [reference, *out.intermediate_reference_points.unbind(1)[:-1]]
        hiddens = out.intermediate_hidden_states.unbind(1)
        expected = [
            (head(h) + torch.special.logit(base, eps=1e-5)).sigmoid()
            for head, h, base in zip(heads, hiddens, bases, strict=True)
        ]
        _, boxes = ours(queries, reference, memory, features, prompts, heads, **kwargs)
    assert len(boxes) == 3
    for got, want in zip(boxes, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # chaining each layer's output box onto the previous output box gives other values
    with torch.no_grad():
        chained = (heads[2](hiddens[2]) + torch.special.logit(expected[1], eps=1e-5)).sigmoid()
    assert not torch.allclose(boxes[2], chained, atol=1e-3)
