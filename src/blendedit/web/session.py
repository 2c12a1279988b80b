"""An interactive editing session: pure logic, no web imports.

A :class:`Session` holds the original photo (a :class:`~blendedit.frame.photo.Photo` at full resolution,
with the uploaded file's bytes) and the edits kept so far, each a :class:`Step` (prompt, painted
mask, optional scribble, settings, the seed of the kept result, and the result as the patch of the
box the edit worked on), with a cursor for undo and redo. Steps hold patches, not whole images: a
48 MP photo costs its pixels once, plus one composed copy for the current image. A
:class:`Generation` is one press of Generate: ranked results of an edit of the session's current
image, not yet kept. :meth:`Session.to_trail` writes the session as a JSON-able trail (the
original file once, every mask as a 1-bit PNG, every scribble, prompt, seed and setting) and
:func:`replay` regenerates every step of a trail from the command line or code, bit for bit.

Why replay is exact: every candidate's noise comes from its own seed, and a candidate depends on
the other candidates of its UNet call only through the rounding of batched kernels. A step records
the seeds of the whole Generate and its ``batch_size``, so replay regenerates the kept seed
together with the seeds it shared its UNet calls with (alone when ``batch_size`` was 1, the web
app's default) and takes the kept one: the same pixels on the same device, dtype and versions.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blendedit._version import __version__
from blendedit.config import EditConfig
from blendedit.errors import BlendEditError, InputError
from blendedit.frame.edit import photo_mask
from blendedit.frame.masks import check_mask
from blendedit.frame.photo import Photo, read_photo, save_photo
from blendedit.io import check_json_depth, check_size, load_image, loads_json
from blendedit.web.canvas import Scribble

TRAIL_FORMAT = "blendedit-session"
TRAIL_VERSION = 2  # 2: the original as its file, 1-bit masks, scribbles; 1 is still read
MAX_TRAIL_BYTES = 1024 * 1024 * 1024  # a trail file larger than this is refused, not parsed
METHODS = ("latent", "pixel", "local-clip")
MODEL_KEYS = ("name", "model_config", "clip_model", "vae", "dtype")  # what replay reads of a model


class SessionError(BlendEditError):
    """An action that the session cannot take now (nothing to undo, results of an older image)."""


# -- images as text --------------------------------------------------------------------------------


def image_to_b64(image: Image.Image) -> str:
    """A PIL image as base64 PNG text (lossless; a mode "1" image at one bit a pixel)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def b64_to_image(
    text: str, name: str, size: tuple[int, int] | None = None, of: str = "the photo"
) -> Image.Image:
    """Base64 PNG text -> the decoded image. Its header is checked first, before any pixel is
    decoded: within the caps (``blendedit.io.MAX_SIDE``, ``MAX_PIXELS``), and of ``size`` (W, H),
    the size of ``of``, when given. Every problem is one line starting with ``name``."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
        with warnings.catch_warnings():  # the size is checked here, not by Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Exception:
        raise InputError(f"{name}: not a base64 PNG image") from None
    with im:
        w, h = im.size
        if size is not None and (w, h) != tuple(size):
            raise InputError(f"{name} is {w}x{h}, {of} {size[0]}x{size[1]}")
        check_size((w, h), name, smallest=1)
        try:
            im.load()
            return im.copy()
        except Exception:
            raise InputError(f"{name}: not a base64 PNG image") from None


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Bool (H, W) -> 8-bit black/white image (white = edit)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def mask_to_b64(mask: np.ndarray) -> str:
    """Bool (H, W) -> base64 of a 1-bit PNG (white = edit): 48 MP in well under a megabyte."""
    return image_to_b64(Image.fromarray(np.ascontiguousarray(mask, dtype=bool)))  # mode "1"


def pixels_sha256(image: Image.Image | Photo, pixels: np.ndarray | None = None) -> str:
    """Hash of an image's size and RGB pixels: equal hashes mean identical pixels. A Photo (with
    other ``pixels`` of it) hashes as its 8-bit Pillow image would, without that copy for RGB."""
    if isinstance(image, Photo):
        px = image.pixels if pixels is None else pixels
        if image.mode != "RGB" or px.dtype != np.uint8:
            return pixels_sha256(image.to_pil(px))
    else:
        px = np.asarray(image.convert("RGB"))
    h = hashlib.sha256(f"{px.shape[1]}x{px.shape[0]}:".encode())
    h.update(np.ascontiguousarray(px).data)
    return h.hexdigest()


def photo_file(photo: Photo) -> tuple[bytes, str]:
    """A lossless file of a photo that reads back as the same Photo: (bytes, name). 16 bits, ICC,
    alpha and EXIF are kept (PNG through the library's writer; CMYK as TIFF)."""
    with tempfile.TemporaryDirectory(prefix="blendedit-trail-") as tmp:
        if photo.mode == "CMYK":
            path = Path(tmp) / "original.tiff"
            im = photo.to_pil()
            im.save(path, format="TIFF", icc_profile=photo.icc_profile or None)
        else:
            path = save_photo(
                photo.pixels, photo, Path(tmp) / "original.png", format="png", marker=False
            )
        return path.read_bytes(), path.name


def photo_from_bytes(data: bytes, name: str, what: str) -> Photo:
    """A photo file's bytes (as uploaded) -> the Photo blendedit reads from it."""
    suffix = "".join(c for c in Path(name).suffix if c.isalnum() or c == ".")[:8]
    with tempfile.TemporaryDirectory(prefix="blendedit-trail-") as tmp:
        path = Path(tmp) / f"original{suffix}"
        path.write_bytes(data)
        return read_photo(path, what)


# -- settings --------------------------------------------------------------------------------------


def config_class(method: str) -> type:
    if method == "latent":
        return EditConfig
    if method in ("pixel", "local-clip"):
        from blendedit.pixel.pipeline import PixelConfig

        return PixelConfig
    raise InputError(f"method: {method!r} is unknown; choose one of {', '.join(METHODS)}")


def make_config(method: str, settings: Mapping[str, Any]) -> Any:
    """The method's config from a settings dict (as recorded in a step): complete or partial,
    defaults for missing fields; unknown fields are an error."""
    cls = config_class(method)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - names
    if unknown:
        raise InputError(f"settings: unknown setting(s) {', '.join(sorted(unknown))} for {method}")
    values = dict(settings)
    if isinstance(values.get("shrink_kernels"), list):  # JSON has no tuples
        values["shrink_kernels"] = tuple(values["shrink_kernels"])
    if method == "local-clip":
        values["local"] = True
    try:
        cfg = cls(**values)
    except TypeError as e:  # a wrongly typed value in a hand-edited trail
        raise InputError(f"settings: {e}") from None
    return cfg.validate()


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config as a JSON-able dict of its fields."""
    d = cfg.to_dict()
    if "shrink_kernels" in d:
        d["shrink_kernels"] = list(d["shrink_kernels"])
    return d


# -- the session ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One candidate of a Generate: its patch of the photo (the photo's own samples in ``box``;
    the rest of the result is the image it edited), seed, rank, CLIP score and the A1111
    parameters its file carries."""

    patch: np.ndarray = field(repr=False)  # (h, w, C) like Photo.pixels
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the photo as shown
    seed: int
    rank: int
    score: float | None = None
    parameters: str = ""
    judges: dict[str, float] = field(default_factory=dict)  # each judge's score (--rank)

    @property
    def caption(self) -> str:
        score = "unranked" if self.score is None else f"score {self.score:.4f}"
        if self.judges and set(self.judges) != {"clip"}:  # each judge's own, after the ranking's
            score += " (" + ", ".join(f"{k} {v:.4g}" for k, v in self.judges.items()) + ")"
        return f"#{self.rank} seed {self.seed} {score}"


@dataclass
class Generation:
    """One press of Generate: ranked results of an edit of image ``base`` (a session image id)."""

    base: int
    prompt: str
    mask: np.ndarray  # bool (H, W) at full resolution, as painted (before invert_mask)
    method: str
    settings: dict[str, Any]  # every field of the method's config the edit ran with
    seeds: list[int]  # every seed generated, in generation order
    results: list[Result]  # best first
    scribble: Scribble | None = None  # colours composited into the photo before the edit
    loras: list[str] = field(default_factory=list)  # "source:scale" applied to the model
    meta: dict[str, Any] = field(default_factory=dict)  # the model it ran on (name, family, ...)

    @classmethod
    def from_edit(
        cls,
        base: int,
        prompt: str,
        mask: np.ndarray,
        method: str,
        config: Any,
        seeds: Sequence[int],
        result: Any,
        scribble: Scribble | None = None,
        loras: Sequence[str] = (),
    ) -> Generation:
        """From an :class:`~blendedit.frame.results.EditResult` of ``editor(..., config=config)``."""
        return cls(
            base=base,
            prompt=prompt,
            mask=np.asarray(mask, dtype=bool),
            method=method,
            settings=config_dict(config),
            seeds=[int(s) for s in seeds],
            results=[
                Result(
                    patch=c.patch,
                    box=tuple(int(v) for v in c.box),  # type: ignore[arg-type]
                    seed=int(c.seed),
                    rank=int(c.rank),
                    score=c.score,
                    parameters=result.parameters(c),
                    judges=dict(getattr(c, "judges", {}) or {}),
                )
                for c in result.candidates
            ],
            scribble=scribble,
            loras=list(loras),
        )


@dataclass
class Step:
    """One kept edit: what was asked, with what settings, and the result that was kept (its patch:
    the image before the step with ``patch`` in ``box``)."""

    id: int
    prompt: str
    mask_bits: np.ndarray = field(repr=False)  # the mask as painted, np.packbits along rows
    mask_shape: tuple[int, int]  # (H, W)
    method: str
    settings: dict[str, Any]
    seeds: list[int]  # every seed of the Generate it came from, in generation order
    seed: int  # the kept result's seed
    rank: int | None
    score: float | None
    box: tuple[int, int, int, int]
    patch: np.ndarray = field(repr=False)
    sha256: str = ""  # of the whole result's pixels (:func:`pixels_sha256`)
    parameters: str = ""
    scribble: Scribble | None = None
    thumb: Image.Image | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)  # model, dtype, device: informative
    loras: list[str] = field(default_factory=list)  # "source:scale" the step's edit ran with

    @property
    def mask(self) -> np.ndarray:
        """Bool (H, W) at the image's size, as painted (before invert_mask); held packed, at one
        bit a pixel (6 MB for 48 MP), and unpacked on each access."""
        return np.unpackbits(self.mask_bits, axis=1, count=self.mask_shape[1]).astype(bool)

    # The trail is rewritten on every keep and undo: what it needs of a step is made once.
    @cached_property
    def mask_png(self) -> str:
        """The mask as a 1-bit PNG in base64 (a 48 MP mask takes about 0.2 s to encode)."""
        return mask_to_b64(self.mask)

    @cached_property
    def mask_fraction(self) -> float:
        """The painted share of the image (the packed rows' padding bits are zero)."""
        ones = int(np.unpackbits(self.mask_bits).sum())
        return ones / (self.mask_shape[0] * self.mask_shape[1])


