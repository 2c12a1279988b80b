"""FLUX.1 dev and schnell (Black Forest Labs 2024): a rectified-flow transformer on 16-channel
latents packed in 2x2 patches (64 values per token), CLIP-L pooled + T5-XXL text, a guidance
embedding (dev; schnell has none) instead of classifier-free guidance, and a resolution-dependent
timestep shift.

The loop keeps latents unpacked (B, 16, h, w): packing is a permutation, so blending packed or
unpacked tensors is the same (``../shared/notes/backbones.md`` section 2); only the transformer
sees tokens. The latent mask works on whole tokens: a 2x2 patch is edited when any of its cells
is (``Backbone.patch_size``), so a thin stroke still survives. ``FluxInpaintPipeline`` blends
after every step like BLD and is the parity reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from blendedit.latent.backbones.base import Backbone, Conditioning, Size
from blendedit.latent.backbones.sd import tokenize
from blendedit.latent.backbones.sd3 import calculate_shift
from blendedit.latent.sampling import ModelFn


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C) tokens: each 2x2 patch's C x 2 x 2 values."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of :func:`pack`."""
    b, _, d = tokens.shape
    z = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h/2 * w/2, 3) rotary position ids of the tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class Flux(Backbone):
    """FLUX.1: ``transformer`` (FluxTransformer2DModel), ``text_encoder`` (CLIP-L, pooled only),
    ``text_encoder_2`` (T5-XXL)."""

    family: ClassVar[str] = "flux"
    flow: ClassVar[bool] = True

    def __init__(
        self,
        vae: Any,
        transformer: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler: Any,
        max_sequence_length: int | None = None,
    ):
        self.vae, self.unet, self.scheduler = vae, transformer, scheduler
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        # T5 tokens: 512 for dev, 256 for schnell (diffusers' docs)
        self.max_sequence_length = max_sequence_length or (512 if self.is_dev else 256)
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    @property
    def is_dev(self) -> bool:
        """dev is guidance-distilled (a guidance embedding); schnell is timestep-distilled."""
        return bool(self.unet.config.guidance_embeds)

    @staticmethod
    def defaults_for(dev: bool) -> dict[str, Any]:
        """dev: FluxPipeline's 28 steps at guidance 3.5; schnell: 4 steps, no guidance."""
        if dev:
            return {"num_inference_steps": 28, "guidance_scale": 3.5, "scheduler": "flow-euler"}
        return {"num_inference_steps": 4, "guidance_scale": 1.0, "scheduler": "flow-euler"}

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.defaults_for(self.is_dev)

    def modules(self) -> dict[str, Any]:
        return {
            "vae": self.vae, "unet": self.unet,
            "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
        }  # fmt: skip

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder, self.text_encoder_2]

    @property
    def patch_size(self) -> int:
        return 2  # 2x2 latent cells per token

    @property
    def native_size(self) -> int:
        return 1024

    @property
    def model_in_channels(self) -> int:
        return int(self.vae.config.latent_channels) * 4  # packed 2x2 patches

    @property
    def guidance_embedded(self) -> bool:
        return True  # dev embeds the scale; schnell takes none: one pass either way

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """FluxPipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the token count."""
        cfg = self.scheduler.config
        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        mu = calculate_shift(cfg, seq, max_shift=1.15)
        return {"sigmas": np.linspace(1.0, 1 / num_steps, num_steps).tolist(), "mu": mu}

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> ((1, T, D) T5 states, (1, P) CLIP pooled output)."""
        ids = tokenize(self.tokenizer, prompt, self.tokenizer.model_max_length).input_ids
        pooled = self.text_encoder(ids.to(self.device), output_hidden_states=False).pooler_output
        ids2 = tokenize(self.tokenizer_2, prompt, self.max_sequence_length).input_ids
        t5 = self.text_encoder_2(ids2.to(self.device), output_hidden_states=False)[0]
        return t5.to(self.dtype), pooled.to(self.dtype)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """No unconditional branch: FLUX.1 has no classifier-free guidance (the negative prompt
        is not used)."""
        cond, pooled = self.encode_prompt(prompt)
        return Conditioning(cond, cond, {"pooled": pooled}, {"pooled": pooled})

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, added = self.stack(c, batch, parts)  # (B, T, D), pooled (B, P)
        n = len(context)
        guidance = (
            torch.full((n,), guidance_scale, device=self.device, dtype=torch.float32)
            if self.is_dev
            else None
        )
        txt_ids = torch.zeros(context.shape[1], 3, device=self.device, dtype=self.dtype)

        img_ids: dict[tuple[int, int], torch.Tensor] = {}  # made once per latent size

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (B, 16, h, w)
            h, w = z.shape[-2:]
            if (h, w) not in img_ids:
                img_ids[h, w] = image_ids(h, w).to(self.device, self.dtype)
            out = self.unet(
                hidden_states=pack(z), timestep=t.expand(n) / 1000, guidance=guidance,
                pooled_projections=added["pooled"], encoder_hidden_states=context,
                txt_ids=txt_ids, img_ids=img_ids[h, w], return_dict=False,
            )[0]  # fmt: skip
            return unpack(out, h, w)

        return denoise

    def inpaint_reference(self, scheduler: Any) -> Any:
        from diffusers import FluxInpaintPipeline

        return FluxInpaintPipeline(
            scheduler=scheduler, vae=self.vae, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2, transformer=self.unet,
        )  # fmt: skip
