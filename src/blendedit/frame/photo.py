"""Real photos in and out: read a photo as the user sees it, write the edit back in its own colour
space, bit depth and metadata (EXIF orientation, ICC profile, 16 bit, CMYK, HEIC/AVIF, alpha)."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from blendedit import io as bio
from blendedit._version import __version__
from blendedit.errors import InputError

logger = logging.getLogger(__name__)

AI_SOURCE_TYPE = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
)
OUTPUT_FORMATS = ("png", "jpeg", "webp")

_CHANNELS = {"L": 1, "RGB": 3, "CMYK": 4}
_READ_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "I;16", "I;16B", "I;16L", "I")
_T = Image.Transpose
_ORIENT = {  # EXIF orientation -> the transpose that shows the stored pixels upright
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}
_INTENT = ImageCms.Intent.PERCEPTUAL  # = relative colorimetric for matrix/TRC profiles
_EXIF_IFD, _USER_COMMENT, _ORIENTATION = 0x8769, 0x9286, 0x0112
_TIFF_KEEP = (270, 271, 272, 305, 306, 315, 33432)  # description, make, model, software, date, ...
_STRIP_BYTES = 8 << 20  # PIL -> numpy is copied in strips of about this size
_srgb_profile: Any = None
_heif_registered = False


@dataclass
class Photo:
    """A photo as shown (EXIF orientation applied) in its own samples, with what saving keeps.

    ``pixels`` is read-only: edit a copy and pass it to :func:`save_photo`.
    """

    pixels: np.ndarray  # (H, W, C) uint8 or uint16; C = 1 ("L"), 3 ("RGB"), 4 ("CMYK")
    mode: str
    alpha: np.ndarray | None = None  # (H, W), same dtype as pixels
    icc_profile: bytes | None = None
    exif: bytes | None = None  # b"Exif\0\0" + TIFF, Orientation 1
    orientation: int = 1
    stored_size: tuple[int, int] = (0, 0)  # (W, H) in the file
    format: str | None = None
    source: str | None = None
    frames: int = 1  # frames or pages in the file (an animation, a multi-page TIFF); 1 is used
    _cms: dict[bool, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    def native(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """(h, w, C) view of the photo's own pixels in box = (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = _check_box(box, self.size)
        return self.pixels[y0:y1, x0:x1]

    def to_srgb(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """(h, w, 3) uint8 sRGB of box (None: the whole photo): what a model sees."""
        return self._srgb_of(self.native(box))

    def from_srgb(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 sRGB -> (h, w, C) in the photo's colour model and dtype."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"rgb: expected (h, w, 3) uint8, got {rgb.shape} {rgb.dtype}")
        t = self._transform(to_srgb=False)
        if t is not None:
            out = _array(ImageCms.applyTransform(_pil(rgb, "RGB"), t))
        elif self.mode == "RGB":
            out = rgb.copy()
        else:  # grey: ITU-R 601 luma; CMYK: Pillow's naive K = 0 conversion
            out = _array(_pil(rgb, "RGB").convert(self.mode))
        return out.astype(np.uint16) * 257 if self.bit_depth == 16 else out

    def to_pil(self, pixels: np.ndarray | None = None) -> Image.Image:
        """A full-size 8-bit Pillow image (L/RGB/CMYK, LA/RGBA with alpha) with its ICC profile."""
        px = _to8(self.pixels if pixels is None else _check_pixels(pixels, self))
        mode = self.mode
        if self.alpha is not None and self.alpha.shape == px.shape[:2] and mode != "CMYK":
            px, mode = np.dstack((px, _to8(self.alpha))), mode + "A"  # (H, W, C + 1)
        im = _pil(px, mode)
        if self.icc_profile:
            im.info["icc_profile"] = self.icc_profile
        return im

    def _srgb_of(self, arr: np.ndarray) -> np.ndarray:
        """(h, w, C) own samples -> (h, w, 3) uint8 sRGB."""
        a8 = _to8(arr)
        t = self._transform(to_srgb=True)
        if t is None and self.mode == "RGB":
            return a8.copy() if a8 is arr else a8
        if t is None and self.mode == "L":
            return np.repeat(a8, 3, axis=2)
        im = _pil(a8, self.mode)
        return _array(ImageCms.applyTransform(im, t) if t is not None else im.convert("RGB"))

    def _transform(self, to_srgb: bool) -> Any:
        """The (cached) ICC transform to or from sRGB; None without a usable profile."""
        if not self.icc_profile:
            return None
        if to_srgb not in self._cms:
            try:
                own = ImageCms.ImageCmsProfile(BytesIO(self.icc_profile))
                srgb = _srgb()
                self._cms[to_srgb] = (
                    ImageCms.buildTransform(own, srgb, self.mode, "RGB", _INTENT)
                    if to_srgb
                    else ImageCms.buildTransform(srgb, own, "RGB", self.mode, _INTENT)
                )
            except (ImageCms.PyCMSError, OSError, TypeError, ValueError) as e:
                logger.warning(
                    "%s: its ICC profile cannot be used (%s); treating it as sRGB",
                    self.source or "image",
                    e,
                )
                self._cms[to_srgb] = None
        return self._cms[to_srgb]


def read_photo(source: str | os.PathLike[str] | Image.Image | Photo, name: str = "image") -> Photo:
    """Read a photo as shown: orientation applied, 16 bit kept, alpha split off, metadata kept.

    The size in the file's header is checked against the caps (``blendedit.io.MAX_SIDE``,
    ``MAX_PIXELS``) before any pixel is decoded, so a decompression bomb costs nothing. A file
    that is not a readable image is one :class:`InputError` line, whatever its decoder raised.

    A file with several frames or pages (an animated GIF/PNG/WebP, a multi-page TIFF, a HEIF with
    several images) is read, not refused: its first frame is the photo, a warning names the frame
    used and how many there are, and ``Photo.frames`` (and an edit's ``result.json``, as
    ``input_frame``) records it. To edit another frame, save it as a file of its own. An MPO
    (a camera's JPEG with extra preview or depth images) is its first image, silently, as every
    viewer shows it.
    """
    if isinstance(source, Photo):
        return source
    if isinstance(source, Image.Image):
        return _from_pil(source, name, None)
    path = Path(source)
    _register_heif()
    with bio.reading_image(path, name), bio.opened_header(path) as im:
        return _from_pil(im, name, path)  # decoded once _from_pil has checked the size


def orient_like(mask: Image.Image, photo: Photo) -> Image.Image:
    """A mask as the photo is shown: its own EXIF orientation applied, and the photo's too when
    it was evidently made on the stored, un-rotated pixels (stored size, width/height swapped)."""
    mask = ImageOps.exif_transpose(mask)
    if photo.orientation in (5, 6, 7, 8) and mask.size == photo.stored_size != photo.size:
        mask = mask.transpose(_ORIENT[photo.orientation])
    return mask


def format_parameters(prompt: str, settings: dict[str, Any], seed: int | None = None) -> str:
    """A1111's "parameters" text: prompt, "Negative prompt: ...", then "Key: value, ..." pairs."""
    rest = dict(settings)
    negative = rest.pop("negative_prompt", None)
    if seed is not None:
        rest["seed"] = seed
    pairs: list[tuple[str, str]] = []
    for key, label in (
        ("num_inference_steps", "Steps"),
        ("sampler", "Sampler"),
        ("scheduler", "Sampler"),
        ("guidance_scale", "CFG scale"),
        ("seed", "Seed"),
        ("size", "Size"),
        ("model", "Model"),
        ("method", "Method"),
    ):
        if rest.get(key) is not None and all(label != k for k, _ in pairs):
            text = _param_text(key, rest.pop(key))
            if text is not None:
                pairs.append((label, text))
    for key, value in rest.items():
        text = _param_text(key, value)
        if text is not None:
            pairs.append((key.replace("_", " ").capitalize(), text))
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


def xmp_packet(parameters: str | None = None) -> bytes:
    """An XMP packet marking the image as AI-edited (IPTC DigitalSourceType), with parameters."""
    tool = f"blendedit {__version__}"
    comment = ""
    if parameters:
        text = escape(re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "", parameters))
        comment = (
            '\n   <exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">'
            f"{text}</rdf:li></rdf:Alt></exif:UserComment>"
        )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:exif="http://ns.adobe.com/exif/1.0/">\n'
        f"   <Iptc4xmpExt:DigitalSourceType>{AI_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>\n"
        f"   <xmp:CreatorTool>{escape(tool)}</xmp:CreatorTool>{comment}\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode()


def save_photo(
    pixels: np.ndarray,
    photo: Photo,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    quality: int | None = None,
    parameters: str | None = None,
    marker: bool = True,
) -> Path:
    """Write ``pixels`` (the photo's mode, uint8 or uint16) atomically, never over a file, keeping
    the ICC profile, EXIF (Orientation 1), alpha and 16 bits where the format allows.

    CMYK stays CMYK in JPEG; PNG and WebP get sRGB through the profile (with a warning). WebP has
    no grey: grey is written as sRGB. 16 bits survive in PNG only; JPEG has no alpha.
    """
    path = Path(path)
    if path.exists():
        raise InputError(f"out: refusing to overwrite existing file {str(path)!r}")
    fmt = _output_format(format, photo)
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise InputError(f"quality: {quality!r} is not an integer from 1 to 100")
    px = _check_pixels(pixels, photo)
    mode, icc = photo.mode, photo.icc_profile
    alpha = photo.alpha
    if alpha is not None and alpha.shape != px.shape[:2]:
        logger.warning("%s: alpha %s does not fit the pixels; dropped", path, alpha.shape)
        alpha = None
    if alpha is not None and fmt == "jpeg":
        logger.warning("%s: JPEG has no alpha channel; transparency dropped", path)
        alpha = None
    if (mode == "CMYK" and fmt != "jpeg") or (mode == "L" and fmt == "webp"):
        if mode == "CMYK":
            logger.warning("%s: %s has no CMYK; written as sRGB", path, fmt.upper())
        px, mode, icc = photo._srgb_of(px), "RGB", None
    if fmt != "png" and px.dtype == np.uint16:
        logger.warning("%s: %s holds 8 bits a sample; 16-bit samples reduced", path, fmt.upper())
        px = _to8(px)
    if alpha is not None and alpha.dtype != px.dtype:
        alpha = _to8(alpha) if px.dtype == np.uint8 else alpha.astype(np.uint16) * 257
    exif = _exif_out(photo.exif, parameters, fmt)
    xmp = xmp_packet(parameters) if marker else None

    if fmt == "png" and px.dtype == np.uint16 and (mode != "L" or alpha is not None):
        data = _png16(px, alpha, icc, exif, parameters, xmp)
        bio.write_atomic(path, lambda f: f.write(data))
        return path
    im = _pil(
        px if alpha is None else np.dstack((px, alpha)), mode + ("A" if alpha is not None else "")
    )
    kw: dict[str, Any] = {k: v for k, v in (("icc_profile", icc), ("exif", exif)) if v}
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        if parameters:
            info.add_text("parameters", parameters)
        if xmp:
            info.add_itxt("XML:com.adobe.xmp", xmp.decode(), "", "")
        kw["pnginfo"] = info
    elif fmt == "jpeg":
        q = 95 if quality is None else quality
        kw.update(quality=q, subsampling=0 if q >= 90 else 2)
    else:
        q = 95 if quality is None else quality
        kw.update(quality=q, lossless=q == 100, exact=alpha is not None)
    if xmp and fmt != "png":
        kw["xmp"] = xmp
    bio.write_atomic(path, lambda f: im.save(f, format=fmt.upper(), **kw))
    return path


# ---- reading ----


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        _heif_registered = True
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC/HEIF then fail as unreadable; AVIF is native in Pillow
            pass


def _from_pil(im: Image.Image, name: str, path: Path | None) -> Photo:
    stored = im.size
    w, h = stored
    if min(w, h) < bio.MIN_SIDE or max(w, h) > bio.MAX_SIDE or w * h > bio.MAX_PIXELS:
        raise InputError(
            f"{name}: size {w}x{h} is outside the supported range "
            f"({bio.MIN_SIDE} to {bio.MAX_SIDE} px a side, {bio.MAX_PIXELS:,} px in all)"
        )
    if im.mode not in _READ_MODES:
        raise InputError(
            f"{name}: unsupported image mode {im.mode!r}; save it as RGB, grey or CMYK"
        )
    kind = _sixteen_bit(im, path) if path is not None else None
    if kind is None:
        im.load()
    icc = _usable_icc(im.info.get("icc_profile") or None, im.mode, name)
    exif, n = _exif_of(im, header_only=kind is not None and im.format == "PNG")
    fmt, source = im.format, None if path is None else str(path)
    arr = None
    if kind is not None:  # Pillow would truncate these to 8 bits
        assert path is not None
        arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.dtype == np.uint16:
        pixels, alpha, mode = _from_cv2(arr, kind, n)
    else:
        if kind is not None:
            im.load()
        pixels, alpha, mode = _from_pillow(im, n)
    pixels.flags.writeable = False
    if alpha is not None:
        alpha.flags.writeable = False
    frames = _frames(im, name, source)
    return Photo(pixels, mode, alpha, icc, exif, n, stored, fmt, source, frames)


def _frames(im: Image.Image, name: str, source: str | None) -> int:
    """How many frames or pages the file holds (1 for an MPO: its further images are previews
    or depth maps), with a warning naming the frame used when there are several."""
    try:
        n = int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # counting walks the file; a damaged tail leaves the first frame
        n = 1
    if n > 1 and im.format != "MPO":
        logger.warning(
            "%s: %s holds %d frames or pages; editing frame 1 of %d (save another frame as a "
            "file of its own to edit it)",
            name, repr(source) if source else "the image", n, n,
        )  # fmt: skip
        return n
    return 1


def _usable_icc(icc: bytes | None, mode: str, name: str) -> bytes | None:
    """The profile, or None (with a warning) when it is unreadable or not for the image's colours."""
    if icc is None:
        return None
    want = (
        "CMYK"
        if mode == "CMYK"
        else "GRAY"
        if mode in ("L", "LA", "1", "I") or mode.startswith("I;16")
        else "RGB"
    )
    try:
        space = ImageCms.ImageCmsProfile(BytesIO(icc)).profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, TypeError, ValueError) as e:
        logger.warning("%s: unreadable ICC profile dropped (%s); treating it as sRGB", name, e)
        return None
    if space != want:
        logger.warning("%s: a %s ICC profile on a %s image dropped", name, space, mode)
        return None
    return icc


