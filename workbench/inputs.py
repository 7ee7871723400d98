"""Checking what users hand the Predictor: images of any common kind, and visual prompts.

Images become ``[3, H, W]`` float32 RGB in [0, 1], the tensors every dataset returns:

- PIL images of any mode go through the same conversion as image files
  (:mod:`workbench.data.images`): grayscale is repeated over three channels, transparency is
  composited over white, 16-bit grayscale is divided by 65535;
- arrays are ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (channels last, as PIL and
  OpenCV give them, but RGB order), uint8 in [0, 255] or float in [0, 1];
- tensors are ``[C, H, W]`` (channels first, as torch gives them) with C in {1, 3, 4}, or a batch
  of one ``[1, C, H, W]``; uint8 or float in [0, 1].

Prompt boxes are absolute xyxy pixels of their source image. Repair rule: a box partly outside
its image is clipped to it (drawing tools let a drag run past the border; the visible part is what
the user meant). Refused, with the prompt and exemplar named: NaN or infinite coordinates,
swapped corners (negative size), zero area, a box entirely outside the image, or one thinner than
``min_side`` pixels once clipped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from workbench.data.images import pil_to_rgb_tensor
from workbench.prompt_bank import PromptBank
from workbench.types import VisualPrompt

ImageInput = Image.Image | np.ndarray | Tensor


class InputError(ValueError):
    """An image or prompt the Predictor cannot use; the message names it and says how to fix it."""


def to_rgb_tensor(image: ImageInput, name: str = "image") -> Tensor:
    """Any supported image (see the module docstring) -> ``[3, H, W]`` float32 RGB in [0, 1].

    Raises:
        InputError: unsupported type, layout or dtype, an empty image, non-finite values, or
            float values outside [0, 1]; ``name`` identifies the image in the message.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InputError(f"{name} is empty ({image.width}x{image.height} pixels)")
        try:
            return pil_to_rgb_tensor(image, name)
        except ValueError as err:  # a float image outside [0, 1]
            raise InputError(str(err)) from err
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise InputError(
                f"{name}: a numpy image must be [H, W] or [H, W, C], got {image.shape}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        tensor = image.detach()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise InputError(f"{name}: a tensor image must be [C, H, W], got {tuple(image.shape)}")
    else:
        raise InputError(
            f"{name} has type {type(image).__name__}; pass a PIL image, an [H, W, 3] numpy array "
            "or a [3, H, W] tensor (or an EncodedImage from Predictor.encode)"
        )
    return _channels_to_rgb(_to_unit_float(tensor.cpu(), name), name)


def _to_unit_float(tensor: Tensor, name: str) -> Tensor:
    """``[C, H, W]`` uint8 / bool / float -> float32 in [0, 1], checked."""
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise InputError(f"{name} is empty (shape {tuple(tensor.shape)}); pass a non-empty image")
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if tensor.dtype == torch.bool:
        return tensor.float()
    if not tensor.is_floating_point():
        raise InputError(
            f"{name} has dtype {tensor.dtype}; use uint8 in [0, 255] or float in [0, 1]"
        )
    tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name} contains NaN or infinite pixel values")
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} has float values in [{lo:.3g}, {hi:.3g}], outside [0, 1]; divide 0-255 "
            "values by 255 (or pass a uint8 array)"
        )
    return tensor


def _channels_to_rgb(tensor: Tensor, name: str) -> Tensor:
    channels = tensor.shape[0]
    if channels == 3:
        return tensor.contiguous()
    if channels == 1:
        return tensor.expand(3, -1, -1).contiguous()
    if channels == 4:  # RGBA: "over" a white page, as image files are read
        rgb, alpha = tensor[:3], tensor[3:]
        return (rgb * alpha + (1.0 - alpha)).contiguous()
    raise InputError(
        f"{name} has {channels} channels; the detector takes RGB (3), grayscale (1) or RGBA (4). "
        "For channels-first numpy or channels-last tensors, transpose the array first"
    )


def check_prompt_counts(
    prompts: Sequence[VisualPrompt], max_prompts: int, max_exemplars: int
) -> None:
    """Refuse an empty prompt list, or more classes / exemplar boxes than the limits."""
    if not prompts:
        raise InputError(
            "no prompts: draw at least one box around an example object (or pass a PromptBank)"
        )
    if any(not isinstance(p, VisualPrompt) for p in prompts):
        bad = next(type(p).__name__ for p in prompts if not isinstance(p, VisualPrompt))
        raise InputError(f"prompts must be VisualPrompt objects, got a {bad}")
    if len(prompts) > max_prompts:
        raise InputError(
            f"too many prompts: {len(prompts)} classes, the limit is {max_prompts}; search for "
            "fewer classes at once, or raise Predictor(max_prompts=...)"
        )
    boxes = sum(len(p.exemplars) for p in prompts)
    if boxes > max_exemplars:
        raise InputError(
            f"too many exemplar boxes: {boxes}, the limit is {max_exemplars}; use fewer boxes per "
            "class, or raise Predictor(max_exemplars=...)"
        )


