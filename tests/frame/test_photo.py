"""Real-photo handling: orientation, CMYK, 16 bit, Display P3, HEIC/AVIF, alpha, metadata, limits."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import struct
import time
import tracemalloc
import xml.etree.ElementTree as ET
import zlib
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, features

from blendedit import io as bio
from blendedit.errors import InputError
from blendedit.frame.photo import (
    AI_SOURCE_TYPE,
    OUTPUT_FORMATS,
    Photo,
    format_parameters,
    orient_like,
    read_photo,
    save_photo,
    xmp_packet,
)
from photo_fixtures import display_p3_icc

CHELSEA = Path(__file__).resolve().parents[2] / "examples" / "chelsea.png"
T = Image.Transpose
SHOW = {  # orientation -> what shows the stored pixels upright (as EXIF defines it)
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}
STORE = {**SHOW, 6: T.ROTATE_90, 8: T.ROTATE_270}  # the inverse: shown -> stored
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@pytest.fixture(scope="module")
def shown() -> Image.Image:
    """The real photo as it should appear: 160x112 RGB (multiples of 16 keep JPEG blocks aligned)."""
    with Image.open(CHELSEA) as im:
        return im.convert("RGB").resize((160, 112), Image.Resampling.LANCZOS)


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "TestCam"
    return ex.tobytes()


def _orientation_of(exif: bytes | None) -> int:
    ex = Image.Exif()
    if exif:
        ex.load(exif)
    return ex.get(0x0112, 1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(rgb16: np.ndarray, *chunks: bytes) -> bytes:
    """cv2's 16-bit PNG of (H, W, 3) RGB with extra chunks inserted after IHDR."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb16[..., ::-1]))
    assert ok
    png = buf.tobytes()
    return png[:33] + b"".join(chunks) + png[33:]


