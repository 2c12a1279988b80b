"""Stable Diffusion XL (base, fine-tunes, refiner): two CLIP text encoders, pooled text embedding
and size/crop micro-conditioning (Podell et al. 2023, section 2.2).

The family's detection, loading, random-weight builder, bench presets (SDXL base, SDXL-Turbo) and
diffusers reference (``StableDiffusionXLInpaintPipeline``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.files import read_json
from blendedit.latent.backbones.loading import own_scheduler
from blendedit.latent.sampling import ModelFn
from blendedit.models import from_single_file, load_cached_first

# -- bench presets ---------------------------------------------------------------------------------

_SDXL_EULER = {  # stabilityai/stable-diffusion-xl-base-1.0/scheduler
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
}
_SDXL_TURBO_EULER_A = {  # stabilityai/sdxl-turbo/scheduler: Euler ancestral, trailing spacing
    **_SDXL_EULER,
    "_class_name": "EulerAncestralDiscreteScheduler",
    "timestep_spacing": "trailing",
}
_SDXL_PARTS: dict[str, dict[str, Any]] = {
    "unet": {
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
        "up_block_types": ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + pooled 1280
        "cross_attention_dim": 2048,  # CLIP-L 768 + bigG 1280, concatenated
        "sample_size": 128,
    },
    "vae": {
        **P.SD_VAE,
        "scaling_factor": 0.13025,
        "force_upcast": True,
        "sample_size": 1024,
    },
    "text": P.CLIP_L_TEXT,
    "text_2": P.OPENCLIP_BIGG_TEXT,
}
_TINY_SDXL_UNET = {  # tests/tiny_models.py tiny_sdxl_*: diffusers' own tiny SDXL shape
    **P.TINY_UNET,
    "layers_per_block": 2,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "transformer_layers_per_block": (1, 2),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,  # 6 time ids + pooled 32
    "cross_attention_dim": 32 + 64,  # both encoders' widths
}
_CATALOGUE = {
    "sdxl": P.Architecture(  # Podell et al. 2023: 2.6B UNet, two text encoders, 1024x1024
        _SDXL_PARTS,
        1024,
        scheduler=_SDXL_EULER,
        batch=4,  # the official BLD SDXL script's batch (text_editing_SDXL.py)
        source="stabilityai/stable-diffusion-xl-base-1.0",
    ),
    # SDXL-Turbo (Sauer et al. 2023): SDXL base's networks, trained at 512x512, trailing Euler-a.
    "sdxl-turbo": P.Architecture(
        {
            **_SDXL_PARTS,
            "unet": {**_SDXL_PARTS["unet"], "sample_size": 64},
            "vae": {**_SDXL_PARTS["vae"], "sample_size": 512},
        },
        512,
        scheduler=_SDXL_TURBO_EULER_A,
        batch=8,
        source="stabilityai/sdxl-turbo",
        realtime="realtime-sdxl-turbo",
    ),
    # SDXL inpainting 0.1 (diffusers): SDXL base's networks with a 9-channel UNet (issue 19).
    "sdxl-inpaint": P.Architecture(
        {**_SDXL_PARTS, "unet": {**_SDXL_PARTS["unet"], "in_channels": 9}},
        1024,
        scheduler=_SDXL_EULER,
        batch=4,
        source="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    ),
    "tiny-sdxl": P.Architecture(
        {
            "unet": _TINY_SDXL_UNET,
            "vae": {**P.TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True},
            "text": P.TINY_TEXT,  # CLIP-L stand-in
            # bigG stand-in: wider than the first (as in the real pair), exact GELU, projection
            "text_2": {
                **P.TINY_TEXT,
                "hidden_size": 64,
                "num_hidden_layers": 10,
                "hidden_act": "gelu",
            },
        },
        128,
        clip=P.TINY_CLIP,
        scheduler=_SDXL_EULER,
        realtime="realtime-sdxl-turbo",  # the code path of `--preset sdxl-turbo --realtime`
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "sdxl": (
            P.CacheVerdict(
                "default", "deepcache", 38, 25, 0.043, "sdxl, 128 px, cache-bench.json", True
            ),
            P.CacheVerdict(
                "realtime-lcm", "deepcache", 3, 2, 0.043, "sdxl, 128 px, cache-bench.json", False
            ),
            P.CacheVerdict(
                "realtime-lcm-distilled",
                "deepcache",
                3,
                2,
                0.043,
                "sdxl, 128 px, cache-bench.json",
                False,
            ),
            P.CacheVerdict(
                "realtime-lightning",
                "deepcache",
                3,
                2,
                0.043,
                "sdxl, 128 px, cache-bench.json",
                False,
            ),
        ),
        "sdxl-turbo": (
            P.CacheVerdict(
                "default", "deepcache", 38, 25, 0.043, "sdxl, 128 px, cache-bench.json", True
            ),
            P.CacheVerdict(
                "realtime-sdxl-turbo",
                "deepcache",
                3,
                2,
                0.043,
                "sdxl, 128 px, cache-bench.json",
                False,
            ),
        ),
        "sdxl-inpaint": (
            P.CacheVerdict(
                "default", "deepcache", 50, 33, 0.043, "sdxl, 128 px, cache-bench.json", True
            ),
        ),
    },
)


_ARGS = ("vae", "unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def _load_folder(name: str, dtype: torch.dtype | None, local_only: bool) -> dict[str, Any]:
    """The parts of a diffusers SDXL folder or hub id (the refiner has no first text encoder)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    index = read_json(name, "model_index.json", local_only)
    kw: dict[str, Any] = {"local_files_only": local_only}
    dt = {"torch_dtype": dtype, **kw}
    has_te1 = (index.get("text_encoder") or [None])[0] is not None
    return {
        "vae": AutoencoderKL.from_pretrained(name, subfolder="vae", **dt),
        "unet": UNet2DConditionModel.from_pretrained(name, subfolder="unet", **dt),
        "text_encoder": CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **dt)
        if has_te1
        else None,
        "tokenizer": CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", **kw)
        if has_te1
        else None,
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
            name, subfolder="text_encoder_2", **dt
        ),
        "tokenizer_2": CLIPTokenizer.from_pretrained(name, subfolder="tokenizer_2", **kw),
        "scheduler": own_scheduler(DDIMScheduler.load_config(name, subfolder="scheduler", **kw)),
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
    }


