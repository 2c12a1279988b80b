"""Progressive mask shrinking (BLD paper 4.3) on thin masks: with the mask dilated in the early
steps the model lays out an object, then the mask shrinks back to the thin region.

Masks: the outline of a ring or a cross drawn with a 4 or 6 px stroke (22 px across), on the
background away from the scene's object; prompt: that shape in a random colour; judged by the toy
classifier in the 28 px square around the stroke. Measured when the thresholds were set (this
test: 5 scenes x 3 candidates per stroke, 10 steps): the prompt's colour was found in 65.0% of the
results with shrinking against 53.3% without, shape and colour together in 18% against 13%; 8
scenes x 4 candidates with 2, 4 and 6 px strokes: colour 53.1% against 43.8%, shape and colour 11%
against 10%. In this world shrinking helps a thin mask take the prompt's colour more than its
shape. ``auto`` shrinks the 2 and 4 px strokes (more than a
quarter of the latent mask narrower than 3 cells; 8 of the 10 4 px masks here) and leaves the 6 px
ones alone, although shrinking helps them as much: forcing it on (``--mask-shrink on``) is worth
trying on any mask a few latent cells wide.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from toy_cases import say, verdicts

N_SCENES, N_CANDIDATES = 5, 3
RUN = {"num_inference_steps": 10, "guidance_scale": 5.0, "metrics": False}
CORNERS = ((16, 16), (48, 16), (16, 48), (48, 48))
KINDS = {"ring": 4, "cross": 3}  # outline -> the world's shape id


def stroke(kind: str, cx: int, cy: int, width: int) -> np.ndarray:
    """(64, 64) uint8 mask: a ring or cross outline 22 px across with a ``width`` px stroke."""
    s = 4  # drawn at 4x, box-filtered down
    im = Image.new("L", (64 * s, 64 * s), 0)
    d = ImageDraw.Draw(im)
    x, y, r, w = cx * s, cy * s, 11 * s, width * s
    if kind == "ring":
        d.ellipse([x - r, y - r, x + r, y + r], outline=255, width=w)
    else:
        d.rectangle([x - r, y - w / 2, x + r, y + w / 2], fill=255)
        d.rectangle([x - w / 2, y - r, x + w / 2, y + r], fill=255)
    small = np.asarray(im.resize((64, 64), Image.Resampling.BOX))
    return np.where(small > 40, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def measured(toyworld, toy_editor, toy_judge):
    """Colour precision with shrinking on and off, and whether ``auto`` shrinks each mask."""
    rng = np.random.default_rng(3)
    colour_ok: dict[str, list[float]] = {"on": [], "off": []}
    both_ok: dict[str, list[float]] = {"on": [], "off": []}
    auto: dict[int, list[bool]] = {4: [], 6: []}
    for i in range(N_SCENES):
        image, labels = toyworld.scene(i)
        colour = int(rng.integers(6))
        cx, cy = max(CORNERS, key=lambda c: (c[0] - labels[3]) ** 2 + (c[1] - labels[4]) ** 2)
        box = (cx - 14, cy - 14, cx + 14, cy + 14)
        for kind, shape in KINDS.items():
            target = int(toyworld.data.class_id(shape, colour))
            for width in auto:
                mask = stroke(kind, cx, cy, width)
                for mode in colour_ok:
                    r = toy_editor(
                        image, mask, toyworld.caption(target), seed=i, num_images=N_CANDIDATES,
                        mask_shrink=mode, **RUN,
                    )  # fmt: skip
                    if mode == "on":  # what auto decides for this mask (one 1-step look)
                        probe = toy_editor(
                            image, mask, "", num_images=1, num_inference_steps=1, metrics=False
                        )
                        auto[width].append(bool(probe.settings["shrink_applied"]))
                    images = [c.image for c in r.candidates]
                    same_colour = [
                        verdicts(toy_judge, images, box, int(toyworld.data.class_id(s, colour)))
                        for s in range(len(toyworld.data.SHAPES))
                    ]
                    colour_ok[mode].append(float(np.any(same_colour, axis=0).mean()))
                    both_ok[mode].append(float(verdicts(toy_judge, images, box, target).mean()))
    mean = {m: float(np.mean(v)) for m, v in colour_ok.items()}
    both = {m: float(np.mean(v)) for m, v in both_ok.items()}
    return mean, both, auto


def test_shrinking_helps_thin_masks_take_the_prompt(measured):
    colour, both, auto = measured
    msg = say(
        "thin masks: prompt's colour found with shrinking vs without",
        shrink=colour["on"],
        no_shrink=colour["off"],
        shape_and_colour_shrink=both["on"],
        shape_and_colour_no_shrink=both["off"],
        auto_4px=f"{sum(auto[4])}/{len(auto[4])}",
        auto_6px=f"{sum(auto[6])}/{len(auto[6])}",
    )
    assert colour["on"] >= colour["off"] + 0.05, msg
    assert sum(auto[4]) >= 0.75 * len(auto[4]) and not any(auto[6]), msg
