"""The preview canvas and the full-resolution photo: exact mask mapping, orientation, scribbles,
upload caps (no model, no browser)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendedit import io as bio
from blendedit.errors import InputError
from blendedit.frame.photo import read_photo
from blendedit.web.canvas import (
    Scribble,
    mask_from_editor,
    paint_from_editor,
    preview,
    preview_size,
    scribble_from_canvas,
    to_full,
)
from blendedit.web.handlers import ServeOptions, check_photo_file, read_upload

T = Image.Transpose
UNDO_ORIENT = {  # EXIF orientation -> the transpose that stores an upright picture that way
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}


def test_preview_size_fits_the_long_side():
    assert preview_size((8000, 6000)) == (1280, 960)
    assert preview_size((6000, 8000)) == (960, 1280)
    assert preview_size((451, 300)) == (451, 300)  # small photos are painted as they are
    assert preview_size((16384, 20), 1024) == (1024, 1)


def test_a_painted_box_maps_to_the_exact_box_it_covers():
    """Canvas box [a, b) covers full-res pixels whose centre lies in it: [ceil(a*s - 1/2),
    ceil(b*s - 1/2)) with s = W / w, the same rectangle, no blur and no drift."""
    size = (1003, 757)  # scale not an integer
    w, h = preview_size(size, 128)
    canvas = np.zeros((h, w), bool)
    canvas[10:20, 30:50] = True
    full = to_full(canvas, size)
    assert full.shape == (757, 1003) and full.dtype == bool
    sx, sy = size[0] / w, size[1] / h
    x0, x1 = math.ceil(30 * sx - 0.5), math.ceil(50 * sx - 0.5)
    y0, y1 = math.ceil(10 * sy - 0.5), math.ceil(20 * sy - 0.5)
    expected = np.zeros_like(full)
    expected[y0:y1, x0:x1] = True
    assert np.array_equal(full, expected)
    # Mapped back down (each canvas pixel's centre), it is the painted box again.
    assert np.array_equal(to_full(full, (w, h)), canvas)


def test_a_one_pixel_stroke_survives_at_full_resolution():
    size = (8000, 6000)
    w, h = preview_size(size)
    canvas = np.zeros((h, w), bool)
    canvas[500, 100:900] = True  # one canvas pixel thick
    rr = np.arange(300, 600)
    canvas[rr, rr + 200] = True  # a diagonal hairline
    full = to_full(canvas, size)
    cols = full[:, 700:1800].sum(axis=0)  # the horizontal line alone
    assert cols.min() >= 6 and cols.max() <= 7  # 6000 / 960 = 6.25 rows of the photo
    # The diagonal stays connected: every full-res row of its span has paint.
    y0, y1 = round(300 * 6.25), round(599 * 6.25)
    assert full[y0:y1, 3000:7000].any(axis=1).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_painting_the_preview_marks_the_same_place_in_the_photo(orientation, tmp_path: Path):
    """A phone photo stored sideways: the preview shows it upright, and paint on the preview
    lands on the same thing in the full-resolution photo as shown."""
    shown = np.full((300, 400, 3), 90, np.uint8)
    shown[40:100, 250:330] = (230, 30, 30)  # a red block, up and right
    stored = Image.fromarray(shown)
    if orientation != 1:
        stored = stored.transpose(UNDO_ORIENT[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())

    session = read_upload(path, ServeOptions())
    assert session.size == (400, 300) and session.photo.orientation == orientation
    canvas = preview(session.photo, side=100)
    assert canvas.size == (100, 75)
    c = np.asarray(canvas).astype(int)
    red = (c[..., 0] > 180) & (c[..., 1] < 80)
    layer = np.zeros((75, 100, 4), np.uint8)
    layer[red] = (255, 0, 255, 128)  # the mask brush over what the canvas shows as red
    mask = mask_from_editor({"background": np.asarray(canvas), "layers": [layer]}, (400, 300))
    under = np.asarray(session.photo.pixels)[mask].astype(int)
    assert mask.sum() > 0.8 * 60 * 80 and (under[:, 0] > 180).mean() > 0.97


def _layer(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 4), np.uint8)


def test_translucent_paint_is_mask_opaque_paint_is_scribble():
    layer = _layer(30, 40)
    layer[5:20, 5:30] = (255, 0, 255, 128)  # the mask brush
    layer[10:14, 10:20] = (0, 200, 0, 255)  # a green scribble over it
    layer[25, 0] = (9, 9, 9, 4)  # antialiasing dust: nothing
    painted, scribble = paint_from_editor({"layers": [layer]}, (40, 30))
    assert painted.sum() == 15 * 25 and not painted[25, 0]
    assert scribble is not None and (scribble[..., 3] >= 192).sum() == 40
    only_mask = _layer(30, 40)
    only_mask[5:20, 5:30] = (255, 0, 255, 127)
    assert paint_from_editor({"layers": [only_mask]}, (40, 30))[1] is None


def test_the_scribble_is_composited_inside_the_edit_region_only():
    rng = np.random.default_rng(0)
    photo = read_photo(Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)))
    size = photo.size
    layer = _layer(60, 80)  # a canvas at a tenth
    layer[10:30, 10:40] = (255, 0, 255, 128)
    layer[15:25, 20:60] = (255, 0, 0, 255)  # a red stroke, half of it beyond the mask paint
    painted, merged = paint_from_editor({"layers": [layer]}, (80, 60))
    mask = to_full(painted, size)
    region = to_full(np.pad(np.ones((20, 30), bool), ((10, 30), (10, 40))), size)
    s = scribble_from_canvas(merged, size, region)
    assert s is not None and s.box == (200, 150, 600, 250)  # the stroke's full-res box
    out = s.apply(photo)
    drawn = np.zeros(mask.shape, bool)
    drawn[150:250, 200:400] = True  # the stroke inside the region (x < 400)
    assert (out[drawn] == (255, 0, 0)).all()
    assert np.array_equal(out[~drawn], np.asarray(photo.pixels)[~drawn])  # the rest untouched
    assert not photo.pixels.flags.writeable  # the photo itself is not changed
    # Outside the region entirely: no scribble.
    assert scribble_from_canvas(merged, size, np.zeros_like(region)) is None
    # Round trip through the trail's form.
    back = Scribble.from_dict(s.to_dict(), size, "scribble")
    assert back.box == s.box and np.array_equal(back.rgba, s.rgba)
    with pytest.raises(InputError, match="scribble: box"):
        Scribble.from_dict({**s.to_dict(), "box": [0, 0, 10, 10]}, size, "scribble")


def test_scribble_colours_go_into_the_photos_own_colour_space():
    grey = read_photo(Image.new("L", (64, 48), 10))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (255, 0, 0, 255)
    out = Scribble((8, 8, 12, 12), rgba).apply(grey)
    assert out.shape == (48, 64, 1) and out[9, 9, 0] == 76 and out[0, 0, 0] == 10  # ITU-R 601


def test_upload_caps_default_to_the_librarys_and_are_one_line(tmp_path: Path):
    o = ServeOptions()
    assert (o.max_side, o.max_pixels) == (bio.MAX_SIDE, bio.MAX_PIXELS) and o.max_upload_mb >= 100
    big = tmp_path / "48mp.png"
    Image.new("L", (8000, 6000), 128).save(big, compress_level=1)
    assert check_photo_file(big, o) == (8000, 6000)  # a 48 MP photo is taken
    for options, flag in (
        (ServeOptions(max_side=4000), "--max-side"),
        (ServeOptions(max_megapixels=40), "--max-megapixels"),
        (ServeOptions(max_upload_mb=0.01), "--max-upload-mb"),
    ):
        with pytest.raises(InputError, match=flag) as e:
            check_photo_file(big, options)
        assert "\n" not in str(e.value) and "48mp.png" in str(e.value)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"cannot read junk\.jpg as an image"):
        check_photo_file(junk, o)
