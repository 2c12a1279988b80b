"""Typed settings of an edit, with named presets. CLI flags map one-to-one onto these fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from blendedit.errors import InputError
from blendedit.models import SCHEDULERS

REGION_MODES = ("auto", "crop", "full")
BACKGROUND_MODES = ("stitch", "decoded", "poisson", "latent", "decoder")
MASK_SHRINK_MODES = ("auto", "on", "off")
BLEND_RULES = ("diffusers", "official")  # see blendedit.latent.schedule
MAX_WORKING_SIDE = 4096  # px; the long side the model works at
_C = TypeVar("_C", bound="FrameConfig")


@dataclass(frozen=True)
class FrameConfig:
    """Settings of the edit frame, shared by every method (``blendedit.frame``)."""

    num_images: int = 8  # candidates generated, one seed each: seed, seed + 1, ...
    invert_mask: bool = False  # edit outside the mask instead (e.g. replace the background)
    region: str = "auto"  # auto (crop when it gives the mask more pixels), crop, full
    context: int | None = None  # px of context around the mask's box (crop); None = by its size
    soft_mask: bool = False  # grey levels = per-pixel change strength (Differential Diffusion)
    mask_grow: int = 0  # px; dilate the mask (negative: erode)
    mask_blur: float = 0.0  # px; Gaussian sigma of a mask blur (soft edge of the paste)
    rank: bool = True  # rank candidates by CLIP similarity of the masked result to the prompt
    background: str = "stitch"  # how the input returns outside the mask; see reconstruct.py
    feather: int = 8  # px; width of the soft band outside the mask (stitch); at most 16
    paste_back: bool = False  # after poisson/latent/decoder, stitch the input back beyond feather
    keep: int | None = None  # return (and reconstruct) only the top K after ranking; None = all
    metrics: bool = True  # background PSNR/MSE/SSIM and seam score per result (result.json)
    batch_size: int = 8  # candidates per model call
    seed: int = 0

    def replace(self: _C, **changes: Any) -> _C:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"config: unknown setting(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def _bad(self, name: str, why: str) -> InputError:
        return InputError(f"{name}: {getattr(self, name)!r} {why}")

    def validate(self: _C) -> _C:
        """Reject values that cannot work, with the field name and value in one line."""
        bad = self._bad
        if not 1 <= self.num_images <= 1024:
            raise bad("num_images", "must be between 1 and 1024")
        if self.region not in REGION_MODES:
            raise bad("region", f"must be one of {', '.join(REGION_MODES)}")
        if self.context is not None and not 0 <= self.context <= 4096:
            raise bad("context", "must be between 0 and 4096 px")
        if not -256 <= self.mask_grow <= 256:
            raise bad("mask_grow", "must be between -256 and 256 px")
        if not 0 <= self.mask_blur <= 64:
            raise bad("mask_blur", "must be between 0 and 64 px")
        if self.background not in BACKGROUND_MODES:
            raise bad("background", f"must be one of {', '.join(BACKGROUND_MODES)}")
        if not 0 <= self.feather <= 16:
            raise bad("feather", "must be between 0 and 16 px")
        if self.keep is not None and not 1 <= self.keep <= self.num_images:
            raise bad("keep", f"must be between 1 and num_images ({self.num_images})")
        if self.batch_size < 1:
            raise bad("batch_size", "must be at least 1")
        if not 0 <= self.seed < 2**63:
            raise bad("seed", "must be in [0, 2**63)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EditConfig(FrameConfig):
    """Blended Latent Diffusion settings (SPEC 1; official SD2 script defaults where they exist)."""

    num_inference_steps: int = 50  # length of the full schedule; blend_start skips a part of it
    guidance_scale: float = 7.5  # classifier-free guidance weight
    blend_start: float = 0.25  # fraction of the schedule skipped: floor(steps * blend_start)
    negative_prompt: str = ""
    scheduler: str = "ddim"  # see blendedit.models.SCHEDULERS
    blend_rule: str = "diffusers"  # background level: t' and fixed noise, or "official" (t, fresh)
    eta: float = 0.0  # DDIM stochasticity (only for schedulers that take it)
    size: int | None = None  # long side of the working resolution in px; None = model's native
    mask_shrink: str = "auto"  # progressive mask shrinking: auto (thin masks only), on, off
    shrink_kernels: tuple[int, ...] = (7, 5, 3)  # dilation kernels, one stage each, then the mask
    recon_steps: int = 75  # Adam steps of latent / decoder reconstruction (official code: 75)
    recon_lr: float | None = None  # None: 0.1 for latent, 1e-4 for decoder (official code)
    recon_lambda: float = 100.0  # weight of the background term (paper: 100)
    decode_batch_size: int = 1  # latents per VAE decode; 1 keeps each result independent

    def validate(self) -> EditConfig:
        super().validate()
        bad = self._bad
        if not 1 <= self.num_inference_steps <= 1000:
            raise bad("num_inference_steps", "must be between 1 and 1000")
        if not 0.0 <= self.blend_start < 1.0:
            raise bad("blend_start", "must be in [0, 1)")
        if int(self.num_inference_steps * self.blend_start) >= self.num_inference_steps:
            raise bad("blend_start", "leaves no denoising step")
        if not 0.0 <= self.guidance_scale <= 100.0:
            raise bad("guidance_scale", "must be between 0 and 100")
        if self.size is not None and not 64 <= self.size <= MAX_WORKING_SIDE:
            raise bad("size", f"must be between 64 and {MAX_WORKING_SIDE} px")
        if self.scheduler not in SCHEDULERS:
            raise bad("scheduler", f"is unknown; choose one of {', '.join(SCHEDULERS)}")
        if self.blend_rule not in BLEND_RULES:
            raise bad("blend_rule", f"must be one of {', '.join(BLEND_RULES)}")
        if self.mask_shrink not in MASK_SHRINK_MODES:
            raise bad("mask_shrink", f"must be one of {', '.join(MASK_SHRINK_MODES)}")
        if any(k < 1 or k % 2 == 0 for k in self.shrink_kernels):
            raise bad("shrink_kernels", "must be odd sizes >= 1")
        if not 0 <= self.recon_steps <= 10000:
            raise bad("recon_steps", "must be between 0 and 10000")
        if self.recon_lr is not None and not 0 < self.recon_lr <= 10:
            raise bad("recon_lr", "must be in (0, 10]")
        if self.recon_lambda < 0:
            raise bad("recon_lambda", "must be >= 0")
        if self.decode_batch_size < 1:
            raise bad("decode_batch_size", "must be at least 1")
        if self.eta < 0:
            raise bad("eta", "must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["shrink_kernels"] = list(self.shrink_kernels)
        return d


PRESETS: dict[str, EditConfig] = {
    # What the official SD2 script does, plus ranking and stitching.
    "default": EditConfig(),
    # The paper's evaluation setting: a ranked batch of 24.
    "paper": EditConfig(num_images=24),
    # Fewer steps with a higher-order solver: about half the time; see README for the caveat.
    "fast": EditConfig(scheduler="dpm++", num_inference_steps=25),
    # One quick look.
    "draft": EditConfig(scheduler="dpm++", num_inference_steps=20, num_images=4),
    # The official SDXL script (text_editing_SDXL.py) as it runs: 1024x1024 (SDXL's native size),
    # 50 DDIM steps, guidance 5, blend start 0.25, batch 4, background re-noised to t with fresh
    # noise, no shrinking, no ranking, the raw decode. For comparison; "default" is better.
    "sdxl-official": EditConfig(
        guidance_scale=5.0,
        num_images=4,
        blend_rule="official",
        mask_shrink="off",
        rank=False,
        background="decoded",
    ),
    # The paper's own setting on its LDM (CompVis/ldm-text2im-large-256, 256x256): DDIM 50 steps,
    # eta 0, guidance 5, a ranked batch of 24, Algorithm 1's blend (t, fresh noise).
    "paper-ldm": EditConfig(guidance_scale=5.0, num_images=24, blend_rule="official"),
    # Few-step distilled models, one preset each (README "Few-step models"). 4 steps, of which
    # blend_start 0.25 skips the first: 3 model calls per candidate, 3 blends (the last pastes the
    # clean source). Guidance 1 is the conditional prediction alone in one pass (diffusers'
    # guidance_scale 0 for Turbo and Lightning).
    # SD-Turbo (stabilityai/sd-turbo): trailing Euler at its 512 px.
    "realtime-sd-turbo": EditConfig(
        scheduler="euler-trailing", num_inference_steps=4, guidance_scale=1.0, size=512
    ),
    # SDXL-Turbo (stabilityai/sdxl-turbo): trailing Euler-a; trained at 512 px, not SDXL's 1024.
    "realtime-sdxl-turbo": EditConfig(
        scheduler="euler-a-trailing", num_inference_steps=4, guidance_scale=1.0, size=512
    ),
    # LCM-LoRA on SD 1.5 or SDXL (--lora latent-consistency/lcm-lora-sdv1-5 or lcm-lora-sdxl):
    # the LCM scheduler, guidance off (the model cards: off, or 1 to 2).
    "realtime-lcm": EditConfig(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0),
    # An LCM-distilled UNet (SimianLuo/LCM_Dreamshaper_v7, latent-consistency/lcm-sdxl): guidance
    # 8 enters the UNet as its w embedding (w = 7), still one pass (Luo et al. 2023, eq. 9).
    "realtime-lcm-distilled": EditConfig(
        scheduler="lcm", num_inference_steps=4, guidance_scale=8.0
    ),
    # SDXL-Lightning, the 4-step model (ByteDance/SDXL-Lightning): trailing Euler, guidance off;
    # its 8-step model wants --steps 8 (a Lightning model runs the step count it was made for).
    "realtime-lightning": EditConfig(
        scheduler="euler-trailing", num_inference_steps=4, guidance_scale=1.0
    ),
    # FLUX.1-schnell: rectified-flow Euler, 4 steps (sigma 1, .75, .5, .25), no guidance (the
    # FLUX family's own defaults for schnell; here to be named).
    "realtime-schnell": EditConfig(
        scheduler="flow-euler", num_inference_steps=4, guidance_scale=1.0
    ),
}

# What a preset is for, where its name alone does not say it (``blendedit edit --help``).
PRESET_HELP: dict[str, str] = {
    "realtime-sd-turbo": "SD-Turbo: euler-trailing, 4 steps, guidance 1, 512 px",
    "realtime-sdxl-turbo": "SDXL-Turbo: euler-a-trailing, 4 steps, guidance 1, 512 px",
    "realtime-lcm": "SD or SDXL with an LCM-LoRA: lcm, 4 steps, guidance 1",
    "realtime-lcm-distilled": "an LCM-distilled UNet: lcm, 4 steps, guidance 8 as its w input",
    "realtime-lightning": "SDXL-Lightning 4-step: euler-trailing, 4 steps, guidance 1",
    "realtime-schnell": "FLUX.1-schnell: flow-euler, 4 steps, no guidance",
}


def preset_on(name: str, base: EditConfig) -> EditConfig:
    """Preset ``name`` applied on ``base`` (e.g. a model family's defaults): only the fields the
    preset sets (those that differ from EditConfig's defaults) replace the base's."""
    p, d = preset(name), EditConfig()
    fields = (f.name for f in dataclasses.fields(p))
    return base.replace(**{k: getattr(p, k) for k in fields if getattr(p, k) != getattr(d, k)})


def preset(name: str) -> EditConfig:
    if name not in PRESETS:
        raise InputError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_seeds(
    n: int, seed: int | None, seeds: Sequence[int] | None, generator: torch.Generator | None
) -> list[int]:
    """One seed per candidate: explicit ``seeds``; else ``seed``, seed + 1, ...; else drawn from
    ``generator``. Recorded in each result, so any one result can be regenerated alone."""
    if seeds is not None:
        out = [int(s) for s in seeds]
        if not out or any(not 0 <= s < 2**63 for s in out):
            raise InputError(
                f"seeds: {list(seeds)!r} must be a non-empty list of ints in [0, 2**63)"
            )
        return out
    if seed is None:
        if generator is None:
            raise InputError(
                "seed: pass seed=INT or generator=torch.Generator (no hidden randomness)"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return [seed + i for i in range(n)]
