"""Measuring one preset: a ranked batch edit timed end to end and per stage, the mean time of a
denoising step, the model's FLOPs per step (torch's FLOP counter) and their share of the device's
dense peak (SPEC 4), then diffusers' reference pipeline on the same work (``reference.py``)."""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from blendedit.bench import reference
from blendedit.bench.build import build_editor
from blendedit.bench.catalogue import ARCHITECTURES, Architecture
from blendedit.bench.reference import PROMPT
from blendedit.bench.timing import best_time, sync, timed_steps
from blendedit.errors import InputError

if TYPE_CHECKING:
    from blendedit.latent.backbones import Backbone

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"  # the repository's, when there

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H100 80GB HBM3": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


@dataclass
class BenchResult:
    """One benchmark run; every number the table shows."""

    preset: str
    device: str
    dtype: str
    batch: int
    steps_run: int
    resolution: int
    scheduler: str
    compile: bool
    family: str = ""
    realtime: str | None = None  # the few-step preset run (``--realtime``), if any
    guidance_scale: float | None = None
    warmup_s: float = 0.0
    total_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)
    per_step_ms: float = 0.0
    images_per_s: float = 0.0
    unet_tflop_per_step: float = 0.0
    unet_tflops: float = 0.0
    peak_fraction: float | None = None
    peak_memory_gb: float | None = None
    diffusers_total_s: float | None = None
    diffusers_per_step_ms: float | None = None
    speedup_vs_diffusers: float | None = None
    per_step_ratio_vs_diffusers: float | None = None
    notes: list[str] = field(default_factory=list)
    cache: str = "none"  # --cache
    cache_calls: int = 0  # denoiser calls of the timed edit
    cache_skipped: int = 0  # of which skipped the whole network
    cache_verdict: str = ""  # the preset's recorded step-cache verdict (Architecture.caches)


