"""Chroma (lodestones 2025): FLUX.1-schnell's rectified-flow transformer with the modulation of
every block computed by one small network from the timestep alone (the "distilled guidance
layer", ``approximator_*``), T5-XXL text only (no CLIP pooled input) with its padding masked out,
and true classifier-free guidance with a negative prompt (no guidance embedding).

Latents are FLUX.1's: 16 channels packed in 2x2 patches (``common.pack``); the loop keeps them
unpacked and the mask works on whole tokens (a thin stroke survives, ``Backbone.patch_size``).
``ChromaInpaintPipeline`` blends ``scale_noise(z0, t_{i+1})`` after every step like BLD and is the
parity reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.files import has_key
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn

# -- bench presets: Chroma1-HD (lodestones/Chroma1-HD, "8.9B"): FLUX.1-schnell's 19 double- and 38
# single-stream blocks, the modulation approximator (5 layers, 5120 wide), T5-XXL ---------------

# lodestones/Chroma1-HD/scheduler: FLUX.1-schnell's, no shift (diffusers issue #12112 lists its
# timesteps); the tiny model shifts by the token count (FLUX.1-dev's) so that the tests see mu.
_FLOW = {**P.FLOW, "shift": 1.0, "use_dynamic_shifting": False}
_TINY_FLOW = {
    **P.FLOW,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
_LATENTS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's VAE
_CATALOGUE = {
    "chroma": P.Architecture(
        {
            "transformer": {  # ChromaTransformer2DModel of Chroma1-HD
                "patch_size": 1,
                "in_channels": 64,  # 16 latent channels x 2 x 2 packed
                "num_layers": 19,
                "num_single_layers": 38,
                "attention_head_dim": 128,
                "num_attention_heads": 24,
                "joint_attention_dim": 4096,  # T5-XXL
                "axes_dims_rope": (16, 56, 56),
                "approximator_num_channels": 64,
                "approximator_hidden_dim": 5120,
                "approximator_layers": 5,
            },
            "vae": {**P.FLOW_VAE, **_LATENTS},
            "text": P.T5_XXL,
        },
        1024,
        scheduler=_FLOW,
        batch=4,
        source="lodestones/Chroma1-HD",
    ),
    "tiny-chroma": P.Architecture(  # tests/tiny_models.py tiny_chroma_parts
        {
            "transformer": {
                "patch_size": 1,
                "in_channels": 64,
                "num_layers": 1,
                "num_single_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 64,
                "axes_dims_rope": (4, 4, 8),
                "approximator_num_channels": 8,
                "approximator_hidden_dim": 32,
                "approximator_layers": 1,
            },
            "vae": {**P.TINY_FLOW_VAE, **_LATENTS},
            "text": P.TINY_T5,
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_TINY_FLOW,
        batch=4,
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "chroma": (
            P.CacheVerdict(
                "default",
                "taylorseer",
                27,
                19,
                0.651,
                "chroma, 128 px, from 1+2 of 19+38 blocks, cache-bench.json",
                None,
            ),
        ),
    },
)


class Chroma(C.OneTextEncoder, Backbone):
    """Chroma: ``transformer`` (ChromaTransformer2DModel), ``text_encoder`` (T5-XXL encoder)."""

    family = "chroma"
    name = "Chroma"
    title = "Chroma"
    pipelines = ("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline")
    catalogue = _CATALOGUE
    reference_pipeline = "ChromaInpaintPipeline"
    single_file = True  # lodestones' transformer file (Chroma1-HD.safetensors), --model-config
    # --lora: ChromaPipeline's: FLUX.1's, its text_encoder weights into T5
    lora_loader = "FluxLoraLoaderMixin"
    # ChromaPipeline's defaults: 35 steps, true CFG at 5.0.
    defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 35,
        "guidance_scale": 5.0,
        "scheduler": "flow-euler",
    }
    max_sequence_length: int = 512  # T5 tokens (ChromaPipeline's default)

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any
    ):
        if "guidance_embeds" not in transformer.config:  # what ChromaInpaintPipeline reads; the
            transformer.register_to_config(guidance_embeds=False)  # published config.json has it
        super().__init__(vae, transformer, text_encoder, tokenizer, scheduler)

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """lodestones' layout (FLUX.1's ``double_blocks``/``single_blocks`` names) or diffusers':
        the modulation approximator ``distilled_guidance_layer``, which no other family has."""
        return has_key(keys, r"distilled_guidance_layer\.in_proj\.weight")

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A folder or hub id; a transformer file with the other parts from ``--model-config``."""
        p = load_pipeline("ChromaPipeline", {}, model, opts)
        return cls(p.vae, p.transformer, p.text_encoder, p.tokenizer, p.scheduler)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """Chroma: the pruned-modulation FLUX transformer, FLUX.1's VAE, T5-XXL (the
        character-level tokenizer stands in for T5's: random weights need ids in range only)."""
        from diffusers import AutoencoderKL, ChromaTransformer2DModel

        with torch.device(device):
            transformer = ChromaTransformer2DModel(**parts["transformer"])
            vae = AutoencoderKL(**parts["vae"])
            text = C.t5_encoder(parts["text"])
        return cls(vae, transformer, text, C.clip_tokenizer(workdir), scheduler)

    @property
    def patch_size(self) -> int:
        return 2  # 2x2 latent cells per token

    @property
    def native_size(self) -> int:
        return 1024

    @property
    def model_in_channels(self) -> int:
        return int(self.vae.config.latent_channels) * 4  # packed 2x2 patches

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """ChromaPipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the token
        count where the scheduler shifts dynamically (SD3 paper section 5.3.2)."""
        return C.token_shift(self.scheduler, num_steps, (latent_hw[0] // 2) * (latent_hw[1] // 2))

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> ((1, T, D) T5 states, (1, T) attention mask): the tokens and one padding token
        after them are attended (ChromaPipeline's rule), the rest is masked out."""
        tok = C.tokenize(self.tokenizer, prompt, self.max_sequence_length)
        mask = tok.attention_mask.to(self.device)  # (1, T)
        states = self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]
        keep = torch.arange(mask.shape[1], device=self.device)[None] <= mask.sum(1, keepdim=True)
        return states.to(self.dtype), keep.to(self.dtype)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """The prompt and the negative ("" when none, as ChromaPipeline encodes it)."""
        cond, mask = self.encode_prompt(prompt)
        uncond, mask_u = self.encode_prompt(negative)
        return Conditioning(cond, uncond, {"mask": mask}, {"mask": mask_u})

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        """One transformer call per run of parts sharing a T5 mask (the negative's and the
        prompt's differ in length: two calls of B, as ChromaPipeline makes them), each with its
        mask once, (1, T + N), broadcast over the run's rows. The transformer expands the mask
        to (batch, 1, T + N, T + N) in every block: one call of 2B with a mask per row made
        twice the masks of diffusers' two calls and cost 1.17x its step on the tiny preset (1
        CPU thread, docs/benchmarks.md); the outputs are the same to the bit. While a step
        cache's hooks are on the transformer, one call of 2B with a mask per row: the caches
        count calls as steps and some keep one state for every call (Pyramid Attention
        Broadcast would give the prompt's call the negative's attention)."""
        context, added = self.stack(c, batch, parts)  # (P * B, T, D), mask (P * B, T)
        txt_ids = torch.zeros(context.shape[1], 3, device=self.device, dtype=self.dtype)
        split = _runs(added["mask"][::batch], batch)  # [(rows, (1, T) mask)]
        whole = [(slice(None), added["mask"])]  # one call, (P * B, T) mask
        img_ids: dict[tuple[int, int], torch.Tensor] = {}  # made once per latent size
        masks: dict[tuple[bool, int, int, int], torch.Tensor] = {}  # (k, T + N) per run, size

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 16, h, w)
            h, w = z.shape[-2:]
            if (h, w) not in img_ids:
                img_ids[h, w] = C.image_ids(h, w).to(self.device, self.dtype)
            time = t.expand(len(z)).to(z.dtype) / 1000
            hooked = _hooked(self.unet)
            outs = []
            for i, (rows, mask) in enumerate(whole if hooked else split):
                if (hooked, i, h, w) not in masks:  # image tokens: all attended
                    ones = mask.new_ones(len(mask), (h // 2) * (w // 2))
                    masks[hooked, i, h, w] = torch.cat([mask, ones], 1)
                out = self.unet(
                    hidden_states=C.pack(z[rows]), timestep=time[rows],
                    encoder_hidden_states=context[rows], txt_ids=txt_ids, img_ids=img_ids[h, w],
                    attention_mask=masks[hooked, i, h, w], return_dict=False,
                )[0]  # fmt: skip
                outs.append(out)  # (rows, N, 64) tokens
            return C.unpack(outs[0] if len(outs) == 1 else torch.cat(outs), h, w)

        return denoise

    def reference_embeddings(self, prompt: str, negative: str, n: int) -> dict[str, Any]:
        """blendedit's T5 states and masks for diffusers' Chroma inpaint pipeline, ``n`` times."""
        cond, mask = self.encode_prompt(prompt)
        uncond, mask_u = self.encode_prompt(negative)
        return {
            "prompt_embeds": cond.expand(n, -1, -1),  # (n, T, 4096)
            "prompt_attention_mask": mask.expand(n, -1),  # (n, T)
            "negative_prompt_embeds": uncond.expand(n, -1, -1),
            "negative_prompt_attention_mask": mask_u.expand(n, -1),
            "num_images_per_prompt": 1,
        }

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The text and T5 length (ChromaInpaintPipeline's own default is 256 tokens)."""
        given = super().reference_prompt(prompt, negative, n, embeddings)
        return {**given, "max_sequence_length": self.max_sequence_length}


def _runs(masks: torch.Tensor, batch: int) -> list[tuple[slice, torch.Tensor]]:
    """(P, T) text masks, one per part of ``batch`` rows -> the runs of consecutive parts with
    the same mask: their rows of the (P * B) batch and the mask (1, T)."""
    runs: list[tuple[slice, torch.Tensor]] = []
    for i, mask in enumerate(masks):
        if runs and torch.equal(runs[-1][1][0], mask):
            runs[-1] = (slice(runs[-1][0].start, (i + 1) * batch), runs[-1][1])
        else:
            runs.append((slice(i * batch, (i + 1) * batch), masks[i : i + 1]))
    return runs


def _hooked(module: torch.nn.Module) -> bool:
    """diffusers' hooks (a step cache's: ``diffusers.hooks.HookRegistry``) on ``module`` or in it."""
    return any(
        getattr(getattr(m, "_diffusers_hook", None), "hooks", None) for m in module.modules()
    )
