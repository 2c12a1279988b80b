"""The interactive session's logic: history, undo/redo, trails, and replay to identical pixels."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendedit.config import EditConfig
from blendedit.errors import InputError
from blendedit.frame.photo import Photo
from blendedit.web.canvas import Scribble
from blendedit.web.session import (
    Generation,
    Result,
    Session,
    SessionError,
    image_to_b64,
    make_config,
    mask_to_image,
    parse_trail,
    pixels_sha256,
    replay,
)


def _photo(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _mask(w: int = 40, h: int = 30) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[5:15, 10:30] = True
    return m


def _generation(session: Session, prompt: str, n: int = 3, seed: int = 0) -> Generation:
    """A Generate without a model: n results, each a different solid red in the mask's box."""
    size = session.size
    box = (10, 5, 30, 15)
    results = [
        Result(np.full((10, 20, 3), (40 * i, 0, 0), np.uint8), box, seed + i, i + 1, 0.5 - i / 10)
        for i in range(n)
    ]
    return Generation(
        base=session.current_id,
        prompt=prompt,
        mask=_mask(*size),
        method="latent",
        settings=EditConfig(num_images=n).to_dict(),
        seeds=[seed + i for i in range(n)],
        results=results,
    )


# -- history ---------------------------------------------------------------------------------------


def _red_at(s: Session) -> int:
    """The red value of the current image inside the results' box."""
    return int(s.current_pixels[10, 20, 0])


def test_keep_undo_redo_move_along_the_history():
    photo = _photo()
    s = Session(photo)
    assert s.current_id == 0 and s.current_pixels is s.photo.pixels
    assert not s.can_undo and not s.can_redo and s.history == []

    g1 = _generation(s, "a hat")
    step1 = s.keep(g1, 1)  # the second-ranked result
    assert step1.seed == 1 and step1.rank == 2 and step1.prompt == "a hat"
    assert _red_at(s) == 40 and s.cursor == 1 and s.can_undo
    assert step1.patch.shape == (10, 20, 3)  # the step holds its box, not a whole image
    assert np.array_equal(step1.mask, g1.mask) and step1.mask_bits.nbytes == 30 * 5  # 1 bit/px
    outside = np.ones((30, 40), bool)
    outside[5:15, 10:30] = False
    assert np.array_equal(s.current_pixels[outside], np.asarray(photo)[outside])
    assert not s.current_pixels.flags.writeable
    g2 = _generation(s, "a scarf", seed=10)
    step2 = s.keep(g2)  # default: the best
    assert step2.seed == 10 and [st.prompt for st in s.history] == ["a hat", "a scarf"]
    assert _red_at(s) == 0

    assert s.undo() is step2
    assert _red_at(s) == 40 and s.can_redo and s.redo_count == 1
    assert s.undo() is step1
    assert np.array_equal(np.asarray(s.current_image), np.asarray(photo))
    assert not s.can_undo and s.redo_count == 2
    with pytest.raises(SessionError, match="nothing to undo"):
        s.undo()
    assert s.redo() is step1 and s.redo() is step2
    with pytest.raises(SessionError, match="nothing to redo"):
        s.redo()
    assert _red_at(s) == 0 and pixels_sha256(s.current_image) == step2.sha256


def test_a_new_keep_after_undo_clears_redo():
    s = Session(_photo())
    g1 = _generation(s, "a hat")
    s.keep(g1, 0)
    s.keep(_generation(s, "a scarf"), 0)
    s.undo()
    assert s.can_redo
    # Back on step 1: another result of a new Generate replaces the undone step.
    s.keep(_generation(s, "a bow tie"), 2)
    assert not s.can_redo and [st.prompt for st in s.steps] == ["a hat", "a bow tie"]
    # After undoing to the original, the first Generate is current again: its other results
    # can be kept instead (try another result), which drops the whole undone branch.
    s.undo()
    s.undo()
    s.keep(g1, 1)
    assert [st.prompt for st in s.steps] == ["a hat"] and s.history[0].seed == 1


def test_results_of_an_older_image_cannot_be_kept():
    s = Session(_photo())
    g1 = _generation(s, "a hat")
    s.keep(g1, 0)
    with pytest.raises(SessionError, match="earlier image"):
        s.keep(g1, 1)  # made from the original, which is no longer current
    with pytest.raises(SessionError, match="no result #9"):
        s.keep(_generation(s, "x"), 8)
    g = _generation(s, "x")
    g.results[0].box = (30, 20, 50, 30)  # beyond the 40x30 photo
    with pytest.raises(SessionError, match="does not fit the 40x30 photo"):
        s.keep(g, 0)


def test_step_ids_stay_unique_across_undo():
    s = Session(_photo())
    s.keep(_generation(s, "a"), 0)
    s.undo()
    step = s.keep(_generation(s, "b"), 0)
    assert step.id == 2 and s.current_id == 2  # never reuses 1: a stale Generation can't match


def test_session_checks_the_photo():
    with pytest.raises(InputError, match="size 8x8"):
        Session(Image.new("RGB", (8, 8)))


# -- trails ----------------------------------------------------------------------------------------


