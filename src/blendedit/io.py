"""Reading user images and writing results: checked inputs, atomic outputs, never an overwrite."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from blendedit.errors import InputError

MIN_SIDE = 16  # px; smaller inputs cannot hold a meaningful edit
MAX_SIDE = 16384  # px; larger inputs are almost certainly a mistake (and would exhaust memory)
MAX_PIXELS = 100_000_000
_IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P", "1")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageInput = (
    str | os.PathLike[str] | Image.Image
)  # a path or an image, wherever a photo is taken  # PIL's decompression-bomb guard at our own limit


def open_image(source: str | os.PathLike[str] | Image.Image, name: str) -> Image.Image:
    """Open a file (or accept a PIL image), fully decoded, with one clear error line on failure."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{name}: no such file: {str(path)!r}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: cannot read {str(path)!r} as an image ({e})") from None


def load_image(source: str | os.PathLike[str] | Image.Image, name: str = "image") -> Image.Image:
    """The photo to edit as an RGB image; rejects absurd sizes and transparent or exotic modes."""
    im = open_image(source, name)
    if im.mode == "P":  # a palette may carry a transparent colour: check it as alpha
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    w, h = im.size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise InputError(
            f"{name}: size {w}x{h} is outside the supported range "
            f"({MIN_SIDE} to {MAX_SIDE} px a side, {MAX_PIXELS:,} px in all)"
        )
    if im.mode not in _IMAGE_MODES:
        raise InputError(f"{name}: unsupported image mode {im.mode!r}; save it as 8-bit RGB")
    if im.mode in ("RGBA", "LA") and im.getchannel("A").getextrema()[0] < 255:
        raise InputError(
            f"{name}: the image has transparent pixels; flatten it to RGB "
            "(or pass its alpha channel as --mask)"
        )
    return im.convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> float (1, 3, H, W) in [0, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float (3, H, W) in [0, 1] -> RGB PIL (rounded, clipped)."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


def write_atomic(path: Path, write: Any, replace: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written outputs.
    An existing file is refused, unless ``replace`` (a file the program remakes on every run: a
    summary, a report), which a reader then sees whole, old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        if not replace and path.exists():
            raise InputError(f"out: refusing to overwrite existing file {str(path)!r}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(image: Image.Image, path: Path) -> None:
    write_atomic(path, lambda f: image.save(f, format="PNG"))


def save_gif(frames: list[Image.Image], path: Path, duration_ms: int = 120) -> None:
    write_atomic(
        path,
        lambda f: frames[0].save(
            f, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0
        ),
    )


def _finite(obj: Any) -> Any:
    """JSON has no infinity: write non-finite floats as the strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def save_json(data: dict[str, Any], path: Path, replace: bool = False) -> None:
    text = json.dumps(_finite(data), indent=2, allow_nan=False, default=str) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()), replace)


def write_text(text: str, path: Path, replace: bool = False) -> None:
    write_atomic(path, lambda f: f.write(text.encode()), replace)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def json_digest(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as sorted-key JSON: a fingerprint of
    settings that names or checks what they made."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def slug(text: str, max_len: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "edit"


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, when ``out`` exists and holds anything."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InputError(f"out: {str(path)!r} already exists and is not empty; choose a new folder")
    return path


def prepare_out_dir(
    out: str | os.PathLike[str] | None, prompt: str, root: str = "blendedit-out"
) -> Path:
    """The folder a run writes into. An explicit ``out`` must be new or empty (an earlier run's
    outputs are never overwritten); without one, a fresh ``root/<time>-<prompt>`` folder is made."""
    if out is not None:
        path = check_out_dir(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(prompt)}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def working_size(size: tuple[int, int], long_side: int, multiple: int) -> tuple[int, int]:
    """(W, H) scaled so the long side is ``long_side``, aspect kept, both multiples of ``multiple``."""
    w, h = size
    scale = long_side / max(w, h)
    return tuple(max(multiple, round(v * scale / multiple) * multiple) for v in (w, h))  # type: ignore[return-value]
