"""Time per click of a SAM selection on big photos (issue 21), written to docs/benchmarks.md.

A tiny random-weight SAM at the released model's resolutions (1024 px input, 16 px patches, a
64x64 embedding, 256 px mask logits; 2 narrow layers: ``tests/tiny_segmenters.build_sam``) on a
12 MP and a 48 MP photo: the first click (image embedding + decoder + the mask at full size) and
the clicks after it (the embedding cached per photo), through ``blendedit.segment.select_mask``
as the CLI and the batch call it, with the default preview (the segmenter sees the photo at
2048 px, the mask is stretched back) and without it.

    python tools/segment_clicks.py [--clicks 5] [--append docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from blendedit.config import SelectConfig  # noqa: E402
from blendedit.segment import Point, Selection, load_segmenter, select_mask  # noqa: E402
from tiny_segmenters import build_sam  # noqa: E402


def photo(w: int, h: int) -> Image.Image:
    """A smooth colour field (a photo-like gradient) of w x h."""
    small = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def clicks(seg, image: Image.Image, n: int, preview: int) -> tuple[float, float]:
    """Seconds of the first click on a new photo and the mean of the next ``n``."""
    cfg = SelectConfig(select_preview=preview)
    w, h = image.size
    times = []
    for k in range(n + 1):
        sel = Selection(points=(Point(w * (0.3 + 0.08 * k), h * 0.5),))
        t = time.perf_counter()
        try:
            select_mask(seg, image, sel, cfg)
        except Exception as e:  # an empty random-weight mask is a fine timing too
            if "empty" not in str(e):
                raise
        times.append(time.perf_counter() - t)
    return times[0], float(np.mean(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--append", default=None, help="append the table to this markdown file")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the machine's 2 "
        "cores are shared; one thread answered faster there)",
    )
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_sam(Path(tmp) / "sam", size=1024, patch=16)
        for name, (w, h) in (("12 MP", (4000, 3000)), ("48 MP", (8000, 6000))):
            image = photo(w, h)
            for preview in (2048, 16384):
                seg = load_segmenter(str(folder))  # a fresh cache: the first click encodes
                first, next_ = clicks(seg, image, a.clicks, preview)
                rows.append((name, f"{w}x{h}", preview, first, next_))
                print(rows[-1], flush=True)
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    text = (
        f"\n## Time per click: SAM selection on big photos (issue 21)\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} with `python tools/segment_clicks.py` on this "
        f"sandbox ({machine}, 2 cores shared with other jobs): a tiny random-weight SAM at the "
        "released model's resolutions (1024 px input, 64x64 embedding, 256 px mask logits), "
        "through `blendedit.segment.select_mask`. Next click: mean of the "
        f"{a.clicks} after the first, the image embedding cached. The encoder of the real SAM "
        "ViT-B costs more on the first click (about 0.5 s on a GPU, several s on a CPU); the "
        "later clicks' cost is the decoder and the full-size mask, as here.\n\n"
        "| photo | size | preview px | first click s | next click s |\n|---|---|---|---|---|\n"
        + "".join(
            f"| {r[0]} | {r[1]} | {r[2] if r[2] < 16384 else 'none'} | {r[3]:.2f} | {r[4]:.2f} |\n"
            for r in rows
        )
    )
    print(text)
    if a.append:
        from blendedit.io import write_text

        path = Path(a.append)
        write_text(path.read_text() + text, path, replace=True)  # atomic


if __name__ == "__main__":
    main()
