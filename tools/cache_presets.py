"""Each bench preset's step-cache verdict (issue 24): which cache helps it, by measurement.

For every published bench preset (``blendedit.bench.catalogue``) and each schedule it runs (the
family's defaults, and the realtime presets that run on its architecture: ``Architecture.realtime``
and REALTIME_ON), for each cache its denoiser takes (``latent.cache.kinds_for``):

- the calls the cache skips on that schedule, counted by running the cache's own hook over the
  schedule's timesteps (the preset's scheduler, steps, blend start and native size): DeepCache on
  the test suite's tiny UNet, TaylorSeer, PAB and MagCache (diffusers' hooks) on the tiny FLUX
  transformer. Their decisions depend on the step count, the timesteps and (MagCache) the
  published ratios only, not on the weights. First Block Cache decides by the residual of trained
  weights, so it is not counted (docs/benchmarks.md gives its cost);
- the cost of a skipped call over a full one, measured on the full-size architecture by
  ``tools/cache_bench.py`` (docs/cache-bench.json; COST_FROM names the measured model standing
  for each preset, None: not measured on this machine);
- the speed-up ``calls / (calls - skipped + skipped * cost)``. The verdict is the cache of the
  largest one; it helps where it saves 10% (``CacheVerdict.helps``).

    nice -n 10 python tools/cache_presets.py            # prints the verdicts as Python literals
                                                        # (the counts --out has are reused)
    python tools/cache_presets.py --docs                # docs/cache-presets.md's table

The verdicts are pasted into each family module's ``record_caches`` call (the one place they
live); ``--docs`` rewrites the table of docs/cache-presets.md from them and
``tests/test_cache_presets.py`` checks the two agree.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
from pathlib import Path

import torch

from blendedit.bench.build import build_backbone
from blendedit.bench.catalogue import ARCHITECTURES
from blendedit.config import EditConfig, preset_on
from blendedit.latent.backbones.parts import CacheVerdict
from blendedit.latent.cache import kinds_for, step_cache
from blendedit.latent.sampling import blend_timesteps, blended_latent_diffusion
from blendedit.models import make_scheduler

# Realtime presets that run on a published architecture without being its ``realtime`` field:
# SD-Turbo is SD 2.1-base's UNet; LCM-LoRA and LCM-distilled UNets are SD 1.5's or SDXL's;
# SDXL-Lightning is SDXL's.
REALTIME_ON = {
    "sd2-base": ("realtime-sd-turbo",),
    "sd15": ("realtime-lcm", "realtime-lcm-distilled"),
    "sdxl": ("realtime-lcm", "realtime-lcm-distilled", "realtime-lightning"),
}
# Preset -> the docs/cache-bench.json model whose measured calls give its skipped call's cost
# (the same denoiser layout; the measured size and depth are said in the verdict). LDM-1.45B's
# UNet is SD's layout (cross-attention 1280 wide) at 256 px, the size SD 2.1-base was measured at.
COST_FROM = {
    **dict.fromkeys(("sd15", "sd2-base", "sd2", "sd15-inpaint", "ldm-1.45b"), "sd2-base"),
    **dict.fromkeys(("sdxl", "sdxl-turbo", "sdxl-inpaint"), "sdxl"),
    "sd35-medium": "sd35-medium",
    **dict.fromkeys(("flux-dev", "flux-schnell", "flux-fill", "flux-kontext-dev"), "flux-dev"),
    **{m: m for m in ("sd35-large", "flux2-klein-4b", "chroma")},  # --set others
    **dict.fromkeys(("qwen-image", "qwen-image-edit", "qwen-image-2.1"), "qwen-image"),
}
BENCH = Path("docs/cache-bench.json")


def quality(cache: str, calls: int) -> bool | None:
    """The toy world's verdict on quality (docs/quality.md, "Step caches"; its denoiser is a
    UNet, so DeepCache only): within noise at 15 calls up to interval 10, so at the default
    interval 3 on 15 calls or more; at 3 calls one skipped call in 3 drops the batch precision from
    32.5% to 17.5%, so not on a few-step schedule. Elsewhere not measured (None)."""
    if cache != "deepcache":
        return None
    return True if calls >= 15 else False if calls <= 3 else None


def costs(bench: dict) -> dict[tuple[str, str], tuple[float, str]]:
    """(model, cache) -> (skipped call / full call, what it rests on) from cache-bench.json."""
    out = {}
    for r in bench["derived"]:
        if r["cache"] != "none":
            what = f"{r['model']}, {r['px']} px, cache-bench.json"
            out[r["model"], r["cache"]] = (r["skipped_call_s"] / r["full_call_s"], what)
    for r in bench.get("derived_more", []):
        if r["cache"] != "none":
            depth = f", from {r['measured_depth']} blocks" if r.get("measured_depth") else ""
            what = f"{r['model']}, {r['px']} px{depth}, cache-bench.json"
            out[r["model"], r["cache"]] = (r["cost"], what)
    return out


@functools.cache
def _tiny(unet: bool):
    """The test suite's tiny SD UNet or tiny FLUX transformer with its conditioning (CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        bb = build_backbone(ARCHITECTURES["tiny" if unet else "tiny-flux"], "cpu", Path(tmp))
    return bb, bb.encode_text("a photo", "", (64, 64), (64, 64))


