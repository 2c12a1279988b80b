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

The second run (issue 24: TaylorSeer, PAB, MagCache; docs/benchmarks.md, "Step caches on the CPU:
TaylorSeer, PAB, MagCache") adds rows marked ``"run": "more"`` to the same file:

    nice -n 10 python tools/cache_bench.py --set more --append      # SD3.5-medium, FLUX.1 (MORE)
    nice -n 10 python tools/cache_bench.py --set others --append    # SD3.5-large, ... (OTHERS)
    nice -n 10 python tools/cache_bench.py --set faster --append    # FasterCache, SD3.5-medium
    python tools/cache_bench.py --rederive                          # derived rows only

Every block's time is recorded, so a model run at reduced depth (DEPTH: FLUX.1 does not fit 24 GB
in float32) is scaled to its published depth (``_scaled``), and the full calls of the default
schedule are counted with each cache's own hook (``derived_more``, tools/cache_presets.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import tempfile
import time
from dataclasses import replace
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
# --set more (issue 24, second run): the attention caches and MagCache, the uncached call beside
# them. TaylorSeer (interval 5) over 4 calls: 3 warm-up calls in full, the 4th predicted; PAB
# (every 2nd) over 3 calls: the 2nd broadcast (its timestep inside (100, 800)); MagCache and
# First Block Cache forced (":1e9"). FLUX.1 at full width but 2 double + 4 single blocks of its
# 19 + 38 (DEPTH): the 12B does not fit 24 GB in float32; the full depth's calls are derived from
# the per-block times (``depth_scaled``).
MORE = {
    "sd35-medium": (128, [("none", 4), ("taylorseer", 5), ("pab", 4)]),
    "flux-dev": (
        128,
        [("none", 4), ("first-block:1e9", 4), ("taylorseer", 5), ("pab", 4), ("magcache:1e9", 4)],
    ),
}
# --set others: more transformers the same way, at reduced depth (DEPTH), one pass.
_LOOPS = [("none", 4), ("first-block:1e9", 4), ("taylorseer", 5), ("pab", 4)]
OTHERS = {m: (128, _LOOPS) for m in ("sd35-large", "flux2-klein-4b", "chroma", "qwen-image")}
# --set faster: FasterCache (wired after the runs above) beside the uncached call, one pass
FASTER = {"sd35-medium": (128, [("none", 3), ("fastercache", 5)])}
DEPTH = {  # transformer config overrides: full width, fewer blocks
    "flux-dev": {"num_layers": 2, "num_single_layers": 4},
    "sd35-large": {"num_layers": 3},
    "flux2-klein-4b": {"num_layers": 1, "num_single_layers": 2},
    "chroma": {"num_layers": 1, "num_single_layers": 2},
    "qwen-image": {"num_layers": 2},
}
GUIDANCE_MORE = {"sd35-medium": 1.0, "flux-dev": 1.0}  # one pass per call (dev: embedded)
SMOKE = {  # --smoke: the test suite's tiny shapes, to check the script in seconds
    "tiny": (128, [("none", 4), ("deepcache", 4)]),
    "tiny-flux": (64, [("none", 4), ("first-block:1e9", 4), ("taylorseer:2", 8)]),
}
CALLS, FULL = {"deepcache": 13}, 38  # the default schedule: 50 steps, 38 calls


def _random(t: torch.Tensor, g: torch.Generator, key: str = "") -> torch.Tensor:
    """Random conditioning of ``t``'s shape; an attention mask (``key`` "mask") all ones."""
    return torch.ones(t.shape) if key == "mask" else torch.randn(t.shape, generator=g)


@contextlib.contextmanager
def _meta_masks():
    """transformers' attention-mask shortcuts read the mask's values (``.all()``), which a meta
    tensor has not: while encoding on "meta", they answer "build the mask" (the same shapes)."""
    from transformers import masking_utils as mu

    saved = mu._ignore_causal_mask_sdpa, mu._ignore_bidirectional_mask_sdpa
    mu._ignore_causal_mask_sdpa = mu._ignore_bidirectional_mask_sdpa = lambda *a, **k: False
    try:
        yield
    finally:
        mu._ignore_causal_mask_sdpa, mu._ignore_bidirectional_mask_sdpa = saved


def _setup(preset: str, px: int, workdir: Path, depth: dict | None = None):
    """The real denoiser of ``preset`` and a meta backbone around it, with random conditioning
    (``depth``: transformer config overrides, fewer blocks of the same width)."""
    arch = ARCHITECTURES[preset]
    if depth:
        arch = replace(
            arch, parts={**arch.parts, "transformer": {**arch.parts["transformer"], **depth}}
        )
    meta = build_backbone(arch, "meta", workdir)
    with _meta_masks():
        c = meta.encode_text("a photo", "", (px, px), (px, px))  # meta tensors: the shapes only
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(
        _random(c.cond, g), _random(c.uncond, g),
        {k: _random(v, g, k) for k, v in c.added.items()},
        {k: _random(v, g, k) for k, v in c.added_uncond.items()},
    )  # fmt: skip
    torch.manual_seed(0)
    meta.unet = type(meta.unet).from_config(meta.unet.config).eval()  # diffusers' random init
    return meta, cond


