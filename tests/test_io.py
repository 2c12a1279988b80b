"""Tests for blendedit.io: checked image loading, atomic never-overwriting writes, output folders,
working sizes and PIL/tensor conversion."""

from __future__ import annotations

import io as _io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blendedit.io as bio
from blendedit.errors import InputError
from blendedit.io import (
    check_out_dir,
    load_image,
    open_image,
    pil_to_tensor,
    prepare_out_dir,
    save_json,
    save_png,
    slug,
    tensor_to_pil,
    working_size,
)


def _one_line(err: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def _rgb(w: int = 32, h: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _huge_png_header(w: int, h: int) -> bytes:
    """A valid tiny PNG whose IHDR claims ``w`` x ``h`` (never decoded that far)."""
    buf = _io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    # IHDR: 8-byte signature, 4-byte length, b"IHDR" at 12..16, width/height at 16..24.
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


# ------------------------------------------------------------------ load_image: errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "nope.png")
    _one_line(e, "image", "no such file", "nope.png")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("this is not\na picture\n")
    with pytest.raises(InputError) as e:
        load_image(p, "photo")
    _one_line(e, "photo", "cannot read", "notes.png")


def test_truncated_image(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    buf = _io.BytesIO()
    _rgb(64, 64).save(buf, format="PNG")
    p.write_bytes(buf.getvalue()[:200])
    with pytest.raises(InputError) as e:
        load_image(p)
    _one_line(e, "image", "cut.png")


def test_decompression_bomb_file(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(_huge_png_header(30000, 30000))
    with pytest.raises(InputError) as e:
        load_image(p)
    _one_line(e, "image", "bomb.png")


@pytest.mark.parametrize("size", [(8, 32), (32, 15)])
def test_too_small(size: tuple[int, int]) -> None:
    with pytest.raises(InputError) as e:
        load_image(Image.new("RGB", size))
    _one_line(e, "image", f"{size[0]}x{size[1]}")


@pytest.mark.parametrize("size", [(20000, 10), (20000, 16), (16, 16385)])
def test_too_large(size: tuple[int, int]) -> None:
    with pytest.raises(InputError) as e:
        load_image(Image.new("L", size))
    _one_line(e, "image", f"{size[0]}x{size[1]}")


def test_too_many_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bio, "MAX_PIXELS", 1000)
    with pytest.raises(InputError) as e:
        load_image(Image.new("RGB", (40, 40)))
    _one_line(e, "image", "40x40")


def test_transparent_rgba() -> None:
    a = np.full((32, 32, 4), 255, np.uint8)
    a[0, 0, 3] = 0
    with pytest.raises(InputError) as e:
        load_image(Image.fromarray(a, "RGBA"), "src")
    _one_line(e, "src", "transparent")


def test_transparent_la() -> None:
    a = np.full((32, 32, 2), 255, np.uint8)
    a[..., 1] = 128
    with pytest.raises(InputError) as e:
        load_image(Image.fromarray(a, "LA"))
    _one_line(e, "image", "transparent")


def test_transparent_palette_file(tmp_path: Path) -> None:
    im = Image.new("P", (32, 32))
    im.putpalette([0, 0, 0, 255, 255, 255])
    im.info["transparency"] = 0
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    with pytest.raises(InputError) as e:
        load_image(p)
    _one_line(e, "image", "transparent")


def test_transparent_palette_pil_image() -> None:
    im = Image.new("P", (32, 32))
    im.putpalette([0, 0, 0, 255, 255, 255])
    im.info["transparency"] = 0
    with pytest.raises(InputError):
        load_image(im)


@pytest.mark.parametrize("mode", ["F", "I;16", "I", "CMYK"])
def test_unsupported_mode(mode: str) -> None:
    with pytest.raises(InputError) as e:
        load_image(Image.new(mode, (32, 32)))
    _one_line(e, "image", repr(mode))


# ------------------------------------------------------------------ load_image: accepted inputs


def test_l_and_p_convert_to_rgb() -> None:
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    out = load_image(Image.fromarray(grey, "L"))
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out)[..., 1], grey)
    pal = Image.new("P", (32, 32))
    pal.putpalette([10, 20, 30, 200, 100, 50])
    pal.putpixel((3, 4), 1)
    out = load_image(pal)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (10, 20, 30) and out.getpixel((3, 4)) == (200, 100, 50)


def test_opaque_rgba_accepted() -> None:
    rgb = np.asarray(_rgb(32, 32))
    a = np.concatenate([rgb, np.full((32, 32, 1), 255, np.uint8)], axis=-1)
    out = load_image(Image.fromarray(a, "RGBA"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), rgb)


def test_load_from_file(tmp_path: Path) -> None:
    im = _rgb()
    p = tmp_path / "x.png"
    im.save(p)
    out = load_image(str(p))
    assert out.size == (32, 24) and np.array_equal(np.asarray(out), np.asarray(im))


def test_open_image_passes_pil_through() -> None:
    im = _rgb()
    assert open_image(im, "image") is im


def test_shared_photos_load(shared_images: Path) -> None:
    for name in ("astronaut.png", "chelsea.png"):
        im = load_image(shared_images / name)
        assert im.mode == "RGB" and min(im.size) >= 16


# ------------------------------------------------------------------ atomic writes


def test_save_png_round_trip_no_temp(tmp_path: Path) -> None:
    im = _rgb()
    p = tmp_path / "sub" / "out.png"
    save_png(im, p)
    assert [f.name for f in p.parent.iterdir()] == ["out.png"]
    with Image.open(p) as back:
        assert np.array_equal(np.asarray(back), np.asarray(im))


def test_save_png_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "out.png"
    p.write_bytes(b"earlier result")
    with pytest.raises(InputError) as e:
        save_png(_rgb(), p)
    _one_line(e, "out", "out.png")
    assert p.read_bytes() == b"earlier result"
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]


