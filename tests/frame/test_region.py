"""The working region: crop box, aspect, shift inside the photo, auto choice."""

from __future__ import annotations

import numpy as np
import pytest

from blendedit.errors import InputError
from blendedit.frame.region import (
    CONTEXT_FRACTION,
    MIN_CONTEXT,
    choose_region,
    context_margin,
    crop_box,
    mask_bbox,
    shapes_at,
)

SHAPES = shapes_at(512)


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    s = 512 / max(size)
    return round(size[0] * s / 8) * 8, round(size[1] * s / 8) * 8


def test_shapes_are_native_area_multiples_of_64():
    assert (512, 512) in SHAPES
    for w, h in SHAPES:
        assert w % 64 == 0 and h % 64 == 0
        assert abs(w * h - 512 * 512) <= 0.15 * 512 * 512
        assert 0.5 <= w / h <= 2


def test_context_grows_with_the_mask():
    assert context_margin((0, 0, 10, 10)) == MIN_CONTEXT
    assert context_margin((0, 0, 500, 400)) == round(CONTEXT_FRACTION * 450)


def test_crop_contains_mask_has_shape_aspect_and_stays_inside():
    mask = _mask(4000, 6000, (2000, 1500, 2500, 1900))  # 500 x 400
    r = choose_region(mask, "crop", _fit((6000, 4000)), SHAPES, _fit)
    x0, y0, x1, y1 = r.box
    assert x0 <= 2000 and y0 <= 1500 and x1 >= 2500 and y1 >= 1900
    assert x0 >= 0 and y0 >= 0 and x1 <= 6000 and y1 <= 4000
    w, h = r.size
    assert abs(w / h - r.work_size[0] / r.work_size[1]) < 0.01
    assert r.work_size in SHAPES
    assert 0.6 < r.scale < 1.0  # processed near 1:1, not 12x downscaled


def test_box_near_the_edge_is_shifted_not_clipped():
    mask = _mask(1000, 1000, (0, 0, 100, 100))
    box = crop_box(mask_bbox(mask), (1000, 1000), 1.0, 50)
    assert box == (0, 0, 200, 200)  # the margin lost at the edge moves to the other side
    mask = _mask(1000, 1000, (950, 950, 1000, 1000))
    x0, y0, x1, y1 = crop_box(mask_bbox(mask), (1000, 1000), 1.0, 30)
    assert (x1, y1) == (1000, 1000) and x1 - x0 == 110 and y1 - y0 == 110


def test_photo_smaller_than_the_box_clips_and_keeps_the_mask():
    mask = _mask(300, 2000, (100, 10, 1900, 290))  # a wide strip in a wide photo, square model
    r = choose_region(mask, "crop", _fit((2000, 300)), SHAPES, _fit)
    x0, y0, x1, y1 = r.box
    assert y0 == 0 and y1 == 300 and x0 <= 100 and x1 >= 1900
    assert r.work_size[0] % 8 == 0 and r.work_size[1] % 8 == 0


def test_auto_crops_only_when_it_gives_the_mask_more_pixels():
    small = _mask(4000, 6000, (2000, 1500, 2500, 1900))
    assert choose_region(small, "auto", _fit((6000, 4000)), SHAPES, _fit).mode == "crop"
    big = _mask(300, 300, (10, 10, 290, 290))  # the crop would be the whole photo
    r = choose_region(big, "auto", _fit((300, 300)), SHAPES, _fit)
    assert r.mode == "full" and r.is_full
    assert choose_region(small, "full", _fit((6000, 4000)), SHAPES, _fit).is_full


def test_bad_mode_and_empty_mask_are_one_line_errors():
    with pytest.raises(InputError, match="region: 'middle'"):
        choose_region(_mask(10, 10, (1, 1, 2, 2)), "middle", (8, 8), SHAPES, _fit)
    with pytest.raises(InputError, match="mask: the mask is empty"):
        mask_bbox(np.zeros((5, 5), dtype=np.uint8))
