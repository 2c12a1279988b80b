"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet conditioned on its hidden states."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones.base import Backbone, Conditioning, Size
from blendedit.latent.sampling import ModelFn

logger = logging.getLogger(__name__)


def tokenize(tokenizer: Any, prompt: str, max_len: int) -> Any:
    """Pad to ``max_len``; warn once when the prompt is cut."""
    tok = tokenizer(
        prompt, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
    )
    if len(tokenizer(prompt).input_ids) > max_len:
        logger.warning("prompt longer than %d tokens; the rest is ignored", max_len)
    return tok


def lcm_guidance_embedding(
    unet: Any, guidance_scale: float, n: int, device: torch.device
) -> torch.Tensor | None:
    """An LCM-distilled UNet's guidance input (Luo et al. 2023, eq. 9: w = scale - 1 as a
    sinusoidal embedding of w * 1000, ``time_cond_proj_dim`` wide), (n, D); None otherwise."""
    dim = unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.full((n,), (guidance_scale - 1) * 1000.0)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
    emb = torch.cat([torch.sin(w[:, None] * freqs), torch.cos(w[:, None] * freqs)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(device, unet.dtype)


class StableDiffusion(Backbone):
    """SD 1.x/2.x (epsilon or v-prediction): CLIP ViT-L/14 or OpenCLIP ViT-H text encoder."""

    family: ClassVar[str] = "sd"

    def __init__(self, vae: Any, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any):
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        for m in (vae, unet, text_encoder):
            m.eval().requires_grad_(False)

    def modules(self) -> dict[str, Any]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder]

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, L, D) last hidden states, padded to the tokenizer's length."""
        enc = self.text_encoder
        max_len = min(self.tokenizer.model_max_length, enc.config.max_position_embeddings)
        tok = tokenize(self.tokenizer, prompt, max_len)
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
        cond_w = lcm_guidance_embedding(self.unet, guidance_scale, len(context), self.device)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, C, h, w)
            return self.unet(
                z, t, encoder_hidden_states=context, timestep_cond=cond_w, return_dict=False
            )[0]

        return denoise

    def inpaint_reference(self, scheduler: Any) -> Any:
        from diffusers import StableDiffusionInpaintPipeline

        return StableDiffusionInpaintPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