def test_save_json_round_trip_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "meta.json"
    save_json({"a": 1, "path": Path("x/y"), "list": [1.5, "s"]}, p)
    assert json.loads(p.read_text()) == {"a": 1, "path": "x/y", "list": [1.5, "s"]}
    assert [f.name for f in tmp_path.iterdir()] == ["meta.json"]


def test_save_json_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "meta.json"
    p.write_text("{}")
    with pytest.raises(InputError) as e:
        save_json({"a": 1}, p)
    _one_line(e, "out", "meta.json")
    assert p.read_text() == "{}"
    assert [f.name for f in tmp_path.iterdir()] == ["meta.json"]


def test_replace_rewrites_a_remade_file_whole(tmp_path: Path) -> None:
    """A summary or report that a run remakes: replaced, never half written."""
    p = tmp_path / "summary.json"
    save_json({"rows": 1}, p)
    save_json({"rows": 2}, p, replace=True)
    assert json.loads(p.read_text()) == {"rows": 2}

    def fail(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        bio.write_atomic(p, fail, replace=True)
    assert json.loads(p.read_text()) == {"rows": 2}  # the old file stays whole
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]


def test_failed_write_leaves_no_temp(tmp_path: Path) -> None:
    class Boom(RuntimeError):
        pass

    class Bad:
        def save(self, f: object, format: str) -> None:
            raise Boom("disk on fire")

    with pytest.raises(Boom):
        save_png(Bad(), tmp_path / "x.png")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ output folders


def test_check_out_dir(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # only checks
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty") == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.png").write_bytes(b"x")
    with pytest.raises(InputError) as e:
        check_out_dir(tmp_path / "full")
    _one_line(e, "out", "full", "not empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError) as e:
        check_out_dir(tmp_path / "file")
    _one_line(e, "out", "file")


def test_prepare_out_dir_explicit(tmp_path: Path) -> None:
    p = prepare_out_dir(tmp_path / "a" / "b", "a cat")
    assert p == tmp_path / "a" / "b" and p.is_dir()
    assert prepare_out_dir(p, "again") == p  # still empty: fine
    (p / "0.png").write_bytes(b"x")
    with pytest.raises(InputError) as e:
        prepare_out_dir(p, "again")
    _one_line(e, "out")
    assert (p / "0.png").read_bytes() == b"x"


def test_prepare_out_dir_default_names_are_distinct(tmp_path: Path) -> None:
    made = [prepare_out_dir(None, "A red Hat!", root=str(tmp_path)) for _ in range(3)]
    assert len(set(made)) == 3
    for p in made:
        assert p.is_dir() and p.parent == tmp_path
        assert "a-red-hat" in p.name
        assert not any(p.iterdir())


def test_slug() -> None:
    assert slug("A red Hat!") == "a-red-hat"
    assert slug("!!!") == "edit"
    assert len(slug("x" * 100)) == 40


# ------------------------------------------------------------------ working_size


@pytest.mark.parametrize(
    ("size", "long_side", "multiple"),
    [((1024, 768), 512, 8), ((768, 1024), 512, 8), ((1000, 333), 512, 8), ((640, 480), 768, 64)],
)
def test_working_size(size: tuple[int, int], long_side: int, multiple: int) -> None:
    w, h = working_size(size, long_side, multiple)
    assert w % multiple == 0 and h % multiple == 0
    assert max(w, h) == long_side
    assert (w >= h) == (size[0] >= size[1])
    # Aspect kept to within the rounding to the multiple.
    assert abs(w / h - size[0] / size[1]) <= (multiple / min(w, h)) * (size[0] / size[1])


def test_working_size_exact_cases() -> None:
    assert working_size((1024, 768), 512, 8) == (512, 384)
    assert working_size((512, 512), 512, 8) == (512, 512)
    assert working_size((2000, 10), 512, 8) == (512, 8)  # never below one multiple


# ------------------------------------------------------------------ tensors


def test_pil_tensor_round_trip_exact() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    arr[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    t = pil_to_tensor(Image.fromarray(arr))
    assert t.shape == (1, 3, 24, 32) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    back = tensor_to_pil(t[0])
    assert back.mode == "RGB" and np.array_equal(np.asarray(back), arr)


def test_tensor_to_pil_clips() -> None:
    t = torch.tensor([-0.5, 0.5, 1.5]).view(3, 1, 1).expand(3, 2, 2)
    assert tensor_to_pil(t).getpixel((0, 0)) == (0, 128, 255)
