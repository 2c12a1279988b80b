"""Reading user images and writing results: checked inputs, atomic outputs, never an overwrite."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.errors import InputError, first_line

MIN_SIDE = 16  # px; smaller inputs cannot hold a meaningful edit
MAX_SIDE = 16384  # px; larger inputs are almost certainly a mistake (and would exhaust memory)
MAX_PIXELS = 100_000_000
MAX_JSON_DEPTH = 32  # levels of [ and { in a user's JSON (a manifest row, a trail)
_IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P", "1")
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageInput = (
    str | os.PathLike[str] | Image.Image
)  # a path or an image, wherever a photo is taken  # PIL's decompression-bomb guard at our own limit


def check_size(size: tuple[int, int], name: str, smallest: int = MIN_SIDE) -> None:
    """Refuse an image of ``size`` (W, H) outside the caps (``MAX_SIDE`` a side, ``MAX_PIXELS`` in
    all; at least ``smallest`` a side), in one line: used on the header, before decoding."""
    w, h = size
    if min(w, h) < smallest or max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise InputError(
            f"{name}: size {w}x{h} is outside the supported range "
            f"({smallest} to {MAX_SIDE} px a side, {MAX_PIXELS:,} px in all)"
        )


def check_upload_size(
    source: bytes | str | os.PathLike[str],
    name: str,
    max_side: int,
    max_pixels: int,
    smallest: int = MIN_SIDE,
    label: str = "the upload",
) -> tuple[int, int]:
    """An upload's (W, H) from its header alone (bytes or a file; nothing decoded), against a
    server's caps (its ``--max-side`` and ``--max-megapixels``); one line naming the argument
    ``name``, the upload (``label``) and the cap otherwise. A header past Pillow's own bomb guard
    counts as too large."""
    try:
        with warnings.catch_warnings():  # the size is checked here, not by Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            f = BytesIO(source) if isinstance(source, bytes | bytearray) else source
            with Image.open(f) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        w = h = max_side + 1
    except Exception:
        raise InputError(f"{name}: cannot read {label} as an image") from None
    if max(w, h) > max_side or min(w, h) < smallest:
        raise InputError(
            f"{name}: {label} is {w}x{h} px; this server accepts {smallest} to {max_side} px a side "
            "(server option --max-side)"
        )
    if w * h > max_pixels:
        raise InputError(
            f"{name}: {label} is {w}x{h} px ({w * h / 1e6:.1f} MP); this server accepts up to "
            f"{max_pixels / 1e6:g} MP (server option --max-megapixels)"
        )
    return w, h


def open_image(
    source: str | os.PathLike[str] | Image.Image, name: str, smallest: int = 1
) -> Image.Image:
    """Open a file (or accept a PIL image), fully decoded, with one clear error line on failure.
    The size in the file's header is checked against the caps before any pixel is decoded
    (:func:`check_size`; a mask may be small: ``smallest`` 1 px a side)."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    with reading_image(path, name), opened_header(path) as im:
        check_size(im.size, name, smallest)
        im.load()
        return im.copy()


@contextmanager
def reading_image(path: Path, name: str) -> Iterator[None]:
    """Reading ``path`` as the image argument ``name``: a missing file, a decompression bomb or
    anything a decoder of a damaged file raises becomes one line naming both."""
    if not path.is_file():
        raise InputError(f"{name}: no such file: {str(path)!r}")
    try:
        yield
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: {str(path)!r} is too large ({e})") from None
    except Exception as e:  # a damaged file may make a decoder raise anything
        raise InputError(
            f"{name}: cannot read {str(path)!r} as an image ({first_line(e)})"
        ) from None


