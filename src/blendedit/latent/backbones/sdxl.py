"""Stable Diffusion XL (base, fine-tunes, refiner): two CLIP text encoders, pooled text embedding
and size/crop micro-conditioning (Podell et al. 2023, section 2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones.base import Backbone, Conditioning, Size
from blendedit.latent.backbones.sd import lcm_guidance_embedding, tokenize
from blendedit.latent.sampling import ModelFn


class StableDiffusionXL(Backbone):
    """SDXL: ``text_encoder`` (CLIP ViT-L, None in the refiner) and ``text_encoder_2`` (OpenCLIP
    bigG with projection); penultimate hidden states concatenated (B, 77, 2048), the pooled
    projection of encoder 2 (B, 1280) and the time ids ``original + crop + target`` (B, 6)."""

    family: ClassVar[str] = "sdxl"
    # The official BLD SDXL script (text_editing_SDXL.py): guidance 5 at 1024x1024, 50 steps.
    defaults: ClassVar[dict[str, Any]] = {"guidance_scale": 5.0}
    fp16_vae_upcast: ClassVar[bool] = True

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
            tok = tokenize(tokenizer, prompt, tokenizer.model_max_length)
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
        cond_w = lcm_guidance_embedding(self.unet, guidance_scale, len(context), self.device)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 4, h, w)
            return self.unet(
                z, t, encoder_hidden_states=context, added_cond_kwargs=added,
                timestep_cond=cond_w, return_dict=False,
            )[0]  # fmt: skip

        return denoise

    def inpaint_reference(self, scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLInpaintPipeline

        return StableDiffusionXLInpaintPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=scheduler,
            requires_aesthetics_score=self.requires_aesthetics_score,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
