"""The single inference path: the app, notebooks, evaluation and FiftyOne all call the Predictor.

::

    predictor = Predictor.from_checkpoint("runs/shapes/best", min_size=256, max_size=512)
    dets = predictor.predict(image, [VisualPrompt("cell", (Exemplar((10, 20, 50, 60)),))])
    encoded = predictor.encode(image)                 # backbone once, re-prompt many times
    bank = predictor.embed_prompts(prompts, {"ref": ref_image}, searched=None)
    bank.save("banks/cells.safetensors"); dets = predictor.predict(other_image, bank)

Boxes: prompts and detections are absolute xyxy pixels of their ORIGINAL image (before the
resize). Inside, images are resized (shorter side ``min_size``, longer side at most ``max_size``,
as the data pipeline's :func:`~workbench.data.transforms.resized_hw`) and padded to a multiple of
32; the model's boxes are normalised cxcywh of the resized, unpadded image. The resize maps the
whole image onto the whole resized image, so a fraction of one is the same fraction of the other:
pixels = fraction x original size, then clipped to the image.

Post-processing and box conversion: :mod:`workbench.postprocess`.

The Predictor keeps no per-image state (a multi-user app shares one):
:class:`EncodedImage` and :class:`~workbench.prompt_bank.PromptBank` are values
the caller holds. Every call runs under ``torch.inference_mode()`` with the model in eval mode,
restoring the modes it found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench import boxes as box_ops
from workbench.config import Config
from workbench.data.collate import pad_images
from workbench.data.transforms import resized_hw
from workbench.inputs import (
    ImageInput,
    InputError,
    check_bank,
    check_prompts,
    prompts_per_image,
    repaired_box,
    to_rgb_tensor,
)
from workbench.model.detector import ImageFeatures
from workbench.postprocess import (
    QueryOutputs,
    boxes_to_pixels,
    check_score_threshold,
    detections_from_outputs,
)
from workbench.prompt_bank import PromptBank, model_fingerprint
from workbench.types import Detections, PromptSet, VisualPrompt

# DINO-R1's test resize (shorter side, cap on the longer side), pixels: the sizes for a model
# whose checkpoint does not say what it was trained at.
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333

Key = int | str | None
Prompts = Sequence[VisualPrompt] | PromptBank
_KEPT = ("pred_logits", "pred_boxes", "select_index", "select_logits")  # per-image outputs used


@dataclass(frozen=True)
class EncodedImage:
    """Backbone features of one image; hold it to prompt the same image again cheaply.

    What :meth:`Predictor.encode` returns and every prompting call accepts back: a plain frozen
    value, so the caller (a notebook variable, a ``gr.State`` per user) holds it, not the Predictor.

    Attributes:
        features: the model's :class:`ImageFeatures`, batch of 1, on the Predictor's device.
        image_size: ``(height, width)`` of the original image (the frame of every box).
        resized_size: ``(height, width)`` the model saw, before padding.
    """

    features: ImageFeatures
    image_size: tuple[int, int]
    resized_size: tuple[int, int]

    def __repr__(self) -> str:
        return f"EncodedImage(image_size={self.image_size}, resized_size={self.resized_size})"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode and restore each module's own flag afterwards.

    A model already fully in eval mode is not touched, so concurrent calls (a shared app
    Predictor) never race on the flags.
    """
    flags = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in flags):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _size_of(image: Tensor | EncodedImage) -> tuple[int, int]:
    return image.image_size if isinstance(image, EncodedImage) else tuple(image.shape[-2:])


