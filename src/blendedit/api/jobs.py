"""One edit request as data, checked and run on an editor, whatever serves it.

An :class:`EditJob` holds what a client sent (the photo's bytes, the mask, the prompt, ``n``, the
settings by field name, the seed, the output format). :func:`check_image_header` measures an
uploaded file from its header before anything decodes it; :func:`job_config` turns the settings
into the method's validated config (one line naming the field otherwise); :func:`run_job` runs
the edit and returns the encoded images best first, written as ``EditResult.save`` writes them
(the AI-edit marker and the generation parameters in each file), with the seeds, scores,
timings and what ``result.json`` holds.

The mask follows OpenAI's convention: the fully transparent pixels (alpha 0) of the mask image
are the region to edit; without a mask, the transparent pixels of the photo itself are.
"""

from __future__ import annotations

import dataclasses
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blendedit.api.settings import ApiOptions
from blendedit.errors import InputError
from blendedit.frame.photo import Photo, orient_like, read_photo
from blendedit.frame.stop import StopFn, stopping
from blendedit.io import MIN_SIDE, check_upload_size, json_safe, open_image
from blendedit.methods import get_method

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MAX_SEED = 2**62
ProgressFn = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class EditJob:
    """What a client asked for. ``mask``: uint8 levels (255 = edit) at the photo as shown, or
    the bytes of an image whose transparent pixels mark the region, or None (the photo's own
    transparent pixels). ``settings``: field name -> value (the method's config fields).
    ``seed`` None: a random one, returned with the results."""

    image: bytes = field(repr=False)
    prompt: str
    mask: np.ndarray | bytes | None = field(default=None, repr=False)
    n: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    output_format: str = "png"
    id: str = field(default_factory=lambda: secrets.token_hex(12))

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise InputError(
                f"output_format: {self.output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}"
            )
        if self.seed is None:
            self.seed = secrets.randbelow(2**31)
        if not 0 <= self.seed < MAX_SEED:
            raise InputError(f"seed: {self.seed} must be in [0, 2**62)")


@dataclass
class JobResult:
    """The images of one job (encoded, best first) and what made them."""

    id: str
    images: list[bytes] = field(repr=False)
    format: str
    size: tuple[int, int]  # (W, H) of every image: the photo's own
    seeds: list[int]
    scores: list[float | None]
    timings: dict[str, float]
    settings: dict[str, Any]  # EditResult.to_dict(): what result.json holds
    seconds: float = 0.0  # on the device, all stages and the encoding


def check_image_header(
    data: bytes, name: str, options: ApiOptions, smallest: int = MIN_SIDE
) -> tuple[int, int]:
    """An uploaded file's (W, H) from its header, before any pixel is decoded; one line naming
    ``name`` and the server's cap when it is not an image or too small or too large."""
    return check_upload_size(data, name, options.max_side, options.max_pixels, smallest)


def job_config(editor: Any, job: EditJob) -> Any:
    """The method's validated config for ``job`` (its settings on the model's defaults, ``n``
    images); one line naming the field otherwise."""
    settings = {**job.settings, "num_images": job.n}
    return get_method(editor.method).settings(settings, base=editor.default_config(), key="method")


def _transparent(alpha: np.ndarray, name: str) -> np.ndarray:
    levels = np.where(alpha == 0, 255, 0).astype(np.uint8)
    if not levels.any():
        raise InputError(
            f"{name}: has no fully transparent pixel (alpha 0); those mark the region to edit"
        )
    return levels


def mask_levels(job: EditJob, photo: Photo, folder: Path) -> np.ndarray:
    """The region to edit as uint8 levels (255 = edit) on the photo as shown: the mask image's
    transparent pixels, or the photo's own without a mask."""
    if job.mask is None:
        if photo.alpha is None:
            raise InputError(
                "mask: give a mask, or an image whose transparent pixels (alpha 0) mark the "
                "region to edit"
            )
        return _transparent(photo.alpha, "image")
    if isinstance(job.mask, np.ndarray):
        if job.mask.shape != (photo.size[1], photo.size[0]):
            raise InputError(f"mask: shape {job.mask.shape} does not match the photo's")
        return (job.mask > 0).astype(np.uint8) * 255
    path = folder / "mask"
    path.write_bytes(job.mask)
    im = orient_like(open_image(path, "mask"), photo)
    if im.size != photo.size:
        w, h = im.size
        raise InputError(
            f"mask: {w}x{h} px does not match the image's {photo.size[0]}x{photo.size[1]}"
        )
    if "A" not in im.getbands() and "transparency" not in im.info:
        raise InputError(
            "mask: has no alpha channel; its fully transparent pixels (alpha 0) mark the "
            "region to edit"
        )
    return _transparent(np.asarray(im.convert("RGBA").getchannel("A")), "mask")


def run_job(
    editor: Any,
    job: EditJob,
    progress: ProgressFn | None = None,
    stop: StopFn | None = None,
    time_limit: float | None = None,
) -> JobResult:
    """Run ``job`` on ``editor``: the photo read as shown (its alpha only as the region, the
    results opaque), edited, every candidate written as ``EditResult.save`` writes it. ``stop``
    and ``time_limit`` stop it in any stage (:mod:`blendedit.frame.stop`)."""
    t0 = time.perf_counter()
    cfg = job_config(editor, job)
    with tempfile.TemporaryDirectory(prefix="blendedit-api-") as tmp:
        folder = Path(tmp)
        (folder / "image").write_bytes(job.image)
        photo = read_photo(folder / "image", "image")
        levels = mask_levels(job, photo, folder)
        photo = dataclasses.replace(photo, alpha=None)
        result = editor(
            photo, levels, job.prompt, config=cfg, seed=job.seed,
            progress=progress or False, stop=stop, time_limit=time_limit,
        )  # fmt: skip
        out = folder / "out"
        out.mkdir()
        with stopping(stop):
            names = result.save(out, format=job.output_format)
        images = [(out / name).read_bytes() for name in names]
    return JobResult(
        id=job.id,
        images=images,
        format=job.output_format,
        size=tuple(result.input_size),  # type: ignore[arg-type]
        seeds=result.seeds,
        scores=[None if s is None else round(float(s), 6) for s in result.scores],
        timings=result.timings.to_dict(),
        settings=json_safe(result.to_dict()),  # as result.json writes it
        seconds=round(time.perf_counter() - t0, 4),
    )


__all__ = [
    "MEDIA_TYPES",
    "OUTPUT_FORMATS",
    "EditJob",
    "JobResult",
    "check_image_header",
    "job_config",
    "mask_levels",
    "run_job",
]
