"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet conditioned on its hidden states."""

from __future__ import annotations

import logging
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

    def denoiser(self, c: Conditioning, batch: int) -> ModelFn:
        context = torch.cat([c.uncond.expand(batch, -1, -1), c.cond.expand(batch, -1, -1)])

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (2B, C, h, w)
            return self.unet(z, t, encoder_hidden_states=context, return_dict=False)[0]

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
