"""Step caches on full-size denoisers with random weights, on the CPU, side by side in one run.

For each model (one in memory at a time): its published architecture from the bench catalogue
(``blendedit.bench.catalogue``), the denoiser alone built with diffusers' own random init (the
text encoders only as shapes, on "meta"; the conditioning is random of their shapes), then one
candidate (classifier-free guidance: a batch of 2 per call; SD3.5-medium one pass) through short BLD loops
(``latent.sampling.blended_latent_diffusion``, a centred mask of a quarter of the latent), without
and with each cache (``latent.cache``), in turns, each call timed. A cache's skipped call is
forced where the cache decides by a threshold (``first-block:1e9``: random weights say nothing of
how often a trained model's residual stays under 0.05). Reported per model: the mean time of a full
call and of a skipped one, and from them the time per candidate of the default 50-step schedule
(38 calls) with each cache at its default: DeepCache interval 3 runs 13 of the 38 calls in full;
First Block Cache's share of skips depends on trained weights, so it is given for half the calls
skipped.

    nice -n 10 python tools/cache_bench.py --out docs/cache-bench.json

One call of the full-size models takes tens of seconds to minutes on 2 shared cores, hence the
reduced resolutions (MODELS) and short loops. The table goes into docs/benchmarks.md ("Step caches
on the CPU").
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from blendedit.bench.build import build_backbone
from blendedit.bench.catalogue import ARCHITECTURES
from blendedit.latent.backbones import Conditioning
from blendedit.latent.cache import kinds_for, step_cache
from blendedit.latent.sampling import blend_timesteps, blended_latent_diffusion

# preset -> (px, [(cache, steps of its short loop)]); DeepCache interval 3 over 3 calls: 1 full, 2
# skipped; first-block:1e9 over 3 calls: 1 full, 2 skipped (forced, see the docstring).
MODELS = {
    "sd2-base": (256, [("none", 4), ("deepcache", 4)]),
    "sdxl": (128, [("none", 4), ("deepcache", 4)]),
    "sd35-medium": (128, [("first-block:1e9", 2)]),  # its full call is the "none" figure
}
# Guidance per model: 7.5 (two halves per call) except SD3.5-medium, one pass (its 333 text tokens
# make one call minutes long here; a skipped call's share does not depend on the batch).
GUIDANCE = {"sd35-medium": 1.0}
SMOKE = {  # --smoke: the test suite's tiny shapes, to check the script in seconds
    "tiny": (128, [("none", 4), ("deepcache", 4)]),
    "tiny-flux": (64, [("none", 4), ("first-block:1e9", 4), ("taylorseer:2", 8)]),
}
CALLS, FULL = {"deepcache": 13}, 38  # the default schedule: 50 steps, 38 calls


def _random(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.randn(t.shape, generator=g)


def _setup(preset: str, px: int, workdir: Path):
    """The real denoiser of ``preset`` and a meta backbone around it, with random conditioning."""
    meta = build_backbone(ARCHITECTURES[preset], "meta", workdir)
    c = meta.encode_text("a photo", "", (px, px), (px, px))  # meta tensors: the shapes only
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(
        _random(c.cond, g), _random(c.uncond, g),
        {k: _random(v, g) for k, v in c.added.items()},
        {k: _random(v, g) for k, v in c.added_uncond.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    meta.unet = type(meta.unet).from_config(meta.unet.config).eval()  # diffusers' random init
    return meta, cond


def _one_run(bb, cond, spec: str, px: int, steps: int, guidance: float = 7.5) -> dict:
    f = bb.latent_factor
    h = w = px // f
    channels = bb.vae.config.latent_channels
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(1, channels, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    scheduler = type(bb.scheduler).from_config(bb.scheduler.config)
    extra = bb.timestep_kwargs(steps, (h, w))
    timesteps = blend_timesteps(scheduler, steps, 0.25, **extra)
    calls: list[tuple[float, bool]] = []
    with torch.no_grad(), step_cache(bb.unet, spec, mask, bb.patch_size) as cache:
        inner = cache.wrap(bb.model_fn(cond, 1, guidance))

        def timed(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            full_before = cache.stats.full
            t0 = time.perf_counter()
            out = inner(z, t)
            full = spec == "none" or cache.stats.full > full_before
            calls.append((time.perf_counter() - t0, full))
            return out

        t0 = time.perf_counter()
        z = torch.randn(1, channels, h, w, generator=g)
        blended_latent_diffusion(
            timed, scheduler, z, timesteps, [mask] * len(timesteps), lambda i: z0
        )
        total = time.perf_counter() - t0
    full_s = [s for s, full in calls if full]
    skip_s = [s for s, full in calls if not full]
    return {
        "cache": spec,
        "per_candidate_s": round(total, 2),
        "calls": len(calls),
        "full_calls": len(full_s),
        "skipped": len(skip_s),
        "full_call_s": round(sum(full_s) / len(full_s), 3) if full_s else None,
        "skipped_call_s": round(sum(skip_s) / len(skip_s), 3) if skip_s else None,
    }


def derived(rows: list[dict]) -> list[dict]:
    """Per model and cache: the 38-call time per candidate from the measured per-call times."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        full = [r["full_call_s"] for r in mine if r["full_call_s"] is not None]
        t_full = sum(full) / len(full)
        base = {"model": model, "px": mine[0]["px"], "full_call_s": round(t_full, 3)}
        out.append({**base, "cache": "none", "per_candidate_s": round(FULL * t_full, 1)})
        for r in mine:
            if r["cache"] == "none" or r["skipped_call_s"] is None:
                continue
            name = r["cache"].partition(":")[0]
            n_full = CALLS.get(name, FULL // 2)
            t = n_full * t_full + (FULL - n_full) * r["skipped_call_s"]
            out.append({
                **base, "cache": name, "skipped_call_s": r["skipped_call_s"],
                "full_calls": n_full, "per_candidate_s": round(t, 1),
                "speedup": round(FULL * t_full / t, 2),
            })  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="default: every model of MODELS")
    p.add_argument("--smoke", action="store_true", help="the tiny shapes instead (SMOKE)")
    p.add_argument("--out", type=Path, default=Path("docs/cache-bench.json"))
    p.add_argument("--append", action="store_true", help="add to the rows already in --out")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    table = SMOKE if args.smoke else MODELS
    rows = json.loads(args.out.read_text())["rows"] if args.append and args.out.is_file() else []
    for preset in args.models or list(table):
        px, specs = table[preset]
        with tempfile.TemporaryDirectory() as tmp:
            bb, cond = _setup(preset, px, Path(tmp))
        print(f"{preset}: {px} px, caches {kinds_for(bb.unet)}", flush=True)
        if len(specs) > 1:
            _one_run(bb, cond, "none", px, 2)  # warm-up (allocator, threads): one call
        specs = [s for s in specs if s[0].partition(":")[0] in ("none", *kinds_for(bb.unet))]
        again = [specs[0]] if len(specs) > 1 else []  # "none" again last: the run's drift
        for spec, steps in [*specs, *again]:
            g = GUIDANCE.get(preset, 7.5)
            row = {"model": preset, "px": px, "steps": steps, "guidance": g}
            row.update(_one_run(bb, cond, spec, px, steps, g))
            print(json.dumps(row), flush=True)
            rows.append(row)
        del bb, cond
        gc.collect()
        _write(args.out, rows)  # after each model: a stopped run keeps what it measured


def _write(path: Path, rows: list[dict]) -> None:
    from blendedit.io import write_atomic

    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, this sandbox"
    out = {"machine": machine, "torch": torch.__version__, "rows": rows, "derived": derived(rows)}
    print(json.dumps(out["derived"]), flush=True)
    write_atomic(path, lambda f: f.write(json.dumps(out, indent=1).encode()), replace=True)


if __name__ == "__main__":
    main()
