"""Reading image files into the tensors every dataset returns.

``read_image`` gives a float32 ``[3, H, W]`` RGB tensor in [0, 1] for any file PIL can open, and a
:class:`DatasetError` naming the file and the fix for anything it cannot. Choices:

- **Stored pixels, no EXIF rotation by default.** A COCO json's ``width`` / ``height`` and boxes
  (and VOC's) refer to the pixel grid as stored in the file; applying the EXIF orientation would
  turn the image away from its boxes. ``image_size`` reads the stored size too. Pass
  ``apply_exif=True`` for user photos without annotations (the app's uploads).
- **Transparency is composited over white.** Transparent pixels of PNG/GIF exports usually hold
  arbitrary colours (often black) that no one saw while annotating; viewers and annotation tools
  show them over a white page, so white reproduces what the annotator looked at.
- **16-bit and 32-bit single-channel images** (``I;16*``, ``I``, ``F``) are divided by 65535, so
  the full 16-bit range maps onto [0, 1] (PIL's own conversion would clip everything above 255).
  ``I`` and ``F`` values outside [0, 65535] are clipped.
- **Over-large images** (more than ``max_pixels`` pixels) are refused before decoding: a
  decompression bomb would otherwise exhaust memory in a DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from workbench.data.dataset import DatasetError

# About 9459 x 9459: PIL's own warning threshold, and half its hard limit, so for any image PIL
# would refuse, our message (with the fix) is the one users see.
MAX_IMAGE_PIXELS = 89_478_485

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_FULL_16_BIT = 65535.0


@contextmanager
def _open(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` whose failures become DatasetErrors naming the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"image file {path} does not exist; check the dataset's image root and the "
            "image's file_name, or restore the file"
        )
    if path.is_dir():
        raise DatasetError(f"image path {path} is a directory; file_name must name an image file")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise DatasetError(
            f"image {path} is too large to decode safely: {err}. Downscale the file, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from err
    except UnidentifiedImageError as err:
        raise DatasetError(
            f"{path} is not an image file PIL can read (wrong extension, an HTML error page or "
            "a partial download?); replace it with a valid JPEG/PNG or remove the image from the "
            "annotations"
        ) from err
    except Exception as err:  # PermissionError, or a header PIL chokes on (ValueError, ...)
        raise DatasetError(
            f"cannot open image {path} ({type(err).__name__}: {err}); check the file's "
            "permissions, or replace the file if it is corrupt"
        ) from err
    with img:
        yield img


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the stored pixel grid, read from the file header only (no EXIF)."""
    with _open(path) as img:
        width, height = img.size
    return int(height), int(width)


def pil_to_rgb_tensor(img: Image.Image) -> Tensor:
    """Decoded PIL image of any mode -> ``[3, H, W]`` float32 RGB in [0, 1]."""
    if img.mode in _HIGH_BIT_MODES:
        gray = np.array(img, dtype=np.float32) / _FULL_16_BIT
        gray = torch.from_numpy(gray).clamp_(0.0, 1.0)
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = torch.from_numpy(np.array(img.convert("RGBA"), dtype=np.float32) / 255.0)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        # "over" operator with an opaque white background: c = a * c_fg + (1 - a) * 1.
        return (rgb * alpha + (1.0 - alpha)).permute(2, 0, 1).contiguous()
    if img.mode != "RGB":
        # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's conversions are the standard ones.
        img = img.convert("RGB")
    rgb = torch.from_numpy(np.array(img, dtype=np.uint8))
    # Convert before permuting: torch copies a permuted uint8 tensor very slowly (~50x).
    return rgb.float().div_(255.0).permute(2, 0, 1).contiguous()


def read_image(
    path: str | Path, *, apply_exif: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> Tensor:
    """Decode an image file to ``[3, H, W]`` float32 RGB in [0, 1].

    Args:
        path: any format PIL reads; for multi-frame files (GIF, TIFF) the first frame.
        apply_exif: rotate/flip by the EXIF orientation tag. Off by default because dataset boxes
            refer to the stored pixels (see the module docstring).
        max_pixels: refuse images with more pixels than this (decompression-bomb guard). PIL
            itself warns above ``PIL.Image.MAX_IMAGE_PIXELS`` and refuses above twice that, so a
            larger ``max_pixels`` also needs that raised.

    Raises:
        DatasetError: missing, unreadable, truncated, corrupt or over-large files; the message
            names the file and says how to fix it.
    """
    with _open(path) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise DatasetError(
                f"image {path} has {width * height} pixels ({width}x{height}), more than the limit "
                f"of {max_pixels}; downscale it, or pass a larger max_pixels if you trust the file"
            )
        try:
            img.load()
            if apply_exif:
                img = ImageOps.exif_transpose(img)
            return pil_to_rgb_tensor(img)
        except DatasetError:
            raise
        except Exception as err:  # PIL decoders raise OSError, SyntaxError, ValueError, ...
            raise DatasetError(
                f"cannot decode image {path} ({type(err).__name__}: {err}); the file is truncated "
                "or corrupt: re-download or re-export it, or remove it from the annotations"
            ) from err
