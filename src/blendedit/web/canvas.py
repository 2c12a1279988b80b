"""The browser's canvas and the full-resolution photo: pure array logic, no web imports.

The editor in the page works on a preview of the photo (long side at most ``PREVIEW_SIDE``); the
edit runs on the photo itself, up to the library's caps (:data:`blendedit.io.MAX_PIXELS`). What is
painted on the preview comes back at full resolution by nearest-neighbour index mapping: full-res
pixel ``X`` takes canvas pixel ``floor((X + 0.5) * w / W)``, the pixel whose area holds its centre.
No blur and no threshold drift: a painted box maps to the exact pixel box it covers, and a stroke
one canvas pixel wide stays (at least) ``W / w`` pixels wide.

One brush, two kinds of paint (BLD paper 5.3, scribble-guided editing): translucent paint (the
mask colour at half opacity) marks the region to edit; opaque colour is a scribble, a rough
drawing of what should appear there. A scribble stroke is part of the edit region too (the
canvas keeps one colour per pixel, so a stroke over the mask paint replaces it). The scribble's
colours are composited into the photo that is fed to the edit, inside the edit region only; the
diffusion then starts from the noised scribble (``blend_start`` > 0) and turns it into an object.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from blendedit.errors import InputError
from blendedit.frame.photo import Photo

PREVIEW_SIDE = 1280  # px; long side of the canvas the brush works on
PAINT_ALPHA_MIN = 16  # layer alpha (of 255) from which a canvas pixel counts as painted
SCRIBBLE_ALPHA_MIN = 192  # ... and from which it is an opaque scribble rather than mask paint
MASK_RGB = (255, 0, 255)  # the mask brush: magenta at half opacity, so the photo shows through
MASK_OPACITY = 0.5


def preview_size(size: tuple[int, int], side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """The (w, h) of the canvas for a photo of ``size`` = (W, H): long side at most ``side``."""
    w, h = size
    s = min(1.0, side / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def preview(
    photo: Photo, pixels: np.ndarray | None = None, side: int = PREVIEW_SIDE
) -> Image.Image:
    """The canvas image: ``pixels`` (the photo's own samples, default its own) area-averaged to
    :func:`preview_size`, then seen in sRGB (8-bit RGB). Alpha is not shown."""
    px = photo.pixels if pixels is None else pixels  # (H, W, C) uint8/uint16
    size = preview_size((px.shape[1], px.shape[0]), side)
    if size != (px.shape[1], px.shape[0]):
        small = cv2.resize(px, size, interpolation=cv2.INTER_AREA)
        px = small[..., None] if small.ndim == 2 else small  # cv2 drops a single channel
    return Image.fromarray(Photo(px, photo.mode, icc_profile=photo.icc_profile).to_srgb(), "RGB")


def index_map(n_full: int, n_canvas: int) -> np.ndarray:
    """For each full-res index, the canvas index whose pixel holds its centre: (n_full,) int."""
    idx = ((np.arange(n_full, dtype=np.float64) + 0.5) * (n_canvas / n_full)).astype(np.int64)
    return np.minimum(idx, n_canvas - 1)


def to_full(canvas: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A canvas array (h, w[, C]) at full resolution ``size`` = (W, H), nearest (see the module
    docstring): bool stays bool, colours stay exact."""
    w, h = size
    rows = index_map(h, canvas.shape[0])
    cols = index_map(w, canvas.shape[1])
    return canvas[rows[:, None], cols[None, :]]


def split_paint(layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One RGBA canvas layer (h, w, 4) -> (painted, scribbled) bool (h, w): every pixel with paint,
    and the opaque (scribble) ones among them."""
    a = np.asarray(layer)
    if a.ndim != 3 or a.shape[2] != 4:
        raise InputError(f"editor: a paint layer of shape {a.shape} is not RGBA")
    alpha = a[..., 3]
    return alpha >= PAINT_ALPHA_MIN, alpha >= SCRIBBLE_ALPHA_MIN


@dataclass
class Scribble:
    """Colours drawn on the photo, at full resolution: ``rgba`` (h, w, 4) uint8 sRGB with alpha
    0 or 255, placed at ``box`` = (x0, y0, x1, y1) of the photo as shown."""

    box: tuple[int, int, int, int]
    rgba: np.ndarray

    @property
    def pixels(self) -> int:
        return int((self.rgba[..., 3] > 0).sum())

    def apply(self, photo: Photo) -> np.ndarray:
        """A new (H, W, C) array: the photo's pixels with the scribble's colours converted to the
        photo's own colour space and depth where it is drawn."""
        out = photo.pixels.copy()
        x0, y0, x1, y1 = self.box
        drawn = self.rgba[..., 3] > 0  # (h, w)
        own = photo.from_srgb(np.ascontiguousarray(self.rgba[..., :3]))  # (h, w, C)
        out[y0:y1, x0:x1][drawn] = own[drawn]
        return out

    def to_dict(self) -> dict[str, Any]:
        buf = io.BytesIO()
        Image.fromarray(self.rgba, "RGBA").save(buf, format="PNG")
        return {"box": list(self.box), "png_base64": base64.b64encode(buf.getvalue()).decode()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], size: tuple[int, int], name: str) -> Scribble:
        try:
            x0, y0, x1, y1 = (int(v) for v in d["box"])
            data = base64.b64decode(str(d["png_base64"]).encode("ascii"), validate=True)
            with Image.open(io.BytesIO(data)) as im:
                rgba = np.asarray(im.convert("RGBA")).copy()
        except Exception:
            raise InputError(f"{name}: not a box and a base64 PNG") from None
        if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]) or rgba.shape[:2] != (
            y1 - y0,
            x1 - x0,
        ):
            raise InputError(f"{name}: box {[x0, y0, x1, y1]} does not fit the photo or its image")
        rgba[..., 3] = np.where(rgba[..., 3] >= 128, 255, 0)
        return cls((x0, y0, x1, y1), rgba)