def test_trail_round_trips_through_json():
    s = Session(_photo())
    s.keep(_generation(s, "a hat"), 1)
    s.keep(_generation(s, "a scarf", seed=7), 0)
    s.keep(_generation(s, "undone"), 0)
    s.undo()  # an undone step is not part of the current image's trail
    data = json.loads(json.dumps(s.to_trail({"name": "tiny", "dtype": "float32"})))
    assert data["format"] == "blendedit-session" and data["version"] == 2
    assert [st["prompt"] for st in data["steps"]] == ["a hat", "a scarf"]
    assert data["steps"][0]["seed"] == 1 and data["steps"][1]["seed"] == 7
    assert data["steps"][1]["result_sha256"] == pixels_sha256(s.current_image)
    mask_png = base64.b64decode(data["steps"][0]["mask_png_base64"])
    assert Image.open(io.BytesIO(mask_png)).mode == "1"  # one bit a pixel

    trail = parse_trail(data)
    assert np.array_equal(trail.original.pixels, s.photo.pixels)
    assert trail.model == {"name": "tiny", "dtype": "float32"}
    for got, step in zip(trail.steps, s.history, strict=True):
        assert got.prompt == step.prompt and got.seed == step.seed and got.seeds == step.seeds
        assert np.array_equal(got.mask, step.mask)
        assert make_config(got.method, got.settings) == make_config(step.method, step.settings)


def test_trail_masks_are_encoded_once_and_counted_from_their_bits():
    s = Session(_photo(43, 30))  # a width that is not a multiple of 8: packed rows are padded
    s.keep(_generation(s, "a hat"), 0)
    first = s.to_trail()["steps"][0]
    (step,) = s.history
    assert first["mask_fraction"] == round(float(step.mask.mean()), 6) == round(200 / 1290, 6)
    assert s.to_trail()["steps"][0]["mask_png_base64"] is step.mask_png  # not re-encoded
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(step.mask_png))))
    assert np.array_equal(decoded, step.mask)


