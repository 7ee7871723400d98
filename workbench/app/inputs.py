"""What the app receives, checked: annotated images, box labels as classes, ground-truth json.

Everything here is plain Python (no gradio), so tests call it directly. The app hands over the
image annotator's raw payload (``preprocess=False``): ``{"image": {"path": ..., "orig_name":
...}, "boxes": [{"xmin", "ymin", "xmax", "ymax", "label", "color", "scaleFactor"?}, ...],
"orientation": k}``, so a file that is no image reaches :func:`load_image`, which says so,
instead of failing inside the component.

Small images are shown enlarged for drawing (:func:`drawing_copy`): the annotator draws an
image at most at its own size, so a 256 px image would leave little room to draw on. The copy
is enlarged by an integer factor with nearest-neighbour sampling and its file name records the
factor, so :func:`load_image` recovers the original pixels exactly and boxes are divided back:
the models, the ground truth and the results all see the original image.

Box labels are class names. Boxes with the same name (case-insensitive, on either image) are
exemplars of one class, averaged into one embedding. A name starting with ``-`` or ``not `` is
a negative class ("not this kind"): it competes for queries, its detections are hidden.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from workbench.analysis import GroundTruth
from workbench.data.coco import CocoDetection
from workbench.data.dataset import DatasetError
from workbench.data.images import MAX_IMAGE_PIXELS, pil_to_rgb_tensor
from workbench.inputs import InputError
from workbench.types import Exemplar, VisualPrompt

if TYPE_CHECKING:
    from workbench.app.models import Settings

NEGATIVE_PREFIXES = ("-", "not ")
DEFAULT_CLASS = "object"
REFERENCE = "reference"  # Exemplar.image_id of boxes drawn on the reference image
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")  # an annotator box's corners, in file pixels
DRAW_MIN_SIDE = 512  # images whose longer side is shorter are enlarged for drawing
_DRAWING = re.compile(r"\.drawn-x(\d+)(?=\.png$)")  # marks an enlarged copy: name.drawn-x2.png


@dataclass(frozen=True)
class DrawnBox:
    """One box as drawn: ``box_xyxy`` absolute pixels of the (possibly downscaled) image."""

    label: str
    box_xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class Annotated:
    """An image with the boxes drawn on it.

    Attributes:
        image: ``[3, H, W]`` float32 RGB in [0, 1], after EXIF rotation and any downscale.
        boxes: the drawn boxes, in pixels of ``image``.
        file_name: the uploaded file's name (to find it in a ground-truth json).
        notices: what was changed, for the page (e.g. the downscale).
    """

    image: Tensor
    boxes: tuple[DrawnBox, ...]
    file_name: str
    notices: tuple[str, ...] = field(default=())

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def split_label(label: str | None) -> tuple[str, bool]:
    """``"-RBC"`` / ``"not RBC"`` -> ``("RBC", True)``; ``""`` -> ``("object", False)``."""
    text = " ".join(str(label or "").split())
    for prefix in NEGATIVE_PREFIXES:
        if text.lower().startswith(prefix):
            return text[len(prefix) :].strip() or DEFAULT_CLASS, True
    return text or DEFAULT_CLASS, False


def _file_of(image) -> tuple[str | None, str]:
    """(path, display name) of the payload's ``image`` entry."""
    if isinstance(image, dict):
        path = image.get("path")
        return path, str(image.get("orig_name") or Path(str(path or "image")).name)
    if isinstance(image, str | Path):
        return str(image), Path(image).name
    return None, "image"


def drawing_copy(path: str | Path, folder: Path) -> tuple[str, int]:
    """``(path, factor)`` of the image to draw on: for an image whose longer side is under
    :data:`DRAW_MIN_SIDE`, a copy in ``folder`` enlarged ``factor`` times (nearest neighbour,
    EXIF rotation applied) named ``<stem>.drawn-x<factor>.png``; else ``(path, 1)``. An image
    that does not open is returned as is (reading it at detection says what is wrong)."""
    if _DRAWING.search(Path(path).name):
        return str(path), 1
    try:
        with Image.open(path) as header:  # the size only: large images are not decoded here
            factor = -(-DRAW_MIN_SIDE // max(header.size))  # ceil
        if factor < 2:
            return str(path), 1
        img, _, _ = load_image(path, Path(path).name, DRAW_MIN_SIDE)
    except (InputError, OSError, ValueError):
        return str(path), 1
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{Path(path).stem}.drawn-x{factor}.png"
    img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST).save(copy)
    return str(copy), factor


def original_name(name: str) -> str:
    """The file name without the mark of an enlarged drawing copy."""
    return _DRAWING.sub("", name)


