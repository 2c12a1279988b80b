"""A selection -> the mask levels a painted mask would give (``MaskLevels`` on the photo as
shown, at its full size): segment (on a preview for very large photos, the mask mapped back),
refine (fill holes, keep the largest part), check it is not empty, join it to a painted mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from blendedit.config import SelectConfig
from blendedit.errors import InputError
from blendedit.frame.masks import MASK_THRESHOLD, MaskLevels
from blendedit.frame.photo import Photo
from blendedit.segment.base import Box, Point, Segmentation, Segmenter, Selection
from blendedit.segment.refine import combine, fill_holes, keep_largest, to_levels


def _numbers(text: str, n: int, arg: str, example: str) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or not all(np.isfinite(values)):
        raise InputError(f"{arg}: {text!r} is not {n} numbers like {example}")
    return values


def parse_point(text: str, positive: bool = True) -> Point:
    """``X,Y`` in the photo's pixels; ``-X,Y`` (a leading minus) is a negative click."""
    text = str(text).strip()
    if text.startswith("-"):
        text, positive = text[1:], False
    x, y = _numbers(text, 2, "mask-point", "120,80 (or -120,80 to exclude)")
    return Point(x, y, positive)


def parse_box(text: str) -> Box:
    """``X0,Y0,X1,Y1`` in the photo's pixels (corners in any order)."""
    x0, y0, x1, y1 = _numbers(text, 4, "mask-box", "10,20,200,160")
    box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise InputError(f"mask-box: {text!r} encloses no pixel")
    return box


def selection_from(
    text: str | None = None, points: Sequence[str | Point] = (),
    negative: Sequence[str | Point] = (), box: str | Box | None = None,
) -> Selection:  # fmt: skip
    """A selection from the flags' text (or already parsed values)."""
    pts = [p if isinstance(p, Point) else parse_point(p) for p in points]
    pts += [p if isinstance(p, Point) else parse_point(p, positive=False) for p in negative]
    if isinstance(box, str):
        box = parse_box(box)
    if text is not None and not text.strip():
        raise InputError('mask-from: "" names nothing; say what to select ("the red cup")')
    return Selection(text.strip() if text else None, tuple(pts), box)


def check_inside(selection: Selection, size: tuple[int, int]) -> None:
    """Points and boxes must touch the photo (W, H)."""
    w, h = size
    for p in selection.points:
        if not (0 <= p.x <= w and 0 <= p.y <= h):
            raise InputError(f"mask-point: {p.x:g},{p.y:g} lies outside the {w}x{h} photo")
    b = selection.box
    if b is not None and (b[0] >= w or b[1] >= h or b[2] <= 0 or b[3] <= 0):
        raise InputError(
            f"mask-box: {','.join(f'{v:g}' for v in b)} lies outside the {w}x{h} photo"
        )


_PREVIEW: list[tuple[Image.Image, int, Image.Image]] = []  # the last (photo, side, preview)


def preview_of(image: Image.Image, side: int) -> Image.Image:
    """``image`` shrunk to ``side`` px on its longer side (box filter), kept for the next click
    on the same photo object (held here, so its identity cannot be reused meanwhile)."""
    if _PREVIEW and _PREVIEW[0][0] is image and _PREVIEW[0][1] == side:
        return _PREVIEW[0][2]
    w, h = image.size
    s = side / max(w, h)
    small = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
    _PREVIEW[:] = [(image, side, small)]
    return small


def segment_levels(
    segmenter: Segmenter, image: Image.Image, selection: Selection, side: int
) -> tuple[np.ndarray, Segmentation]:
    """The selection's mask as uint8 levels (H, W) at ``image``'s size, and the segmentation. A
    photo whose longer side exceeds ``side`` is segmented on a preview of that side (the
    selection's coordinates scaled to it) and the levels stretched back (bilinear, as a painted
    preview mask is)."""
    w, h = image.size
    if max(w, h) <= side:
        seg = segmenter.segment(image, selection)
        return to_levels(seg.mask), seg
    small = preview_of(image, side)
    sx, sy = small.width / w, small.height / h
    scaled = Selection(
        selection.text,
        tuple(Point(p.x * sx, p.y * sy, p.positive) for p in selection.points),
        None if selection.box is None else (
            selection.box[0] * sx, selection.box[1] * sy, selection.box[2] * sx, selection.box[3] * sy
        ),
    )  # fmt: skip
    seg = segmenter.segment(small, scaled)
    levels = Image.fromarray(to_levels(seg.mask)).resize((w, h), Image.Resampling.BILINEAR)
    boxes = [(b[0] / sx, b[1] / sy, b[2] / sx, b[3] / sy) for b in seg.boxes]
    return np.asarray(levels), Segmentation(seg.mask, boxes, seg.scores)


def select_mask(
    segmenter: Segmenter, photo: Photo | Image.Image, selection: Selection,
    config: SelectConfig | None = None, painted: MaskLevels | None = None,
) -> MaskLevels:  # fmt: skip
    """The selection's mask as :class:`MaskLevels` on the photo as shown (the soft mask as grey
    levels), refined as ``config`` says and joined to ``painted``; an empty selection is one
    line naming what was asked."""
    cfg = config or SelectConfig()
    image = photo.to_pil() if isinstance(photo, Photo) else photo
    image = image if image.mode == "RGB" else image.convert("RGB")  # the same object: cached
    check_inside(selection, image.size)
    if hasattr(segmenter, "threshold"):
        segmenter.threshold = cfg.select_threshold
    levels, _ = segment_levels(segmenter, image, selection, cfg.select_preview)  # (H, W) uint8
    if cfg.mask_fill_holes:
        levels = fill_holes(levels)
    if cfg.mask_largest:
        levels = keep_largest(levels)
    if not (levels >= MASK_THRESHOLD).any():
        arg = "mask-from" if selection.text else "mask-point" if selection.points else "mask-box"
        raise InputError(
            f"{arg}: the selection is empty: {selection.describe()} selects no pixel of the photo "
            f"(segmenter {segmenter.name!r})"
        )
    if cfg.mask_combine == "subtract" and painted is None:
        raise InputError(
            "mask-combine: subtract needs a painted --mask to subtract the selection from"
        )
    joined = combine(levels, None if painted is None else painted.levels, cfg.mask_combine)
    return MaskLevels(joined)