def _img16(shown: Image.Image, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint16 that uses the low byte: v8 * 257 + noise."""
    noise = np.random.default_rng(seed).integers(0, 200, (shown.height, shown.width, 3))
    return (np.asarray(shown).astype(np.int64) * 257 + noise).clip(0, 65535).astype(np.uint16)


def _one_line_error(excinfo: pytest.ExceptionInfo[InputError], name: str = "image") -> str:
    msg = str(excinfo.value)
    assert msg.startswith(f"{name}: ") and "\n" not in msg, msg
    return msg


# ---- orientation ----


@pytest.mark.parametrize("n", range(1, 9))
def test_exif_orientation_png_exact(tmp_path: Path, shown: Image.Image, n: int) -> None:
    stored = shown.transpose(STORE[n]) if n != 1 else shown
    stored.save(tmp_path / "o.png", exif=_exif(n))
    photo = read_photo(tmp_path / "o.png")
    assert photo.size == shown.size and photo.stored_size == stored.size
    assert photo.orientation == n
    np.testing.assert_array_equal(photo.pixels, np.asarray(shown))
    assert _orientation_of(photo.exif) == 1
    assert Image.Exif().load(photo.exif) is None  # still valid EXIF
    ex = Image.Exif()
    ex.load(photo.exif)
    assert ex[0x010F] == "TestCam"  # the rest of the EXIF is kept


@pytest.mark.parametrize("n", range(1, 9))
def test_exif_orientation_jpeg(tmp_path: Path, shown: Image.Image, n: int) -> None:
    stored = shown.transpose(STORE[n]) if n != 1 else shown
    stored.save(tmp_path / "o.jpg", exif=_exif(n), quality=95)
    photo = read_photo(tmp_path / "o.jpg")
    assert photo.size == shown.size and photo.format == "JPEG"
    diff = np.abs(photo.pixels.astype(int) - np.asarray(shown)).mean()
    assert diff < 3, diff
    assert _orientation_of(photo.exif) == 1
    out = save_photo(photo.pixels, photo, tmp_path / "out.jpg")
    with Image.open(out) as im:
        assert im.getexif().get(0x0112, 1) == 1 and im.size == shown.size


@pytest.mark.parametrize("n", range(1, 9))
def test_orient_like(shown: Image.Image, n: int) -> None:
    shown_mask = Image.new("L", shown.size, 0)
    shown_mask.paste(255, (10, 5, 60, 30))  # off-centre: any wrong transform moves it
    stored = shown.transpose(STORE[n]) if n != 1 else shown
    photo = read_photo(_with_exif(stored, n))
    stored_mask = shown_mask.transpose(STORE[n]) if n != 1 else shown_mask
    got = orient_like(stored_mask, photo)
    if n >= 5:  # a mask made on the stored pixels is recognised by its swapped size
        np.testing.assert_array_equal(np.asarray(got), np.asarray(shown_mask))
    else:  # indistinguishable from a shown-size mask: left alone
        np.testing.assert_array_equal(np.asarray(got), np.asarray(stored_mask))
    np.testing.assert_array_equal(
        np.asarray(orient_like(shown_mask, photo)), np.asarray(shown_mask)
    )


def _with_exif(im: Image.Image, n: int) -> Image.Image:
    buf = BytesIO()
    im.save(buf, format="PNG", exif=_exif(n))
    return Image.open(BytesIO(buf.getvalue()))


def test_orient_like_applies_the_masks_own_orientation(shown: Image.Image) -> None:
    photo = read_photo(shown)
    shown_mask = Image.new("L", shown.size, 0)
    shown_mask.paste(255, (10, 5, 60, 30))
    tagged = _with_exif(shown_mask.transpose(STORE[6]), 6)
    np.testing.assert_array_equal(np.asarray(orient_like(tagged, photo)), np.asarray(shown_mask))


def test_pil_image_input_is_oriented(shown: Image.Image) -> None:
    photo = read_photo(_with_exif(shown.transpose(STORE[8]), 8))
    np.testing.assert_array_equal(photo.pixels, np.asarray(shown))
    assert photo.source is None and photo.orientation == 8
    assert read_photo(photo) is photo


# ---- CMYK ----


def test_cmyk_jpeg(tmp_path: Path, shown: Image.Image) -> None:
    shown.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    photo = read_photo(tmp_path / "c.jpg")
    assert photo.mode == "CMYK" and photo.pixels.shape == (112, 160, 4)
    with Image.open(tmp_path / "c.jpg") as im:
        naive = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(photo.to_srgb().astype(int) - naive).max() <= 1
    back = photo.from_srgb(photo.to_srgb())
    assert back.shape == photo.pixels.shape and back.dtype == np.uint8
    out = save_photo(back, photo, tmp_path / "out.jpg")
    with Image.open(out) as im:
        assert im.mode == "CMYK" and im.size == shown.size
        again = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(again - naive).mean() < 3
    png = save_photo(back, photo, tmp_path / "out.png", format="png")  # no CMYK: sRGB
    with Image.open(png) as im:
        assert im.mode == "RGB"
        assert np.abs(np.asarray(im).astype(int) - naive).mean() < 3


# ---- 16 bit ----


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_read_exact_and_png_round_trip(tmp_path: Path, shown: Image.Image, ext: str) -> None:
    img16 = _img16(shown)
    src = tmp_path / f"a16{ext}"
    assert cv2.imwrite(str(src), np.ascontiguousarray(img16[..., ::-1]))
    photo = read_photo(src)
    assert photo.bit_depth == 16 and photo.mode == "RGB" and photo.pixels.dtype == np.uint16
    np.testing.assert_array_equal(photo.pixels, img16)
    srgb = photo.to_srgb((3, 4, 50, 40))
    expect = np.round(img16[4:40, 3:50].astype(np.int64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(srgb, expect)

    icc = display_p3_icc()
    out = save_photo(
        photo.pixels,
        dataclasses.replace(photo, icc_profile=icc),
        tmp_path / "out.png",
        parameters="a cat\nSteps: 20",
    )
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[..., ::-1], img16)
    with Image.open(out) as im:
        assert im.info["parameters"] == "a cat\nSteps: 20"
        assert b"compositeWithTrainedAlgorithmicMedia" in _raw_xmp(im)
        assert im.info["icc_profile"] == icc


def test_16bit_png_metadata_and_orientation_read(tmp_path: Path, shown: Image.Image) -> None:
    img16 = _img16(shown, seed=1)
    icc = display_p3_icc()
    stored = np.ascontiguousarray(np.rot90(img16, 1))  # shown rotated counter-clockwise
    exif = _exif(6)[6:]
    iccp = b"ICC Profile\0\0" + zlib.compress(icc)
    (tmp_path / "o6.png").write_bytes(_png16(stored, _chunk(b"iCCP", iccp), _chunk(b"eXIf", exif)))
    photo = read_photo(tmp_path / "o6.png")
    assert photo.orientation == 6 and photo.icc_profile == icc and photo.bit_depth == 16
    np.testing.assert_array_equal(photo.pixels, img16)
    assert photo.pixels.flags.c_contiguous and not photo.pixels.flags.writeable
    assert _orientation_of(photo.exif) == 1


def test_16bit_grey_and_grey_alpha(tmp_path: Path, shown: Image.Image) -> None:
    grey16 = _img16(shown)[..., 0]
    Image.fromarray(grey16).save(tmp_path / "g16.png")  # Pillow writes I;16 as 16-bit grey
    photo = read_photo(tmp_path / "g16.png")
    assert photo.mode == "L" and photo.pixels.shape == (112, 160, 1) and photo.bit_depth == 16
    np.testing.assert_array_equal(photo.pixels[..., 0], grey16)
    out = save_photo(photo.pixels, photo, tmp_path / "out.png")
    np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), grey16)

    alpha16 = np.linspace(0, 65535, 160 * 112).astype(np.uint16).reshape(112, 160)
    la = Photo(photo.pixels, "L", alpha=alpha16)
    out = save_photo(la.pixels, la, tmp_path / "la.png", parameters="p")
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)  # cv2 gives grey + alpha as BGRA
    np.testing.assert_array_equal(back[..., 0], grey16)
    np.testing.assert_array_equal(back[..., 3], alpha16)
    again = read_photo(out)
    assert again.mode == "L" and again.bit_depth == 16
    np.testing.assert_array_equal(again.alpha, alpha16)
    with Image.open(out) as im:
        assert im.info["parameters"] == "p"


def test_16bit_to_jpeg_is_reduced_with_a_warning(
    tmp_path: Path, shown: Image.Image, caplog: pytest.LogCaptureFixture
) -> None:
    photo = Photo(_img16(shown), "RGB")
    with caplog.at_level(logging.WARNING, logger="blendedit.frame.photo"):
        out = save_photo(photo.pixels, photo, tmp_path / "o.jpg", format="jpg")
    assert "16-bit" in caplog.text
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        assert np.abs(np.asarray(im).astype(int) - np.asarray(shown)).mean() < 3


# ---- Display P3 ----


def test_display_p3_profile_is_valid() -> None:
    profile = ImageCms.ImageCmsProfile(BytesIO(display_p3_icc()))
    assert "Display P3" in ImageCms.getProfileDescription(profile)
    assert profile.profile.xcolor_space == "RGB "


def test_display_p3(tmp_path: Path, shown: Image.Image) -> None:
    icc = display_p3_icc()
    p3 = ImageCms.ImageCmsProfile(BytesIO(icc))
    # P3 samples of the (in-gamut) sRGB photo, plus saturated P3 patches
    pixels = np.asarray(ImageCms.profileToProfile(shown, ImageCms.createProfile("sRGB"), p3)).copy()
    pixels[:8, :16] = (200, 60, 60)
    pixels[:8, 16:32] = (60, 190, 60)
    Image.fromarray(pixels).save(tmp_path / "p3.png", icc_profile=icc)
    photo = read_photo(tmp_path / "p3.png")
    assert photo.icc_profile == icc
    srgb = photo.to_srgb().astype(int)
    red, green = srgb[4, 8], srgb[4, 24]
    assert red[0] > 200 + 10 and red[1] < 60 - 10 and red[2] < 60  # more saturated in sRGB
    assert green[1] > 190 and green[0] < 60 - 10
    expect = np.asarray(
        ImageCms.profileToProfile(Image.fromarray(pixels), p3, ImageCms.createProfile("sRGB"))
    )
    assert np.abs(srgb - expect).max() <= 1
    assert np.abs(srgb[8:] - np.asarray(shown)[8:]).mean() < 1.5  # the photo's colours as made

    box = (0, 8, 160, 112)
    back = photo.from_srgb(photo.to_srgb(box)).astype(int)
    assert np.abs(back - pixels[8:]).max() <= 3 and np.abs(back - pixels[8:]).mean() < 0.7

    for fmt in OUTPUT_FORMATS:
        out = save_photo(photo.pixels, photo, tmp_path / f"out.{fmt}", format=fmt, quality=100)
        with Image.open(out) as im:
            assert im.info["icc_profile"] == icc, fmt
    assert photo.to_pil().info["icc_profile"] == icc


# ---- HEIC, AVIF ----


def test_heic(tmp_path: Path, shown: Image.Image) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    try:
        shown.save(tmp_path / "p.heic", format="HEIF", quality=90)
    except Exception as e:
        pytest.skip(f"no HEIF encoder: {e}")
    photo = read_photo(tmp_path / "p.heic")
    assert photo.format == "HEIF" and photo.size == shown.size and photo.mode == "RGB"
    assert np.abs(photo.to_srgb().astype(int) - np.asarray(shown)).mean() < 6
    out = save_photo(photo.pixels, photo, tmp_path / "out")  # HEIF is not an output: PNG
    with Image.open(out) as im:
        assert im.format == "PNG"


def test_avif(tmp_path: Path, shown: Image.Image) -> None:
    if not features.check("avif"):
        pytest.skip("Pillow built without AVIF")
    shown.save(tmp_path / "p.avif", format="AVIF", quality=90)
    photo = read_photo(tmp_path / "p.avif")
    assert photo.format == "AVIF" and photo.size == shown.size
    assert np.abs(photo.pixels.astype(int) - np.asarray(shown)).mean() < 6


# ---- alpha, grey, palette ----


def _rgba(shown: Image.Image) -> Image.Image:
    im = shown.convert("RGBA")
    a = np.full(shown.size[::-1], 255, np.uint8)
    a[:, :40] = 0
    a[:, 40:80] = 128
    im.putalpha(Image.fromarray(a))
    return im


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_rgba_alpha_kept(tmp_path: Path, shown: Image.Image, fmt: str) -> None:
    _rgba(shown).save(tmp_path / "a.png")
    photo = read_photo(tmp_path / "a.png")
    assert photo.mode == "RGB" and photo.alpha is not None
    np.testing.assert_array_equal(photo.alpha, np.asarray(_rgba(shown).getchannel("A")))
    out = save_photo(photo.pixels, photo, tmp_path / f"out.{fmt}", format=fmt)
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im.getchannel("A")), photo.alpha)
    assert photo.to_pil().mode == "RGBA"


def test_rgba_to_jpeg_drops_alpha(
    tmp_path: Path, shown: Image.Image, caplog: pytest.LogCaptureFixture
) -> None:
    photo = read_photo(_rgba(shown))
    with caplog.at_level(logging.WARNING, logger="blendedit.frame.photo"):
        out = save_photo(photo.pixels, photo, tmp_path / "o.jpg", format="JPEG")
    assert "alpha" in caplog.text
    with Image.open(out) as im:
        assert im.mode == "RGB"


def test_grey_stays_grey(tmp_path: Path, shown: Image.Image) -> None:
    shown.convert("L").save(tmp_path / "g.png")
    photo = read_photo(tmp_path / "g.png")
    assert photo.mode == "L" and photo.pixels.shape == (112, 160, 1) and photo.alpha is None
    srgb = photo.to_srgb()
    assert srgb.shape == (112, 160, 3) and (srgb == photo.pixels).all()
    np.testing.assert_array_equal(photo.from_srgb(srgb), photo.pixels)
    for fmt, mode in (("png", "L"), ("jpeg", "L"), ("webp", "RGB")):  # WebP has no grey
        out = save_photo(photo.pixels, photo, tmp_path / f"o.{fmt}", format=fmt)
        with Image.open(out) as im:
            assert im.mode == mode, fmt
    with Image.open(tmp_path / "o.png") as im:
        np.testing.assert_array_equal(np.asarray(im), photo.pixels[..., 0])


def test_palette_with_transparency(tmp_path: Path, shown: Image.Image) -> None:
    pal = shown.quantize(32)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    photo = read_photo(tmp_path / "p.png")
    idx = np.asarray(pal)
    assert photo.mode == "RGB" and photo.alpha is not None
    np.testing.assert_array_equal(photo.alpha == 0, idx == 0)
    assert (idx == 0).any() and (idx != 0).any()
    opaque = read_photo(shown.quantize(32))
    assert opaque.alpha is None and opaque.mode == "RGB"
    bw = read_photo(shown.convert("1"))
    assert bw.mode == "L" and set(np.unique(bw.pixels)) <= {0, 255}


# ---- metadata ----


def _raw_xmp(im: Image.Image) -> bytes:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    return xmp.encode() if isinstance(xmp, str) else xmp


def _parse_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """A1111's reading of "parameters": prompt, negative prompt, key/value pairs."""
    *lines, last = text.strip().split("\n")
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    params = {k: json.loads(v) if v.startswith('"') else v for k, v in A1111_PARAM.findall(last)}
    return "\n".join(prompt), "\n".join(negative), params


def test_format_parameters_reads_back() -> None:
    settings = {
        "num_inference_steps": 50,
        "scheduler": "DDIM",
        "guidance_scale": 7.5,
        "negative_prompt": "blurry, low quality",
        "size": (512, 768),
        "model": "stabilityai/stable-diffusion-2-1-base",
        "method": "blended-latent",
        "blend_steps": "0.25,0.75",  # has a comma: quoted
        "strength": 0.8,
        "mask_path": None,  # skipped
        "big": list(range(100)),  # skipped
    }
    text = format_parameters("a vase of red roses\non a table", settings, seed=42)
    prompt, negative, p = _parse_a1111(text)
    assert prompt == "a vase of red roses\non a table" and negative == "blurry, low quality"
    assert p["Steps"] == "50" and p["Sampler"] == "DDIM" and p["CFG scale"] == "7.5"
    assert p["Seed"] == "42" and p["Size"] == "512x768" and p["Method"] == "blended-latent"
    assert p["Model"] == "stabilityai/stable-diffusion-2-1-base"
    assert p["Blend steps"] == "0.25,0.75" and p["Strength"] == "0.8"
    assert "Mask path" not in p and "Big" not in p
    assert list(p)[:6] == ["Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"]


def test_xmp_packet_is_escaped_xml() -> None:
    text = 'a <b> & "c"\nSteps: 1'
    root = ET.fromstring(xmp_packet(text).split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    ns = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
    desc = root.find("rdf:RDF/rdf:Description", ns)
    assert desc is not None
    dst = desc.find("{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType")
    assert dst is not None and dst.text == AI_SOURCE_TYPE
    tool = desc.find("{http://ns.adobe.com/xap/1.0/}CreatorTool")
    assert tool is not None and tool.text is not None and tool.text.startswith("blendedit")
    li = desc.find("{http://ns.adobe.com/exif/1.0/}UserComment/rdf:Alt/rdf:li", ns)
    assert li is not None and li.text == text
    assert b"UserComment" not in xmp_packet(None)


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_metadata_written(tmp_path: Path, shown: Image.Image, fmt: str) -> None:
    with Image.open(CHELSEA) as im:
        icc = im.info["icc_profile"]  # chelsea.png carries an sRGB profile
    shown.save(tmp_path / "in.jpg", exif=_exif(1), icc_profile=icc, quality=95)
    photo = read_photo(tmp_path / "in.jpg")
    text = format_parameters("a cat, wearing a hat — ünïcode", {"num_inference_steps": 20}, 7)
    out = save_photo(photo.pixels, photo, tmp_path / f"o.{fmt}", format=fmt, parameters=text)
    with Image.open(out) as im:
        assert im.format == fmt.upper() and im.size == shown.size
        assert im.info["icc_profile"] == icc
        assert b"compositeWithTrainedAlgorithmicMedia" in _raw_xmp(im)
        ex = im.getexif()
        assert ex.get(0x0112, 1) == 1 and ex[0x010F] == "TestCam"
        if fmt == "png":
            assert im.info["parameters"] == text
        else:
            comment = ex.get_ifd(0x8769)[0x9286]
            assert comment[:8] == b"UNICODE\0" and comment[8:].decode("utf-16-be") == text
    plain = save_photo(photo.pixels, photo, tmp_path / f"plain.{fmt}", format=fmt)
    with Image.open(plain) as im:  # the marker even without parameters
        assert AI_SOURCE_TYPE.encode() in _raw_xmp(im) and "parameters" not in im.info
    none = save_photo(photo.pixels, photo, tmp_path / f"none.{fmt}", format=fmt, marker=False)
    with Image.open(none) as im:
        assert not _raw_xmp(im)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_respected(tmp_path: Path, shown: Image.Image, fmt: str) -> None:
    photo = read_photo(shown)
    sizes = [
        save_photo(photo.pixels, photo, tmp_path / f"q{q}.{fmt}", format=fmt, quality=q)
        .stat()
        .st_size
        for q in (50, 95)
    ]
    assert sizes[0] < sizes[1]


def test_default_format_follows_the_input(tmp_path: Path, shown: Image.Image) -> None:
    shown.save(tmp_path / "in.webp", quality=90)
    photo = read_photo(tmp_path / "in.webp")
    with Image.open(save_photo(photo.pixels, photo, tmp_path / "out.img")) as im:
        assert im.format == "WEBP"
    tif = dataclasses.replace(photo, format="TIFF")
    with Image.open(save_photo(tif.pixels, tif, tmp_path / "out2.img")) as im:
        assert im.format == "PNG"


def test_edited_patch_is_written(tmp_path: Path, shown: Image.Image) -> None:
    photo = read_photo(shown)
    edited = photo.pixels.copy()
    edited[10:20, 10:30] = photo.from_srgb(np.full((10, 20, 3), (0, 0, 255), np.uint8))
    out = save_photo(edited, photo, tmp_path / "e.png")
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), edited)