def scribble_from_canvas(
    layer: np.ndarray, size: tuple[int, int], region: np.ndarray
) -> Scribble | None:
    """The opaque strokes of a canvas layer (h, w, 4) at full resolution ``size`` = (W, H), kept
    inside the edit ``region`` (H, W) bool only; None when nothing of it is left."""
    _, scribbled = split_paint(layer)
    if not scribbled.any():
        return None
    w, h = size
    rows, cols = index_map(h, layer.shape[0]), index_map(w, layer.shape[1])
    # Full-res box of the drawn canvas pixels: every full-res row/column mapping into their span.
    ys, xs = np.nonzero(scribbled.any(axis=1))[0], np.nonzero(scribbled.any(axis=0))[0]
    y_in = np.nonzero((rows >= ys[0]) & (rows <= ys[-1]))[0]
    x_in = np.nonzero((cols >= xs[0]) & (cols <= xs[-1]))[0]
    y0, y1, x0, x1 = int(y_in[0]), int(y_in[-1]) + 1, int(x_in[0]), int(x_in[-1]) + 1
    sub = layer[rows[y0:y1, None], cols[None, x0:x1]]  # (h', w', 4) nearest
    drawn = (sub[..., 3] >= SCRIBBLE_ALPHA_MIN) & region[y0:y1, x0:x1]
    if not drawn.any():
        return None
    rgba = np.zeros(sub.shape, np.uint8)
    rgba[drawn, :3] = sub[drawn, :3]
    rgba[drawn, 3] = 255
    return Scribble((x0, y0, x1, y1), rgba)


def paint_from_editor(
    value: Mapping[str, Any] | None, canvas: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """An ImageEditor value -> (painted (h, w) bool at the canvas size, the top layer that holds
    opaque paint as RGBA (h, w, 4), or None). Several layers are merged, upper over lower."""
    cw, ch = canvas
    painted = np.zeros((ch, cw), bool)
    merged: np.ndarray | None = None
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] != 4:
            continue
        if a.shape[:2] != (ch, cw):  # a canvas of another size spanning the same photo
            a = to_full(a, (cw, ch))
        p, s = split_paint(a)
        painted |= p
        if s.any():
            if merged is None:
                merged = np.zeros((ch, cw, 4), np.uint8)
            merged[p] = a[p]  # an upper layer's paint covers what lies below
        elif merged is not None:
            merged[p] = 0
    return painted, merged


def mask_from_editor(
    value: Mapping[str, Any] | None, size: tuple[int, int], canvas: tuple[int, int] | None = None
) -> np.ndarray:
    """The painted region (mask and scribble paint) of an ImageEditor value as a bool (H, W)
    array at the photo's full ``size`` = (W, H), from a ``canvas`` (w, h) preview (default: the
    background's size, else the photo's)."""
    if canvas is None:
        bg = (value or {}).get("background")
        canvas = size if bg is None else (np.asarray(bg).shape[1], np.asarray(bg).shape[0])
    return painted_region(value, size, canvas)[0]


def painted_region(
    value: Mapping[str, Any] | None, size: tuple[int, int], canvas: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the painted region as a bool (H, W) at the photo's ``size``, the paint layer of the
    ``canvas`` preview or None); nothing painted is one line."""
    painted, layer = paint_from_editor(value, canvas)
    if not painted.any():
        raise InputError("mask: nothing painted; paint the region to edit with the brush")
    return to_full(painted, size), layer


def mask_layer(mask: np.ndarray) -> np.ndarray:
    """A bool mask as an RGBA editor layer painted with the mask brush."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (*MASK_RGB, round(255 * MASK_OPACITY))
    return layer
