"""The toy world: small models trained on procedural scenes, to measure what random weights cannot.

``../shared/toyworld/`` (next to the repository; ``BLENDEDIT_SHARED`` names another ``shared``
folder) holds a Stable Diffusion folder trained on 64x64 scenes of one coloured shape on a textured
background (``toy-sd/``, captions "a {colour} {shape}", 6 colours x 5 shapes), its CLIP
(``toy-clip/``), a classifier of the main object's shape and colour (``classifier.safetensors`` with
its code ``classifier.py``) and the scene generator ``data.py``. They are not part of the package:
this module imports the world's own code from that folder by path.

The classifier is the evaluation's judge there (:class:`ToyClassifier`): its 30 captions are the
prompt classes, and a prediction is correct when the shape and the colour it names in the square
around the edited rectangle are both the prompt's (top 1 of 30).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blendedit.errors import InputError
from blendedit.frame.region import mask_bbox

TOP_K = 1  # 30 classes: top 1 (the paper's top 5 is for ImageNet's near-synonyms)
_WORLD_MODULES = ("data", "train", "classifier")


def shared_dir() -> Path:
    """``BLENDEDIT_SHARED``, else the ``shared`` folder beside the repository (``../shared``)."""
    env = os.environ.get("BLENDEDIT_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared"


def world_dir() -> Path:
    return shared_dir() / "toyworld"


def missing(world: Path) -> str | None:
    """Why the toy world at ``world`` cannot be used, or None when every part is there."""
    need = ("toy-sd/model_index.json", "toy-clip/config.json", "classifier.safetensors")
    need += ("classifier.py", "data.py", "train.py")
    absent = [n for n in need if not (world / n).is_file()]
    return (
        f"the toy world is not in {str(world)!r} (missing {', '.join(absent)})" if absent else None
    )


def import_world(world: str | os.PathLike[str], name: str) -> ModuleType:
    """The world's own module ``name`` ("data" or "classifier"), imported from its folder by path.
    Registered as ``_toyworld_<name>``; the generic names ``data``/``train`` are left as found."""
    key = f"_toyworld_{name}"
    if key in sys.modules:
        return sys.modules[key]
    folder = str(Path(world).resolve())
    saved = {n: sys.modules.pop(n) for n in _WORLD_MODULES if n in sys.modules}
    threads = torch.get_num_threads()  # the world's train.py sets 2 threads when imported
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(name)
        loaded = {n: sys.modules[n] for n in _WORLD_MODULES if n in sys.modules}
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(folder)
        for n in _WORLD_MODULES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    for n, mod in loaded.items():
        sys.modules[f"_toyworld_{n}"] = mod
    return module


def is_toy_classifier(name: str | os.PathLike[str]) -> bool:
    """A ``classifier.safetensors`` file whose folder holds the world's ``classifier.py``."""
    p = Path(name)
    return p.suffix == ".safetensors" and p.is_file() and (p.parent / "classifier.py").is_file()