def load_image(path: str | Path, name: str, max_side: int) -> tuple[Image.Image, float, list]:
    """Open an uploaded file as an RGB PIL image, EXIF-rotated, the longer side at most
    ``max_side`` pixels; an enlarged drawing copy (:func:`drawing_copy`) gives back its
    original. Returns ``(image, scale, notices)``: ``scale`` maps the file's pixels to the
    image's. Raises :class:`InputError` for files that are not images or are too large to
    decode safely."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InputError(
                    f"{name} has {width}x{height} pixels, more than the app decodes "
                    f"({MAX_IMAGE_PIXELS:,}); downscale it before uploading"
                )
            if max(width, height) > max_side:  # JPEG decodes straight to a smaller size
                factor = max_side / max(width, height)
                img.draft("RGB", (round(width * factor), round(height * factor)))
            img = ImageOps.exif_transpose(img)
            img.load()
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise InputError(
            f"{name} is not an image the app can read ({type(err).__name__}); upload a JPEG, "
            "PNG, BMP, TIFF or WebP file"
        ) from err
    except FileNotFoundError as err:
        raise InputError(f"{name} was not found ({path}); upload the image again") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"{name} could not be decoded ({err}); the file is truncated or corrupt"
        ) from err
    enlarged = _DRAWING.search(name)
    if enlarged:  # each original pixel is a k x k block; the centre sample recovers it
        k = int(enlarged.group(1))
        img = img.resize((img.width // k, img.height // k), Image.Resampling.NEAREST)
        return img, 1.0 / k, []
    if max(img.size) > max_side:
        factor = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))))
    scale = max(img.size) / max(width, height)
    notices = []
    if scale < 1.0:
        notices.append(
            f"{name} is {width}x{height} pixels; the app downscaled it to "
            f"{img.width}x{img.height} (boxes and results are in that frame)"
        )
    return img, scale, notices


def size_notice(payload, max_side: int) -> str | None:
    """What will happen to an upload that is too large, read from the file header only (the
    page says it right away; the downscale itself happens at detection)."""
    path, name = _file_of(payload.get("image") if isinstance(payload, dict) else None)
    if path is None:
        return None
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # not an image: the detection request says so, with the reason
        return None
    if width * height > MAX_IMAGE_PIXELS:
        return f"{name} has {width}x{height} pixels, more than the app decodes; downscale it"
    if max(width, height) > max_side:
        return f"{name} is {width}x{height} pixels; the app will downscale it to {max_side} px"
    return None


def _rotate(img: Image.Image, quarter_turns: int) -> Image.Image:
    """The annotator's ``orientation``: quarter turns clockwise, as shown in the page."""
    turns = int(quarter_turns or 0) % 4
    ops = {
        1: Image.Transpose.ROTATE_270,
        2: Image.Transpose.ROTATE_180,
        3: Image.Transpose.ROTATE_90,
    }
    return img.transpose(ops[turns]) if turns else img


def _number(box: dict, key: str, where: str) -> float:
    try:
        return float(box[key])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{where}: '{key}' is missing or not a number ({box!r})") from err


def parse_boxes(raw_boxes, scale: float, role: str) -> tuple[DrawnBox, ...]:
    """Annotator boxes (``xmin``.. in file pixels, optional ``scaleFactor``) -> DrawnBoxes in
    pixels of the image after a downscale by ``scale``."""
    if raw_boxes is None:
        return ()
    if not isinstance(raw_boxes, list | tuple):
        raise InputError(f"{role} image: 'boxes' must be a list of box dicts")
    boxes = []
    for i, box in enumerate(raw_boxes):
        where = f"{role} image, box {i + 1}"
        if not isinstance(box, dict):
            raise InputError(f"{where} is a {type(box).__name__}, not a dict with xmin..ymax")
        factor = _number(box, "scaleFactor", where) if "scaleFactor" in box else 1.0
        if factor <= 0:
            raise InputError(f"{where}: scaleFactor must be positive, got {factor}")
        xyxy = [_number(box, k, where) / factor * scale for k in BOX_KEYS]
        boxes.append(DrawnBox(str(box.get("label") or ""), tuple(xyxy)))
    return tuple(boxes)


def read_annotated(payload, role: str, max_side: int) -> Annotated | None:
    """The annotator's raw value (see the module docstring) -> :class:`Annotated`, or None when
    no image was given."""
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise InputError(f"{role} image: expected {{'image': file, 'boxes': [...]}}")
    path, name = _file_of(payload.get("image"))
    if path is None:
        if payload.get("boxes"):
            raise InputError(f"boxes were drawn on the {role} image, but it has no image")
        return None
    img, scale, notices = load_image(path, name, max_side)
    img = _rotate(img, payload.get("orientation") or 0)
    boxes = parse_boxes(payload.get("boxes"), scale, role)
    return Annotated(pil_to_rgb_tensor(img), boxes, original_name(name), tuple(notices))


def prompts_from(target: Annotated | None, reference: Annotated | None) -> list[VisualPrompt]:
    """One VisualPrompt per class name over the boxes of both images (reference boxes get
    ``image_id="reference"``); classes in order of first appearance, target first."""
    classes: dict[tuple[str, bool], tuple[str, list[Exemplar]]] = {}
    sources = [(target, None), (reference, REFERENCE)]
    for annotated, image_id in (s for s in sources if s[0] is not None):
        for box in annotated.boxes:
            name, negative = split_label(box.label)
            entry = classes.setdefault((name.lower(), negative), (name, []))
            entry[1].append(Exemplar(box.box_xyxy, image_id))
    return [
        VisualPrompt(name, tuple(exemplars), prompt_id=i, negative=negative)
        for i, ((_, negative), (name, exemplars)) in enumerate(classes.items())
    ]