def test_trail_file_and_its_errors(tmp_path: Path):
    s = Session(_photo())
    s.keep(_generation(s, "a hat"), 0)
    good = s.to_trail()
    path = tmp_path / "result.json"
    path.write_text(json.dumps(good))
    assert len(parse_trail(path).steps) == 1

    def bad(change, match: str) -> None:
        data = json.loads(json.dumps(good))
        change(data)
        with pytest.raises(InputError, match=match) as e:
            parse_trail(data)
        assert "\n" not in str(e.value)

    bad(lambda d: d.update(format="other"), "not a blendedit session trail")
    bad(lambda d: d.update(version=99), "version 99")
    bad(lambda d: d["original"].update(file_base64="!!"), "original.file_base64 is not base64")
    bad(
        lambda d: d["original"].update(file_base64="aGVsbG8="),
        "original: cannot read .* as an image",
    )
    bad(lambda d: d["steps"][0].update(mask_png_base64="aGVsbG8="), "step 1 mask: not a base64")
    bad(lambda d: d["steps"][0].pop("seed"), "step 1: missing or malformed")
    bad(lambda d: d["steps"][0].update(method="magic"), "method: 'magic' is unknown")
    small = Session(_photo(36, 24))
    small.keep(_generation(small, "x"), 0)
    other_mask = small.to_trail()["steps"][0]["mask_png_base64"]
    bad(
        lambda d: d["steps"][0].update(mask_png_base64=other_mask), "mask is 36x24, the photo 40x30"
    )
    with pytest.raises(InputError, match="no such file"):
        parse_trail(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        parse_trail(tmp_path / "junk.json")


def test_trail_keeps_the_original_file_scribbles_and_reads_version_1(tmp_path: Path):
    # A photo from a file: the trail holds the file's own bytes (EXIF, profile, JPEG and all).
    src = tmp_path / "p.jpg"
    _photo(48, 32).save(src, quality=90)
    s = Session(src)
    g = _generation(s, "a hat")
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[1:3, 1:5] = (0, 255, 0, 255)
    g.scribble = Scribble((12, 6, 18, 10), rgba)
    s.keep(g, 0)
    data = json.loads(json.dumps(s.to_trail()))
    assert base64.b64decode(data["original"]["file_base64"]) == src.read_bytes()
    assert data["original"]["file_name"] == "p.jpg"
    trail = parse_trail(data)
    assert np.array_equal(trail.original.pixels, s.photo.pixels)
    got = trail.steps[0].scribble
    assert got is not None and got.box == (12, 6, 18, 10) and np.array_equal(got.rgba, rgba)

    # A 16-bit photo without a file: stored losslessly, read back at 16 bits.
    deep = (np.random.default_rng(2).integers(0, 65536, (24, 40, 3))).astype(np.uint16)
    s16 = Session(Photo(deep, "RGB"))
    back = parse_trail(json.loads(json.dumps(s16.to_trail()))).original
    assert back.pixels.dtype == np.uint16 and np.array_equal(back.pixels, deep)

    # Version 1 (before full-resolution photos): an 8-bit PNG original and 8-bit masks.
    v1 = {
        "format": "blendedit-session",
        "version": 1,
        "original": {"png_base64": image_to_b64(_photo())},
        "steps": [
            {
                "prompt": "a hat",
                "method": "latent",
                "seed": 3,
                "settings": {"num_images": 1},
                "mask_png_base64": image_to_b64(mask_to_image(_mask())),
            }
        ],
    }
    old = parse_trail(v1)
    assert np.array_equal(old.original.pixels, np.asarray(_photo()))
    assert np.array_equal(old.steps[0].mask, _mask()) and old.steps[0].scribble is None


def test_make_config_rejects_unknown_and_bad_settings():
    with pytest.raises(InputError, match="unknown setting"):
        make_config("latent", {"num_images": 2, "warp_speed": 9})
    with pytest.raises(InputError, match="num_inference_steps"):
        make_config("latent", {"num_inference_steps": 0})
    cfg = make_config("latent", {"shrink_kernels": [5, 3]})
    assert cfg.shrink_kernels == (5, 3)


# -- replay ------------------------------------------------------------------------------------------


FAST = {"size": 64, "num_inference_steps": 4}


def test_replay_regenerates_identical_pixels(editor, shared_images: Path):
    """Two kept steps, the second from a batched Generate (batch_size 2): replaying the trail
    from JSON gives every step's image pixel for pixel."""
    photo = Image.open(shared_images / "chelsea.png")
    s = Session(photo)
    eyes = np.asarray(Image.open(shared_images / "chelsea.mask-eyes.png")) >= 128

    cfg1 = EditConfig(num_images=2, batch_size=1, **FAST)
    r1 = editor(s.current_image, eyes, "sunglasses", config=cfg1, seed=11)
    g1 = Generation.from_edit(s.current_id, "sunglasses", eyes, "latent", cfg1, [11, 12], r1)
    s.keep(g1, 1)  # the second-ranked: replay must not just take the best

    nose = np.zeros_like(eyes)
    nose[170:250, 180:280] = True
    cfg2 = EditConfig(num_images=3, batch_size=2, invert_mask=False, **FAST)
    r2 = editor(s.current_image, nose, "a red nose", config=cfg2, seed=40)
    g2 = Generation.from_edit(s.current_id, "a red nose", nose, "latent", cfg2, [40, 41, 42], r2)
    kept = next(i for i, r in enumerate(g2.results) if r.seed == 41)  # in the batch of two
    s.keep(g2, kept)

    trail = json.loads(json.dumps(s.to_trail({"name": str(editor.name)})))
    assert trail["steps"][1]["seeds"] == [40, 41, 42]
    assert parse_trail(trail).steps[1].replay_seeds() == [40, 41]
    seen = []
    images = replay(trail, editor, on_step=lambda i, step, im: seen.append((i, step.seed)))
    assert seen == [(1, g1.results[1].seed), (2, 41)]
    for got, rec in zip(images, trail["steps"], strict=True):
        assert got.size == photo.size
        assert pixels_sha256(got) == rec["result_sha256"]
    assert np.array_equal(images[-1].pixels, s.current_pixels)
    # The steps really edited: the second result differs from the first inside its mask only.
    a, b = (np.asarray(im.pixels, dtype=np.int16) for im in images)
    assert np.abs(a - b)[nose].max() > 0


def test_replay_needs_the_trails_kind_of_model(editor):
    s = Session(_photo(64, 64))
    m = np.zeros((64, 64), bool)
    m[10:30, 10:30] = True
    patch = np.zeros((20, 20, 3), np.uint8)
    g = Generation(
        0, "x", m, "pixel", {"num_images": 1}, [0], [Result(patch, (10, 10, 30, 30), 0, 1)]
    )
    s.keep(g, 0)
    with pytest.raises(InputError, match="needs an ADM checkpoint"):
        replay(s.to_trail(), editor)


def test_replay_pixel_method(tiny_clip_dir: Path):
    """The same trail logic for Blended Diffusion (local-clip), on the tiny reference ADM."""
    ref = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
    if not ref.is_dir():
        pytest.skip(f"ADM reference data not found at {ref}")
    from blendedit.pixel.pipeline import BlendedDiffusion, PixelConfig

    adm = BlendedDiffusion.from_pretrained(
        ref / "tiny_adm.safetensors",
        model_config=ref / "tiny_adm_config.json",
        clip_model=str(tiny_clip_dir),
    )
    s = Session(_photo(32, 32, seed=3))
    m = np.zeros((32, 32), bool)
    m[8:20, 10:24] = True
    cfg = PixelConfig(
        num_images=2, timestep_respacing="10", skip_timesteps=5, aug_num=2, local=True
    )
    r = adm(s.current_image, m, "a red ball", config=cfg, seed=5)
    s.keep(Generation.from_edit(0, "a red ball", m, "local-clip", cfg, [5, 6], r), 1)
    trail = json.loads(json.dumps(s.to_trail()))
    assert trail["steps"][0]["settings"]["local"] is True
    (image,) = replay(trail, adm)
    assert np.array_equal(image.pixels, s.current_pixels)