def unet_flops(
    backbone: Backbone, batch: int, latent_hw: tuple[int, int], guidance_scale: float = 7.5
) -> float:
    """FLOPs of one step's model call (classifier-free guidance: both halves, 2 x batch) by
    torch's FLOP counter, through the family's own model function and conditioning (SDXL's pooled
    text and time ids too)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = latent_hw
    f = backbone.latent_factor
    dev, dt = backbone.device, backbone.dtype
    c = backbone.encode_text(PROMPT, "", (w * f, h * f), (w * f, h * f))
    z = torch.zeros(batch, backbone.latent_channels, h, w, device=dev, dtype=dt)
    # models made for editing: a blank source image as their conditioning (plain ones: unchanged)
    x, m = torch.zeros(1, 3, h * f, w * f, device=dev), torch.ones(1, 1, h * f, w * f, device=dev)
    c = backbone.condition_on_image(c, x, m, z[:1])
    compiled = backbone.unet  # count the eager module: a compiled one would recompile here
    backbone.unet = getattr(compiled, "_orig_mod", compiled)
    try:
        model_fn = backbone.model_fn(c, batch, guidance_scale)
        with (
            torch.no_grad(),
            torch.compiler.set_stance("force_eager"),  # blocks compiled in place: count eager
            FlopCounterMode(display=False) as counter,
        ):
            model_fn(z, torch.tensor(500, device=dev))
    finally:
        backbone.unet = compiled
    return float(counter.get_total_flops())


def run_bench(
    preset: str = "sd2-base",
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16,
    batch: int | None = None,
    steps: int | None = None,
    blend_start: float = 0.25,
    scheduler: str | None = None,
    compile: bool = False,
    channels_last: bool = True,
    repeats: int = 2,
    compare_diffusers: bool = True,
    background: str = "stitch",
    keep: int | None = None,
    image: str | Path | None = None,
    mask: str | Path | None = None,
    peak_tflops: float | None = None,
    realtime: bool = False,
    cache: str = "none",
) -> BenchResult:
    """Benchmark one configuration. Random weights; a real photo and mask (examples/);
    ``batch`` None: the preset's own (24, the paper's; SDXL 4, its official script's); ``steps``
    and ``scheduler`` None: the family's defaults (SD, SDXL, LDM: DDIM 50; SD3, FLUX.1-dev:
    flow Euler 28; schnell: 4). ``realtime``: the architecture's few-step preset
    (``Architecture.realtime``, e.g. ``realtime-schnell``) on a ranked batch of 8 unless told;
    ``total_s`` is then the warm wall-clock time from the call to the ranked results. ``cache``:
    a step cache (``--cache``), its skipped calls reported."""
    arch = architecture(preset, realtime)
    batch = (8 if realtime else arch.batch) if batch is None else batch
    dev = torch.device(device)
    photo, photo_mask = _inputs(image, mask, arch.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        editor = build_editor(arch, dev, dtype, Path(tmp))
    editor.optimize(channels_last=channels_last and dev.type == "cuda", compile=compile)
    cfg = _config(editor, arch, realtime, batch, steps, scheduler, blend_start, background, keep)
    cfg = cfg.replace(cache=cache).validate()
    editor.check(cfg)
    latent_hw, n_steps = _schedule(editor, photo, arch.resolution, cfg)
    res = BenchResult(
        preset, device_name(dev), str(dtype).removeprefix("torch."), batch, n_steps,
        arch.resolution, cfg.scheduler, compile, arch.family,
        arch.realtime if realtime else None, cfg.guidance_scale,
    )  # fmt: skip
    edit = partial(editor, photo, photo_mask, PROMPT, config=cfg)
    res.cache = cache
    found = arch.cache_verdict(res.realtime or "default")
    res.cache_verdict = found.line() if found else ""
    _time_edits(edit, dev, res, repeats)
    ref = None
    bb = editor.backbone  # Krea 2, FLUX.2 [dev]: no inpaint pipeline, their own loop (LoopRun)
    if compare_diffusers and (bb.reference_pipeline or bb.timing_pipeline):
        ref = reference.reference_run(editor, photo, photo_mask, cfg, dev)
        res.diffusers_total_s = ref.total_s(repeats)
        res.speedup_vs_diffusers = res.diffusers_total_s / res.total_s
    _time_steps(edit, editor.backbone, dev, res, repeats, latent_hw, peak_tflops, ref)
    if res.diffusers_per_step_ms:
        res.per_step_ratio_vs_diffusers = res.per_step_ms / res.diffusers_per_step_ms
    return res


def architecture(preset: str, realtime: bool = False) -> Architecture:
    """The preset's architecture; one line for an unknown one, or ``realtime`` without a
    few-step preset."""
    if preset not in ARCHITECTURES:
        raise InputError(f"preset: unknown {preset!r}; choose one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[preset]
    if realtime and arch.realtime is None:
        have = ", ".join(k for k, a in ARCHITECTURES.items() if a.realtime)
        raise InputError(
            f"preset: {preset!r} has no realtime preset (--realtime); use one of {have}"
        )
    return arch


def _config(
    editor: Any, arch: Architecture, realtime: bool, batch: int, steps: int | None,
    scheduler: str | None, blend_start: float, background: str, keep: int | None,
) -> Any:  # fmt: skip
    """The edit timed: the family's defaults (SDXL, LDM: guidance 5; flow models), or the
    realtime preset on them, with the bench's batch, steps, scheduler and size."""
    from blendedit.config import preset_on

    base = editor.default_config()
    if realtime:
        base = preset_on(arch.realtime, base)  # type: ignore[arg-type]
    return base.replace(
        num_images=batch,
        batch_size=batch,
        decode_batch_size=min(batch, 8),
        num_inference_steps=base.num_inference_steps if steps is None else steps,
        blend_start=blend_start,
        scheduler=base.scheduler if scheduler is None else scheduler,
        size=arch.resolution,
        background=background,
        keep=keep,
        mask_shrink="off",
        metrics=False,
    ).validate()


