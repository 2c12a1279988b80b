"""Tests for blendedit.frame.masks: mask images of every mode, checks, latent masks, morphology,
progressive shrinking and feathering."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blendedit.errors import InputError
from blendedit.frame.masks import (
    check_mask,
    dilate,
    erode,
    feather,
    has_thin_parts,
    latent_mask,
    load_mask,
    mask_from_image,
    shrink_stages,
    stage_of_step,
    thin_fraction,
    to_tensor,
)

W, H = 32, 24  # image size (W, H) used by the mode tests


def _region(h: int = H, w: int = W) -> np.ndarray:
    """A bool (h, w) block in the left-top part: True = edit."""
    m = np.zeros((h, w), bool)
    m[h // 4 : h // 2, w // 8 : w // 2] = True
    return m


def _one_line(err: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# ------------------------------------------------------------------ mask_from_image: modes


def test_mode_l() -> None:
    m = _region()
    im = Image.fromarray(np.where(m, 255, 0).astype(np.uint8), "L")
    assert np.array_equal(mask_from_image(im, (W, H)), m)


def test_mode_l_threshold_at_128() -> None:
    grey = np.zeros((H, W), np.uint8)
    grey[:, : W // 2] = 128  # counts as edit
    grey[:, W // 2 :] = 127  # does not
    out = mask_from_image(Image.fromarray(grey, "L"), (W, H))
    assert out[:, : W // 2].all() and not out[:, W // 2 :].any()


def test_mode_1() -> None:
    m = _region()
    im = Image.fromarray(m)
    assert im.mode == "1"
    assert np.array_equal(mask_from_image(im, (W, H)), m)


def test_mode_p() -> None:
    m = _region()
    im = Image.new("P", (W, H))
    im.putpalette([0, 0, 0, 255, 255, 255])
    im.putdata(m.astype(np.uint8).ravel().tolist())
    assert np.array_equal(mask_from_image(im, (W, H)), m)


def test_mode_rgb() -> None:
    m = _region()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[m] = 255
    assert np.array_equal(mask_from_image(Image.fromarray(rgb, "RGB"), (W, H)), m)


def test_mode_rgba_alpha_carries_the_mask() -> None:
    m = _region()
    rgba = np.full((H, W, 4), 255, np.uint8)  # white everywhere: the colours say "all edit"
    rgba[..., 3] = np.where(m, 255, 0)
    assert np.array_equal(mask_from_image(Image.fromarray(rgba, "RGBA"), (W, H)), m)


def test_mode_rgba_fully_opaque_uses_colours() -> None:
    m = _region()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[m, :3] = 255
    rgba[..., 3] = 255
    assert np.array_equal(mask_from_image(Image.fromarray(rgba, "RGBA"), (W, H)), m)


def test_mode_la_alpha_carries_the_mask() -> None:
    m = _region()
    la = np.full((H, W, 2), 255, np.uint8)
    la[..., 1] = np.where(m, 255, 0)
    im = Image.fromarray(la, "LA")
    assert im.mode == "LA"
    assert np.array_equal(mask_from_image(im, (W, H)), m)


@pytest.mark.parametrize("top", [65535, 1000])
def test_mode_i16(top: int) -> None:
    m = _region()
    im = Image.fromarray(np.where(m, top, 0).astype(np.uint16))
    assert im.mode == "I;16"
    assert np.array_equal(mask_from_image(im, (W, H)), m)


def test_invert() -> None:
    m = _region()
    im = Image.fromarray(np.where(m, 255, 0).astype(np.uint8), "L")
    assert np.array_equal(mask_from_image(im, (W, H), invert=True), ~m)


def test_unsupported_mode() -> None:
    im = Image.new("CMYK", (W, H))
    with pytest.raises(InputError) as e:
        mask_from_image(im, (W, H))
    _one_line(e, "mask", "CMYK")


# ------------------------------------------------------------------ mask_from_image: sizes


def test_larger_mask_same_aspect_is_resized_down() -> None:
    big = np.zeros((2 * H, 2 * W), np.uint8)
    big[:, :W] = 255  # left half
    out = mask_from_image(Image.fromarray(big, "L"), (W, H))
    assert out.shape == (H, W)
    assert out[:, : W // 2].all() and not out[:, W // 2 :].any()


def test_smaller_mask_same_aspect_is_resized_up() -> None:
    small = np.zeros((H // 2, W // 2), np.uint8)
    small[: H // 4, :] = 255  # top half
    out = mask_from_image(Image.fromarray(small, "L"), (W, H))
    assert out.shape == (H, W)
    assert out[: H // 2].all() and not out[H // 2 :].any()


def test_different_aspect_is_an_error_naming_both_sizes() -> None:
    im = Image.new("L", (40, 20), 255)
    with pytest.raises(InputError) as e:
        mask_from_image(im, (32, 32))
    _one_line(e, "mask", "40x20", "32x32")


# ------------------------------------------------------------------ check_mask / load_mask


def test_check_mask_empty() -> None:
    with pytest.raises(InputError) as e:
        check_mask(np.zeros((8, 8), bool))
    _one_line(e, "mask", "empty")


def test_check_mask_full() -> None:
    with pytest.raises(InputError) as e:
        check_mask(np.ones((8, 8), bool), name="my-mask")
    _one_line(e, "my-mask", "whole image")


def test_check_mask_partial_ok() -> None:
    check_mask(_region())


def test_load_mask_numpy() -> None:
    m = _region()
    assert np.array_equal(load_mask(m, (W, H), invert=False), m)
    assert np.array_equal(load_mask(m, (W, H), invert=True), ~m)
    assert np.array_equal(load_mask(m.astype(np.uint8) * 255, (W, H), invert=False), m)


def test_load_mask_numpy_shape_mismatch() -> None:
    with pytest.raises(InputError) as e:
        load_mask(np.ones((W, H), bool), (W, H), invert=False)  # transposed
    _one_line(e, "mask", str((W, H)), str((H, W)))


def test_load_mask_numpy_empty_is_rejected() -> None:
    with pytest.raises(InputError) as e:
        load_mask(np.zeros((H, W), bool), (W, H), invert=False)
    _one_line(e, "mask", "empty")


def test_load_mask_file(tmp_path) -> None:
    m = _region()
    path = tmp_path / "mask.png"
    Image.fromarray(np.where(m, 255, 0).astype(np.uint8), "L").save(path)
    assert np.array_equal(load_mask(path, (W, H), invert=False), m)
    assert np.array_equal(load_mask(str(path), (W, H), invert=True), ~m)


def test_load_mask_missing_file(tmp_path) -> None:
    with pytest.raises(InputError) as e:
        load_mask(tmp_path / "nope.png", (W, H), invert=False)
    _one_line(e, "mask", "nope.png")


def test_load_mask_shared_photo_masks(shared_images) -> None:
    for path in sorted(shared_images.glob("*.mask-*.png")):
        photo = shared_images / (path.name.split(".mask-")[0] + ".png")
        size = Image.open(photo).size
        m = load_mask(path, size, invert=False)
        assert m.shape == (size[1], size[0]) and m.dtype == bool
        assert 0 < m.mean() < 1


# ------------------------------------------------------------------ latent_mask


def test_latent_mask_keeps_thin_stroke_that_nearest_loses() -> None:
    m = torch.zeros(1, 1, 128, 128)
    m[..., 9:15] = 1.0  # a 6 px wide vertical stroke inside latent column 1 (px 8..15)
    lat = latent_mask(m, (16, 16))
    near = F.interpolate(m, size=(16, 16), mode="nearest")
    assert near.sum() == 0  # nearest samples px 0, 8, 16, ...: the stroke vanishes
    assert lat.shape == (1, 1, 16, 16)
    assert lat.sum() == 16
    assert torch.equal(lat[0, 0, :, 1], torch.ones(16))
    assert set(lat.unique().tolist()) <= {0.0, 1.0}


def test_latent_mask_of_aligned_block_equals_nearest() -> None:
    m = torch.zeros(2, 1, 128, 96)
    m[0, :, 16:64, 8:40] = 1.0
    m[1, :, 72:128, 48:96] = 1.0
    lat = latent_mask(m, (16, 12))
    assert torch.equal(lat, F.interpolate(m, size=(16, 12), mode="nearest"))


def test_latent_mask_keeps_partial_coverage() -> None:
    m = torch.zeros(1, 1, 64, 64)
    m[..., 0, 63] = 0.2  # a single partly covered pixel
    lat = latent_mask(m, (8, 8))
    assert lat[0, 0, 0, 7] == 1 and lat.sum() == 1


# ------------------------------------------------------------------ dilate / erode


def _point(size: int = 15) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., size // 2, size // 2] = 1.0
    return m


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_dilate_point_gives_square(k: int) -> None:
    d = dilate(_point(), k)
    assert d.sum() == k * k
    c, r = 7, k // 2
    assert d[..., c - r : c + r + 1, c - r : c + r + 1].all()


@pytest.mark.parametrize("k", [3, 5])
def test_erode_single_hole_gives_square_hole(k: int) -> None:
    hole = 1 - _point()
    e = erode(hole, k)
    assert (1 - e).sum() == k * k


def test_erode_undoes_dilate_of_square_and_keeps_border() -> None:
    m = torch.zeros(1, 1, 16, 16)
    m[..., 5:11, 5:11] = 1
    assert torch.equal(erode(dilate(m, 3), 3), m)
    full_left = torch.zeros(1, 1, 8, 8)
    full_left[..., :4] = 1
    # Outside the image counts as inside: the border column is not eroded.
    assert torch.equal(erode(full_left, 3)[..., :3], torch.ones(1, 1, 8, 3))


# ------------------------------------------------------------------ shrink_stages / stage_of_step


def test_shrink_stages_single_cell() -> None:
    m = torch.zeros(1, 1, 16, 16)
    m[..., 8, 8] = 1.0
    st = shrink_stages(m, (7, 5, 3))
    assert st.shape == (4, 1, 1, 16, 16)
    assert [int(s.sum()) for s in st] == [49, 25, 9, 1]
    for a, b in itertools.pairwise(st):
        assert torch.all(a >= b)  # each stage contains the next
    assert torch.equal(st[-1], m)


def test_shrink_stages_order_independent() -> None:
    m = torch.zeros(2, 1, 16, 16)
    m[0, 0, 4, 4] = 1.0
    m[1, 0, 10, 12] = 1.0
    ref = shrink_stages(m, (7, 5, 3))
    assert torch.equal(shrink_stages(m, (3, 7, 5)), ref)
    assert torch.equal(shrink_stages(m, (3, 5, 7)), ref)


def test_stage_of_step_38_4() -> None:
    s = stage_of_step(38, 4)
    assert len(s) == 38 and s[0] == 0 and s[-1] == 3
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(s))
    sizes = [s.count(k) for k in range(4)]
    assert sum(sizes) == 38 and max(sizes) - min(sizes) <= 1


def test_stage_of_step_8_4() -> None:
    assert stage_of_step(8, 4) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_stage_of_step_single_stage() -> None:
    assert stage_of_step(5, 1) == [0] * 5


def test_stage_of_step_fewer_steps_than_stages_ends_on_the_mask() -> None:
    # e.g. 4 steps with blend_start 0.25 -> 3 steps, and 4 shrinking stages.
    s = stage_of_step(3, 4)
    assert s[0] == 0 and s[-1] == 3


# ------------------------------------------------------------------ thin parts


def test_thin_line_is_thin() -> None:
    m = torch.zeros(1, 1, 16, 16)
    m[..., 8, 2:14] = 1.0
    assert thin_fraction(m) == 1.0
    assert has_thin_parts(m)


def test_square_is_not_thin() -> None:
    m = torch.zeros(1, 1, 16, 16)
    m[..., 5:11, 5:11] = 1.0
    assert thin_fraction(m) == 0.0
    assert not has_thin_parts(m)


def test_thin_fraction_of_empty_mask_is_zero() -> None:
    assert thin_fraction(torch.zeros(1, 1, 8, 8)) == 0.0


# ------------------------------------------------------------------ feather


def test_feather_band() -> None:
    m = np.zeros((40, 40), bool)
    m[15:25, 15:25] = True
    width = 6
    a = feather(m, width)
    assert a.dtype == np.float32 and a.shape == m.shape
    assert (a[m] == 1.0).all()
    yy, xx = np.mgrid[:40, :40]
    dy = np.maximum(np.maximum(15 - yy, yy - 24), 0)
    dx = np.maximum(np.maximum(15 - xx, xx - 24), 0)
    dist = np.hypot(dx, dy)
    far = dist >= width
    assert far.any() and (a[far] == 0.0).all()
    band = (~m) & (dist < width)
    assert band.any()
    assert ((a[band] > 0) & (a[band] < 1)).all()
    # Linear fall-off next to the edge: 1 px away -> 1 - 1 / width.
    assert a[14, 20] == pytest.approx(1 - 1 / width, abs=1e-4)


def test_feather_zero_width_is_binary() -> None:
    m = _region()
    a = feather(m, 0)
    assert a.dtype == np.float32
    assert np.array_equal(a, m.astype(np.float32))


def test_to_tensor_shape() -> None:
    t = to_tensor(_region())
    assert t.shape == (1, 1, H, W) and t.dtype == torch.float32


def test_soft_step_masks_free_a_cell_once_its_strength_reaches_the_threshold():
    from blendedit.frame.masks import step_masks

    strength = torch.tensor([0.0, 0.3, 0.5, 1.0]).view(1, 1, 1, 1, 4)  # (S=1, B, 1, h, w)
    masks = step_masks(strength, [0] * 4, soft=True)  # thresholds 1, 0.75, 0.5, 0.25
    freed = torch.stack([m.flatten() for m in masks])  # (steps, cells)
    assert freed[:, 0].sum() == 0  # strength 0: never
    assert freed[:, 1].tolist() == [0, 0, 0, 1]  # 0.3: the last step only
    assert freed[:, 2].tolist() == [0, 0, 1, 1]  # 0.5: the last half
    assert freed[:, 3].tolist() == [1, 1, 1, 1]  # 1: from the first step
    binary = (strength > 0.4).float()
    assert all(torch.equal(a, b) for a, b in zip(
        step_masks(binary, [0] * 4, soft=True), step_masks(binary, [0] * 4, soft=False),
        strict=True,
    ))  # fmt: skip


def test_soft_latent_mask_keeps_a_thin_stroke_at_its_strength():
    from blendedit.frame.masks import latent_mask

    m = torch.zeros(1, 1, 64, 64)
    m[..., 30, :] = 0.6  # a one-pixel grey line
    soft = latent_mask(m, (8, 8), soft=True)
    assert torch.allclose(soft[..., 3, :], torch.full((8,), 0.6))
    assert float(soft.sum()) == pytest.approx(0.6 * 8)


def test_grow_blur_and_paste_alpha():
    from blendedit.frame.masks import feather, paste_alpha, refine

    m = np.zeros((64, 64), np.uint8)
    m[24:40, 24:40] = 255
    grown = refine(m, grow=4)
    assert (grown == 255).sum() > (m == 255).sum() and grown[20, 32] == 255
    assert (refine(m, grow=-4) == 255).sum() < (m == 255).sum()
    blurred = refine(m, blur=3)
    assert 0 < blurred[32, 22] < 255 and blurred[0, 0] == 0
    assert np.array_equal(paste_alpha(m, 8, soft=True), feather(m >= 128, 8))
    soft = paste_alpha(blurred, 0, soft=True)
    assert soft[32, 22] == pytest.approx(blurred[32, 22] / 255)