@functools.cache
def _meta(name: str):
    with tempfile.TemporaryDirectory() as tmp:
        return build_backbone(ARCHITECTURES[name], "meta", Path(tmp))


def schedule(
    name: str, realtime: str | None, steps: int | None = None
) -> tuple[EditConfig, torch.Tensor, object]:
    """The preset's edit settings (family defaults, or the realtime preset on them; ``steps``:
    that many instead), its timesteps after blend start at its native size, and the scheduler set
    to them."""
    meta, arch = _meta(name), ARCHITECTURES[name]
    cfg = EditConfig(**{**meta.defaults, **(meta.inpaint_defaults if meta.inpainting else {})})
    if realtime:
        cfg = preset_on(realtime, cfg)
    if steps is not None:
        cfg = cfg.replace(num_inference_steps=steps)
    hw = (cfg.size or arch.resolution) // meta.latent_factor
    sched = make_scheduler(cfg.scheduler, meta.scheduler.config)
    steps = cfg.num_inference_steps
    ts = blend_timesteps(sched, steps, cfg.blend_start, **meta.timestep_kwargs(steps, (hw, hw)))
    return cfg, ts, sched


def count(cache: str, steps: int, timesteps: torch.Tensor, sched: object) -> tuple[int, int]:
    """(calls, skipped) of ``cache`` at its default over these timesteps: its hook, run."""
    bb, cond = _tiny(cache == "deepcache")
    h = w = 64 // bb.latent_factor
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, bb.latent_channels, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    span = (steps - len(timesteps), steps)
    sched = copy.deepcopy(sched)  # a flow scheduler counts its steps: a fresh one per cache
    with torch.no_grad(), step_cache(bb.unet, cache, mask, bb.patch_size, span) as c:
        model = c.wrap(bb.model_fn(cond, 1, 1.0))
        blended_latent_diffusion(model, sched, z0.clone(), timesteps, [mask] * len(timesteps),
                                 lambda i: z0)  # fmt: skip
    return c.stats.calls, c.stats.skipped


def counted(name: str, realtime: str | None) -> list[dict]:
    """Per cache the preset's denoiser takes: the calls and skipped calls on this schedule."""
    cfg, ts, sched = schedule(name, realtime)
    label, module = realtime or "default", _meta(name).unet
    kinds = [k for k in kinds_for(module) if k != "first-block"]
    if not kinds:
        why = f"{type(module).__name__} takes no cache of blendedit.latent.cache"
        return [{"preset": name, "schedule": label, "cache": "none", "calls": len(ts),
                 "skipped": 0, "measured": why}]  # fmt: skip
    out = []
    for kind in kinds:
        calls, skipped = count(kind, cfg.num_inference_steps, ts, sched)
        out.append({"preset": name, "schedule": label, "cache": kind, "calls": calls,
                    "skipped": skipped})  # fmt: skip
    return out


