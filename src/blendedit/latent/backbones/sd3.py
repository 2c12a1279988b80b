"""Stable Diffusion 3 / 3.5 (Esser et al. 2024): a rectified-flow MMDiT on 16-channel latents,
three text encoders (CLIP-L, CLIP-G, optional T5-XXL), classifier-free guidance.

In flow matching the source at level sigma is ``(1 - sigma) z0 + sigma eps`` (``schedule.py``,
"flow"), so BLD's blend is unchanged; diffusers' ``StableDiffusion3InpaintPipeline`` blends the same
way after every step and is the parity reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn

# -- bench presets: SD3.5 (Esser et al. 2024; Stability AI 2024): MMDiT, CLIP-L and CLIP-G with
# projections (SD3 takes their pooled outputs and penultimate states), T5-XXL, 16-channel VAE ----

_SD3_FLOW = {**P.FLOW, "shift": 3.0}  # stabilityai/stable-diffusion-3.5-*/scheduler
_SD3_LATENTS = {"scaling_factor": 1.5305, "shift_factor": 0.0609}  # full and tiny VAEs
_SD3_MMDIT = {  # SD3Transformer2DModel, common to SD3.5 Medium and Large
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "attention_head_dim": 64,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 2048,  # CLIP-L 768 + CLIP-G 1280 pooled
    "qk_norm": "rms_norm",
}
_SD35_TEXT_VAE = {  # SD3.5 Medium and Large: all but the transformer
    "vae": {**P.FLOW_VAE, **_SD3_LATENTS},
    "text": P.CLIP_L_TEXT,
    "text_2": P.OPENCLIP_BIGG_TEXT,
    "text_3": P.T5_XXL,
}
_CATALOGUE = {
    "sd35-medium": P.Architecture(  # MMDiT-X: self-attention beside the joint one in blocks 0-12
        {
            "transformer": {
                **_SD3_MMDIT,
                "num_layers": 24,
                "num_attention_heads": 24,
                "caption_projection_dim": 1536,  # 24 heads x 64
                "pos_embed_max_size": 384,
                "dual_attention_layers": tuple(range(13)),
            },
            **_SD35_TEXT_VAE,
        },
        1024,
        scheduler=_SD3_FLOW,
        batch=4,
        source="stabilityai/stable-diffusion-3.5-medium",
    ),
    "sd35-large": P.Architecture(
        {
            "transformer": {
                **_SD3_MMDIT,
                "num_layers": 38,
                "num_attention_heads": 38,
                "caption_projection_dim": 2432,  # 38 heads x 64
                "pos_embed_max_size": 192,
            },
            **_SD35_TEXT_VAE,
        },
        1024,
        scheduler=_SD3_FLOW,
        batch=4,
        source="stabilityai/stable-diffusion-3.5-large",
    ),
    "tiny-sd3": P.Architecture(  # tests/tiny_models.py tiny_sd3_parts, at 64 px (32x32 latents)
        {
            "transformer": {
                "sample_size": 32,
                "patch_size": 2,
                "in_channels": 16,
                "out_channels": 16,
                "num_layers": 2,
                "attention_head_dim": 8,
                "num_attention_heads": 4,
                "joint_attention_dim": 64,
                "caption_projection_dim": 32,
                "pooled_projection_dim": 64,  # 32 + 32 pooled
            },
            "vae": {**P.TINY_FLOW_VAE, **_SD3_LATENTS},
            "text": P.TINY_TEXT,
            "text_2": P.TINY_TEXT,
            "text_3": P.TINY_T5,
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_SD3_FLOW,
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "sd35-medium": (
            P.CacheVerdict(
                "default",
                "taylorseer",
                21,
                14,
                0.711,
                "sd35-medium, 128 px, cache-bench.json",
                None,
            ),
        ),
        "sd35-large": (
            P.CacheVerdict(
                "default",
                "taylorseer",
                21,
                14,
                0.611,
                "sd35-large, 128 px, from 3 of 38 blocks, cache-bench.json",
                None,
            ),
        ),
    },
)


class StableDiffusion3(Backbone):
    """SD3/SD3.5: ``transformer`` (SD3Transformer2DModel), ``text_encoder`` / ``text_encoder_2``
    (CLIPTextModelWithProjection L and G), ``text_encoder_3`` (T5, None = dropped: zeros)."""

    family = "sd3"
    name = "SD3"
    title = "SD3/3.5"
    # StableDiffusion3InpaintPipeline: refused at loading when its transformer is not 16-channel.
    pipelines = (
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "StableDiffusion3InpaintPipeline",
    )
    single_file = True
    can_drop_t5 = True
    catalogue = _CATALOGUE
    reference_pipeline = "StableDiffusion3InpaintPipeline"
    lora_loader = "SD3LoraLoaderMixin"  # the transformer, CLIP-L and CLIP-G (not T5)
    denoiser_name = "transformer"
    quantized_parts: ClassVar[dict[str, str]] = {
        "transformer": "diffusers",
        "text_encoder_3": "transformers",
    }
    # What an A1111/ComfyUI file may hold besides the transformer (component -> key prefixes);
    # the rest comes from ``--model-config``.
    file_parts: ClassVar[dict[str, tuple[str, ...]]] = {
        "vae": ("first_stage_model.",),
        "text_encoder": ("text_encoders.clip_l.",),
        "text_encoder_2": ("text_encoders.clip_g.",),
        "text_encoder_3": ("text_encoders.t5xxl.",),
    }
    # diffusers' StableDiffusion3Pipeline defaults.
    defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 28,
        "guidance_scale": 7.0,
        "scheduler": "flow-euler",
    }
    flow = True
    max_sequence_length: int = 256  # T5 tokens

    def __init__(
        self, vae: Any, transformer: Any,
        text_encoder: Any, text_encoder_2: Any, text_encoder_3: Any | None,  # None: no T5
        tokenizer: Any, tokenizer_2: Any, tokenizer_3: Any | None, scheduler: Any,
    ):  # fmt: skip
        self.vae, self.unet, self.scheduler = vae, transformer, scheduler
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = (
            text_encoder, text_encoder_2, text_encoder_3,
        )  # fmt: skip
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """An original-layout MMDiT: ``joint_blocks``."""
        return any(".joint_blocks." in k for k in keys)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """``drop_t5``: without T5-XXL (``--no-t5``)."""
        parts = {"text_encoder_3": None, "tokenizer_3": None} if opts.drop_t5 else {}
        p = load_pipeline("StableDiffusion3Pipeline", cls.file_parts, model, opts, **parts)
        return cls(
            p.vae, p.transformer, p.text_encoder, p.text_encoder_2, p.text_encoder_3,
            p.tokenizer, p.tokenizer_2, p.tokenizer_3, p.scheduler,
        )  # fmt: skip

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """SD3 / SD3.5: MMDiT, 16-channel VAE, CLIP-L and CLIP-G (with projections), T5-XXL. The
        character-level CLIP tokenizer serves T5 too (random weights need only ids in range)."""
        from diffusers import AutoencoderKL, SD3Transformer2DModel

        with torch.device(device):
            transformer = SD3Transformer2DModel(**parts["transformer"])
            vae = AutoencoderKL(**parts["vae"])
            text = C.clip_text(parts["text"], projection=True)
            text_2 = C.clip_text(parts["text_2"], projection=True)
            text_3 = C.t5_encoder(parts["text_3"])
        tok = C.clip_tokenizer(workdir)
        return cls(vae, transformer, text, text_2, text_3, tok, tok, tok, scheduler)

    @property
    def transformer(self) -> Any:
        return self.unet

    def modules(self) -> dict[str, Any]:
        mods = {"vae": self.vae, "unet": self.unet}
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self, name) is not None:
                mods[name] = getattr(self, name)
        return mods

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder, self.text_encoder_2, self.text_encoder_3]

    def drop_t5(self) -> None:
        """Run without T5-XXL (4.7B parameters): its tokens become zeros, as in diffusers."""
        self.text_encoder_3, self.tokenizer_3 = None, None

    @property
    def patch_size(self) -> int:
        return int(self.unet.config.patch_size)

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        cfg = self.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return {}
        seq = (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)
        return {"mu": C.calculate_shift(cfg, seq, max_shift=1.16)}

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> ((1, 77 + T, D_t5) context, (1, P_L + P_G) pooled): CLIP-L and CLIP-G
        penultimate states side by side, zero-padded to T5's width, then T5's tokens."""
        states, pooled = [], []
        for tok, enc in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = C.tokenize(tok, prompt, tok.model_max_length).input_ids.to(self.device)
            out = enc(ids, output_hidden_states=True)
            pooled.append(out[0])  # (1, P) projected pooled output
            states.append(out.hidden_states[-2])
        clip = torch.cat(states, dim=-1)  # (1, 77, D_L + D_G)
        width = self.unet.config.joint_attention_dim
        if self.text_encoder_3 is None:
            t5 = torch.zeros(
                1, self.max_sequence_length, width, device=self.device, dtype=clip.dtype
            )
        else:
            ids = C.tokenize(self.tokenizer_3, prompt, self.max_sequence_length).input_ids
            t5 = self.text_encoder_3(ids.to(self.device))[0]
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        cond, pooled = self.encode_prompt(prompt)
        uncond, pooled_u = self.encode_prompt(negative)  # "" is encoded, never zeroed (SD3)
        return Conditioning(cond, uncond, {"pooled": pooled}, {"pooled": pooled_u})

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, added = self.stack(c, batch, parts)  # (P * B, L, D), pooled (P * B, 2048)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 16, h, w)
            return self.unet(
                hidden_states=z, timestep=t.expand(len(z)), encoder_hidden_states=context,
                pooled_projections=added["pooled"], return_dict=False,
            )[0]  # fmt: skip

        return denoise

    def reference_embeddings(self, prompt: str, negative: str, n: int) -> dict[str, Any]:
        """blendedit's own embeddings (the same 77 CLIP + 256 T5 tokens) for diffusers' SD3
        inpaint pipeline (its decode drops ``shift_factor``, diffusers issue #13611: compare
        latents); it does not repeat given embeddings, so they come ``n`` times, one image each."""
        cond, pooled = self.encode_prompt(prompt)
        uncond, pooled_u = self.encode_prompt(negative)
        return {
            "prompt_embeds": cond.expand(n, -1, -1),  # (n, 77 + 256, 4096)
            "pooled_prompt_embeds": pooled.expand(n, -1),  # (n, 2048)
            "negative_prompt_embeds": uncond.expand(n, -1, -1),
            "negative_pooled_prompt_embeds": pooled_u.expand(n, -1),
            "num_images_per_prompt": 1,
        }
