"""Predictor latency against transformers' Grounding DINO of the same size, and re-prompting.

    python benchmarks/predictor_latency.py [--sizes tiny small T] [--repeats 10] \
        [--image-size 512] [--prompts 3] [--threads N]

Per size, one square synthetic image of ``--image-size`` pixels (the Predictor is set to that
size, so its resize is a no-op and every model sees the same pixels), ``--prompts`` classes of one
exemplar box each, batch 1, float32, ``torch.inference_mode()``. After one warm-up call the
variants below run in turn, ``--repeats`` times (so load on the machine hits them alike); each is
reported as its median and minimum in ms:

- ``predict_image``: ``Predictor.predict(image, prompts)``: backbone, prompt encoder, enhancer,
  query selection, decoder and the top-K post-processing into Detections;
- ``predict_encoded``: ``predict(encoded, prompts)`` on a cached ``EncodedImage`` (re-prompting the
  same image: prompt encoder onwards); ``predict_bank``: ``predict(encoded, bank)`` with the
  prompts already embedded (a saved prompt bank: enhancer onwards); ``encode``: the backbone alone;
- ``predict_image_bf16``, ``predict_encoded_bf16``: the first two with ``Predictor(...,
  autocast="bf16")`` (bf16 autocast on the CPU; ``bf16_top_score_abs_change``: the largest change of
  the image's top-100 scores, sorted, against float32);
- ``model``: the detector's own forward (no Predictor input checks, no post-processing);
- ``model_stacked``: the same weights with transformers' stacked deformable sampling put back in
  place of our level-by-level one (``workbench.model.deformable``);
- ``hf``: transformers' ``GroundingDinoForObjectDetection`` built from
  ``detector_config(size).to_hf()`` (random weights) with a 1-layer, 64-wide BERT reading a caption
  of ``--prompts`` ordinary tokens (no delimiters: each token attends to itself only, as our prompt
  tokens do); its forward only, no ``post_process``. GroundingDinoConfig has no MobileNetV2, so
  for ``small`` the HF model gets a copy of our backbone and input projections.

Writes benchmarks/results/predictor_latency.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BertConfig, GroundingDinoForObjectDetection
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shapes_config, write_result

from workbench import boxes as box_ops
from workbench.data.synthetic import ShapesDataset
from workbench.model.build import build_detector, detector_config
from workbench.model.deformable import LevelwiseDeformableSampling
from workbench.predictor import Predictor
from workbench.types import Exemplar, PromptSet, VisualPrompt

HF_TEXT = dict(
    vocab_size=2048,
    hidden_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=128,
)
CAPTION_IDS = (2000, 2048)  # ordinary word ids: BERT's [CLS], [SEP], "." and "?" lie below 2000


def image_and_prompts(image_size: int, num_prompts: int):
    """``[3, S, S]`` shapes image and ``num_prompts`` one-box prompts on it (its ground-truth
    boxes in turn, repeated when there are fewer), as VisualPrompts and as a PromptSet."""
    image, target = ShapesDataset(1, seed=0, cfg=shapes_config(image_size))[0]
    k = torch.arange(num_prompts) % len(target)
    boxes_xyxy = target.boxes_xyxy()[k]
    prompts = [
        VisualPrompt(f"p{u}", (Exemplar(tuple(b)),), prompt_id=u)
        for u, b in enumerate(boxes_xyxy.tolist())
    ]
    prompt_set = PromptSet(
        boxes_cxcywh=box_ops.convert(
            boxes_xyxy, "xyxy", "cxcywh", dst_normalized=True, size_hw=(image_size, image_size)
        ),
        image_index=torch.zeros(num_prompts, dtype=torch.int64),
        prompt_index=torch.arange(num_prompts),
        labels=torch.full((num_prompts,), -1),
    )
    return image, prompts, prompt_set


def hf_detector(size: str, ours: torch.nn.Module) -> GroundingDinoForObjectDetection:
    """transformers' Grounding DINO with our size's architecture and a small BERT."""
    config = detector_config(size)
    hf_config = config.to_hf()
    hf_config.text_config = BertConfig(**HF_TEXT)
    hf = GroundingDinoForObjectDetection(hf_config)
    if config.backbone != "hf":  # a backbone GroundingDinoConfig cannot describe: share ours
        hf.model.backbone = copy.deepcopy(ours.model.backbone)
        hf.model.input_proj_vision = copy.deepcopy(ours.model.input_proj_vision)
    return hf.eval()


def with_stacked_sampling(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` running transformers' stacked deformable sampling."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LevelwiseDeformableSampling):
                setattr(module, name, MultiScaleDeformableAttention())
    return model


def timed(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Median and minimum ms of each variant; one warm-up call each, then round-robin."""
    for fn in variants.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {
        name: {"median_ms": 1e3 * statistics.median(s), "min_ms": 1e3 * min(s)}
        for name, s in seconds.items()
    }


