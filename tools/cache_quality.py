"""Step caches on the trained toy world: prompt following (batch and CLIP top-1), background PSNR
and seam score with each cache setting next to the uncached run and the guidance-0 control, and
the interval at which DeepCache stops being within noise (the toy world's denoiser is a UNet;
the transformer caches have no trained transformer here).

    nice -n 10 python tools/cache_quality.py --out docs/cache-quality.json

Held-out scenes (generator seed 1) with a 28 px mask over the object and another caption
(``tests/quality/toy_cases.py``), 8 ranked candidates, guidance 5, ``--background decoded`` so
the background metrics see the decoder's output outside the mask. ``--steps 4`` gives the few-step
regime of the ``realtime-*`` presets (3 denoiser calls). The table goes into docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "quality"))  # toy_cases: the quality tests' scenes

SETTINGS = ["none", "deepcache:2", "deepcache:3", "deepcache:5", "deepcache:10"]


def measure(world, editor, judge, cache: str, cases, steps: int, guidance: float) -> dict:
    """Means over the cases: batch precision, top-1, background PSNR, seam score, skipped calls."""
    from toy_cases import verdicts

    rows, t0, skipped, calls = [], time.perf_counter(), 0, 0
    for k, case in enumerate(cases):
        r = editor(
            case.image, case.mask, world.caption(case.target), seed=100 * k, num_images=8,
            num_inference_steps=steps, guidance_scale=guidance, background="decoded", cache=cache,
        )  # fmt: skip
        ok = verdicts(judge, [c.image for c in r.candidates], case.box, case.target)
        m = r.best.metrics
        rows.append((ok.mean(), ok[0], m["background_psnr"], m["seam"]))
        skipped += r.settings["cache_skipped"]
        calls += r.settings["cache_calls"]
    mean = np.array(rows, float).mean(0)
    sd = np.array(rows, float).std(0)
    return {
        "cache": cache, "steps": steps, "guidance": guidance, "cases": len(cases),
        "batch": round(mean[0], 3), "batch_se": round(sd[0] / np.sqrt(len(cases)), 3),
        "top1": round(mean[1], 3), "background_psnr": round(mean[2], 2),
        "seam": round(mean[3], 4), "skipped": skipped, "calls": calls,
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=5)
    p.add_argument("--steps", type=int, nargs="*", default=[20, 4])
    p.add_argument("--out", type=Path, default=Path("docs/cache-quality.json"))
    p.add_argument("--settings", nargs="*", help="instead of SETTINGS (no control run)")
    p.add_argument("--append", action="store_true", help="add to the rows already in --out")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    from toy_cases import replace_cases

    from blendedit import BlendedLatentDiffusion
    from blendedit.eval.toyworld import World
    from blendedit.io import write_atomic

    world = World(REPO.parent / "shared" / "toyworld")
    editor = BlendedLatentDiffusion.from_pretrained(world.sd, clip_model=str(world.clip))
    judge = world.classifier()
    cases = replace_cases(world, args.scenes, seed=0)
    rows = json.loads(args.out.read_text())["rows"] if args.append and args.out.is_file() else []
    for steps in args.steps:
        settings = SETTINGS if steps > 4 else ["none", "deepcache:2"]
        for cache in args.settings or settings:
            rows.append(measure(world, editor, judge, cache, cases, steps, 5.0))
            print(json.dumps(rows[-1]), flush=True)
        if not args.settings:
            rows.append(measure(world, editor, judge, "none", cases, steps, 0.0))  # the control
            print(json.dumps(rows[-1]), flush=True)
    out = {"machine": "2-core CPU, this sandbox", "rows": rows}
    write_atomic(args.out, lambda f: f.write(json.dumps(out, indent=1).encode()), replace=True)


if __name__ == "__main__":
    main()