class StableDiffusionXL(C.InpaintingUNet, Backbone):
    """SDXL: ``text_encoder`` (CLIP ViT-L, None in the refiner) and ``text_encoder_2`` (OpenCLIP
    bigG with projection); penultimate hidden states concatenated (B, 77, 2048), the pooled
    projection of encoder 2 (B, 1280) and the time ids ``original + crop + target`` (B, 6)."""

    family = "sdxl"
    name = "SDXL"
    title = "SDXL"
    pipelines = (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    )
    single_file = True
    lora_loader = "StableDiffusionXLLoraLoaderMixin"
    catalogue = _CATALOGUE
    reference_pipeline = "StableDiffusionXLInpaintPipeline"
    # The official BLD SDXL script (text_editing_SDXL.py): guidance 5 at 1024x1024, 50 steps.
    defaults: ClassVar[dict[str, Any]] = {"guidance_scale": 5.0}
    # The official BLD SDXL script (text_editing_SDXL.py): guidance 5 at 1024x1024, 50 steps.
    fp16_vae_upcast = True

    def __init__(
        self,
        vae: Any,
        unet: Any,
        text_encoder: Any | None,
        text_encoder_2: Any,
        tokenizer: Any | None,
        tokenizer_2: Any,
        scheduler: Any,
        force_zeros_for_empty_prompt: bool = True,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
    ):
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.aesthetic_score, self.negative_aesthetic_score = (
            aesthetic_score,
            negative_aesthetic_score,
        )
        for m in self.modules().values():
            m.eval().requires_grad_(False)
        vae.to(self.vae_dtype_for(vae.dtype))  # float32 when loaded in fp16 (force_upcast)

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """An A1111/ComfyUI file: the text encoders under ``conditioner.embedders.``."""
        C.refuse_inpainting_unet(keys, name)
        return C.has_prefix(keys, "conditioner.embedders.")

    # StableDiffusionXLInpaintPipeline's guidance 7.5 from (nearly: strength 0.9999) pure noise
    # for a 9-channel UNet, with --blend's default chosen by docs/eval-toyworld/inpaint.md.
    inpaint_defaults: ClassVar[dict[str, Any]] = {
        "guidance_scale": 7.5, "blend_start": 0.0, "blend": C.INPAINT_BLEND,
    }  # fmt: skip

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        from diffusers import StableDiffusionXLPipeline

        path = Path(model)
        if path.is_file():
            pipe = from_single_file(
                StableDiffusionXLPipeline, path, opts.config, torch_dtype=opts.dtype,
                add_watermarker=False,
            )  # fmt: skip
            parts = {k: pipe.components.get(k) for k in _ARGS}
            zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
            return cls(**parts, force_zeros_for_empty_prompt=zeros)
        p = load_cached_first(
            "model", str(model), lambda local: _load_folder(str(model), opts.dtype, local),
            opts.local_files_only,
        )  # fmt: skip
        return cls(**p)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """SDXL: text_time UNet, VAE, CLIP-L and OpenCLIP bigG (with projection) text encoders."""
        with torch.device(device):
            unet, vae = C.unet_and_vae(parts)
            text = C.clip_text(parts["text"])
            text_2 = C.clip_text(parts["text_2"], projection=True)
        tok = C.clip_tokenizer(workdir)
        return cls(vae, unet, text, text_2, tok, tok, scheduler)

    def modules(self) -> dict[str, Any]:
        mods = {"vae": self.vae, "unet": self.unet, "text_encoder_2": self.text_encoder_2}
        if self.text_encoder is not None:
            mods["text_encoder"] = self.text_encoder
        return mods

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder, self.text_encoder_2]  # the refiner has no first one (None)

    @property
    def requires_aesthetics_score(self) -> bool:
        """The refiner conditions on (original, crop, aesthetic score): 5 ids instead of 6."""
        cfg = self.unet.config
        n = (self.unet.add_embedding.linear_1.in_features - self._pooled_dim) // (
            cfg.addition_time_embed_dim
        )
        return n == 5

    @property
    def _pooled_dim(self) -> int:
        return int(self.text_encoder_2.config.projection_dim)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> ((1, 77, D1 + D2) penultimate hidden states, (1, P) pooled projection)."""
        states, pooled = [], None
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        for tokenizer, encoder in pairs:
            if encoder is None:
                continue
            tok = C.tokenize(tokenizer, prompt, tokenizer.model_max_length)
            out = encoder(tok.input_ids.to(self.device), output_hidden_states=True)
            pooled = out[0]  # the last encoder's projected pooled output, (1, P)
            states.append(out.hidden_states[-2])
        assert pooled is not None
        return torch.cat(states, dim=-1), pooled

    def time_ids(self, work_size: Size, source_size: Size, aesthetic: float) -> torch.Tensor:
        """Micro-conditioning (1, 6): original size = the region's real (H, W) in photo pixels
        (a small crop upscaled says so), crop top-left (0, 0), target = the working (H, W)."""
        (sw, sh), (ww, wh) = source_size, work_size
        ids = [sh, sw, 0, 0] + ([aesthetic] if self.requires_aesthetics_score else [wh, ww])
        return torch.tensor([ids], dtype=self.dtype, device=self.device)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        cond, pooled = self.encode_prompt(prompt)
        if not negative and self.force_zeros_for_empty_prompt:  # diffusers' SDXL convention
            uncond, pooled_u = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, pooled_u = self.encode_prompt(negative)
        ids = self.time_ids(work_size, source_size, self.aesthetic_score)
        ids_u = self.time_ids(work_size, source_size, self.negative_aesthetic_score)
        return Conditioning(
            cond, uncond, {"text_embeds": pooled, "time_ids": ids},
            {"text_embeds": pooled_u, "time_ids": ids_u},
        )  # fmt: skip

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, added = self.stack(c, batch, parts)  # (P * B, 77, 2048), text_embeds, time_ids
        cond_w = C.lcm_guidance_embedding(self.unet, guidance_scale, len(context), self.device)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 4, h, w)
            z = C.with_image(z, c.image)  # inpainting UNet: (P * B, 9, h, w)
            return self.unet(
                z, t, encoder_hidden_states=context, added_cond_kwargs=added,
                timestep_cond=cond_w, return_dict=False,
            )[0]  # fmt: skip

        return denoise

    def reference_options(self) -> dict[str, Any]:
        return {
            "requires_aesthetics_score": self.requires_aesthetics_score,
            "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt,
            "add_watermarker": False,
        }