def repaired_box(
    box_xyxy: Sequence[float], size_hw: tuple[int, int], where: str, min_side: float = 1.0
) -> tuple[float, float, float, float]:
    """Check one prompt box (absolute xyxy pixels) against its image and clip it to the image.

    Args:
        box_xyxy: ``(x0, y0, x1, y1)`` in pixels of the source image.
        size_hw: ``(height, width)`` of the source image.
        where: names the box in messages, e.g. ``"prompt 'cell', exemplar 2"``.
        min_side: the clipped box must be at least this wide and high, pixels.

    Returns:
        The box clipped to ``[0, width] x [0, height]``.
    """
    if len(box_xyxy) != 4:
        raise InputError(f"{where}: a box needs 4 numbers (x0, y0, x1, y1), got {box_xyxy!r}")
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    h, w = size_hw
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InputError(f"{where}: box {box_xyxy!r} has NaN or infinite coordinates")
    if x1 < x0 or y1 < y0:
        raise InputError(
            f"{where}: box {box_xyxy!r} has negative size; give corners as (x0, y0, x1, y1) "
            "with x0 <= x1 and y0 <= y1 (absolute pixels)"
        )
    if x1 == x0 or y1 == y0:
        raise InputError(f"{where}: box {box_xyxy!r} has zero area; draw a box, not a line")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise InputError(
            f"{where}: box {box_xyxy!r} lies entirely outside its {w}x{h} image; boxes are "
            "absolute pixels of the image they were drawn on (not normalised, not resized)"
        )
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
    if clipped[2] - clipped[0] < min_side or clipped[3] - clipped[1] < min_side:
        raise InputError(
            f"{where}: box {box_xyxy!r} is thinner than {min_side} pixel once clipped to the "
            f"{w}x{h} image; draw it around the visible object"
        )
    return clipped


def check_source(
    key: int | str | None, images: Mapping, has_searched: bool, prompt_name: str
) -> None:
    """Refuse an exemplar whose source image was not given (``key`` None = the searched one)."""
    if key is None and not has_searched:
        raise InputError(
            f"prompt {prompt_name!r} has an exemplar on the searched image (image_id=None), but "
            "no searched image was given; pass searched=image, or set Exemplar.image_id"
        )
    if key is not None and key not in images:
        raise InputError(
            f"prompt {prompt_name!r} uses reference image {key!r}, which is missing from the "
            f"reference images (keys: {list(images)[:10]}); pass reference_images={{{key!r}: "
            "image}"
        )


def check_prompts(
    prompts: Sequence[VisualPrompt],
    images: Mapping | None,
    searched_size: tuple[int, int] | None,
    has_searched: bool,
    max_prompts: int,
    max_exemplars: int,
) -> dict:
    """Counts, source images and the boxes on the searched image, checked before any compute.

    Returns:
        ``{source key: [(prompt index, exemplar index), ...]}``, the exemplars by source image.
    """
    check_prompt_counts(prompts, max_prompts, max_exemplars)
    by_source: dict = {}
    for u, prompt in enumerate(prompts):
        for j, ex in enumerate(prompt.exemplars):
            by_source.setdefault(ex.image_id, []).append((u, j))
    for key, items in by_source.items():
        check_source(key, images or {}, has_searched, prompts[items[0][0]].name)
    for u, j in by_source.get(None, []) if searched_size else []:
        where = f"prompt {prompts[u].name!r}, exemplar {j}"
        repaired_box(prompts[u].exemplars[j].box_xyxy, searched_size, where)
    return by_source


def prompts_per_image(prompts, n: int) -> list:
    """One entry (PromptBank or prompt list) per image, from a shared one or a list of them."""
    if isinstance(prompts, PromptBank):
        return [prompts] * n
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts: draw at least one box around an example object")
    if all(isinstance(p, VisualPrompt) for p in prompts):
        return [prompts] * n
    if len(prompts) != n:
        raise InputError(
            f"got {len(prompts)} prompt lists for {n} images; pass one per image, or a single "
            "PromptBank / list of VisualPrompts shared by all"
        )
    return prompts


def check_bank(bank: PromptBank, max_prompts: int, d_model: int, fingerprint: str) -> None:
    """Refuse an empty or too large bank, or one of another width; warn when another model's
    weights embedded it (``fingerprint``: :func:`workbench.prompt_bank.model_fingerprint`)."""
    if len(bank) == 0:
        raise InputError("no prompts: the prompt bank is empty")
    if len(bank) > max_prompts:
        raise InputError(
            f"too many prompts: the bank has {len(bank)} classes, the limit is {max_prompts}; "
            "raise Predictor(max_prompts=...)"
        )
    if bank.embeddings.shape[-1] != d_model:
        raise InputError(
            f"prompt bank {bank.name!r} has {bank.embeddings.shape[-1]}-d embeddings, this "
            f"model takes {d_model}-d; re-embed the prompts with this model"
        )
    if bank.model_fingerprint and bank.model_fingerprint != fingerprint:
        warnings.warn(
            f"prompt bank {bank.name!r} was embedded by other weights than this model's; its "
            "embeddings may not fit, re-embed the prompts with this model",
            stacklevel=4,
        )
