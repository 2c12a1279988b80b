"""The paper's evaluation inputs (BLD paper 5 and C.1; SPEC 3): per photo a random rectangle and a
random ImageNet class name as the prompt, all drawn from one seed.

Case ``i`` depends only on the seed, the photo list and ``i`` (never on how many cases are asked
for), so ``n_images=10`` evaluates the first ten cases of ``n_images=50`` exactly, and a resumed or
extended run sees the same inputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blendedit.errors import InputError
from blendedit.io import check_image, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SIDE_RANGE = (1 / 5, 1 / 2)  # each side of the rectangle: uniform in [dim/5, dim/2]
DEFAULT_MAX_SIDE = 1024  # px; larger photos are downscaled (LANCZOS) before any method sees them


@dataclass(frozen=True)
class EvalCase:
    """One input of the protocol: a photo, a rectangular mask, a prompt (an ImageNet class)."""

    index: int
    image: Path  # the photo file
    size: tuple[int, int]  # (W, H) every method sees: the photo's, or downscaled to max_side
    box: tuple[int, int, int, int]  # (left, top, width, height) of the mask rectangle, px
    prompt: str  # the class name used as the prompt
    class_index: int  # the classifier's index of that class
    seed: int  # first generation seed; candidate i uses seed + i

    @property
    def id(self) -> str:
        return f"{self.index:03d}-{self.image.stem}"

    def mask(self) -> np.ndarray:
        """Boolean (H, W) mask at ``size``: True inside the rectangle (the region to edit)."""
        w, h = self.size
        left, top, bw, bh = self.box
        m = np.zeros((h, w), dtype=bool)
        m[top : top + bh, left : left + bw] = True
        return m

    def load_image(self) -> Image.Image:
        """The photo as RGB at ``size``."""
        im = load_image(self.image, "image")
        if im.size != self.size:
            im = im.resize(self.size, Image.Resampling.LANCZOS)
        return im

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id"] = self.id
        d["image"] = self.image.name
        d["size"] = list(self.size)
        d["box"] = list(self.box)
        return d


def list_images(images_dir: str | os.PathLike[str]) -> list[Path]:
    """The photos of a folder, sorted by name. Hidden files and masks (``*.mask*.*``, as in
    ``shared/data/images``) are left out."""
    root = Path(images_dir)
    if not root.is_dir():
        raise InputError(f"images: not a folder: {str(root)!r}")
    found = sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and ".mask" not in p.name.lower()
        and not p.name.lower().startswith("mask")
    )
    if not found:
        raise InputError(
            f"images: no photos ({', '.join(IMAGE_SUFFIXES)}) in {str(root)!r} "
            "(files named *.mask*.* are taken as masks and skipped)"
        )
    return found


def class_prompts(id2label: Mapping[int | str, str]) -> dict[int, str]:
    """Class index -> prompt: the first name of each ImageNet label ("tench, Tinca tinca" ->
    "tench"), from the classifier's own label map so prompt and classifier always agree."""
    out: dict[int, str] = {}
    for key, label in id2label.items():
        name = str(label).split(",")[0].strip()
        if name:
            out[int(key)] = name
    generic = all(v.upper().startswith("LABEL_") for v in out.values())
    if not out or generic:
        raise InputError(
            "classifier: its config has no class names (id2label is empty or LABEL_0, LABEL_1, "
            "...); use an ImageNet classifier whose config names its classes"
        )
    return dict(sorted(out.items()))


def effective_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def random_box(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A rectangle with width uniform in [W/5, W/2] and height in [H/5, H/2] (integers, both
    ends included), placed uniformly inside the image. Returns (left, top, width, height)."""
    w, h = size
    lo, hi = MASK_SIDE_RANGE
    bw = int(rng.integers(math.ceil(w * lo), math.floor(w * hi) + 1))
    bh = int(rng.integers(math.ceil(h * lo), math.floor(h * hi) + 1))
    left = int(rng.integers(0, w - bw + 1))
    top = int(rng.integers(0, h - bh + 1))
    return left, top, bw, bh


def make_cases(
    images_dir: str | os.PathLike[str],
    n_images: int,
    seed: int,
    labels: Mapping[int | str, str],
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> list[EvalCase]:
    """The protocol's ``n_images`` inputs, deterministic in ``seed``.

    Photos: a seeded permutation of the sorted list; case i takes photo ``perm[i % count]``, so
    every photo is used once before any is used again (fewer photos than cases: cycled). Each case
    draws its rectangle, class and generation seed from its own generator ``(seed, i)``.
    ``labels`` is the classifier's ``id2label``. Every photo used is checked first (its size and
    mode from the header, transparency where it has alpha): a bad one is one line naming it.
    """
    if n_images < 1:
        raise InputError(f"n_images: must be at least 1, got {n_images}")
    if not 0 <= seed < 2**63:
        raise InputError(f"seed: must be in [0, 2**63), got {seed}")
    photos = list_images(images_dir)
    prompts = class_prompts(labels)
    class_ids = list(prompts)
    perm = np.random.default_rng(seed).permutation(len(photos))
    sizes: dict[Path, tuple[int, int]] = {}
    cases = []
    for i in range(n_images):
        path = photos[int(perm[i % len(photos)])]
        if path not in sizes:  # checked as load_image will read it, before any model loads
            sizes[path] = effective_size(check_image(path, "images"), max_side)
        size = sizes[path]
        rng = np.random.default_rng([seed, i])
        box = random_box(size, rng)
        cls = class_ids[int(rng.integers(0, len(class_ids)))]
        case_seed = int(rng.integers(0, 2**31))
        cases.append(EvalCase(i, path, size, box, prompts[cls], cls, case_seed))
    return cases
