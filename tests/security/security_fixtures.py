"""Hostile and careless inputs for the security tests: decompression bombs, trails, manifests."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blendedit.config import EditConfig

FAST = {"num_inference_steps": 4, "size": 64, "num_images": 2, "batch_size": 2}


def error_line(capsys: Any) -> str:
    """The one error line a command printed (no traceback, nothing after it)."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("blendedit: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A 1-bit grey PNG of ``width`` x ``height`` whose pixels are all black: a few tens of KB
    that decode to width * height bytes in Pillow. ``rows``: only that many rows of data (a
    header that claims more than the file holds)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + z.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def photo(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def trail(model: str = "", w: int = 40, h: int = 30, **step: Any) -> dict[str, Any]:
    """A one-step trail as the web page writes it (a 40x30 photo, a box mask), without a model:
    ``step`` overrides fields of the step."""
    mask = np.zeros((h, w), bool)
    mask[5:15, 10:30] = True
    settings = EditConfig(**{**FAST, "batch_size": 1}).to_dict()
    settings["shrink_kernels"] = list(settings["shrink_kernels"])
    s: dict[str, Any] = {
        "step": 1,
        "prompt": "a red square",
        "method": "latent",
        "seed": 3,
        "rank": 1,
        "score": 0.5,
        "seeds": [3, 4],
        "settings": settings,
        "mask_png_base64": b64_png(Image.fromarray(mask)),
        "mask_fraction": float(mask.mean()),
        "box": [10, 5, 30, 15],
        "result_size": [w, h],
        "result_sha256": "0" * 64,
    }
    s.update(step)
    buf = io.BytesIO()
    photo(w, h).save(buf, format="PNG")
    return {
        "format": "blendedit-session",
        "version": 2,
        "blendedit": "test",
        "created": "2024-01-01T00:00:00+0000",
        "model": {"name": model, "dtype": "float32"} if model else {},
        "original": {
            "size": [w, h],
            "file_name": "original.png",
            "file_base64": base64.b64encode(buf.getvalue()).decode("ascii"),
            "sha256": "0" * 64,
        },
        "steps": [s],
    }


def write_trail(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def nested(depth: int, inner: str = "1") -> str:
    """JSON text of a list nested ``depth`` levels deep."""
    return "[" * depth + inner + "]" * depth
