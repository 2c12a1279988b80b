"""The evaluation protocol's inputs: rectangles, prompts and seeds, all from one seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from blendedit.errors import InputError
from blendedit.eval.protocol import class_prompts, list_images, make_cases, random_box
from tiny_eval_models import IMAGENET_LABELS

LABELS = dict(enumerate(IMAGENET_LABELS))


def test_list_images_sorted_without_masks(shared_images):
    names = [p.name for p in list_images(shared_images)]
    assert names == ["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]


def test_prompts_are_first_names_of_the_label_map():
    prompts = class_prompts(LABELS)
    assert prompts[0] == "goldfish" and prompts[5] == "sports car" and len(prompts) == 10
    with pytest.raises(InputError, match="no class names"):
        class_prompts({0: "LABEL_0", 1: "LABEL_1"})


def test_box_sides_uniform_in_a_fifth_to_a_half():
    rng = np.random.default_rng(0)
    w, h = 451, 300
    boxes = [random_box((w, h), rng) for _ in range(2000)]
    widths = [b[2] for b in boxes]
    heights = [b[3] for b in boxes]
    assert min(widths) == math.ceil(w / 5) and max(widths) == math.floor(w / 2)
    assert min(heights) == math.ceil(h / 5) and max(heights) == math.floor(h / 2)
    assert all(x >= 0 and x + bw <= w and y >= 0 and y + bh <= h for x, y, bw, bh in boxes)
    # Roughly uniform: the mean side is the middle of the range.
    assert abs(np.mean(widths) - (w / 5 + w / 2) / 2) < 3


def test_cases_are_deterministic_and_independent_of_their_number(shared_images):
    a = make_cases(shared_images, 6, seed=3, labels=LABELS)
    b = make_cases(shared_images, 6, seed=3, labels=LABELS)
    assert a == b
    assert make_cases(shared_images, 2, seed=3, labels=LABELS) == a[:2]  # a prefix
    assert make_cases(shared_images, 6, seed=4, labels=LABELS) != a
    # Four photos, six cases: every photo once before any is used again.
    assert len({c.image for c in a[:4]}) == 4 and {c.image for c in a[4:]} <= {c.image for c in a}
    for c in a:
        assert c.prompt == class_prompts(LABELS)[c.class_index]
        assert c.id == f"{c.index:03d}-{c.image.stem}"
        m = c.mask()
        assert m.shape == (c.size[1], c.size[0]) and m.sum() == c.box[2] * c.box[3]


def test_max_side_downscales_photos(shared_images):
    cases = make_cases(shared_images, 4, seed=0, labels=LABELS, max_side=128)
    for c in cases:
        assert max(c.size) == 128
        assert c.load_image().size == c.size
        w, h = Image.open(c.image).size
        assert abs(c.size[0] / c.size[1] - w / h) < 0.02


def test_bad_inputs_are_one_line_errors(tmp_path, shared_images):
    with pytest.raises(InputError, match="not a folder"):
        make_cases(tmp_path / "missing", 3, 0, LABELS)
    (tmp_path / "only.mask-x.png").write_bytes(b"")
    with pytest.raises(InputError, match="no photos"):
        make_cases(tmp_path, 3, 0, LABELS)
    with pytest.raises(InputError, match="n_images"):
        make_cases(shared_images, 0, 0, LABELS)