class Predictor:
    """Visual-prompt detection on single images or batches; see the module docstring.

    Args:
        model: a :class:`~workbench.model.detector.VisualPromptDetector`.
        min_size, max_size: resize rule (shorter side, cap on the longer side), pixels. Use the
            sizes the model was trained at (``data.min_size`` / ``data.max_size``, what
            :meth:`from_checkpoint` reads from the checkpoint); 800 / 1333 is DINO-R1's test
            resize.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``; the model is moved there.
        max_detections: default K of the top-K.
        max_prompts, max_exemplars: refuse more classes / boxes per call than this.
        autocast: ``None`` (float32), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA).
        run_config: the resolved config of the run that trained the model, None when unknown;
            its GRQO and loss settings are what the per-query analysis computes rewards,
            advantages and muted queries with.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        min_size: int = DEFAULT_MIN_SIZE,
        max_size: int = DEFAULT_MAX_SIZE,
        device: str | torch.device = "cpu",
        max_detections: int = 300,
        max_prompts: int = 80,
        max_exemplars: int = 200,
        autocast: str | None = None,
        size_divisor: int = 32,
        run_config: Config | None = None,
    ):
        if not 0 < min_size <= max_size:
            raise InputError(
                f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}"
            )
        if max_detections < 1:
            raise InputError(f"max_detections must be >= 1, got {max_detections}")
        self.device = resolve_device(device)
        if autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"autocast={autocast!r}: use None, 'bf16' or 'fp16'")
        if autocast == "fp16" and self.device.type != "cuda":
            raise ValueError("autocast='fp16' needs a CUDA device; use 'bf16' on CPU")
        self.model = model.to(self.device)
        self.min_size, self.max_size, self.size_divisor = min_size, max_size, size_divisor
        self.max_detections, self.autocast = max_detections, autocast
        self.max_prompts, self.max_exemplars = max_prompts, max_exemplars
        self.run_config = run_config

    @classmethod
    def from_checkpoint(
        cls,
        folder: str | Path,
        device: str | torch.device = "auto",
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        **kwargs,
    ) -> Predictor:
        """A Predictor over a saved detector (a folder, a trainer checkpoint or a run: its
        latest), with the run config its checkpoint records; reads local files only.

        ``min_size`` / ``max_size`` default to the sizes the model was trained at (the run's
        ``data.min_size`` / ``data.max_size``), or 800 / 1333 when the checkpoint records no run.
        """
        from workbench.model.build import from_pretrained, read_run_config

        device = resolve_device(device)
        run = read_run_config(folder)
        trained = (run.data.min_size, run.data.max_size) if run else None
        min_size = min_size or (trained[0] if trained else DEFAULT_MIN_SIZE)
        max_size = max_size or (trained[1] if trained else DEFAULT_MAX_SIZE)
        model = from_pretrained(folder, device=device)
        sizes = {"min_size": min_size, "max_size": max_size}
        return cls(model, device=device, run_config=run, **sizes, **kwargs)

    @classmethod
    def from_model(cls, model: nn.Module, *, device=None, **kwargs) -> Predictor:
        """A Predictor over a model in use elsewhere (evaluation during training): the model
        stays on its device and in its train/eval mode between calls."""
        if device is None:
            device = next(model.parameters()).device
        return cls(model, device=device, **kwargs)

    @property
    def _limits(self) -> tuple[int, int]:
        return self.max_prompts, self.max_exemplars

    # --- images --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.autocast or "")
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with eval_mode(self.model), torch.inference_mode(), amp:
            yield

    def _resize(self, image: Tensor) -> Tensor:
        """``[3, H, W]`` -> ``[3, h, w]`` with the data pipeline's rule and interpolation."""
        h, w = resized_hw(image.shape[-2], image.shape[-1], self.min_size, self.max_size)
        if (h, w) == tuple(image.shape[-2:]):
            return image
        return F.interpolate(
            image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0, 1)

    def encode_batch(self, images: Sequence[ImageInput]) -> list[EncodedImage]:
        """Run the backbone once over several images (padded together). Images: PIL, ``[H, W,
        3]`` uint8 arrays or ``[3, H, W]`` float tensors in [0, 1] (see :mod:`workbench.inputs`)."""
        tensors = [to_rgb_tensor(im, f"image {i}") for i, im in enumerate(images)]
        resized = [self._resize(t.to(self.device)) for t in tensors]
        with self._inference():
            pixels, mask = pad_images(resized, self.size_divisor)
            features = self.model.extract_features(pixels, mask)
        return [
            EncodedImage(
                features.select(torch.tensor([i], device=self.device)),
                image_size=(int(t.shape[-2]), int(t.shape[-1])),
                resized_size=(int(r.shape[-2]), int(r.shape[-1])),
            )
            for i, (t, r) in enumerate(zip(tensors, resized, strict=True))
        ]

    def encode(self, image: ImageInput) -> EncodedImage:
        """Backbone features of one image, to prompt it several times without recomputing."""
        return self.encode_batch([image])[0]

    def _as_encoded(self, image: ImageInput | EncodedImage, name: str) -> EncodedImage:
        if not isinstance(image, EncodedImage):
            return self.encode_batch([to_rgb_tensor(image, name)])[0]
        if image.features.tokens.device != self.device:
            raise InputError(
                f"{name} was encoded on {image.features.tokens.device}, this Predictor runs on "
                f"{self.device}; encode it with this Predictor"
            )
        return image

    # --- prompts -------------------------------------------------------------------------------

    def embed_exemplars(self, image: ImageInput | EncodedImage, boxes_xyxy) -> Tensor:
        """``[E, d]`` float32 embeddings of exemplar boxes (absolute xyxy pixels of ``image``;
        partly-outside boxes are clipped, see :func:`workbench.inputs.repaired_box`)."""
        encoded = self._as_encoded(image, "image")
        rows = torch.as_tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4).tolist()
        boxes = [repaired_box(b, encoded.image_size, f"exemplar {i}") for i, b in enumerate(rows)]
        return self._embed_boxes(encoded, boxes)

    def _embed_boxes(self, encoded: EncodedImage, boxes_xyxy: list[tuple]) -> Tensor:
        e = len(boxes_xyxy)
        xyxy = torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(e, 4)
        boxes = box_ops.convert(
            xyxy, "xyxy", "cxcywh", dst_normalized=True, size_hw=encoded.image_size
        )
        prompt_set = PromptSet(
            boxes_cxcywh=boxes,
            image_index=torch.zeros(e, dtype=torch.int64),
            prompt_index=torch.arange(e),
            labels=torch.full((e,), -1, dtype=torch.int64),
        ).to(self.device)
        with self._inference():
            return self.model.encode_prompts(encoded.features, prompt_set).exemplars.float()

    def embed_prompts(
        self,
        prompts: Sequence[VisualPrompt],
        images: Mapping[Key, ImageInput | EncodedImage] | None = None,
        searched: ImageInput | EncodedImage | None = None,
        *,
        name: str = "",
    ) -> PromptBank:
        """Class embeddings of ``prompts``: each exemplar encoded on its source image, averaged
        per prompt.

        Args:
            prompts: the classes; an exemplar's ``image_id`` is a key of ``images``, or ``None``
                for ``searched``. Boxes: absolute xyxy pixels of that source image.
            images: reference images (or EncodedImages) by key; read lazily, one at a time.
            searched: the image exemplars with ``image_id=None`` lie on.
        """
        images = images or {}
        if searched is not None and not isinstance(searched, EncodedImage):
            searched = to_rgb_tensor(searched, "image")
        size = None if searched is None else _size_of(searched)
        by_source = check_prompts(prompts, images, size, searched is not None, *self._limits)
        per_prompt: list[list] = [[None] * len(p.exemplars) for p in prompts]
        for key, items in by_source.items():
            source = searched if key is None else images[key]
            encoded = self._as_encoded(source, "image" if key is None else f"image {key!r}")
            boxes = [
                repaired_box(
                    prompts[u].exemplars[j].box_xyxy,
                    encoded.image_size,
                    f"prompt {prompts[u].name!r}, exemplar {j}",
                )
                for u, j in items
            ]
            for (u, j), emb in zip(items, self._embed_boxes(encoded, boxes), strict=True):
                per_prompt[u][j] = emb
        return PromptBank.from_exemplar_embeddings(
            prompts, [torch.stack(e) for e in per_prompt], model_fingerprint(self.model), name
        )

    # --- detection -----------------------------------------------------------------------------

    def _forward(self, encoded: Sequence[EncodedImage], banks: Sequence[PromptBank]) -> list[dict]:
        """Decoder outputs per image; images with equal feature shapes and prompt counts go
        through one ``detect`` call."""
        groups: dict[tuple, list[int]] = {}
        fingerprint = model_fingerprint(self.model)
        for i, (enc, bank) in enumerate(zip(encoded, banks, strict=True)):
            check_bank(bank, self.max_prompts, self.model.config.d_model, fingerprint)
            groups.setdefault((enc.features.spatial_shapes_list, len(bank)), []).append(i)
        results: list[dict] = [{} for _ in encoded]
        for members in groups.values():
            features = ImageFeatures.cat([encoded[i].features for i in members])
            classes = torch.stack([banks[i].embeddings.to(self.device) for i in members])
            with self._inference():
                out = self.model.detect(features, classes)
            for k, i in enumerate(members):
                results[i] = {key: out[key][k].float() for key in _KEPT}
        return results

    def _bank(self, prompts: Prompts, reference_images, encoded: EncodedImage) -> PromptBank:
        if isinstance(prompts, PromptBank):
            return prompts
        return self.embed_prompts(prompts, reference_images, encoded)

    def _finish(self, out, encoded, bank, threshold, max_detections) -> Detections:
        k = self.max_detections if max_detections is None else max_detections
        if k < 1:
            raise InputError(f"max_detections must be >= 1, got {k}")
        return detections_from_outputs(
            out["pred_logits"],
            out["pred_boxes"],
            encoded.image_size,
            bank.names,
            bank.negative,
            max_detections=k,
            score_threshold=check_score_threshold(threshold),
        )

    def predict(
        self,
        image: ImageInput | EncodedImage,
        prompts: Prompts,
        *,
        reference_images: Mapping[Key, ImageInput | EncodedImage] | None = None,
        score_threshold: float = 0.0,
        max_detections: int | None = None,
        return_queries: bool = False,
    ) -> Detections | tuple[Detections, QueryOutputs]:
        """Find the prompted classes in ``image``.

        Args:
            image: an image (see :meth:`encode_batch`) or an :class:`EncodedImage` of it.
            prompts: VisualPrompts (exemplars on ``image`` when ``image_id`` is None, else on
                ``reference_images[image_id]``), or a :class:`PromptBank`.
            score_threshold: drop detections scoring below it. The default keeps every top-K
                detection (what AP needs); the app and the CLI show those scoring at least
                :data:`~workbench.postprocess.SCORE_THRESHOLD`.
            max_detections: K of the top-K (default: the Predictor's, 300).
            return_queries: also return :class:`QueryOutputs` for every query.

        Returns:
            :class:`Detections`, boxes in absolute xyxy pixels of ``image``, best first.
        """
        if not isinstance(image, EncodedImage):
            image = to_rgb_tensor(image, "image")
        if not isinstance(prompts, PromptBank):  # fail before the backbone runs
            check_prompts(prompts, reference_images, _size_of(image), True, *self._limits)
        encoded = self._as_encoded(image, "image")
        bank = self._bank(prompts, reference_images, encoded)
        out = self._forward([encoded], [bank])[0]
        dets = self._finish(out, encoded, bank, score_threshold, max_detections)
        return (dets, _queries(out, encoded, bank)) if return_queries else dets

    def predict_batch(
        self,
        images: Sequence[ImageInput | EncodedImage],
        prompts: Prompts | Sequence[Prompts],
        *,
        reference_images: Mapping[Key, ImageInput | EncodedImage] | None = None,
        score_threshold: float = 0.0,
        max_detections: int | None = None,
        batch_size: int = 8,
        return_queries: bool = False,
    ) -> list[Detections] | list[tuple[Detections, QueryOutputs]]:
        """:meth:`predict` over several images, ``batch_size`` at a time through one backbone
        and (for equal prompt counts) one decoder forward; ``return_queries`` pairs each
        image's Detections with its :class:`QueryOutputs`, as :meth:`predict` does.

        ``prompts`` is shared by every image (a PromptBank or one list of VisualPrompts), or a
        list with one entry (bank or prompt list) per image. A shared list whose exemplars lie
        on the searched image (``image_id=None``) is embedded on each image. Results can differ from
        :meth:`predict` in the last bits when images of different sizes are padded together.
        """
        per_image = prompts_per_image(prompts, len(images))
        shared = per_image[0] if all(p is per_image[0] for p in per_image) else None
        if isinstance(shared, list) and all(
            ex.image_id is not None for p in shared for ex in p.exemplars
        ):
            shared = self.embed_prompts(shared, reference_images)  # embed once for all
            per_image = [shared] * len(images)
        results: list = []
        for start in range(0, len(images), batch_size):
            chunk = list(range(start, min(start + batch_size, len(images))))
            raw = [i for i in chunk if not isinstance(images[i], EncodedImage)]
            fresh = (
                dict(zip(raw, self.encode_batch([images[i] for i in raw]), strict=True))
                if raw
                else {}
            )
            encoded = [
                fresh[i] if i in fresh else self._as_encoded(images[i], f"image {i}") for i in chunk
            ]
            banks = [
                self._bank(per_image[i], reference_images, e)
                for i, e in zip(chunk, encoded, strict=True)
            ]
            outs = self._forward(encoded, banks)
            for o, e, b in zip(outs, encoded, banks, strict=True):
                dets = self._finish(o, e, b, score_threshold, max_detections)
                results.append((dets, _queries(o, e, b)) if return_queries else dets)
        return results


def _queries(out: dict, encoded: EncodedImage, bank: PromptBank) -> QueryOutputs:
    """Every query of one image's decoder outputs (``_forward``), on the CPU."""
    return QueryOutputs(
        token_index=out["select_index"].long().cpu(),
        select_logits=out["select_logits"].cpu(),
        logits=out["pred_logits"].cpu(),
        boxes_cxcywh=out["pred_boxes"].cpu(),
        boxes_xyxy=boxes_to_pixels(out["pred_boxes"], encoded.image_size).cpu(),
        image_size=encoded.image_size,
        negative=bank.negative,
    )
