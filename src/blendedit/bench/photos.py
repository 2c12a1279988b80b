"""``blendedit bench --photo-sizes``: time per stage and peak memory of one edit against the
photo's size (0.25 to 48 MP), the mask a fixed ~500x400 px object as on a phone photo.

Each size runs in a child process of its own, so its peak resident memory (``ru_maxrss``, models
and libraries included) is its own. The photo is a JPEG written to disk (the example photo tiled,
keeping its detail at its own scale) and read back through the library, results written as the
CLI writes them: reading and writing are in the figures.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MASK_BOX = (500, 400)  # px: the object to edit, whatever the photo's size


def photo_of(megapixels: float, folder: Path) -> tuple[Path, np.ndarray]:
    """A 3:2 JPEG of ``megapixels`` and a centred ~500x400 mask (smaller photos: a third)."""
    from blendedit.bench.measure import EXAMPLES

    tile = np.asarray(Image.open(EXAMPLES / "chelsea.png").convert("RGB"))
    w = round((megapixels * 1e6 * 1.5) ** 0.5)
    h = round(w / 1.5)
    reps = (h // tile.shape[0] + 1, w // tile.shape[1] + 1, 1)
    path = folder / f"photo-{megapixels}mp.jpg"
    Image.fromarray(np.tile(tile, reps)[:h, :w]).save(path, quality=92)
    mw, mh = min(MASK_BOX[0], w // 3), min(MASK_BOX[1], h // 3)
    mask = np.zeros((h, w), bool)
    mask[(h - mh) // 2 : (h + mh) // 2, (w - mw) // 2 : (w + mw) // 2] = True
    return path, mask


def measure(megapixels: float, preset: str, num_images: int, steps: int) -> dict[str, Any]:
    """One edit of a photo of ``megapixels`` (this process): stage seconds, peak memory."""
    import torch

    from blendedit.bench.build import build_editor
    from blendedit.bench.catalogue import ARCHITECTURES

    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        editor = build_editor(ARCHITECTURES[preset], torch.device("cpu"), torch.float32, folder)
        path, mask = photo_of(megapixels, folder)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        r = editor(path, mask, "a red ball", num_images=num_images, num_inference_steps=steps)
        t1 = time.perf_counter()
        for c in r.candidates:
            c.save(folder / f"{c.rank:02d}.jpg", parameters=r.parameters(c))
        t2 = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w, h = r.input_size
        return {
            "megapixels": round(w * h / 1e6, 2),
            "size": f"{w}x{h}",
            "region": r.settings["region_used"]["mode"],
            "crop": "x".join(
                str(v) for v in (r.region[2] - r.region[0], r.region[3] - r.region[1])
            ),
            "num_images": num_images,
            **{k: round(v, 3) for k, v in r.timings.to_dict().items() if k != "load"},
            "edit_total": round(t1 - t0, 3),
            "save": round(t2 - t1, 3),
            "peak_rss_gb": round(peak / 2**20, 3),  # ru_maxrss is in KiB on Linux
            "peak_over_models_gb": round((peak - base) / 2**20, 3),
        }


def run_sizes(sizes: list[float], preset: str, num_images: int, steps: int) -> list[dict]:
    rows = []
    for mp in sizes:
        cmd = [sys.executable, "-m", "blendedit.bench.photos", str(mp), preset, str(num_images),
               str(steps)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| photo | MP | region | crop | images | encode s | denoise s | decode s | rank s | "
        "background s | background s/image | edit s | save s | peak RSS GB |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "".join(
        f"| {r['size']} | {r['megapixels']} | {r['region']} | {r['crop']} | {r['num_images']} | "
        f"{r['encode']:.2f} | {r['denoise']:.2f} | {r['decode']:.2f} | {r['rank']:.2f} | "
        f"{r['background']:.2f} | {r['background'] / r['num_images']:.2f} | "
        f"{r['edit_total']:.2f} | {r['save']:.2f} | {r['peak_rss_gb']:.2f} |\n"
        for r in rows
    )


if __name__ == "__main__":
    mp, preset, n, steps = sys.argv[1:5]
    print(json.dumps(measure(float(mp), preset, int(n), int(steps))))
