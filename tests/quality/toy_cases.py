"""Inputs and judgements shared by the quality tests: held-out toy scenes (generator seed 1), a
square mask, a target caption, and the toy classifier's verdict on the square."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from blendedit.eval.metrics import images_to_tensor
from blendedit.eval.toyworld import ToyClassifier, World, centred_box, square_mask

SIDE = 28  # px, the mask's side on the 64 px scenes (objects of at most 24 px fit)


@dataclass
class Case:
    index: int  # scene index (generator seed 1)
    image: Image.Image  # (64, 64) RGB
    labels: np.ndarray  # [shape, colour, size, cx, cy, n_distractors]
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the mask, centred on the object
    mask: np.ndarray  # (64, 64) uint8, 255 inside box
    original: int  # class id of the object in the scene
    target: int  # another class id: the prompt's


def replace_cases(world: World, n: int, seed: int = 0, max_size: int = 24) -> list[Case]:
    """The first ``n`` held-out scenes whose object is at most ``max_size`` px, each with a
    ``SIDE`` square mask over the object and a random other caption (fixed by ``seed``)."""
    rng = np.random.default_rng(seed)
    out: list[Case] = []
    i = 0
    while len(out) < n:
        image, labels = world.scene(i)
        i += 1
        if labels[2] > max_size:
            continue
        original = world.class_of(labels)
        target = int(rng.integers(29))
        target += target >= original
        box = centred_box(labels, SIDE)
        mask = square_mask(image.size, box)
        out.append(Case(i - 1, image, labels, box, mask, original, target))
    return out


def verdicts(judge: ToyClassifier, images: list[Image.Image], box, cls: int) -> np.ndarray:
    """Whether the classifier names class ``cls`` in ``box`` of each image -> bool (N,)."""
    x = images_to_tensor([im.convert("RGB") for im in images])
    return (judge.classify(x, torch.tensor([box] * len(images))) == cls).numpy()


def say(claim: str, **numbers: float) -> str:
    """One line with the claim and its measured numbers (printed, and the assertion message)."""
    text = f"{claim}: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()
    )
    print(text)
    return text