# ---- refusals ----


def test_never_overwrites(tmp_path: Path, shown: Image.Image) -> None:
    photo = read_photo(shown)
    target = tmp_path / "exists.png"
    target.write_bytes(b"keep me")
    with pytest.raises(InputError) as e:
        save_photo(photo.pixels, photo, target)
    assert "overwrite" in str(e.value)
    assert target.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["exists.png"]  # no temporary file left


def test_bad_arguments(tmp_path: Path, shown: Image.Image) -> None:
    photo = read_photo(shown)
    with pytest.raises(InputError) as e:
        save_photo(photo.pixels, photo, tmp_path / "o.gif", format="gif")
    _one_line_error(e, "format")
    with pytest.raises(InputError) as e:
        save_photo(photo.pixels, photo, tmp_path / "o.jpg", quality=0)
    _one_line_error(e, "quality")
    with pytest.raises(InputError) as e:
        save_photo(photo.pixels[..., :1], photo, tmp_path / "o.png")
    _one_line_error(e, "pixels")
    with pytest.raises(InputError) as e:
        photo.to_srgb((0, 0, 500, 10))
    _one_line_error(e, "box")
    assert not list(tmp_path.iterdir())


def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h and holds (almost) nothing."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        read_photo(tmp_path / "missing.jpg")
    assert "no such file" in _one_line_error(e)
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(InputError) as e:
        read_photo(tmp_path / "notes.png")
    assert "cannot read" in _one_line_error(e)
    (tmp_path / "trunc.png").write_bytes(_png_header(64, 64))
    with pytest.raises(InputError) as e:
        read_photo(tmp_path / "trunc.png")
    _one_line_error(e)
    with pytest.raises(InputError) as e:
        read_photo(Image.new("F", (64, 64)))
    assert "'F'" in _one_line_error(e)
    with pytest.raises(InputError) as e:
        read_photo(Image.new("RGB", (8, 64)))
    assert "8x64" in _one_line_error(e)