def opened_header(path: Path) -> Image.Image:
    """``Image.open``: the header only; the size is checked by the caller (:func:`check_size`),
    not by Pillow's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def check_image(path: str | os.PathLike[str], name: str = "image") -> tuple[int, int]:
    """What :func:`load_image` would refuse, found without decoding where it can be: the size
    and mode from the header, and transparency by decoding only images that have an alpha
    channel. Returns the size (W, H)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: no such file: {str(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size, mode, info = im.size, im.mode, dict(im.info)
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: {str(path)!r} is too large ({e})") from None
    except Exception as e:
        raise InputError(
            f"{name}: cannot read {str(path)!r} as an image ({first_line(e)})"
        ) from None
    check_size(size, f"{name} {str(path)!r}")
    if mode not in _IMAGE_MODES:
        raise InputError(
            f"{name}: {str(path)!r} has unsupported image mode {mode!r}; save it as 8-bit RGB"
        )
    if mode in ("RGBA", "LA") or "transparency" in info:  # only pixels can say: decode them
        load_image(path, f"{name} {str(path)!r}")
    return size


def load_image(source: str | os.PathLike[str] | Image.Image, name: str = "image") -> Image.Image:
    """The photo to edit as an RGB image; rejects absurd sizes and transparent or exotic modes."""
    im = open_image(source, name, MIN_SIDE)
    if im.mode == "P":  # a palette may carry a transparent colour: check it as alpha
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    check_size(im.size, name)
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


def _read_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else -1."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return -1


_UMASK_AT_START = _read_umask()
if _UMASK_AT_START < 0:  # no /proc: read it once, at import (setting it back at once)
    _UMASK_AT_START = os.umask(0o022)
    os.umask(_UMASK_AT_START)


def file_mode() -> int:
    """The mode a new file gets from the process's umask (0o644 under the usual 0o022): temporary
    files are made 0o600, so written results are set to this before they are renamed into
    place, readable by whoever ``open()`` would have let read them."""
    umask = _read_umask()
    return 0o666 & ~(umask if umask >= 0 else _UMASK_AT_START)


def write_atomic(path: Path, write: Any, replace: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written outputs.
    An existing file is refused, unless ``replace`` (a file the program remakes on every run: a
    summary, a report), which a reader then sees whole, old or new. The file gets the mode the
    process's umask gives (:func:`file_mode`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            os.fchmod(f.fileno(), file_mode())
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


def json_safe(obj: Any) -> Any:
    """JSON has no infinity: write non-finite floats as the strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def save_json(data: dict[str, Any], path: Path, replace: bool = False) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False, default=str) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()), replace)


def write_text(text: str, path: Path, replace: bool = False) -> None:
    write_atomic(path, lambda f: f.write(text.encode()), replace)


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How many levels of lists and dicts ``value`` nests (0 for a plain value), counted without
    recursion; stops counting once past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > limit:
                break
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_json_depth(value: Any, name: str) -> Any:
    """``value``, refused in one line when it nests deeper than ``MAX_JSON_DEPTH`` levels."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InputError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def loads_json(text: str | bytes, name: str) -> Any:
    """A user's JSON text (a manifest line, a trail) -> its value. Text that is not JSON, or that
    nests deeper than ``MAX_JSON_DEPTH`` levels (refused before anything recurses over it), is
    one :class:`InputError` line starting with ``name``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise InputError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{name}: not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, ValueError) as e:  # bytes in no JSON encoding
        raise InputError(f"{name}: not valid JSON ({first_line(e)})") from None
    return check_json_depth(value, name)


def read_json(path: Path) -> Any:
    """A JSON file (UTF-8) -> its value; unreadable, not JSON or nested too deep
    (:func:`loads_json`) is one :class:`InputError` line naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"json: {str(path)!r} is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise InputError(f"json: cannot read {str(path)!r} ({e.strerror or e})") from None
    return loads_json(text, f"json: {str(path)!r}")


def json_digest(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as sorted-key JSON: a fingerprint of
    settings that names or checks what they made."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def slug(text: str, max_len: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "edit"


def check_writable(out: str | os.PathLike[str], name: str = "out") -> Path:
    """Fail early, before any work, when the folder ``out`` cannot be created or written: a
    temporary file is written in it (or, while it does not exist, in its nearest existing parent,
    where it would be made) and removed at once. Nothing is left behind."""
    path = Path(out)
    try:
        probe = path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            where = "is a file" if probe == path else f"cannot be made: {str(probe)!r} is a file"
            raise InputError(f"{name}: {str(path)!r} {where}, not a folder")
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".blendedit-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = e.strerror or first_line(e)
        raise InputError(f"{name}: {str(path)!r} cannot be created or written ({why})") from None
    return path


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, when ``out`` exists and holds anything, or cannot be created
    or written (:func:`check_writable`)."""
    path = Path(out)
    try:
        full = path.exists() and (not path.is_dir() or any(path.iterdir()))
    except OSError as e:
        raise InputError(f"out: cannot read {str(path)!r} ({e.strerror or e})") from None
    if full:
        raise InputError(f"out: {str(path)!r} already exists and is not empty; choose a new folder")
    return check_writable(path)


def prepare_out_dir(
    out: str | os.PathLike[str] | None, prompt: str, root: str = "blendedit-out"
) -> Path:
    """The folder a run writes into. An explicit ``out`` must be new or empty (an earlier run's
    outputs are never overwritten); without one, a fresh ``root/<time>-<prompt>`` folder is made."""
    if out is not None:
        path = check_out_dir(out)
        _mkdir(path, exist_ok=True)
        return path
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(prompt)}"
    path, n = base, 1
    while True:
        try:
            _mkdir(path, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def _mkdir(path: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if not exist_ok:
            raise
        raise InputError(f"out: {str(path)!r} is a file, not a folder") from None
    except OSError as e:
        raise InputError(f"out: cannot create {str(path)!r} ({e.strerror or e})") from None


def working_size(size: tuple[int, int], long_side: int, multiple: int) -> tuple[int, int]:
    """(W, H) scaled so the long side is ``long_side``, aspect kept, both multiples of ``multiple``."""
    w, h = size
    scale = long_side / max(w, h)
    return tuple(max(multiple, round(v * scale / multiple) * multiple) for v in (w, h))  # type: ignore[return-value]