class Session:
    """The original photo, the kept steps, and a cursor: ``steps[:cursor]`` made the current
    image; the steps after it are undone and can be redone until a new step is kept.

    ``original``: a path, Pillow image or :class:`Photo`; ``source``: the bytes of the file it
    was read from (kept for the trail, so a replay reads the very same photo)."""

    def __init__(
        self,
        original: Photo | Image.Image | str | os.PathLike[str],
        *,
        source: bytes | None = None,
        source_name: str | None = None,
    ) -> None:
        if isinstance(original, str | os.PathLike) and source is None:
            source = Path(original).read_bytes() if Path(original).is_file() else None
            source_name = source_name or Path(original).name
        self.photo = read_photo(original, "image")
        self.source = source
        self.source_name = source_name or "original"
        self.steps: list[Step] = []
        self.cursor = 0
        self._next_id = 1
        self._current: tuple[int, np.ndarray] | None = None  # (image id, composed pixels)

    # The current image and its id (0 = the original); a Generation remembers the id it edited.
    @property
    def size(self) -> tuple[int, int]:
        return self.photo.size

    @property
    def current_pixels(self) -> np.ndarray:
        """(H, W, C) read-only: the original with the patches of the steps so far."""
        if self.cursor == 0:
            return self.photo.pixels
        if self._current is None or self._current[0] != self.current_id:
            out = self.photo.pixels.copy()
            for s in self.history:
                x0, y0, x1, y1 = s.box
                out[y0:y1, x0:x1] = s.patch
            out.flags.writeable = False
            self._current = (self.current_id, out)
        return self._current[1]

    @property
    def current_photo(self) -> Photo:
        """The current image as a Photo (the original's colour space, profile, EXIF, format)."""
        if self.cursor == 0:
            return self.photo
        return dataclasses.replace(self.photo, pixels=self.current_pixels)

    @property
    def original(self) -> Image.Image:
        """The original as an 8-bit Pillow image (made on each access)."""
        return self.photo.to_pil()

    @property
    def current_image(self) -> Image.Image:
        """The current image as an 8-bit Pillow image (made on each access)."""
        return self.photo.to_pil(self.current_pixels)

    @property
    def current_id(self) -> int:
        return self.steps[self.cursor - 1].id if self.cursor else 0

    @property
    def history(self) -> list[Step]:
        """The steps that made the current image, oldest first."""
        return self.steps[: self.cursor]

    @property
    def can_undo(self) -> bool:
        return self.cursor > 0

    @property
    def can_redo(self) -> bool:
        return self.cursor < len(self.steps)

    @property
    def redo_count(self) -> int:
        return len(self.steps) - self.cursor

    def keep(
        self,
        generation: Generation,
        index: int = 0,
        meta: Mapping[str, Any] | None = None,
        thumb: Callable[[Photo], Image.Image] | None = None,
    ) -> Step:
        """Keep result ``index`` (0 = best) of ``generation`` as the next step. Steps that were
        undone are dropped (redo is cleared), as in every editor. ``thumb`` makes the step's
        history picture from the new current image."""
        if generation.base != self.current_id:
            raise SessionError(
                "keep: these results were made from an earlier image (after an undo, redo or "
                "keep); generate again from the current image"
            )
        if not 0 <= index < len(generation.results):
            raise SessionError(f"keep: no result #{index + 1}; there are {len(generation.results)}")
        r = generation.results[index]
        x0, y0, x1, y1 = r.box
        w, h = self.size
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h) or r.patch.shape[:2] != (y1 - y0, x1 - x0):
            raise SessionError(
                f"keep: the result's box {list(r.box)} does not fit the {w}x{h} photo"
            )
        out = self.current_pixels.copy()
        out[y0:y1, x0:x1] = r.patch
        out.flags.writeable = False
        step = Step(
            id=self._next_id,
            prompt=generation.prompt,
            mask_bits=np.packbits(generation.mask, axis=1),
            mask_shape=generation.mask.shape,
            method=generation.method,
            settings=dict(generation.settings),
            loras=list(generation.loras),
            seeds=list(generation.seeds),
            seed=r.seed,
            rank=r.rank,
            score=r.score,
            box=r.box,
            patch=r.patch,
            sha256=pixels_sha256(self.photo, out),
            parameters=r.parameters,
            scribble=generation.scribble,
            meta=dict(meta or {}),
        )
        self._next_id += 1
        del self.steps[self.cursor :]
        self.steps.append(step)
        self.cursor += 1
        self._current = (step.id, out)
        if thumb is not None:
            step.thumb = thumb(self.current_photo)
        return step

    def undo(self) -> Step:
        """Step back; returns the step undone (its prompt and mask, to try again)."""
        if not self.can_undo:
            raise SessionError("undo: nothing to undo; this is the original photo")
        self.cursor -= 1
        return self.steps[self.cursor]

    def redo(self) -> Step:
        """Step forward again; returns the step redone."""
        if not self.can_redo:
            raise SessionError("redo: nothing to redo")
        self.cursor += 1
        return self.steps[self.cursor - 1]

    @cached_property
    def _trail_original(self) -> dict[str, Any]:
        """The trail's record of the original, made once (the file may be 200 MB of base64)."""
        data, name = (
            (self.source, self.source_name) if self.source is not None else photo_file(self.photo)
        )
        return {
            "size": list(self.size),
            "file_name": name,
            "file_base64": base64.b64encode(data).decode("ascii"),
            "sha256": pixels_sha256(self.photo),
        }

    def to_trail(self, model: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The steps that made the current image as a JSON-able dict: enough to replay them
        (:func:`replay`, ``blendedit replay``). The original is stored once, as the file it was
        read from (or a lossless PNG/TIFF of it); masks are 1-bit PNG at full resolution and
        scribbles RGBA PNG of their box, all base64; each step also records the hash of its
        result's pixels, so a replay can tell whether it is identical."""
        return {
            "format": TRAIL_FORMAT,
            "version": TRAIL_VERSION,
            "blendedit": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": dict(model or {}),
            "original": dict(self._trail_original),
            "steps": [
                {
                    "step": i,
                    "prompt": s.prompt,
                    "method": s.method,
                    "seed": s.seed,
                    "rank": s.rank,
                    "score": None if s.score is None else round(float(s.score), 6),
                    "seeds": s.seeds,
                    "settings": s.settings,
                    **({"loras": list(s.loras)} if s.loras else {}),
                    "mask_png_base64": s.mask_png,
                    "mask_fraction": round(s.mask_fraction, 6),
                    **({"scribble": s.scribble.to_dict()} if s.scribble is not None else {}),
                    "box": list(s.box),
                    "result_size": list(self.size),
                    "result_sha256": s.sha256,
                    **({"meta": s.meta} if s.meta else {}),
                }
                for i, s in enumerate(self.history, start=1)
            ],
        }


# -- trails and replay -----------------------------------------------------------------------------


@dataclass
class TrailStep:
    """One step of a parsed trail: everything needed to regenerate it."""

    prompt: str
    mask: np.ndarray
    method: str
    settings: dict[str, Any]
    seed: int
    seeds: list[int]
    result_sha256: str | None = None
    scribble: Scribble | None = None
    loras: list[str] = field(default_factory=list)  # "source:scale", applied before the step
    meta: dict[str, Any] = field(default_factory=dict)  # the model the step ran on (name, ...)

    @property
    def model(self) -> str | None:
        """The model the step ran on, as its trail records it (None: not recorded)."""
        return self.meta.get("name") or None

    def replay_seeds(self) -> list[int]:
        """The seeds that shared the kept seed's UNet calls: the kept seed's chunk of
        ``batch_size`` in generation order (the kept seed alone when batch_size was 1)."""
        bs = int(self.settings.get("batch_size", 1) or 1)
        if self.seed not in self.seeds:
            return [self.seed]
        i = self.seeds.index(self.seed)
        start = (i // bs) * bs
        return self.seeds[start : start + bs]


@dataclass
class Trail:
    original: Photo
    steps: list[TrailStep]
    model: dict[str, Any]


def parse_trail(data: Mapping[str, Any] | str | os.PathLike[str]) -> Trail:
    """A trail dict (or the path of its JSON file), checked, with images and masks decoded.
    Every field's type and value is checked here, before anything is written or loaded (each
    step's settings as its method's config validates them, its mask as the edit would take it;
    images from their headers first; at most ``blendedit.io.MAX_JSON_DEPTH`` levels of nesting).
    Every problem is one :class:`InputError` line naming the step and the field."""
    if not isinstance(data, Mapping):
        data = _read_trail_file(data)
    check_json_depth(data, "trail")
    fmt, version = data.get("format"), data.get("version")
    if fmt != TRAIL_FORMAT:
        raise InputError(f"trail: not a blendedit session trail (format {_short(fmt)})")
    if version not in (1, TRAIL_VERSION) or isinstance(version, bool):
        raise InputError(
            f"trail: version {_short(version)} is not supported (expected {TRAIL_VERSION})"
        )
    model = data.get("model") or {}
    if not isinstance(model, Mapping):
        raise InputError(f"trail: model: {_short(model)} must be an object")
    for key in MODEL_KEYS:
        if model.get(key) is not None and not isinstance(model[key], str):
            raise InputError(f"trail: model.{key}: {_short(model[key])} must be text")
    original = _trail_original(data.get("original"))
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list):
        raise InputError("trail: steps must be a list")
    steps = [_trail_step(s, i, original) for i, s in enumerate(raw_steps, start=1)]
    return Trail(original=original, steps=steps, model=dict(model))


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_trail_file(source: str | os.PathLike[str]) -> Any:
    path = Path(source)
    if not path.is_file():
        raise InputError(f"trail: no such file: {str(path)!r}")
    if path.stat().st_size > MAX_TRAIL_BYTES:
        raise InputError(f"trail: {str(path)!r} is larger than {MAX_TRAIL_BYTES >> 20} MiB")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"trail: cannot read {str(path)!r} as JSON ({e})") from None
    data = loads_json(text, f"trail: cannot read {str(path)!r} as JSON")  # depth checked too
    if not isinstance(data, Mapping):
        raise InputError("trail: expected a JSON object")
    return data


