"""A 12-row manifest over the shared test photos: 10 good rows and 2 bad ones (a missing image and
an empty mask), with the tiny models' fast settings. Used by the local and the Ray tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Settings every row shares: tiny models, 4 steps at 64 px, 2 candidates per row.
FAST = {"num_inference_steps": 4, "size": 64, "num_images": 2, "batch_size": 2}
PAIRS = [
    ("chelsea.png", "chelsea.mask-eyes.png", "sunglasses"),
    ("coffee.png", "coffee.mask-drink.png", "tea"),
    ("rocket.png", "rocket.mask-sky.png", ""),  # empty prompt: removal
    ("astronaut.png", "astronaut.mask-shuttle.png", "a red balloon"),
    ("astronaut.png", "astronaut.mask-thin-necklace.png", "gold chain"),
]
GOOD, BAD = 10, 2


def write_manifest(folder: Path, images: Path) -> Path:
    """``folder/edits.jsonl`` with relative paths (copied photos), 12 rows; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in {p for pair in PAIRS for p in pair[:2]}:
        shutil.copy(images / name, folder / name)
    Image.fromarray(np.zeros((300, 451), np.uint8)).save(folder / "empty.mask.png")
    rows = []
    for i, (image, mask, prompt) in enumerate(PAIRS):
        rows.append({"image": image, "mask": mask, "prompt": prompt, "seed": i})
        rows.append({"image": image, "mask": mask, "prompt": prompt, "seed": 100 + i, "keep": 1})
    rows.insert(3, {"image": "missing.png", "mask": "chelsea.mask-eyes.png", "prompt": "cat"})
    rows.insert(
        8, {"image": "chelsea.png", "mask": "empty.mask.png", "prompt": "hat", "id": "empty"}
    )
    path = folder / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row_folders(out: Path) -> dict[str, Path]:
    """Committed row folders (those with result.json) by name."""
    return {p.name: p for p in out.iterdir() if p.is_dir() and (p / "result.json").is_file()}


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}