def measure(size: str, image_size: int, num_prompts: int, repeats: int) -> dict:
    torch.manual_seed(0)
    ours = build_detector(size).eval()
    stacked = with_stacked_sampling(ours)
    hf = hf_detector(size, ours)
    image, prompts, prompt_set = image_and_prompts(image_size, num_prompts)
    predictor = Predictor(ours, min_size=image_size, max_size=image_size)
    encoded = predictor.encode(image)
    predictor_bf16 = Predictor(ours, min_size=image_size, max_size=image_size, autocast="bf16")
    encoded_bf16 = predictor_bf16.encode(image)
    tokens = encoded.features.tokens.shape[1]
    if tokens < ours.config.num_queries:  # transformers' query selection needs enough tokens
        raise SystemExit(
            f"--image-size {image_size} gives {tokens} image tokens, fewer than the "
            f"{ours.config.num_queries} queries of size {size!r}; use a larger --image-size"
        )
    bank = predictor.embed_prompts(prompts, searched=encoded)
    pixels, mask = image[None], torch.ones(1, image_size, image_size, dtype=torch.bool)
    hf_pixels = (pixels - ours.pixel_mean) / ours.pixel_std  # ours normalises inside
    caption = torch.randint(
        *CAPTION_IDS, (1, num_prompts), generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        ms = timed(
            {
                "predict_image": lambda: predictor.predict(image, prompts),
                "predict_encoded": lambda: predictor.predict(encoded, prompts),
                "predict_bank": lambda: predictor.predict(encoded, bank),
                "predict_image_bf16": lambda: predictor_bf16.predict(image, prompts),
                "predict_encoded_bf16": lambda: predictor_bf16.predict(encoded_bf16, prompts),
                "encode": lambda: predictor.encode(image),
                "model": lambda: ours(pixels, mask, prompt_set),
                "model_stacked": lambda: stacked(pixels, mask, prompt_set),
                "hf": lambda: hf(pixel_values=hf_pixels, pixel_mask=mask, input_ids=caption),
            },
            repeats,
        )
        top = [
            p.predict(image, prompts, score_threshold=0.0).scores.sort(descending=True).values[:100]
            for p in (predictor, predictor_bf16)
        ]
    median = {name: v["median_ms"] for name, v in ms.items()}
    return {
        "image_size": image_size,
        "prompts": num_prompts,
        "repeats": repeats,
        "queries": ours.config.num_queries,
        "image_tokens": tokens,
        "parameters": {
            "ours": sum(p.numel() for p in ours.parameters()),
            "hf": sum(p.numel() for p in hf.parameters()),
        },
        "ms": ms,
        "ratio_predictor_over_hf": median["predict_image"] / median["hf"],
        "ratio_model_over_hf": median["model"] / median["hf"],
        "ratio_model_stacked_over_hf": median["model_stacked"] / median["hf"],
        "predictor_overhead_ms": median["predict_image"] - median["model"],
        "reprompt_speedup": median["predict_image"] / median["predict_encoded"],
        "bank_speedup": median["predict_image"] / median["predict_bank"],
        "bf16_over_fp32": median["predict_image_bf16"] / median["predict_image"],
        "reprompt_bf16_over_fp32": median["predict_encoded_bf16"] / median["predict_encoded"],
        "bf16_top_score_abs_change": float((top[1] - top[0]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "T"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=512, help="square image side, pixels")
    parser.add_argument("--prompts", type=int, default=3, help="classes, one exemplar box each")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for size in args.sizes:
        r = results[size] = measure(size, args.image_size, args.prompts, args.repeats)
        m = {name: v["median_ms"] for name, v in r["ms"].items()}
        print(
            f"{size}: predict {m['predict_image']:.1f} ms, model {m['model']:.1f} ms, "
            f"HF {m['hf']:.1f} ms (ours/HF {r['ratio_predictor_over_hf']:.2f}); re-prompt "
            f"{m['predict_encoded']:.1f} ms, with a bank {m['predict_bank']:.1f} ms"
        )
    print(write_result("predictor_latency", {"sizes": results}))


if __name__ == "__main__":
    main()
