"""An interactive editing session: pure logic, no web imports.

A :class:`Session` holds the original photo and the edits kept so far, each a :class:`Step`
(prompt, painted mask, settings, the seed of the kept result and the result itself), with a cursor
for undo and redo. A :class:`Generation` is one press of Generate: ranked results of an edit of the
session's current image, not yet kept. :meth:`Session.to_trail` writes the session as a JSON-able
trail (the original and every mask as base64 PNG, every prompt, seed and setting) and
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
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blendedit import __version__
from blendedit.config import EditConfig
from blendedit.errors import BlendEditError, InputError
from blendedit.io import load_image
from blendedit.masks import check_mask

TRAIL_FORMAT = "blendedit-session"
TRAIL_VERSION = 1
METHODS = ("latent", "pixel", "local-clip")
MAX_TRAIL_BYTES = 512 * 1024 * 1024  # a trail file larger than this is refused, not parsed


class SessionError(BlendEditError):
    """An action that the session cannot take now (nothing to undo, results of an older image)."""


# -- images as text --------------------------------------------------------------------------------


def image_to_b64(image: Image.Image) -> str:
    """A PIL image as base64 PNG text (lossless)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def b64_to_image(text: str, name: str) -> Image.Image:
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy()
    except Exception:
        raise InputError(f"{name}: not a base64 PNG image") from None


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Bool (H, W) -> 8-bit black/white image (white = edit)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def pixels_sha256(image: Image.Image) -> str:
    """Hash of an image's size and RGB pixels: equal hashes mean identical pixels."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(np.asarray(rgb).tobytes())
    return h.hexdigest()


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
    if "shrink_kernels" in values and values["shrink_kernels"] is not None:
        values["shrink_kernels"] = tuple(int(k) for k in values["shrink_kernels"])
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


# -- the session -----------------------------------------------------------------------------------


@dataclass
class Result:
    """One candidate of a Generate: its image (the input's size), seed, rank and CLIP score."""

    image: Image.Image
    seed: int
    rank: int
    score: float | None = None

    @property
    def caption(self) -> str:
        score = "unranked" if self.score is None else f"score {self.score:.4f}"
        return f"#{self.rank} seed {self.seed} {score}"


@dataclass
class Generation:
    """One press of Generate: ranked results of an edit of image ``base`` (a session image id)."""

    base: int
    prompt: str
    mask: np.ndarray  # bool (H, W), as painted (before invert_mask)
    method: str
    settings: dict[str, Any]  # every field of the method's config the edit ran with
    seeds: list[int]  # every seed generated, in generation order
    results: list[Result]  # best first

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
    ) -> Generation:
        """From an :class:`~blendedit.results.EditResult` of ``editor(..., config=config)``."""
        return cls(
            base=base,
            prompt=prompt,
            mask=np.asarray(mask, dtype=bool).copy(),
            method=method,
            settings=config_dict(config),
            seeds=[int(s) for s in seeds],
            results=[
                Result(image=c.image, seed=int(c.seed), rank=int(c.rank), score=c.score)
                for c in result.candidates
            ],
        )


@dataclass
class Step:
    """One kept edit: what was asked, with what settings, and the result that was kept."""

    id: int
    prompt: str
    mask: np.ndarray  # bool (H, W) at the image's size, as painted (before invert_mask)
    method: str
    settings: dict[str, Any]
    seeds: list[int]  # every seed of the Generate it came from, in generation order
    seed: int  # the kept result's seed
    rank: int | None
    score: float | None
    image: Image.Image  # the kept result: the input of the next step
    meta: dict[str, Any] = field(default_factory=dict)  # model, dtype, device: informative


