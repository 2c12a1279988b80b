"""The working region of an edit: which pixels of the photo the method's core sees, at what size,
and where its result is pasted back (A1111's "Only masked", diffusers' ``padding_mask_crop``).

``crop`` takes the mask's bounding box, grows it by a context margin, expands it to the aspect of
one of the core's working shapes, shifts it back inside the photo (never clipped while the photo is
large enough) and runs the core at that shape, upscaling small crops and downscaling large ones.
The result is resized back to exactly the box's pixel size and pasted at the box, so nothing
outside the box changes. ``full`` runs on the whole photo. ``auto`` crops whenever that gives the
masked region more working pixels than the whole-photo path would.

Context rule. Each side of the mask's box grows by ``CONTEXT_FRACTION`` of the box's mean side, at
least ``MIN_CONTEXT`` px. The model sees surroundings in proportion to the object it paints (as
Krita's half-mean-side and lquesada's context factor 1.2-1.4 do), while a ~500 px mask in a 24 MP
phone photo is still processed near 1:1 (a fixed 1/16 of the photo side, Krita's other term, would
take 375 px of context there and halve the edit's resolution). Boxes are (x0, y0, x1, y1), x1 and
y1 exclusive; sizes are (W, H).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from blendedit.config import REGION_MODES
from blendedit.errors import InputError

CONTEXT_FRACTION = 0.125  # of the mask box's mean side, added on each side
MIN_CONTEXT = 16  # px
Box = tuple[int, int, int, int]
Size = tuple[int, int]


@dataclass(frozen=True)
class Region:
    """Where the core works: ``box`` of the photo (photo pixels) at ``work_size``."""

    box: Box
    work_size: Size
    photo_size: Size
    mode: str  # "crop" or "full": what was used

    @property
    def size(self) -> Size:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index a (H, W, ...) photo array: ``photo[region.slices]`` is the crop."""
        x0, y0, x1, y1 = self.box
        return slice(y0, y1), slice(x0, x1)

    @property
    def scale(self) -> float:
        """Working pixels per photo pixel (geometric mean of both axes); > 1 when upscaled."""
        (w, h), (ww, wh) = self.size, self.work_size
        return float(np.sqrt(ww / w * wh / h))

    @property
    def is_full(self) -> bool:
        return self.box == (0, 0, *self.photo_size)

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "box": list(self.box),
            "work_size": list(self.work_size),
            "scale": round(self.scale, 4),
        }


def mask_bbox(mask: np.ndarray) -> Box:
    """The smallest box holding every non-zero pixel of a (H, W) mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InputError("mask: the mask is empty (no white pixels); paint the region to edit")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def context_margin(box: Box) -> int:
    """Context (px) added on each side of the mask's box; see the module docstring."""
    w, h = box[2] - box[0], box[3] - box[1]
    return max(MIN_CONTEXT, round(CONTEXT_FRACTION * (w + h) / 2))


def shapes_at(side: int, multiple: int = 64, max_aspect: float = 2.0) -> list[Size]:
    """Working shapes of about ``side``**2 pixels with sides multiples of ``multiple`` and aspect
    within [1/max_aspect, max_aspect] (SDXL-style buckets; 512 -> 512x512, 576x448, 640x384, ...)."""
    area = side * side
    out = {(side, side)}
    for w in range(multiple, 2 * side + 1, multiple):
        h = max(multiple, round(area / w / multiple) * multiple)
        if 1 / max_aspect <= w / h <= max_aspect and abs(w * h - area) <= 0.15 * area:
            out.add((w, h))
    return sorted(out)


def _span(centre: float, length: int, limit: int) -> tuple[int, int]:
    """[lo, lo + length) centred on ``centre``, shifted (not clipped) inside [0, limit)."""
    lo = min(max(0, round(centre - length / 2)), limit - length)
    return lo, lo + length


def crop_box(mask_box: Box, photo_size: Size, aspect: float, margin: int) -> Box:
    """The mask's box grown by ``margin``, expanded to ``aspect`` (W/H) and shifted (not clipped)
    inside the photo; clipped only where the photo itself is too small."""
    x0, y0, x1, y1 = mask_box
    pw, ph = photo_size
    w, h = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
    if w / h < aspect:
        w = round(h * aspect)
    else:
        h = round(w / aspect)
    if w > pw:  # wider than the photo: its full width, the aspect kept where the height allows
        w, h = pw, max(round(pw / aspect), min(h, y1 - y0 + 2 * margin))
    if h > ph:
        h, w = ph, min(pw, max(round(ph * aspect), min(w, x1 - x0 + 2 * margin)))
    w, h = max(w, x1 - x0), max(h, y1 - y0)
    bx0, bx1 = _span((x0 + x1) / 2, min(w, pw), pw)
    by0, by1 = _span((y0 + y1) / 2, min(h, ph), ph)
    return bx0, by0, bx1, by1


def choose_region(
    mask: np.ndarray,
    mode: str,
    full_work: Size,
    shapes: Sequence[Size],
    fit: object,
    context: int | None = None,
) -> Region:
    """The working region for a (H, W) mask (non-zero = edit).

    full_work: the core's working size for the whole photo; shapes: its working shapes for a crop;
    fit(size) -> (W, H): its working size for a box whose aspect no shape matches (a photo too
    small to expand into); context: margin in px (None: :func:`context_margin`).
    """
    if mode not in REGION_MODES:
        raise InputError(f"region: {mode!r} must be one of {', '.join(REGION_MODES)}")
    ph, pw = mask.shape[:2]
    full = Region((0, 0, pw, ph), tuple(full_work), (pw, ph), "full")  # type: ignore[arg-type]
    if mode == "full":
        return full
    mbox = mask_bbox(mask)
    margin = context_margin(mbox) if context is None else context
    bw, bh = mbox[2] - mbox[0] + 2 * margin, mbox[3] - mbox[1] + 2 * margin
    shape = min(shapes, key=lambda s: abs(np.log(s[0] / s[1]) - np.log(bw / bh)))
    box = crop_box(mbox, (pw, ph), shape[0] / shape[1], margin)
    w, h = box[2] - box[0], box[3] - box[1]
    exact = abs(w / h - shape[0] / shape[1]) <= 0.01 * shape[0] / shape[1]
    work = tuple(shape) if exact else tuple(fit((w, h)))  # type: ignore[operator]
    crop = Region(box, work, (pw, ph), "crop")  # type: ignore[arg-type]
    if mode == "crop":
        return crop
    return crop if not crop.is_full and crop.scale > full.scale * 1.0001 else full
