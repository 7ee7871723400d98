"""Reading image files into the tensors every dataset returns.

``read_image`` gives a float32 ``[3, H, W]`` RGB tensor in [0, 1] for any file PIL can open, and a
:class:`DatasetError` naming the file and the fix for anything it cannot. Choices:

- **The displayed image: EXIF orientation applied.** A camera stores a portrait photo as a
  landscape grid plus an orientation tag; viewers and annotation tools (CVAT, Label Studio,
  Roboflow, the browsers behind the app and FiftyOne) show it turned upright, and that is the
  frame boxes are drawn in. ``read_image`` and ``image_size`` give that frame (as detectron2's
  ``read_image`` does); ``apply_exif=False`` gives the stored grid. A json that states the
  *stored* size of a turned image (its exporter ignored the tag) is read in the stored frame
  instead (:func:`exif_frame_for`), so that image and boxes always share one frame.
- **Transparency is composited over white.** Transparent pixels of PNG/GIF exports usually hold
  arbitrary colours (often black) that no one saw while annotating; viewers and annotation tools
  show them over a white page, so white reproduces what the annotator looked at.
- **16-bit and 32-bit integer single-channel images** (``I;16*``, ``I``) are divided by 65535,
  so the full 16-bit range maps onto [0, 1] (PIL's own conversion would clip everything above
  255); ``I`` values outside [0, 65535] are clipped.
- **Float images** (``F``, e.g. a 32-bit float TIFF) hold intensities in [0, 1] by convention and
  are used as they are; any other range (or NaN) has no agreed meaning, so such a file is refused
  with its range and how to convert it, rather than silently turned black or white.
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
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING = {5, 6, 7, 8}  # orientations that swap width and height
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


def _turns(img: Image.Image) -> bool:
    """Whether the image's EXIF orientation swaps its width and height."""
    try:
        return img.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSING
    except Exception:  # a damaged EXIF block: PIL's exif_transpose ignores it as well
        return False


def image_size(path: str | Path, *, apply_exif: bool = True) -> tuple[int, int]:
    """``(height, width)`` as displayed (EXIF orientation applied; ``apply_exif=False``: as
    stored), read from the file header only."""
    with _open(path) as img:
        width, height = img.size
        if apply_exif and _turns(img):
            width, height = height, width
    return int(height), int(width)


def exif_frame_for(path: str | Path, size_hw: tuple[int, int]) -> bool:
    """Whether boxes annotated at ``size_hw`` (a json's height, width) are in the displayed
    frame of the image at ``path`` (True: read it with EXIF applied) or in its stored frame
    (False: the json states the stored size of an image its tag turns). Header only."""
    with _open(path) as img:
        width, height = img.size
        turns = _turns(img)
    return not (turns and tuple(size_hw) == (height, width))


def _float_to_tensor(img: Image.Image, name: str) -> Tensor:
    """A float (``F``) image in [0, 1] as ``[H, W]``; any other range is refused."""
    values = np.array(img, dtype=np.float32)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        finite = values[np.isfinite(values)]
        shown = f"[{finite.min():.4g}, {finite.max():.4g}]" if finite.size else "no finite values"
        nan = "" if finite.size == values.size else " and NaN/inf"
        raise DatasetError(
            f"{name} holds float pixels in {shown}{nan}; float images must lie in [0, 1]. "
            "Scale it to [0, 1] or save it as an 8- or 16-bit image (e.g. with "
            "numpy: (x - x.min()) / (x.max() - x.min()))"
        )
    return torch.from_numpy(values)


def pil_to_rgb_tensor(img: Image.Image, name: str = "image") -> Tensor:
    """Decoded PIL image of any mode -> ``[3, H, W]`` float32 RGB in [0, 1]; ``name`` is the
    image in an error (a float image outside [0, 1] is a DatasetError)."""
    if img.mode == "F":
        return _float_to_tensor(img, name).unsqueeze(0).expand(3, -1, -1).contiguous()
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
    path: str | Path, *, apply_exif: bool = True, max_pixels: int = MAX_IMAGE_PIXELS
) -> Tensor:
    """Decode an image file to ``[3, H, W]`` float32 RGB in [0, 1], as displayed.

    Args:
        path: any format PIL reads; for multi-frame files (GIF, TIFF) the first frame.
        apply_exif: rotate/flip by the EXIF orientation tag, as viewers do (see the module
            docstring); False: the pixel grid as stored.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard). PIL
            itself warns above ``PIL.Image.MAX_IMAGE_PIXELS`` and refuses above twice that, so a
            larger ``max_pixels`` also needs that raised.

    Raises:
        DatasetError: missing, unreadable, truncated, corrupt or over-large files, and float
            images outside [0, 1]; the message names the file and says how to fix it.
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
            return pil_to_rgb_tensor(img, f"image {path}")
        except DatasetError:
            raise
        except Exception as err:  # PIL decoders raise OSError, SyntaxError, ValueError, ...
            raise DatasetError(
                f"cannot decode image {path} ({type(err).__name__}: {err}); the file is truncated "
                "or corrupt: re-download or re-export it, or remove it from the annotations"
            ) from err