def verdict(
    name: str, realtime: str | None, cost: dict, known: list[dict]
) -> tuple[CacheVerdict, list[dict]]:
    """The preset's verdict on one schedule, and every counted cache's row (for the docs);
    ``known``: rows counted before (docs/cache-presets.json), counted again if absent."""
    label = realtime or "default"
    mine = [r for r in known if r["preset"] == name and r["schedule"] == label]
    mine = mine or counted(name, realtime)
    if mine[0]["cache"] == "none":
        r = mine[0]
        return CacheVerdict(label, "none", r["calls"], 0, None, r["measured"]), [r]
    rows = []
    for r in mine:
        c, what = cost.get((COST_FROM.get(name), r["cache"]), (None, "skipped call not measured"))
        v = CacheVerdict(label, r["cache"], r["calls"], r["skipped"],
                         None if c is None else round(c, 3), what,
                         quality(r["cache"], r["calls"]))  # fmt: skip
        rows.append({**r, "cost": v.cost, "speedup": v.speedup, "measured": what,
                     "quality": v.quality})  # fmt: skip
    best = max(rows, key=lambda r: (r["speedup"] or 0, r["skipped"]))
    v = CacheVerdict(label, best["cache"], best["calls"], best["skipped"], best["cost"],
                     best["measured"], best["quality"])  # fmt: skip
    return v, rows


def literal(v: CacheVerdict) -> str:
    cost = "None" if v.cost is None else repr(v.cost)
    return (
        f"P.CacheVerdict({v.schedule!r}, {v.cache!r}, {v.calls}, {v.skipped}, {cost}, "
        f"{v.measured!r}, {v.quality!r})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="*", default=None, help="default: every published one")
    p.add_argument("--docs", action="store_true", help="rewrite docs/cache-presets.md's table")
    p.add_argument("--out", type=Path, default=Path("docs/cache-presets.json"))
    p.add_argument("--recount", action="store_true", help="count again the calls --out has")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if args.docs:
        return write_docs(Path("docs/cache-presets.md"))
    cost = costs(json.loads(BENCH.read_text()))
    known = (
        [] if args.recount or not args.out.is_file() else json.loads(args.out.read_text())["rows"]
    )
    names = args.presets or [n for n, a in ARCHITECTURES.items() if a.source]
    table = []
    for name in names:
        arch = ARCHITECTURES[name]
        extra = REALTIME_ON.get(name, ())
        found = []
        for realtime in (None, *([arch.realtime] if arch.realtime else []), *extra):
            v, rows = verdict(name, realtime, cost, known)
            found.append(v)
            table.extend(rows)
            _save(args.out, table + [r for r in known if r["preset"] not in names])
        body = ",\n        ".join(literal(v) for v in found)
        print(f'    "{name}": (\n        {body},\n    ),', flush=True)


def _save(path: Path, rows: list[dict]) -> None:
    """The rows so far (a stopped run keeps its counts)."""
    from blendedit.io import write_atomic

    data = json.dumps({"rows": rows}, indent=1).encode()
    write_atomic(path, lambda f: f.write(data), replace=True)


def write_docs(path: Path) -> None:
    """docs/cache-presets.md's table between its markers, from the presets' verdicts."""
    from blendedit.bench.report import cache_verdict_table
    from blendedit.io import write_text

    text = path.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    write_text(head + TABLE_START + "\n" + cache_verdict_table() + TABLE_END + tail, path,
               replace=True)  # fmt: skip


TABLE_START, TABLE_END = "<!-- verdicts -->", "<!-- /verdicts -->"

if __name__ == "__main__":
    main()