def check_limits(prompts: list[VisualPrompt], max_classes: int, max_boxes: int) -> None:
    """The app's own limits, so one request cannot hold the CPU for long."""
    boxes = sum(len(p.exemplars) for p in prompts)
    if len(prompts) > max_classes:
        raise InputError(
            f"too many prompts: {len(prompts)} classes, the app takes at most {max_classes}; "
            "search for fewer classes at once"
        )
    if boxes > max_boxes:
        raise InputError(
            f"too many prompt boxes: {boxes}, the app takes at most {max_boxes}; a few good "
            "examples per class are enough"
        )


@dataclass(frozen=True)
class TruthBoxes:
    """Ground truth of one image: ``boxes_xyxy [N, 4]`` pixels of the app's image, class names."""

    boxes_xyxy: Tensor
    names: tuple[str, ...]


def read_ground_truth(path: str | Path, annotated: Annotated) -> tuple[TruthBoxes, list[str]]:
    """The boxes a COCO json holds for ``annotated``'s image (the json's only image, or the one
    whose file name matches), scaled to the app's image. Returns ``(truth, notices)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = CocoDetection(str(path))
        except DatasetError as err:
            raise InputError(f"ground truth: {err}") from err
    notices = [f"ground truth: {w.message}".split("\n")[0] for w in caught]
    names = [Path(img["file_name"]).name for img in dataset.images]
    if len(names) == 1:
        index = 0
    elif annotated.file_name in names:
        index = names.index(annotated.file_name)
    else:
        raise InputError(
            f"the ground-truth json has {len(names)} images and none is named "
            f"{annotated.file_name!r}; upload a json for this image (or one with a single image)"
        )
    info = dataset.image_info(index)
    h, w = annotated.size_hw
    json_aspect, aspect = info["width"] / info["height"], w / h
    if abs(json_aspect / aspect - 1) > 0.02:
        raise InputError(
            f"the ground truth is for a {info['width']}x{info['height']} image, this one is "
            f"{w}x{h} (after any downscale); is it the right json?"
        )
    target = dataset.target(index)
    keep = ~target.iscrowd
    label_names = {c.label: c.name for c in dataset.categories}
    truth = TruthBoxes(
        target.boxes_xyxy((h, w))[keep],
        tuple(label_names[int(x)] for x in target.labels[keep]),
    )
    return truth, notices


def truth_for_prompts(
    truth: TruthBoxes, prompt_names: list[str], negative: list[bool]
) -> tuple[GroundTruth | None, list[str]]:
    """The ground-truth boxes of the prompted (positive) classes, matched by name
    (case-insensitive), as :class:`~workbench.analysis.GroundTruth`; None if none match."""
    index = {
        n.lower(): i
        for i, (n, neg) in enumerate(zip(prompt_names, negative, strict=True))
        if not neg
    }
    rows = [i for i, n in enumerate(truth.names) if n.lower() in index]
    notices = []
    if not rows:
        known = sorted(set(truth.names))
        notices.append(
            f"no ground-truth class matches the prompt names {prompt_names}; name the boxes "
            f"after the json's categories ({', '.join(known[:8])}) to see rewards and errors"
        )
        return None, notices
    labels = torch.tensor([index[truth.names[i].lower()] for i in rows], dtype=torch.int64)
    return GroundTruth(truth.boxes_xyxy[rows], labels), notices


@dataclass
class Request:
    """One user request, checked: the target image (None only for a search of other images),
    the optional reference image, the drawn prompts, the chosen saved bank, and notices (e.g. a
    downscale) for the page."""

    target: Annotated | None
    reference: Annotated | None
    prompts: list
    bank_name: str
    notices: list[str] = field(default_factory=list)


def read_request(
    target, reference, bank_name, settings: Settings, *, need_target: bool = True
) -> Request:
    """Raw annotator payloads + bank choice -> a checked :class:`Request`. Without
    ``need_target`` the target image may be missing (``Request.target`` None): a search of
    other images needs only prompts, from the reference image or a saved bank."""
    target_image = read_annotated(target, "target", settings.max_side)
    if target_image is None and need_target:
        raise InputError("no image: upload an image or pick an example, then draw a prompt box")
    reference_image = read_annotated(reference, "reference", settings.max_side)
    prompts = prompts_from(target_image, reference_image)
    if not prompts and not bank_name:
        raise InputError(
            "no prompts: draw at least one box around an example object (on the target or the "
            "reference image), or choose a saved prompt bank"
        )
    check_limits(prompts, settings.max_classes, settings.max_boxes)
    notices = [n for image in (target_image, reference_image) if image for n in image.notices]
    return Request(target_image, reference_image, prompts, bank_name or "", notices)