def mask_square(mask: np.ndarray | Tensor, min_side: int = 16) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1) around a mask's bounding box: side = its longer side (at least
    ``min_side``), centred on it, shifted inside the image. mask (H, W) or (1, 1, H, W), 1 = edit."""
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:])
    bx0, by0, bx1, by1 = mask_bbox(m > 0.5)
    h, w = m.shape
    side = min(max(bx1 - bx0, by1 - by0, min_side), h, w)
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x0, y0, x0 + int(side), y0 + int(side)


class ToyClassifier:
    """The toy world's judge (its ``classifier.py``: a small CNN naming the main object's shape and
    colour in a box). Classes are the 30 captions, id = colour * 5 + shape as in ``data.py``.

    For the evaluation (:func:`blendedit.eval.metrics.evaluate_case`) it classifies the square
    around the edited rectangle (:func:`mask_square`), the crop it was trained on, not a masked
    image: a prediction is correct when shape and colour are both the prompt's."""

    top_k = TOP_K
    rule = (
        "cropped to the square around the rectangle (the toy classifier's own input) and "
        "classified by shape and colour; correct when both are the prompt's (top 1 of 30)"
    )

    def __init__(self, net: Any, world: ModuleType, data: ModuleType, name: str = "") -> None:
        self.net = net.eval().requires_grad_(False)
        self.world, self.data = world, data
        self.name = name

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ToyClassifier:
        p = Path(path)
        if not is_toy_classifier(p):
            raise InputError(
                f"classifier: {str(path)!r} is not a toy-world classifier (a .safetensors file "
                "beside its classifier.py)"
            )
        world = import_world(p.parent, "classifier")
        return cls(world.load(p), world, import_world(p.parent, "data"), str(path))

    @property
    def captions(self) -> list[str]:
        return list(self.data.CAPTIONS)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.captions))

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> ToyClassifier:
        self.net.to(device)
        return self

    @torch.no_grad()
    def box_logits(self, images: Tensor, boxes: Tensor | np.ndarray) -> Tensor:
        """images (B, 3, H, W) in [0, 1]; boxes (B, 4) px (x0, y0, x1, y1) -> (B, 30) class
        log-probabilities (shape's plus colour's), float32 on the CPU."""
        x = self.world.crop(images.float().cpu(), torch.as_tensor(np.asarray(boxes)).float())
        ls, lc = self.net(x.to(self.device))
        ls, lc = ls.float().log_softmax(1).cpu(), lc.float().log_softmax(1).cpu()  # (B,5), (B,6)
        return (lc[:, :, None] + ls[:, None, :]).flatten(1)  # index colour * 5 + shape

    def classify(self, images: Tensor, boxes: Tensor | np.ndarray) -> Tensor:
        """(B, 3, H, W) in [0, 1] and (B, 4) boxes -> class ids (B,)."""
        return self.box_logits(images, boxes).argmax(1)

    def correct(
        self, images: Tensor, mask: np.ndarray | Tensor, class_index: int, k: int = TOP_K
    ) -> Tensor:
        """The precision test per image: the square around ``mask``'s rectangle, classified; is
        ``class_index`` among the top ``k``? -> bool ``(B,)``."""
        box = torch.tensor([mask_square(mask)] * images.shape[0])
        top = self.box_logits(images, box).topk(k, dim=1).indices
        return (top == class_index).any(dim=1)


class World:
    """The toy world's parts for tests, scripts and figures: model folders, scenes, judge."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else world_dir()
        why = missing(self.root)
        if why:
            raise InputError(f"toyworld: {why}")
        self.sd = self.root / "toy-sd"
        self.clip = self.root / "toy-clip"
        self.classifier_file = self.root / "classifier.safetensors"
        self.data = import_world(self.root, "data")

    def scene(self, index: int, seed: int = 1) -> tuple[Image.Image, np.ndarray]:
        """Scene ``index`` of the generator (seed 1 = the held-out test scenes) -> RGB 64x64 image
        and labels [shape, colour, size, cx, cy, n_distractors]."""
        img, labels = self.data.sample(seed, index)
        return Image.fromarray(img), labels

    def caption(self, class_id: int) -> str:
        return self.data.CAPTIONS[class_id]

    def class_of(self, labels: np.ndarray) -> int:
        return int(self.data.class_id(int(labels[0]), int(labels[1])))

    def classifier(self) -> ToyClassifier:
        return ToyClassifier.from_file(self.classifier_file)


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) uint8 mask, 255 inside ``box`` (x0, y0, x1, y1)."""
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


def centred_box(labels: np.ndarray, side: int, size: int = 64) -> tuple[int, int, int, int]:
    """A ``side`` square centred on a scene's main object, kept inside the image."""
    x0 = int(np.clip(round(float(labels[3]) - side / 2), 0, size - side))
    y0 = int(np.clip(round(float(labels[4]) - side / 2), 0, size - side))
    return x0, y0, x0 + side, y0 + side


def write_scenes(out: str | os.PathLike[str], n: int, seed: int = 1, start: int = 0) -> list[Path]:
    """Scenes ``start .. start + n - 1`` of the generator as ``scene-NNNN.png`` in a new or empty
    folder (inputs for ``blendedit eval``); returns the files. Never overwrites a file."""
    from blendedit.io import check_out_dir, save_png

    folder = check_out_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    world = World()
    files = []
    for i in range(start, start + n):
        path = folder / f"scene-{i:04d}.png"
        save_png(world.scene(i, seed)[0], path)
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    """``python -m blendedit.eval.toyworld scenes OUT --n 30``: input photos for the evaluation."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m blendedit.eval.toyworld")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scenes", help="write the generator's held-out scenes as PNG files")
    s.add_argument("out", help="a new or empty folder")
    s.add_argument("--n", type=int, default=30, help="how many scenes (default 30)")
    s.add_argument("--seed", type=int, default=1, help="generator seed (1: held-out test scenes)")
    s.add_argument("--start", type=int, default=0, help="first scene index")
    a = ap.parse_args(argv)
    try:
        files = write_scenes(a.out, a.n, a.seed, a.start)
    except InputError as e:
        print(f"blendedit: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} scenes to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
