"""Record what blendedit produces on tiny random models (the cases of ``tests/house_cases.py``).

Writes ``house.npz`` (every candidate's final image, uint8) and ``house.json`` (seeds, scores,
shapes, digests of the final latents and the versions it ran with) next to this file, or under
``--out``. The fixture was made from the code before the restructuring, in a separate checkout of
that commit:

    git worktree add --detach /tmp/base-house HEAD
    cp tests/house_cases.py /tmp/base-house/tests/  # if not committed there yet
    PYTHONPATH=/tmp/base-house/src:/tmp/base-house/tests \\
        python /tmp/base-house/tests/data/reference/house/record.py --out tests/data/reference/house

``tests/test_house_identical.py`` checks that the code still gives these bits. Re-record only on
purpose (a deliberate change of results, or new torch/diffusers versions), never to make it pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # tests/, for house_cases and tiny_models

import house_cases as H  # noqa: E402


def versions() -> dict[str, str | None]:
    import diffusers
    import numpy
    import PIL
    import torch
    import transformers

    import blendedit

    src = Path(blendedit.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "blendedit_commit": commit,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def record(out: Path) -> None:
    import blendedit

    print(f"blendedit from {blendedit.__file__}")
    H.setup_torch()
    arrays, cases = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        models = H.Models(Path(tmp))
        for name in H.CASES:
            t0 = time.perf_counter()
            o = H.run_case(name, models)
            for i, im in enumerate(o.images):
                arrays[H.array_key(name, i)] = im
            cases[name] = {
                "seeds": o.seeds,
                "scores": o.scores,
                "shapes": [list(im.shape) for im in o.images],
                "latents": [H.latent_digest(z) for z in o.latents],
            }
            print(f"{name:28s} {time.perf_counter() - t0:6.2f} s  seeds {o.seeds}  {o.scores}")
    out.mkdir(parents=True, exist_ok=True)
    np_path, json_path = out / H.IMAGES_FILE, out / H.RESULTS_FILE
    np.savez_compressed(np_path, **arrays)
    meta = {"versions": versions(), "threads": 1, "flush_denormal": True, "prompt": H.PROMPT}
    json_path.write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")
    print(f"wrote {np_path} ({np_path.stat().st_size} B) and {json_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="folder for house.npz and house.json")
    record(ap.parse_args().out)


if __name__ == "__main__":
    main()