class _BlockClock:
    """Seconds spent in each block list of a transformer during one call (forward pre/post hooks
    on every block; a block a cache skips still passes through them, in about no time)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.lists = {
            name: getattr(module, name)
            for name in ("transformer_blocks", "single_transformer_blocks")
            if isinstance(getattr(module, name, None), torch.nn.ModuleList)
        }
        self.spent = dict.fromkeys(self.lists, 0.0)
        self.handles = []
        for name, blocks in self.lists.items():
            for block in blocks:
                self.handles.append(block.register_forward_pre_hook(self._start))
                self.handles.append(block.register_forward_hook(self._stop(name)))
        self._t0 = 0.0

    def _start(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, name: str):
        def stop(*_: object) -> None:
            self.spent[name] += time.perf_counter() - self._t0

        return stop

    def take(self) -> dict[str, float]:
        out, self.spent = self.spent, dict.fromkeys(self.lists, 0.0)
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _block_means(clock: _BlockClock, calls: list[tuple[float, bool, dict]]) -> dict:
    """Per block list: [blocks, mean seconds of one block in a full call, in a skipped call]."""
    out = {}
    for name, blocks in clock.lists.items():
        mean = []
        for want in (True, False):
            spent = [b[name] for _, full, b in calls if full == want]
            mean.append(round(sum(spent) / len(spent) / len(blocks), 4) if spent else None)
        out[name] = [len(blocks), *mean]
    return out


def _one_run(bb, cond, spec: str, px: int, steps: int, guidance: float = 7.5) -> dict:
    f = bb.latent_factor
    h = w = px // f
    channels = bb.latent_channels  # FLUX.2: the VAE's 32 folded 2x2 into 128
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(1, channels, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    scheduler = type(bb.scheduler).from_config(bb.scheduler.config)
    extra = bb.timestep_kwargs(steps, (h, w))
    timesteps = blend_timesteps(scheduler, steps, 0.25, **extra)
    span = (steps - len(timesteps), steps)  # MagCache's step counter: the whole schedule's
    calls: list[tuple[float, bool, dict]] = []
    clock = _BlockClock(bb.unet)
    with torch.no_grad(), step_cache(bb.unet, spec, mask, bb.patch_size, span) as cache:
        inner = cache.wrap(bb.model_fn(cond, 1, guidance))

        def timed(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            full_before = cache.stats.full
            t0 = time.perf_counter()
            out = inner(z, t)
            full = spec == "none" or cache.stats.full > full_before
            calls.append((time.perf_counter() - t0, full, clock.take()))
            return out

        t0 = time.perf_counter()
        z = torch.randn(1, channels, h, w, generator=g)
        blended_latent_diffusion(
            timed, scheduler, z, timesteps, [mask] * len(timesteps), lambda i: z0
        )
        total = time.perf_counter() - t0
    clock.close()
    full_s = [s for s, full, _ in calls if full]
    skip_s = [s for s, full, _ in calls if not full]
    row = {
        "cache": spec,
        "per_candidate_s": round(total, 2),
        "calls": len(calls),
        "full_calls": len(full_s),
        "skipped": len(skip_s),
        "full_call_s": round(sum(full_s) / len(full_s), 3) if full_s else None,
        "skipped_call_s": round(sum(skip_s) / len(skip_s), 3) if skip_s else None,
    }
    if clock.lists:
        row["block_s"] = _block_means(clock, calls)
    return row


def derived(rows: list[dict]) -> list[dict]:
    """Per model and cache: the 38-call time per candidate from the measured per-call times."""
    out = []
    rows = [r for r in rows if "run" not in r]  # the first run's (MORE's: derived_more)
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


PER_BLOCK = ("taylorseer", "pab")  # caches whose skipped call still runs every block (in part)


def _depth(model: str) -> dict[str, int]:
    """The published model's blocks per list (built on "meta")."""
    with tempfile.TemporaryDirectory() as tmp:
        module = build_backbone(ARCHITECTURES[model], "meta", Path(tmp)).unet
    return {k: len(getattr(module, k)) for k in ("transformer_blocks", "single_transformer_blocks")
            if isinstance(getattr(module, k, None), torch.nn.ModuleList)}  # fmt: skip


def _scaled(row: dict, full: bool, depth: dict[str, int]) -> float:
    """A row's mean full (or skipped) call at the published depth: the measured call plus the
    missing blocks at the measured per-block time. A skipped call of First Block Cache or MagCache
    runs the same blocks at any depth (the first, or none), so it is taken as measured."""
    t = row["full_call_s" if full else "skipped_call_s"]
    if not full and row["cache"].partition(":")[0] not in PER_BLOCK:
        return t
    for name, (n, per_full, per_skip) in row.get("block_s", {}).items():
        t += (depth[name] - n) * (per_full if full else per_skip)
    return t