def _trail_original(orig: Any) -> Photo:
    if not isinstance(orig, Mapping) or not ("file_base64" in orig or "png_base64" in orig):
        raise InputError("trail: original.file_base64 is missing")
    if "file_base64" in orig:
        text, file_name = orig["file_base64"], orig.get("file_name")
        if not isinstance(text, str):
            raise InputError(f"trail: original.file_base64: {_short(text)} must be base64 text")
        if file_name is not None and not isinstance(file_name, str):
            raise InputError(f"trail: original.file_name: {_short(file_name)} must be text")
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except ValueError:
            raise InputError("trail: original.file_base64 is not base64") from None
        return photo_from_bytes(raw, file_name or "", "trail: original")
    if not isinstance(orig["png_base64"], str):  # version 1: an 8-bit RGB PNG
        raise InputError(f"trail: original.png_base64: {_short(orig['png_base64'])} must be text")
    png = load_image(b64_to_image(orig["png_base64"], "trail: original"), "trail: original")
    return read_photo(png, "trail: original")


def _seed(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InputError(f"{name}: {_short(value)} must be an integer in [0, 2**63)")
    return value


def _trail_step(s: Any, i: int, original: Photo) -> TrailStep:
    """Step ``i`` of a trail, every field checked (see :func:`parse_trail`)."""
    name = f"trail: step {i}"
    if not isinstance(s, Mapping):
        raise InputError(f"{name}: expected an object, got {_short(s)}")
    missing = [k for k in ("prompt", "method", "seed", "settings", "mask_png_base64") if k not in s]
    if missing:
        raise InputError(f"{name}: missing or malformed field ({', '.join(missing)} missing)")
    for key in ("prompt", "method", "mask_png_base64"):
        if not isinstance(s[key], str):
            raise InputError(f"{name}: {key}: {_short(s[key])} must be text")
    seed = _seed(s["seed"], f"{name}: seed")
    raw_seeds = s.get("seeds")
    if raw_seeds is not None and not isinstance(raw_seeds, list):
        raise InputError(f"{name}: seeds: {_short(raw_seeds)} must be a list of seeds")
    seeds = [_seed(x, f"{name}: seeds") for x in raw_seeds or [seed]]
    loras = s.get("loras") or []
    if not isinstance(loras, list) or not all(isinstance(x, str) for x in loras):
        raise InputError(f"{name}: loras: {_short(loras)} must be a list of texts")
    sha = s.get("result_sha256")
    if sha is not None and not isinstance(sha, str):
        raise InputError(f"{name}: result_sha256: {_short(sha)} must be text")
    meta = s.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise InputError(f"{name}: meta: {_short(meta)} must be an object")
    for key in MODEL_KEYS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise InputError(f"{name}: meta.{key}: {_short(meta[key])} must be text")
    settings = s["settings"]
    if not isinstance(settings, Mapping):
        raise InputError(f"{name}: settings: {_short(settings)} must be an object")
    try:
        cfg = make_config(s["method"], settings)  # every value typed and in range
        mask_img = b64_to_image(s["mask_png_base64"], f"{name} mask", original.size)
        mask = np.asarray(mask_img.convert("L")) >= 128
        check_mask(mask, f"{name} mask")
        photo_mask(mask, original, cfg)  # as the edit will take it: inverted, grown
        scribble = _trail_scribble(s.get("scribble"), original, f"{name} scribble")
    except InputError as e:
        text = str(e)
        raise InputError(text if text.startswith(name) else f"{name}: {text}") from None
    return TrailStep(
        s["prompt"], mask, s["method"], dict(settings), seed, seeds, sha, scribble, list(loras),
        {k: meta[k] for k in MODEL_KEYS if meta.get(k) is not None},
    )  # fmt: skip


def _trail_scribble(d: Any, original: Photo, name: str) -> Scribble | None:
    if d is None:
        return None
    box = d.get("box") if isinstance(d, Mapping) else None
    ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
    if not ok or not isinstance(d.get("png_base64"), str):
        raise InputError(f"{name}: {_short(d)} is not a box and a base64 PNG")
    x0, y0, x1, y1 = box
    w, h = original.size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"{name}: box {box} does not fit the {w}x{h} photo")
    b64_to_image(d["png_base64"], name, (x1 - x0, y1 - y0), "its box")  # header first
    return Scribble.from_dict(d, original.size, name)


