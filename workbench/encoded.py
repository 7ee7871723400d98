"""What the Predictor hands out and how it runs the model, apart from the Predictor itself.

:class:`EncodedImage` is the value :meth:`~workbench.predictor.Predictor.encode` returns and every
prompting call accepts back: the backbone's features of one image with the sizes its boxes need.
It is a plain frozen value so that the caller (a notebook variable, a ``gr.State`` per user)
holds it, not the Predictor. :func:`stack_features` batches several of them for one decoder pass.

:func:`eval_mode` and :func:`resolve_device` are how the Predictor runs a model it may share with
a training loop or with concurrent app users.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workbench.model.detector import ImageFeatures


@dataclass(frozen=True)
class EncodedImage:
    """Backbone features of one image; hold it to prompt the same image again cheaply.

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


def stack_features(features: Sequence[ImageFeatures]) -> ImageFeatures:
    """Concatenate batches of features of equal spatial shapes."""
    if len(features) == 1:
        return features[0]
    first = features[0]
    return ImageFeatures(
        tokens=torch.cat([f.tokens for f in features]),
        valid=torch.cat([f.valid for f in features]),
        position=torch.cat([f.position for f in features]),
        spatial_shapes=first.spatial_shapes,
        spatial_shapes_list=first.spatial_shapes_list,
        level_start_index=first.level_start_index,
        valid_ratios=torch.cat([f.valid_ratios for f in features]),
    )