def derived_more(rows: list[dict], counts: dict | None = None) -> list[dict]:
    """MORE's rows per model and cache at the published depth (``_scaled``): a skipped call's
    cost over a full call of the same loop, the full calls of the default 50-step schedule (38
    calls) counted by the cache's own hook
    (``tools/cache_presets.py``; ``counts``: (model, cache) -> full calls, else counted here)."""
    out = []
    rows = [r for r in rows if r.get("run") == "more"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine, depth = [r for r in rows if r["model"] == model], _depth(model)
        t_full = [_scaled(r, True, depth) for r in mine if r["full_call_s"] is not None]
        t_full = sum(t_full) / len(t_full)
        reduced = {k: v[0] for k, v in mine[0].get("block_s", {}).items()}
        shown = "+".join(map(str, reduced.values())) + " of " + "+".join(map(str, depth.values()))
        base = {"model": model, "px": mine[0]["px"], "full_call_s": round(t_full, 3),
                "measured_depth": shown if reduced != depth else None}  # fmt: skip
        out.append({**base, "cache": "none", "per_candidate_s": round(FULL * t_full, 1)})
        for r in mine:
            if r["cache"] == "none" or r["skipped_call_s"] is None:
                continue
            name = r["cache"].partition(":")[0]
            n_full = (counts or {}).get((model, name)) or _counted(model, name)
            # the skipped call over the full call of the same loop (the same load), times the
            # mean full call: the other sessions' load drifts between loops
            cost = _scaled(r, False, depth) / _scaled(r, True, depth)
            t_skip = cost * t_full
            t = n_full * t_full + (FULL - n_full) * t_skip
            out.append({
                **base, "cache": name, "skipped_call_s": round(t_skip, 3), "cost": round(cost, 3),
                "full_calls": n_full,
                "per_candidate_s": round(t, 1), "speedup": round(FULL * t_full / t, 2),
            })  # fmt: skip
    return out


def _counted(model: str, cache: str) -> int:
    """Full calls of ``cache`` over the default 50-step schedule of ``model`` (its hook, run);
    First Block Cache (a threshold on trained weights): half, as the first run's table."""
    if cache == "first-block":
        return FULL // 2
    from cache_presets import count, schedule  # tools/, beside this script

    _, ts, sched = schedule(model, None, steps=50)
    calls, skipped = count(cache, 50, ts, sched)
    return calls - skipped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None, help="default: every model of the set")
    p.add_argument("--smoke", action="store_true", help="the tiny shapes instead (SMOKE)")
    p.add_argument("--set", choices=("first", "more", "others", "faster"), default="first",
                   help="MODELS, MORE, OTHERS or FASTER")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("docs/cache-bench.json"))
    p.add_argument("--append", action="store_true", help="add to the rows already in --out")
    p.add_argument("--rederive", action="store_true", help="only recompute --out's derived rows")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    if args.rederive:
        return _write(args.out, json.loads(args.out.read_text())["rows"])
    more = args.set in ("more", "others", "faster")  # rows marked "run": "more", derived_more
    table = (
        SMOKE
        if args.smoke
        else {"first": MODELS, "more": MORE, "others": OTHERS, "faster": FASTER}[args.set]
    )
    rows = json.loads(args.out.read_text())["rows"] if args.append and args.out.is_file() else []
    for preset in args.models or list(table):
        px, specs = table[preset]
        with tempfile.TemporaryDirectory() as tmp:
            bb, cond = _setup(preset, px, Path(tmp), DEPTH.get(preset) if more else None)
        print(f"{preset}: {px} px, caches {kinds_for(bb.unet)}, {_load()}", flush=True)
        if len(specs) > 1:
            _one_run(bb, cond, "none", px, 2)  # warm-up (allocator, threads): one call
        specs = [s for s in specs if s[0].partition(":")[0] in ("none", *kinds_for(bb.unet))]
        again = [specs[0]] if len(specs) > 1 else []  # "none" again last: the run's drift
        for spec, steps in [*specs, *again]:
            g = GUIDANCE_MORE.get(preset, 1.0) if more else GUIDANCE.get(preset, 7.5)
            row = {"model": preset, "px": px, "steps": steps, "guidance": g}
            if more:  # FasterCache's idle-machine rows apart: derived on their own loop only
                run = "faster" if args.set == "faster" else "more"
                row = {"run": run, **row, "load": _load()}
            row.update(_one_run(bb, cond, spec, px, steps, g))
            print(json.dumps(row), flush=True)
            rows.append(row)
        del bb, cond
        gc.collect()
        _write(args.out, rows)  # after each model: a stopped run keeps what it measured


def _load() -> str:
    """The machine's load average over 1, 5, 15 minutes (other sessions' jobs share the CPU)."""
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _write(path: Path, rows: list[dict]) -> None:
    from blendedit.io import write_atomic

    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, this sandbox"
    out = {"machine": machine, "torch": torch.__version__, "rows": rows, "derived": derived(rows)}
    if any(r.get("run") == "more" for r in rows):
        out["derived_more"] = derived_more(rows)
    print(json.dumps(out["derived"]), flush=True)
    write_atomic(path, lambda f: f.write(json.dumps(out, indent=1).encode()), replace=True)


if __name__ == "__main__":
    main()