def step_edit(
    editor: Any, photo: Photo, step: TrailStep, progress: bool | Callable[..., Any] = False
) -> Any:
    """Regenerate one step of ``photo`` (its scribble composited first): the kept seed with the
    seeds of its UNet calls, ranking off. Returns the kept seed's
    :class:`~blendedit.frame.results.Candidate`."""
    seeds = step.replay_seeds()
    cfg = make_config(step.method, step.settings)
    changes: dict[str, Any] = {"num_images": len(seeds), "rank": False}
    if "keep" in {f.name for f in dataclasses.fields(cfg)}:
        changes["keep"] = None
    cfg = cfg.replace(**changes).validate()
    _check_editor(editor, step.method)
    if step.method == "latent":
        use_loras(editor, step.loras)
    source = photo
    if step.scribble is not None:
        source = dataclasses.replace(photo, pixels=step.scribble.apply(photo))
    result = editor(source, step.mask, step.prompt, config=cfg, seeds=seeds, progress=progress)
    for c in result.candidates:
        if c.seed == step.seed:
            return c
    raise InputError(f"replay: seed {step.seed} missing from the results")  # pragma: no cover


def use_loras(editor: Any, loras: Sequence[str]) -> None:
    """Apply exactly ``loras`` ("source:scale") to a latent editor, loading only on a change."""
    if list(loras) != editor.loras:
        if loras:
            editor.load_loras(list(loras))
        else:
            editor.unload_loras()


