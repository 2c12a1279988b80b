"""The paper's own backbone: the CompVis LDM text-to-image model (Rombach et al. 2022; 1.45B,
``CompVis/ldm-text2im-large-256``): LDMBert text encoder with a BERT tokenizer, a KL-f8 VAE, a
UNet conditioned on LDMBert's hidden states, 256x256. The BLD paper's numbers come from it.

The family's detection (``LDMTextToImagePipeline``; no single files), loading, random-weight
builder, bench presets (LDM-1.45B) and diffusers reference (SD's inpaint pipeline, fed LDMBert's
embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.errors import InputError
from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Configs, LoadOptions, Name
from blendedit.latent.backbones.sd import StableDiffusion
from blendedit.models import load_cached_first

# The original LDM DDIM sampler in diffusers' terms (``../shared/notes/backbones.md`` section 3):
# "linear" betas of sqrt-space = scaled_linear, timesteps 1, 21, ..., 981 = leading with offset 1,
# alphas_prev[0] = alphacums[0] = set_alpha_to_one False.
LDM_SAMPLER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
    "clip_sample": False,
}

# -- bench presets ---------------------------------------------------------------------------------

_LDM_DDIM = {"_class_name": "DDIMScheduler", **LDM_SAMPLER}  # the original LDM sampler
_LDM_BERT = {  # LDM-1.45B's text encoder: LDMBertConfig's defaults = txt2img-1p4B-eval.yaml
    "vocab_size": 30522,
    "max_position_embeddings": 77,
    "encoder_layers": 32,
    "encoder_ffn_dim": 5120,
    "encoder_attention_heads": 8,
    "head_dim": 64,
    "d_model": 1280,
    "pad_token_id": 0,
}
_CATALOGUE = {
    "ldm-1.45b": P.Architecture(  # Rombach et al. 2022, the BLD paper's model: 256x256
        {
            "unet": {  # model_channels 320, channel_mult (1, 2, 4, 4), 8 heads, context 1280
                **P.SD_UNET,
                "sample_size": 32,
                "cross_attention_dim": 1280,
                "attention_head_dim": 8,
            },
            "vae": {**P.SD_VAE, "sample_size": 256},  # KL-f8
            "text": _LDM_BERT,
        },
        256,
        scheduler=_LDM_DDIM,
        batch=24,  # the BLD paper's Table 2 setting (a ranked batch of 24)
        source="CompVis/ldm-text2im-large-256",
    ),
    "tiny-ldm": P.Architecture(  # LDM-1.45B's layout at toy size (tests/test_latent_ldm.py)
        {
            "unet": P.TINY_UNET,
            "vae": P.TINY_VAE,
            "text": {
                **_LDM_BERT,
                "vocab_size": 200,
                "encoder_layers": 2,
                "encoder_ffn_dim": 37,
                "encoder_attention_heads": 2,
                "head_dim": 16,
                "d_model": 32,
            },
        },
        128,
        clip=P.TINY_CLIP,
        scheduler=_LDM_DDIM,
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "ldm-1.45b": (
            P.CacheVerdict(
                "default", "deepcache", 38, 25, 0.181, "sd2-base, 256 px, cache-bench.json", True
            ),
        ),
    },
)


class LatentDiffusion(StableDiffusion):
    """LDM-1.45B. The conditioning is SD 1.x's (hidden states of the whole padded prompt, the
    empty prompt encoded for guidance), only the encoder is LDMBert (77 tokens, 1280 wide).

    diffusers has no LDM inpaint pipeline; its SD one (:meth:`inpaint_reference`) is the same loop
    on SD1-shaped parts (``../shared/notes/backbones.md`` section 3): call it with
    ``prompt_embeds`` and ``negative_prompt_embeds`` from :meth:`encode_prompt` (it cannot
    tokenize for LDMBert)."""

    family = "ldm"
    name = "LDM"
    title = "the CompVis LDM"
    pipelines = ("LDMTextToImagePipeline",)
    single_file = False
    bare_folder = False
    lora_loader = ""  # LDMTextToImagePipeline loads no LoRA
    catalogue = _CATALOGUE
    # The paper's setting: DDIM 50 steps, eta 0, guidance 5, 256x256 (appendix C; SPEC 3).
    defaults: ClassVar[dict[str, Any]] = {"guidance_scale": 5.0}

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A diffusers folder or hub id (``vqvae/``, ``unet/``, ``bert/``, ``tokenizer/``), with
        the original LDM sampler (:data:`LDM_SAMPLER`) over the folder's scheduler config."""
        if Path(model).is_file():
            raise InputError(
                f"model: {str(model)!r}: the CompVis LDM loads from a diffusers folder or hub id "
                "(CompVis/ldm-text2im-large-256), not a single file"
            )

        def load(local_only: bool) -> Backbone:
            from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
            from diffusers.pipelines.latent_diffusion import LDMBertModel
            from transformers import BertTokenizer

            src = str(model)
            kw: dict[str, Any] = {"local_files_only": local_only}
            dt = {"torch_dtype": opts.dtype, **kw}
            sched = DDIMScheduler.load_config(src, subfolder="scheduler", **kw)
            return cls(
                AutoencoderKL.from_pretrained(src, subfolder="vqvae", **dt),
                UNet2DConditionModel.from_pretrained(src, subfolder="unet", **dt),
                LDMBertModel.from_pretrained(src, subfolder="bert", **dt),
                BertTokenizer.from_pretrained(src, subfolder="tokenizer", **kw),
                DDIMScheduler.from_config({**sched, **LDM_SAMPLER}),
            )

        return load_cached_first("model", str(model), load, opts.local_files_only)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """The CompVis LDM: UNet, KL-f8 VAE, LDMBert with a BERT tokenizer."""
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
            LDMBertConfig,
            LDMBertModel,
        )
        from transformers import BertTokenizer

        with torch.device(device):
            unet, vae = C.unet_and_vae(parts)
            bert = LDMBertModel(LDMBertConfig(**parts["text"]))
        vocab = C.write_bert_vocab(workdir / "bert")
        max_len = parts["text"]["max_position_embeddings"]
        return cls(vae, unet, bert, BertTokenizer(str(vocab), model_max_length=max_len), scheduler)

    def reference_embeddings(self, prompt: str, negative: str, n: int) -> dict[str, Any]:
        """diffusers' SD inpaint pipeline cannot tokenize for LDMBert: it gets the embeddings
        (it repeats given embeddings ``n`` times itself)."""
        return {
            "prompt_embeds": self.encode_prompt(prompt),  # (1, 77, 1280)
            "negative_prompt_embeds": self.encode_prompt(negative),
            "num_images_per_prompt": n,
        }