def _schedule(
    editor: Any, photo: Image.Image, resolution: int, cfg: Any
) -> tuple[tuple[int, int], int]:
    """The latent (h, w) of the edit and the number of denoising steps it runs (SPEC 1 step 3)."""
    from blendedit.io import working_size
    from blendedit.latent.sampling import blend_timesteps
    from blendedit.models import make_scheduler

    f = editor.vae_scale_factor
    w, h = working_size(photo.size, resolution, f)
    latent_hw = (h // f, w // f)
    steps = cfg.num_inference_steps
    timesteps = blend_timesteps(
        make_scheduler(cfg.scheduler, editor.scheduler.config),
        steps,
        cfg.blend_start,
        **editor.backbone.timestep_kwargs(steps, latent_hw),  # flow models: sigmas, shift
    )
    return latent_hw, len(timesteps)


def _time_edits(
    edit: Callable[..., Any], dev: torch.device, res: BenchResult, repeats: int
) -> None:
    """The warm-up (and compilation) apart, then the best of ``repeats`` end-to-end edits with its
    stages, images/s and peak memory."""
    t0 = time.perf_counter()
    edit(seed=0)
    sync(dev)
    res.warmup_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    total, out = best_time(dev, lambda seed: edit(seed=seed), repeats)
    res.total_s = total
    res.stages_s = {
        k: round(v, 4) for k, v in out.timings.to_dict().items() if k not in ("total", "load")
    }
    res.images_per_s = res.batch / total
    res.cache_calls = out.settings.get("cache_calls", 0)
    res.cache_skipped = out.settings.get("cache_skipped", 0)
    if dev.type == "cuda":
        res.peak_memory_gb = torch.cuda.max_memory_allocated(dev) / 1e9


def _time_steps(
    edit: Callable[..., Any], backbone: Backbone, dev: torch.device, res: BenchResult,
    repeats: int, latent_hw: tuple[int, int], peak_tflops: float | None,
    ref: reference.DiffusersRun | None = None,
) -> None:  # fmt: skip
    """Per-step time (best of ``repeats``; with diffusers' ``ref``, each of ours followed by one of
    its, so both see the same load), the model's TFLOP per step and TFLOP/s in the denoise stage,
    and their share of the device's dense peak."""
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed_steps(dev, lambda mark: edit(seed=7, progress=lambda d, n: mark())))
        if ref is not None:
            theirs.append(ref.step_ms())
    res.per_step_ms = min(ours)
    res.diffusers_per_step_ms = min(theirs) if theirs else None
    flops = unet_flops(backbone, res.batch, latent_hw, res.guidance_scale)  # type: ignore[arg-type]
    res.unet_tflop_per_step = flops / 1e12
    res.unet_tflops = flops / (res.stages_s["denoise"] / res.steps_run) / 1e12
    peak = peak_tflops or device_peak_tflops(dev)
    res.peak_fraction = res.unet_tflops / peak if peak else None


def _inputs(
    image: str | Path | None, mask: str | Path | None, resolution: int
) -> tuple[Image.Image, np.ndarray]:
    from blendedit.frame.masks import load_mask
    from blendedit.io import load_image, open_image

    if image is None and (EXAMPLES / "chelsea.png").is_file():
        image, mask = EXAMPLES / "chelsea.png", EXAMPLES / "chelsea.mask-eyes.png"
    if image is None:  # installed without the examples: a square of noise, a centred box mask
        rng = np.random.default_rng(0)
        photo = Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8))
        m = np.zeros((resolution, resolution), bool)
        m[resolution // 4 : resolution // 2, resolution // 4 : 3 * resolution // 4] = True
        return photo, m
    photo = load_image(image)
    # Square at the model's resolution: the table's numbers are for a 512x512 (768x768) edit.
    photo = photo.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return photo, load_mask(open_image(mask, "mask").resize(photo.size), photo.size, False)