def _sixteen_bit(im: Image.Image, path: Path) -> str | None:
    """ "RGB", "RGBA" or "LA" for a 16-bit file that Pillow reads as 8 bits, else None."""
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        if len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16:
            return {2: "RGB", 4: "LA", 6: "RGBA"}.get(head[25])
    elif im.format == "TIFF" and im.mode in ("RGB", "RGBA"):
        bits = im.tag_v2.get(258, (8,))  # type: ignore[attr-defined]
        if max(bits if isinstance(bits, tuple) else (bits,)) == 16:
            return im.mode
    return None


def _from_cv2(arr: np.ndarray, kind: str, n: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """cv2's (H, W[, C]) BGR(A) uint16 -> oriented (H, W, C) pixels, (H, W) alpha, mode."""
    if arr.ndim == 2:
        arr = arr[..., None]
    alpha = arr[..., 3] if arr.shape[2] == 4 else None
    if kind == "LA" or arr.shape[2] == 1:  # cv2 gives grey + alpha as BGRA, grey replicated
        px, mode = arr[..., :1], "L"
    else:
        px, mode = arr[..., 2::-1], "RGB"
    px = np.ascontiguousarray(_orient_array(px, n))
    if alpha is not None:
        alpha = np.ascontiguousarray(_orient_array(alpha, n))
    return px, alpha, mode


def _from_pillow(im: Image.Image, n: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A loaded Pillow image -> oriented (H, W, C) pixels, (H, W) alpha, mode."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I") and im.mode != "I;16":
        im = im.convert("I;16")  # clips "I" to 0..65535
    if n != 1:
        im = im.transpose(_ORIENT[n])
    alpha = None
    if im.mode in ("RGBA", "LA"):
        alpha = _array(im.getchannel("A"))[..., 0]
        im = im.convert(im.mode[:-1])
    mode = "L" if im.mode == "I;16" else im.mode
    return _array(im), alpha, mode


def _exif_of(im: Image.Image, header_only: bool) -> tuple[bytes | None, int]:
    """(EXIF bytes with Orientation 1, or None; the orientation to apply)."""
    raw = im.info.get("exif") or None
    ex = Image.Exif()
    try:
        if header_only:  # PNG's getexif() would decode the image
            if raw:
                ex.load(raw)
        else:
            ex = im.getexif()
            raw = im.info.get("exif") or None  # PNG may fill it from a "Raw profile" text
    except (OSError, ValueError, SyntaxError, struct.error) as e:
        logger.warning("EXIF cannot be read (%s); dropped", e)
        return None, 1
    n = ex.get(_ORIENTATION, 1)
    n = n if n in _ORIENT else 1
    if im.format == "TIFF":  # TIFF's IFD0 describes the strips: keep only the EXIF part
        out = Image.Exif()
        for tag in _TIFF_KEEP:
            if tag in ex:
                out[tag] = ex[tag]
        for ifd in (_EXIF_IFD, 0x8825):
            if d := ex.get_ifd(ifd):
                out[ifd] = d
        raw = out.tobytes() if len(out) else None
    elif raw is None and len(ex):
        raw = ex.tobytes()
    return (_reset_orientation(raw) if raw else None), n


def _reset_orientation(raw: bytes) -> bytes | None:
    """EXIF bytes with IFD0's Orientation set to 1, patched in place (all else byte-identical)."""
    body = raw[6:] if raw.startswith(b"Exif\0\0") else raw
    try:
        e = {b"II": "<", b"MM": ">"}[body[:2]]
        (ifd,) = struct.unpack(e + "I", body[4:8])
        (count,) = struct.unpack(e + "H", body[ifd : ifd + 2])
        for i in range(count):
            at = ifd + 2 + 12 * i
            tag, typ = struct.unpack(e + "HH", body[at : at + 4])
            if tag == _ORIENTATION and typ == 3:  # SHORT: the value sits in the entry
                body = body[: at + 8] + struct.pack(e + "H", 1) + body[at + 10 :]
                break
        return b"Exif\0\0" + body
    except (KeyError, struct.error):
        try:
            ex = Image.Exif()
            ex.load(raw)
            if _ORIENTATION in ex:
                ex[_ORIENTATION] = 1
            return ex.tobytes()
        except (OSError, ValueError, SyntaxError, struct.error) as e:
            logger.warning("EXIF cannot be parsed (%s); dropped", e)
            return None


def _orient_array(a: np.ndarray, n: int) -> np.ndarray:
    """(H, W, ...) stored -> as shown for EXIF orientation n: a view, no copy."""
    if n in (5, 6, 7, 8):
        a = a.swapaxes(0, 1)
        n = {5: 1, 6: 2, 7: 3, 8: 4}[n]
    if n == 2:
        return a[:, ::-1]
    if n == 3:
        return a[::-1, ::-1]
    if n == 4:
        return a[::-1]
    return a


def _array(im: Image.Image) -> np.ndarray:
    """(H, W, C) uint8 or uint16 copy of a Pillow image, copied in strips (no full-size bytes)."""
    w, h = im.size
    c = len(im.getbands())
    dtype = np.dtype("<u2") if im.mode == "I;16" else np.dtype(np.uint8)
    out = np.empty((h, w, c), dtype)
    rows = max(1, _STRIP_BYTES // (w * c * dtype.itemsize))
    for y in range(0, h, rows):
        strip = im if rows >= h else im.crop((0, y, w, min(h, y + rows)))
        out[y : y + rows] = np.frombuffer(strip.tobytes(), dtype).reshape(-1, w, c)
    return out.astype(np.uint16, copy=False) if dtype.itemsize == 2 else out


# ---- conversions ----


def _srgb() -> Any:
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.createProfile("sRGB")
    return _srgb_profile


def _to8(a: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as round(v * 255 / 65535) (= round(v / 257)); uint8 unchanged."""
    if a.dtype == np.uint8:
        return a
    q, r = np.divmod(a, np.uint16(257))
    q += r > 128
    return q.astype(np.uint8)


def _pil(arr: np.ndarray, mode: str) -> Image.Image:
    """(h, w, C) uint8 -> Pillow image of mode; (h, w, 1) uint16 "L" -> "I;16"."""
    if arr.dtype == np.uint16 and mode == "L":
        mode = "I;16"
        arr = arr.astype("<u2", copy=False)
    return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())


def _check_box(box: tuple[int, int, int, int] | None, size: tuple[int, int]) -> tuple[int, ...]:
    w, h = size
    if box is None:
        return 0, 0, w, h
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"box: {box!r} is not (x0, y0, x1, y1)") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"box: {box!r} is not inside the {w}x{h} photo")
    return x0, y0, x1, y1


def _check_pixels(pixels: np.ndarray, photo: Photo) -> np.ndarray:
    a = np.asarray(pixels)
    if a.ndim == 2 and photo.mode == "L":
        a = a[..., None]
    c = _CHANNELS[photo.mode]
    if a.ndim != 3 or a.shape[2] != c or a.dtype not in (np.uint8, np.uint16):
        raise InputError(
            f"pixels: {a.shape} {a.dtype} is not (H, W, {c}) uint8/uint16 for a {photo.mode} photo"
        )
    return a


# ---- writing ----


def _output_format(format: str | None, photo: Photo) -> str:
    if format is None:
        f = {"jpg": "jpeg", "mpo": "jpeg"}.get(p := (photo.format or "").lower(), p)
        return f if f in OUTPUT_FORMATS else "png"
    f = format.lower().lstrip(".")
    f = "jpeg" if f == "jpg" else f
    if f not in OUTPUT_FORMATS:
        raise InputError(f"format: {format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    return f


def _exif_out(exif: bytes | None, parameters: str | None, fmt: str) -> bytes | None:
    """The photo's EXIF (Orientation 1) plus UserComment = parameters, as A1111/piexif write it."""
    exif = _reset_orientation(exif) if exif else None
    if fmt == "jpeg" and exif and len(exif) > 65000:
        logger.warning("the input's EXIF (%d bytes) is too long for JPEG; dropped", len(exif))
        exif = None
    if not parameters:
        return exif
    ex = Image.Exif()
    if exif:
        try:
            ex.load(exif)
        except (OSError, ValueError, SyntaxError, struct.error):
            ex = Image.Exif()
    ifd = ex.get_ifd(_EXIF_IFD)
    ifd[_USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
    ex[_EXIF_IFD] = ifd
    return ex.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(
    px: np.ndarray,
    alpha: np.ndarray | None,
    icc: bytes | None,
    exif: bytes | None,
    parameters: str | None,
    xmp: bytes | None,
) -> bytes:
    """A 16-bit PNG of (H, W, C) pixels and (H, W) alpha, with iCCP, eXIf, text and XMP chunks."""
    if px.shape[2] == 1:  # grey + alpha: cv2 cannot write it; Sub-filtered rows by hand
        h, w = px.shape[:2]
        rows = np.dstack((px, alpha)).astype(">u2").view(np.uint8).reshape(h, w * 4)
        filtered = rows.copy()
        filtered[:, 4:] -= rows[:, :-4]  # Sub filter: byte minus the byte one pixel left
        idat = zlib.compress(np.hstack((np.ones((h, 1), np.uint8), filtered)).tobytes(), 6)
        ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
        png = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    else:
        bgr = px[..., ::-1] if alpha is None else np.dstack((px[..., ::-1], alpha))
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise InputError("out: cv2 could not encode the 16-bit PNG")
        png = buf.tobytes()
    extra = []
    if icc:
        extra.append(_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc)))
    if exif:
        extra.append(_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    if parameters:
        try:
            extra.append(_chunk(b"tEXt", b"parameters\0" + parameters.encode("latin-1")))
        except UnicodeEncodeError:
            extra.append(_chunk(b"iTXt", b"parameters\0\0\0\0\0" + parameters.encode()))
    if xmp:
        extra.append(_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp))
    end_ihdr = 8 + 12 + 13  # signature, IHDR length/type/CRC, IHDR data
    return png[:end_ihdr] + b"".join(extra) + png[end_ihdr:]


def _param_text(key: str, value: Any) -> str | None:
    """A setting as A1111 writes it; None for what is not a simple value."""
    if value is None:
        return None
    if key == "size" and isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    if (
        isinstance(value, list | tuple)
        and len(value) <= 8
        and all(isinstance(v, bool | int | float | str) for v in value)
    ):
        return json.dumps(list(value))
    return None


def _quote(text: str) -> str:
    """A1111's quoting: JSON-quote values holding a comma, colon or newline."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def output_format(format: str | None, photo: Photo) -> str:
    """The format results of ``photo`` are written in: ``format`` checked, else the photo's own
    when it is png/jpeg/webp, else png."""
    return _output_format(format, photo)