@pytest.mark.parametrize("size", [(20000, 20000), (12000, 12000), (17000, 100)])
def test_oversized_header_fails_fast(tmp_path: Path, size: tuple[int, int]) -> None:
    (tmp_path / "huge.png").write_bytes(_png_header(*size))
    t = time.perf_counter()
    with pytest.raises(InputError) as e:
        read_photo(tmp_path / "huge.png", name="photo")
    assert time.perf_counter() - t < 0.5
    msg = _one_line_error(e, "photo")
    assert "too large" in msg or "outside the supported range" in msg


def test_size_limit_follows_io(
    tmp_path: Path, shown: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown.save(tmp_path / "s.png")
    monkeypatch.setattr(bio, "MAX_PIXELS", 1000)
    with pytest.raises(InputError) as e:
        read_photo(tmp_path / "s.png")
    assert "160x112" in _one_line_error(e)


# ---- cost ----


def test_big_photo_is_cheap(tmp_path: Path) -> None:
    w, h = 6000, 4000
    a = np.empty((h, w, 3), np.uint8)  # smooth content encodes and decodes fast
    a[..., 0] = (np.arange(w) // 24).astype(np.uint8)[None]
    a[..., 1] = (np.arange(h) // 16).astype(np.uint8)[:, None]
    a[..., 2] = 128
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=80)
    del a
    tracemalloc.start()
    try:
        photo = read_photo(tmp_path / "big.jpg")
        patch = photo.to_srgb((1000, 1000, 1512, 1512))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert photo.size == (w, h) and patch.shape == (512, 512, 3)
    assert peak < 1.5 * w * h * 3, f"peak {peak / 1e6:.0f} MB"
