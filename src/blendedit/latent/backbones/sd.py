"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet conditioned on its hidden states.

The family's detection, loading (hub id, diffusers folder, single file), random-weight builder,
bench presets (SD 1.5, SD 2.1-base, SD 2.1 768-v) and diffusers reference
(``StableDiffusionInpaintPipeline``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.errors import InputError, ModelNotFoundError
from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.sampling import ModelFn
from blendedit.models import (
    check_hub_id,
    check_single_file,
    from_single_file,
    load_cached_first,
)

# -- bench presets: the published models' parts --------------------------------------------------

_OPENCLIP_H_TEXT = {  # SD 2.x text encoder: OpenCLIP ViT-H/14 (23 of 24 layers)
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
_SD2_UNET = {
    **P.SD_UNET,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}


def _sd(
    unet: dict[str, Any], text: dict[str, Any], resolution: int, source: str, **kw: Any
) -> P.Architecture:
    vae = {**P.SD_VAE, "sample_size": resolution}
    return P.Architecture({"unet": unet, "vae": vae, "text": text}, resolution, source=source, **kw)


_CATALOGUE = {
    "sd15": _sd(
        {**P.SD_UNET, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
        P.CLIP_L_TEXT,
        512,
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ),
    "sd2-base": _sd(
        {**_SD2_UNET, "sample_size": 64},
        _OPENCLIP_H_TEXT,
        512,
        "stabilityai/stable-diffusion-2-1-base",
    ),
    "sd2": _sd(  # SD 2.1 (768-v): the same networks at 768x768
        {**_SD2_UNET, "sample_size": 96},
        _OPENCLIP_H_TEXT,
        768,
        "stabilityai/stable-diffusion-2-1",
        scheduler={**P.SD_DDIM, "prediction_type": "v_prediction"},
    ),
    # SD 1.5 inpainting (Rombach et al. 2022, RunwayML): SD 1.5 with a 9-channel UNet (issue 19)
    "sd15-inpaint": _sd(
        {
            **P.SD_UNET,
            "sample_size": 64,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "in_channels": 9,
        },
        P.CLIP_L_TEXT,
        512,
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
    ),
    # the test suite's tiny models: seconds on a CPU
    "tiny": P.Architecture(
        {"unet": P.TINY_UNET, "vae": P.TINY_VAE, "text": P.TINY_TEXT}, 128, clip=P.TINY_CLIP
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "sd15": (
            P.CacheVerdict(
                "default", "deepcache", 38, 25, 0.181, "sd2-base, 256 px, cache-bench.json", True
            ),
            P.CacheVerdict(
                "realtime-lcm",
                "deepcache",
                3,
                2,
                0.181,
                "sd2-base, 256 px, cache-bench.json",
                False,
            ),
            P.CacheVerdict(
                "realtime-lcm-distilled",
                "deepcache",
                3,
                2,
                0.181,
                "sd2-base, 256 px, cache-bench.json",
                False,
            ),
        ),
        "sd2-base": (
            P.CacheVerdict(
                "default", "deepcache", 38, 25, 0.181, "sd2-base, 256 px, cache-bench.json", True
            ),
            P.CacheVerdict(
                "realtime-sd-turbo",
                "deepcache",
                3,
                2,
                0.181,
                "sd2-base, 256 px, cache-bench.json",
                False,
            ),
        ),
        "sd2": (
            P.CacheVerdict(
                "default", "deepcache", 38, 25, 0.181, "sd2-base, 256 px, cache-bench.json", True
            ),
        ),
        "sd15-inpaint": (
            P.CacheVerdict(
                "default", "deepcache", 50, 33, 0.181, "sd2-base, 256 px, cache-bench.json", True
            ),
        ),
    },
)

# -- loading ---------------------------------------------------------------------------------------

SD_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    """The five parts of a Stable Diffusion 1.x/2.x text-to-image model."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def load_sd_components(
    model: str | os.PathLike[str],
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    config: str | None = None,
) -> SDComponents:
    """Load VAE, UNet, text encoder, tokenizer and scheduler from a hub id, a local diffusers
    folder (``model_index.json`` with ``vae/``, ``unet/``, ...) or a single checkpoint file.

    ``config`` is only for single files: a local diffusers folder (or hub id) whose configs describe
    the checkpoint, for offline use.
    """
    path = Path(model)
    name = str(model)
    if path.is_file():
        check_single_file(path, name)
        return _load_single_file(path, torch_dtype, config)
    if path.is_dir():
        missing = [s for s in SD_PARTS if not (path / s).is_dir()]
        if missing:
            raise ModelNotFoundError(
                f"model: {name!r} is a folder but not a diffusers Stable Diffusion model "
                f"(missing {', '.join(missing)}/)"
            )
    else:
        check_hub_id(name)
    parts = load_cached_first(
        "model", name, lambda local: _load_diffusers(name, torch_dtype, local), local_files_only
    )
    if parts.unet.config.in_channels not in (4, 9):
        raise InputError(
            f"model: {name!r} has a {parts.unet.config.in_channels}-channel UNet; blendedit takes "
            "a text-to-image UNet (4 channels) or an inpainting UNet (9 channels)"
        )
    return parts


def _load_diffusers(name: str, torch_dtype: torch.dtype | None, local: bool) -> SDComponents:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw: dict[str, Any] = {"local_files_only": local}
    scheduler_config = DDIMScheduler.load_config(name, subfolder="scheduler", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", **kw)
    dt = {"torch_dtype": torch_dtype, **kw}
    text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **dt)
    vae = AutoencoderKL.from_pretrained(name, subfolder="vae", **dt)
    unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", **dt)
    scheduler = DDIMScheduler.from_config(scheduler_config)
    return SDComponents(vae, unet, text_encoder, tokenizer, scheduler)


def _load_single_file(
    path: Path, torch_dtype: torch.dtype | None, config: str | None
) -> SDComponents:
    from diffusers import StableDiffusionPipeline

    pipe = from_single_file(
        StableDiffusionPipeline, path, config,
        torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False,
    )  # fmt: skip
    return SDComponents(pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)


# -- the family --------------------------------------------------------------------------------------


class StableDiffusion(C.InpaintingUNet, Backbone):
    """SD 1.x/2.x (epsilon or v-prediction): CLIP ViT-L/14 or OpenCLIP ViT-H text encoder."""

    family = "sd"
    name = "SD 1.x/2.x"
    title = "Stable Diffusion 1.x/2.x"
    # StableDiffusionInpaintPipeline: a 4-channel UNet blends; a 9-channel one is an inpainting
    # model (SD-inpainting: the mask and the masked image's latents enter the UNet).
    pipelines = (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    )
    single_file = True
    bare_folder = True  # a folder of SD parts; load_sd_components names the gaps
    lora_loader = "StableDiffusionLoraLoaderMixin"
    catalogue = _CATALOGUE
    reference_pipeline = "StableDiffusionInpaintPipeline"

    def __init__(self, vae: Any, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any):
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        for m in (vae, unet, text_encoder):
            m.eval().requires_grad_(False)

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """An A1111/ComfyUI file: the text encoder under ``cond_stage_model.`` (SDXL's sit under
        ``conditioner.embedders.``)."""
        C.refuse_inpainting_unet(keys, name)
        return C.has_prefix(keys, "cond_stage_model.") and not C.has_prefix(
            keys, "conditioner.embedders."
        )

    # StableDiffusionInpaintPipeline's full strength (blend_start 0: from pure noise) for a
    # 9-channel UNet, with --blend's default chosen by docs/eval-toyworld/inpaint.md.
    inpaint_defaults: ClassVar[dict[str, Any]] = {"blend_start": 0.0, "blend": C.INPAINT_BLEND}

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        p = load_sd_components(model, opts.dtype, opts.local_files_only, opts.config)
        return cls(p.vae, p.unet, p.text_encoder, p.tokenizer, p.scheduler)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """SD 1.x/2.x: UNet, KL-f8 VAE, one CLIP text encoder."""
        with torch.device(device):
            unet, vae = C.unet_and_vae(parts)
            text = C.clip_text(parts["text"])
        return cls(vae, unet, text, C.clip_tokenizer(workdir), scheduler)

    def modules(self) -> dict[str, Any]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder]

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, L, D) last hidden states, padded to the tokenizer's length."""
        enc = self.text_encoder
        max_len = min(self.tokenizer.model_max_length, enc.config.max_position_embeddings)
        tok = C.tokenize(self.tokenizer, prompt, max_len)
        mask = (
            tok.attention_mask.to(self.device)
            if getattr(enc.config, "use_attention_mask", False)
            else None
        )
        return enc(tok.input_ids.to(self.device), attention_mask=mask)[0]

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        return Conditioning(self.encode_prompt(prompt), self.encode_prompt(negative))

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, _ = self.stack(c, batch, parts)  # (P * B, L, D)
        cond_w = C.lcm_guidance_embedding(self.unet, guidance_scale, len(context), self.device)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, C, h, w)
            z = C.with_image(z, c.image)  # inpainting UNet: (P * B, 2C + 1, h, w)
            return self.unet(
                z, t, encoder_hidden_states=context, timestep_cond=cond_w, return_dict=False
            )[0]

        return denoise

    def reference_options(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
