"""What every segmenter shares: a selection (text, points, box) in the photo's pixels, the soft
mask it gives at the photo's full resolution, and loading a transformers model by id or folder
with one line when it is not there."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.models import load_cached_first

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the photo's pixels (as shown)


@dataclass(frozen=True)
class Point:
    """A click in the photo's pixels (as shown); ``positive`` False: a negative click (exclude)."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Selection:
    """What to select: a text naming it, clicks on it, a box around it (any combination a
    segmenter takes). Coordinates are in the photo's pixels, oriented as shown."""

    text: str | None = None
    points: tuple[Point, ...] = ()
    box: Box | None = None

    @property
    def empty(self) -> bool:
        return not (self.text or self.points or self.box is not None)

    def describe(self) -> str:
        """The selection as the flags that gave it (for errors and provenance)."""
        parts = [f"text {self.text!r}"] if self.text else []
        parts += [f"{'+' if p.positive else '-'}point {p.x:g},{p.y:g}" for p in self.points]
        if self.box is not None:
            parts.append("box " + ",".join(f"{v:g}" for v in self.box))
        return ", ".join(parts) or "nothing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "points": [[p.x, p.y, int(p.positive)] for p in self.points],
            "box": list(self.box) if self.box is not None else None,
        }


@dataclass
class Segmentation:
    """A segmenter's answer. ``mask``: float32 (H, W) in [0, 1] at the photo's full size (the
    probability that a pixel belongs to the selection); ``boxes``: what a detector found, in
    pixels; ``scores``: their (or the chosen mask's) confidence."""

    mask: np.ndarray
    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def image_key(image: Image.Image) -> str:
    """A digest of an image's pixels: the key of a segmenter's cached image embedding."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class PhotoCache:
    """The image embedding of the last photo a segmenter saw: every further click or phrase on
    the same pixels reuses it (the image encoder is most of a click's cost)."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._value: Any = None
        self.encodes = 0  # encoder runs (the cache's misses)

    def get(self, image: Image.Image, encode: Callable[[Image.Image], Any]) -> Any:
        key = image_key(image)
        if key != self._key:
            self._value, self._key = encode(image), key
            self.encodes += 1
        return self._value


class Segmenter(ABC):
    """Image + selection -> soft mask at the photo's full resolution.

    A kind of model is a subclass with ``model_types`` (the transformers ``model_type`` values it
    reads), what it takes (``takes_text``, ``takes_clicks``) and ``load``; the registry
    (:mod:`blendedit.segment`) finds the kind from the model's config."""

    model_types: ClassVar[tuple[str, ...]] = ()
    takes_text: ClassVar[bool] = False
    takes_clicks: ClassVar[bool] = False
    name: str = ""
    device: torch.device = torch.device("cpu")
    cache: PhotoCache | None = None  # the last photo's image embedding, where a kind reuses it

    @property
    def encodes(self) -> int:
        """Image encoder runs so far (the cache's misses)."""
        return 0 if self.cache is None else self.cache.encodes

    @classmethod
    @abstractmethod
    def load(cls, name: str, device: torch.device, dtype: torch.dtype, local: bool | None) -> Any:
        """The segmenter ``name`` (hub id or local folder) on ``device``."""

    @abstractmethod
    def segment(self, image: Image.Image, selection: Selection) -> Segmentation:
        """The selection's soft mask on ``image`` (RGB, the photo as shown)."""

    def check(self, selection: Selection) -> None:
        """Refuse a selection this kind cannot take, in one line."""
        if selection.empty:
            raise InputError("mask-from: nothing to select (give a text, a point or a box)")
        if selection.text and not self.takes_text:
            raise InputError(
                f"segmenter: {self.name!r} takes clicks and boxes, not text "
                f"({selection.text!r}); choose a text segmenter (CLIPSeg, GroundingDINO+SAM)"
            )
        if (selection.points or selection.box is not None) and not self.takes_clicks:
            raise InputError(
                f"segmenter: {self.name!r} takes text only, not points or boxes; "
                "choose SAM (or GroundingDINO+SAM) for clicks"
            )


def load_part(arg: str, name: str, load: Callable[[bool], Any], local: bool | None) -> Any:
    """A model or processor from a folder, the cache or the hub (:func:`load_cached_first`):
    one line naming ``name`` when it is not there."""
    return load_cached_first(arg, name, load, local)


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) probabilities -> float32 (H, W) at ``size`` = (W, H), bilinear."""
    import torch.nn.functional as F

    out = F.interpolate(probs[None, None].float(), size=(size[1], size[0]), mode="bilinear")
    return out[0, 0].clamp(0, 1).cpu().numpy()