def _check_editor(editor: Any, method: str) -> None:
    from blendedit.latent.pipeline import BlendedLatentDiffusion

    latent = isinstance(editor, BlendedLatentDiffusion)
    if latent != (method == "latent"):
        need = "a Stable Diffusion model" if method == "latent" else "an ADM checkpoint"
        raise InputError(f"replay: the trail's method is {method}; it needs {need}")


def replay(
    trail: Mapping[str, Any] | Trail | str | os.PathLike[str],
    editor: Any,
    *,
    progress: bool | Callable[..., Any] = False,
    on_step: Callable[[int, TrailStep, Photo], None] | None = None,
    keep: bool = True,
    editor_for: Callable[[TrailStep], Any] | None = None,
) -> list[Photo]:
    """Regenerate every step of a trail in order, each from the previous step's regenerated
    image; returns the images as Photos (one per step, not the original; none when ``keep`` is
    False, to hold one image at a time). ``on_step(i, step, photo)`` is called after each step
    (i from 1). ``editor_for(step)``: the editor of each step (a trail whose steps ran on
    several models, :func:`trail_models`), instead of ``editor`` for all."""
    t = trail if isinstance(trail, Trail) else parse_trail(trail)
    photo = t.original
    out = []
    for i, step in enumerate(t.steps, start=1):
        c = step_edit(editor if editor_for is None else editor_for(step), photo, step, progress)
        pixels = c.pixels()
        pixels.flags.writeable = False
        photo = dataclasses.replace(photo, pixels=pixels)
        if keep:
            out.append(photo)
        if on_step is not None:
            on_step(i, step, photo)
    return out


def trail_models(trail: Trail) -> list[str]:
    """The models a trail's steps ran on, each once, in the order of the steps (a session that
    switched models in the page's picker has several; a step that records none ran on the
    trail's model)."""
    default = trail.model.get("name") or ""
    return list(dict.fromkeys(s.model or default for s in trail.steps))
