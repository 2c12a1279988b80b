"""Step caches on the trained toy world: prompt following (batch and CLIP top-1), background PSNR
and seam score with each cache setting next to the uncached run and the control, and the setting
at which each cache stops being within noise.

    nice -n 10 python tools/cache_quality.py --out docs/cache-quality.json
    nice -n 10 python tools/cache_quality.py --model toy-flux --out docs/cache-quality-flux.json

Default: the toy world's UNet (``toy-sd``), so DeepCache. ``--model toy-flux``: the toy FLUX.1
transformer (``examples/toy-flux``, ``tools/train_toy_transformer.py``) with every transformer
cache (First Block Cache, TaylorSeer, Pyramid Attention Broadcast, MagCache) at its default and a
sweep; it also calibrates MagCache's magnitude ratios on the toy (diffusers' ``calibrate=True``)
and writes them beside the rows, since blendedit's MagCache uses FLUX.1's published ratios.

Held-out scenes (generator seed 1) with a 28 px mask over the object and another caption
(``tests/quality/toy_cases.py``), 8 ranked candidates, guidance 5 (the UNet; FLUX.1 runs the
conditional prediction only), ``--background decoded`` so the background metrics see the
decoder's output outside the mask. The control: guidance 0 (the UNet), the empty prompt (FLUX),
re-ranked by the toy CLIP against the same caption. ``--steps 4`` gives the few-step regime of
the ``realtime-*`` presets (3 denoiser calls). The tables go into docs/quality.md.
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
FLUX_SETTINGS = [  # each cache's default first, then the sweep
    "none", "first-block", "taylorseer", "pab", "magcache",
    "first-block:0.1", "first-block:0.2", "first-block:0.3", "taylorseer:2", "taylorseer:8",
    "pab:4", "pab:6", "magcache:0.2", "magcache:0.5",
]  # fmt: skip
TOY_FLUX = REPO / "examples" / "toy-flux"


def measure(world, editor, judge, cache: str, cases, steps: int, guidance: float, **run) -> dict:
    """Means over the cases: batch precision, top-1, background PSNR, seam score, skipped calls.
    ``run``: more settings of the edit (FLUX: ``size``, ``num_images``); ``control`` (FLUX): the
    empty prompt, re-ranked by ``run["clip"]`` against the caption."""
    from toy_cases import verdicts

    clip, control = run.pop("clip", None), run.pop("control", False)
    rows, t0, skipped, calls = [], time.perf_counter(), 0, 0
    for k, case in enumerate(cases):
        caption = world.caption(case.target)
        r = editor(
            case.image, case.mask, "" if control else caption, seed=100 * k,
            num_inference_steps=steps, guidance_scale=guidance, background="decoded",
            cache=cache, **{"num_images": 8, **run},
        )  # fmt: skip
        images = [c.image for c in r.candidates]
        ok = verdicts(judge, images, case.box, case.target)
        top = ok[rerank(clip, images, case.mask, caption)] if control else ok[0]
        m = r.best.metrics
        rows.append((ok.mean(), top, m["background_psnr"], m["seam"], colours(judge, images, case)))
        skipped += r.settings["cache_skipped"]
        calls += r.settings["cache_calls"]
    mean = np.array(rows, float).mean(0)
    sd = np.array(rows, float).std(0)
    return {
        "cache": cache, "steps": steps, "guidance": guidance, "cases": len(cases),
        "batch": round(mean[0], 3), "batch_se": round(sd[0] / np.sqrt(len(cases)), 3),
        "top1": round(mean[1], 3), "background_psnr": round(mean[2], 2),
        "seam": round(mean[3], 4), "colour": round(mean[4], 3), "skipped": skipped, "calls": calls,
        "seconds": round(time.perf_counter() - t0, 1), **({"control": "empty prompt"} if control else {}),
    }  # fmt: skip


def colours(judge, images, case) -> float:
    """The fraction of candidates whose object in the box has the prompt's colour (class id =
    colour * 5 + shape): the toy FLUX follows colours, not yet shapes."""
    from blendedit.eval.metrics import images_to_tensor

    x = images_to_tensor([im.convert("RGB") for im in images])
    pred = judge.classify(x, torch.tensor([case.box] * len(images)))
    return float((pred // 5 == case.target // 5).float().mean())


def rerank(clip, images, mask: np.ndarray, caption: str) -> int:
    """The candidate the toy CLIP ranks first for ``caption`` (masked as blendedit ranks)."""
    from blendedit.eval.metrics import images_to_tensor

    x = images_to_tensor([im.convert("RGB") for im in images])  # (B, 3, 64, 64) in [0, 1]
    m = torch.from_numpy(mask > 127).float()[None, None]  # (1, 1, 64, 64)
    return int(clip.score(x, m, caption).argmax())


def magcache_ratios(editor, cases, world, steps: int) -> list[float]:
    """MagCache's magnitude ratios of the loaded transformer (Ma et al. 2025, sec. 3.1: the mean
    per-token norm ratio of consecutive residuals), by diffusers' calibration mode over one
    edit's whole schedule (blend from the first step), candidates of the first case."""
    import contextlib
    import io

    from diffusers.hooks import HookRegistry, MagCacheConfig, apply_mag_cache

    module = editor.backbone.unet
    apply_mag_cache(module, MagCacheConfig(calibrate=True, num_inference_steps=steps))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            case = cases[0]
            editor(
                case.image, case.mask, world.caption(case.target), seed=0, num_images=8,
                num_inference_steps=steps, blend_start=0.0, size=64, background="decoded",
            )  # fmt: skip
    finally:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        for hook in ("mag_cache_leader_block_hook", "mag_cache_block_hook"):
            registry.remove_hook(hook, recurse=True)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("[") and x[-1] == "]")
    return [round(float(v), 4) for v in json.loads(line)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["toy-sd", "toy-flux"], default="toy-sd")
    p.add_argument("--folder", type=Path, default=TOY_FLUX, help="the toy FLUX folder")
    p.add_argument("--scenes", type=int, default=5)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--blend-start", type=float, help="the model's default (0.25) if not given")
    p.add_argument("--steps", type=int, nargs="*", default=[20, 4])
    p.add_argument("--out", type=Path, default=Path("docs/cache-quality.json"))
    p.add_argument(
        "--settings", nargs="*", help="instead of SETTINGS; 'control', 'calibrate' (MagCache)"
    )
    p.add_argument("--append", action="store_true", help="add to the rows already in --out")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    from toy_cases import replace_cases

    from blendedit import BlendedLatentDiffusion
    from blendedit.eval.toyworld import World
    from blendedit.io import write_atomic

    world = World(REPO.parent / "shared" / "toyworld")
    flux = args.model == "toy-flux"
    model = args.folder if flux else world.sd
    editor = BlendedLatentDiffusion.from_pretrained(model, clip_model=str(world.clip))
    judge = world.classifier()
    cases = replace_cases(world, args.scenes, seed=0)
    old = json.loads(args.out.read_text()) if args.append and args.out.is_file() else {}
    rows, extra = old.get("rows", []), {k: v for k, v in old.items() if k not in ("rows",)}
    run: dict = {"num_images": args.candidates}
    if args.blend_start is not None:
        run["blend_start"] = args.blend_start
    if flux:
        from blendedit.frame.ranking import ClipScorer

        run |= {"size": 64, "clip": ClipScorer.from_pretrained(str(world.clip))}
    for steps in args.steps:
        if flux:
            settings = FLUX_SETTINGS if steps > 4 else ["none", "first-block"]
            settings, guidance = [*settings, "control", *["calibrate"][: steps > 4]], 1.0
        else:
            settings = SETTINGS if steps > 4 else ["none", "deepcache:2"]
            settings, guidance = [*settings, "control"], 5.0
        for cache in args.settings or settings:
            if cache == "calibrate":  # MagCache's ratios of this model, this schedule
                extra[f"magcache_ratios_{steps}"] = magcache_ratios(editor, cases, world, steps)
                print(json.dumps(extra), flush=True)
                continue
            if cache == "control":  # guidance 0 (UNet), the empty prompt (FLUX)
                more = {**run, "control": True} if flux else run
                row = measure(
                    world, editor, judge, "none", cases, steps, 0.0 if not flux else 1.0, **more
                )
            else:
                row = measure(world, editor, judge, cache, cases, steps, guidance, **run)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    out = {"machine": "2-core CPU, this sandbox", "model": args.model, **extra, "rows": rows}
    write_atomic(args.out, lambda f: f.write(json.dumps(out, indent=1).encode()), replace=True)


if __name__ == "__main__":
    main()