class Session:
    """The original photo, the kept steps, and a cursor: ``steps[:cursor]`` made the current
    image; the steps after it are undone and can be redone until a new step is kept."""

    def __init__(self, original: Image.Image) -> None:
        self.original = load_image(original, "image")
        self.steps: list[Step] = []
        self.cursor = 0
        self._next_id = 1

    # The current image and its id (0 = the original); a Generation remembers the id it edited.
    @property
    def current_image(self) -> Image.Image:
        return self.steps[self.cursor - 1].image if self.cursor else self.original

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
        self, generation: Generation, index: int = 0, meta: Mapping[str, Any] | None = None
    ) -> Step:
        """Keep result ``index`` (0 = best) of ``generation`` as the next step. Steps that were
        undone are dropped (redo is cleared), as in every editor."""
        if generation.base != self.current_id:
            raise SessionError(
                "keep: these results were made from an earlier image (after an undo, redo or "
                "keep); generate again from the current image"
            )
        if not 0 <= index < len(generation.results):
            raise SessionError(f"keep: no result #{index + 1}; there are {len(generation.results)}")
        r = generation.results[index]
        if r.image.size != self.current_image.size:
            raise SessionError(
                f"keep: the result is {r.image.width}x{r.image.height}, the image "
                f"{self.current_image.width}x{self.current_image.height}"
            )
        step = Step(
            id=self._next_id,
            prompt=generation.prompt,
            mask=generation.mask,
            method=generation.method,
            settings=dict(generation.settings),
            seeds=list(generation.seeds),
            seed=r.seed,
            rank=r.rank,
            score=r.score,
            image=r.image.convert("RGB"),
            meta=dict(meta or {}),
        )
        self._next_id += 1
        del self.steps[self.cursor :]
        self.steps.append(step)
        self.cursor += 1
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

    def to_trail(self, model: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The steps that made the current image as a JSON-able dict: enough to replay them
        (:func:`replay`, ``blendedit replay``). Images and masks are base64 PNG; each step also
        records the hash of its result's pixels, so a replay can tell whether it is identical."""
        return {
            "format": TRAIL_FORMAT,
            "version": TRAIL_VERSION,
            "blendedit": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": dict(model or {}),
            "original": {
                "size": list(self.original.size),
                "png_base64": image_to_b64(self.original),
                "sha256": pixels_sha256(self.original),
            },
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
                    "mask_png_base64": image_to_b64(mask_to_image(s.mask)),
                    "mask_fraction": round(float(s.mask.mean()), 6),
                    "result_size": list(s.image.size),
                    "result_sha256": pixels_sha256(s.image),
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
    original: Image.Image
    steps: list[TrailStep]
    model: dict[str, Any]


def parse_trail(data: Mapping[str, Any] | str | os.PathLike[str]) -> Trail:
    """A trail dict (or the path of its JSON file), checked, with images and masks decoded.
    Every problem is one :class:`InputError` line naming the step."""
    if not isinstance(data, Mapping):
        path = Path(data)
        if not path.is_file():
            raise InputError(f"trail: no such file: {str(path)!r}")
        if path.stat().st_size > MAX_TRAIL_BYTES:
            raise InputError(f"trail: {str(path)!r} is larger than {MAX_TRAIL_BYTES >> 20} MiB")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"trail: cannot read {str(path)!r} as JSON ({e})") from None
        if not isinstance(data, Mapping):
            raise InputError("trail: expected a JSON object")
    if data.get("format") != TRAIL_FORMAT:
        raise InputError(f"trail: not a blendedit session trail (format {data.get('format')!r})")
    if data.get("version") != TRAIL_VERSION:
        raise InputError(
            f"trail: version {data.get('version')!r} is not supported (expected {TRAIL_VERSION})"
        )
    try:
        orig = data["original"]["png_base64"]
    except (KeyError, TypeError):
        raise InputError("trail: original.png_base64 is missing") from None
    original = load_image(b64_to_image(orig, "trail: original"), "trail: original")
    steps = []
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list):
        raise InputError("trail: steps must be a list")
    for i, s in enumerate(raw_steps, start=1):
        name = f"trail: step {i}"
        try:
            prompt, method, seed = str(s["prompt"]), str(s["method"]), int(s["seed"])
            settings = dict(s["settings"])
            seeds = [int(x) for x in s.get("seeds") or [seed]]
            mask_img = b64_to_image(s["mask_png_base64"], f"{name} mask")
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{name}: missing or malformed field ({e})") from None
        config_class(method)
        mask = np.asarray(mask_img.convert("L")) >= 128
        if mask.shape != (original.height, original.width):
            raise InputError(
                f"{name}: mask is {mask.shape[1]}x{mask.shape[0]}, the photo "
                f"{original.width}x{original.height}"
            )
        check_mask(mask, f"{name} mask")
        steps.append(TrailStep(prompt, mask, method, settings, seed, seeds, s.get("result_sha256")))
    return Trail(original=original, steps=steps, model=dict(data.get("model") or {}))


def step_edit(
    editor: Any, image: Image.Image, step: TrailStep, progress: bool | Callable[..., Any] = False
) -> Image.Image:
    """Regenerate one step: the kept seed with the seeds of its UNet calls, ranking off."""
    seeds = step.replay_seeds()
    cfg = make_config(step.method, step.settings)
    changes: dict[str, Any] = {"num_images": len(seeds), "rank": False}
    if "keep" in {f.name for f in dataclasses.fields(cfg)}:
        changes["keep"] = None
    cfg = cfg.replace(**changes).validate()
    _check_editor(editor, step.method)
    result = editor(image, step.mask, step.prompt, config=cfg, seeds=seeds, progress=progress)
    for c in result.candidates:
        if c.seed == step.seed:
            return c.image
    raise InputError(f"replay: seed {step.seed} missing from the results")  # pragma: no cover


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
    on_step: Callable[[int, TrailStep, Image.Image], None] | None = None,
) -> list[Image.Image]:
    """Regenerate every step of a trail in order, each from the previous step's regenerated
    image; returns the images (one per step, not the original). ``on_step(i, step, image)`` is
    called after each step (i from 1)."""
    t = trail if isinstance(trail, Trail) else parse_trail(trail)
    image = t.original
    out = []
    for i, step in enumerate(t.steps, start=1):
        image = step_edit(editor, image, step, progress)
        out.append(image)
        if on_step is not None:
            on_step(i, step, image)
    return out
