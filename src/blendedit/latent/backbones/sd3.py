"""Stable Diffusion 3 / 3.5 (Esser et al. 2024): a rectified-flow MMDiT on 16-channel latents,
three text encoders (CLIP-L, CLIP-G, optional T5-XXL), classifier-free guidance.

In flow matching the source at level sigma is ``(1 - sigma) z0 + sigma eps`` (``schedule.py``,
"flow"), so BLD's blend is unchanged; diffusers' ``StableDiffusion3InpaintPipeline`` blends the same
way after every step and is the parity reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones.base import Backbone, Conditioning, Size
from blendedit.latent.backbones.sd import tokenize
from blendedit.latent.sampling import ModelFn


def calculate_shift(config: Any, seq_len: int, max_shift: float) -> float:
    """mu of the resolution-dependent timestep shift: linear in the number of image tokens
    (SD3 paper section 5.3.2; base_shift at base_image_seq_len tokens, max_shift at
    max_image_seq_len), read from a FlowMatch scheduler's ``config`` with diffusers' defaults;
    ``max_shift`` is the pipeline's own fallback (SD3 1.16, FLUX 1.15)."""
    base_seq, max_seq = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    slope = (max_shift - base_shift) / (max_seq - base_seq)
    return seq_len * slope + base_shift - slope * base_seq


class StableDiffusion3(Backbone):
    """SD3/SD3.5: ``transformer`` (SD3Transformer2DModel), ``text_encoder`` / ``text_encoder_2``
    (CLIPTextModelWithProjection L and G), ``text_encoder_3`` (T5, None = dropped: zeros)."""

    family: ClassVar[str] = "sd3"
    # diffusers' StableDiffusion3Pipeline defaults.
    defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 28,
        "guidance_scale": 7.0,
        "scheduler": "flow-euler",
    }
    flow: ClassVar[bool] = True
    max_sequence_length: int = 256  # T5 tokens

    def __init__(
        self,
        vae: Any,
        transformer: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        text_encoder_3: Any | None,
        tokenizer: Any,
        tokenizer_2: Any,
        tokenizer_3: Any | None,
        scheduler: Any,
    ):
        self.vae, self.unet, self.scheduler = vae, transformer, scheduler
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = (
            text_encoder, text_encoder_2, text_encoder_3,
        )  # fmt: skip
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        for m in self.modules().values():
            m.eval().requires_grad_(False)

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
        return {"mu": calculate_shift(cfg, seq, max_shift=1.16)}

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> ((1, 77 + T, D_t5) context, (1, P_L + P_G) pooled): CLIP-L and CLIP-G
        penultimate states side by side, zero-padded to T5's width, then T5's tokens."""
        states, pooled = [], []
        for tok, enc in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = tokenize(tok, prompt, tok.model_max_length).input_ids.to(self.device)
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
            ids = tokenize(self.tokenizer_3, prompt, self.max_sequence_length).input_ids
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

    def inpaint_reference(self, scheduler: Any) -> Any:
        """Its decode drops ``shift_factor`` (diffusers issue #13611): compare latents."""
        from diffusers import StableDiffusion3InpaintPipeline

        return StableDiffusion3InpaintPipeline(
            transformer=self.unet, scheduler=scheduler, vae=self.vae,
            text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3,
        )  # fmt: skip
