"""Selecting in the editor: clicks (add or remove: a shift-click), a box (dragged, or two corner
clicks) or words on the preview become the paint editor's mask layer, which the brush and the eraser then edit like any paint.

The segmenter (``blendedit serve --segmenter``, loaded once per server, on first use) runs on the
preview the brush paints on (the page's canvas, at most ``--preview-side`` px a side), so its mask
is a canvas layer and reaches full resolution at Generate exactly as painting does
(:func:`blendedit.web.canvas.to_full`), on a 48 MP photo too. The preview is made once per photo
(and per kept step) and kept in the tab's :class:`Picks`; SAM caches the image embedding of the
pixels it last saw (``segment/sam.py``), so every click after the first decodes only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from blendedit.config import SelectConfig
from blendedit.errors import InputError
from blendedit.frame.masks import MASK_THRESHOLD
from blendedit.segment import Point, Segmenter, Selection, default_segmenter, select_mask
from blendedit.web.canvas import MASK_OPACITY, MASK_RGB, mask_layer
from blendedit.web.paint import CANVAS_SIDE

EDITOR_CANVAS = (CANVAS_SIDE, CANVAS_SIDE * 2 // 3)  # (w, h): layout.paint_editor's canvas_size
PICK_MODES = ("add", "remove", "box")  # what a click on the selection view does
DOT_RADIUS = 5  # px of the preview: a click's marker


@dataclass
class Picks:
    """One tab's selection on the current preview: clicks, a box, a text, and the mask they
    gave (bool (h, w) at the canvas size)."""

    image: Image.Image | None = None  # the preview the segmenter sees (RGB, the canvas size)
    points: list[Point] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    corner: tuple[float, float] | None = None  # a box's first corner, waiting for the second
    text: str | None = None
    mask: np.ndarray | None = None

    def selection(self) -> Selection:
        return Selection(self.text, tuple(self.points), self.box)

    def pick(self, mode: str, x: float, y: float) -> bool:
        """A click at (x, y) of the preview in ``mode``; True when there is a selection to make
        (the first corner of a box waits for the second)."""
        if mode not in PICK_MODES:
            raise InputError(f"select mode: {mode!r} is not one of {', '.join(PICK_MODES)}")
        if mode == "box":
            if self.corner is None:
                self.corner = (x, y)
                return False
            (x0, y0), self.corner = self.corner, None
            self.box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
            return True
        if mode == "remove" and not (self.points or self.box is not None or self.text):
            raise InputError("select: remove clicks take a part away; click to add first")
        self.points.append(Point(x, y, mode == "add"))
        return True


class Selector:
    """The server's segmenter: ``name`` (``--segmenter``; None: the default for a text or for
    clicks), each loaded once by ``load`` on first use and shared by every tab."""

    def __init__(self, name: str | None, load: Callable[[str], Segmenter]) -> None:
        self.name = name
        self._load = load
        self._loaded: dict[str, Segmenter] = {}
        self._lock = threading.Lock()

    def segmenter(self, selection: Selection) -> Segmenter:
        name = self.name or default_segmenter(selection)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def mask(self, picks: Picks) -> np.ndarray:
        """The picks' selection on their preview as a bool (h, w) mask; empty: one line."""
        assert picks.image is not None
        selection = picks.selection()
        segmenter = self.segmenter(selection)
        levels = select_mask(segmenter, picks.image, selection, SelectConfig()).levels  # (h, w)
        return np.asarray(levels) >= MASK_THRESHOLD


def editor_layer(mask: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """The mask (h, w) bool as the RGBA paint layer the page draws in place: Gradio 6's editor
    centres a layer sent by the server in its own area, the photo's size grown to at least its
    ``canvas`` (w, h) (``layout.paint_editor``'s ``canvas_size``), while the photo sits at its
    top left; a layer padded to that area (transparent) lands on the photo pixel for pixel, and
    the page sends it back cropped to the photo."""
    h, w = mask.shape
    layer = np.zeros((max(h, canvas[1]), max(w, canvas[0]), 4), np.uint8)
    layer[:h, :w] = mask_layer(mask)
    return layer


def overlay(picks: Picks) -> Image.Image | None:
    """The selection view: the preview with the mask tinted as the brush paints it, added
    clicks green, removed ones red, the box (or its first corner) outlined."""
    if picks.image is None:
        return None
    out = picks.image.convert("RGB")
    if picks.mask is not None and picks.mask.any():
        tint = Image.new("RGB", out.size, MASK_RGB)
        alpha = Image.fromarray((picks.mask * round(255 * MASK_OPACITY)).astype(np.uint8))
        out = Image.composite(tint, out, alpha)
    draw = ImageDraw.Draw(out)
    for p in picks.points:
        r = DOT_RADIUS
        colour = (0, 200, 0) if p.positive else (230, 0, 0)
        draw.ellipse((p.x - r, p.y - r, p.x + r, p.y + r), fill=colour, outline=(255, 255, 255))
    if picks.box is not None:
        draw.rectangle(picks.box, outline=(255, 255, 0), width=2)
    if picks.corner is not None:
        x, y = picks.corner
        draw.rectangle((x - 3, y - 3, x + 3, y + 3), outline=(255, 255, 0), width=2)
    return out


__all__ = ["EDITOR_CANVAS", "PICK_MODES", "Picks", "Selector", "editor_layer", "overlay"]
