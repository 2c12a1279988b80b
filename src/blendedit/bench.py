"""``blendedit bench``: time a ranked batch edit end to end and per stage, next to diffusers'
inpaint pipeline of the model's family on the same components, with random weights (speed does not
depend on the weights) of full-size architectures kept here as presets, or tiny ones for a CPU.

A preset is data: the family (one builder per family in :data:`FAMILIES`) and the diffusers /
transformers configs of the published model's parts. A later family (SD3, FLUX) is one builder and
its presets one entry each.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.latent.backbones.loading import LDM_SAMPLER, own_scheduler

if TYPE_CHECKING:
    from blendedit.latent.backbones import Backbone

# -- architectures (diffusers / transformers configs of the published models) ---------------------

_SD_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
_SD_VAE = {  # the KL-f8 autoencoder of LDM, SD 1.x/2.x and (rescaled) SDXL
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "scaling_factor": 0.18215,
}
_CLIP_L_TEXT = {  # SD 1.x and SDXL's first text encoder: OpenAI CLIP ViT-L/14
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
_OPENCLIP_H_TEXT = {  # SD 2.x text encoder: OpenCLIP ViT-H/14 (23 of 24 layers)
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
_OPENCLIP_BIGG_TEXT = {  # SDXL's second text encoder: OpenCLIP ViT-bigG/14, with its projection
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
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
_CLIP_B16 = {  # the ranking model: OpenAI CLIP ViT-B/16
    "text": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "projection_dim": 512,
    },
    "vision": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 512,
    },
    "projection_dim": 512,
}
_TINY_TEXT = {  # the test suite's tiny CLIP text encoder (tests/tiny_models.py)
    "vocab_size": 520,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}
_TINY_CLIP = {
    "text": _TINY_TEXT,
    "vision": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    },
    "projection_dim": 32,
}
_TINY_UNET = {  # the tiny SD and LDM presets' UNet
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "sample_size": 16,
}
_TINY_VAE = {  # four blocks: the 8x latent factor of the real ones
    **_SD_VAE,
    "block_out_channels": (8, 8, 16, 16),
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "sample_size": 128,
}

# Schedulers as the published models ship them (``_class_name`` + config).
_SD_DDIM = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
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
_LDM_DDIM = {"_class_name": "DDIMScheduler", **LDM_SAMPLER}  # the original LDM sampler
_SDXL_TURBO_EULER_A = {  # stabilityai/sdxl-turbo/scheduler: Euler ancestral, trailing spacing
    **_SDXL_EULER,
    "_class_name": "EulerAncestralDiscreteScheduler",
    "timestep_spacing": "trailing",
}
_FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}
_SD3_FLOW = {**_FLOW, "shift": 3.0}  # stabilityai/stable-diffusion-3.5-*/scheduler
_FLUX_DEV_FLOW = {  # black-forest-labs/FLUX.1-dev/scheduler: shift by the image's token count
    **_FLOW,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
_FLUX_SCHNELL_FLOW = {**_FLUX_DEV_FLOW, "shift": 1.0, "use_dynamic_shifting": False}

# The rectified-flow families' parts (SD3 / SD3.5, FLUX.1).
_T5_XXL = {  # google/t5-v1_1-xxl's encoder (SD3 text_encoder_3, FLUX text_encoder_2)
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
_FLOW_VAE = {  # the 16-channel KL-f8 autoencoder of SD3 and FLUX.1 (no quant convs)
    **_SD_VAE,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
    "sample_size": 1024,
}
_SD3_LATENTS = {"scaling_factor": 1.5305, "shift_factor": 0.0609}  # full and tiny VAEs
_FLUX_LATENTS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
_SD3_VAE = {**_FLOW_VAE, **_SD3_LATENTS}
_FLUX_VAE = {**_FLOW_VAE, **_FLUX_LATENTS}
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
    "vae": _SD3_VAE,
    "text": _CLIP_L_TEXT,
    "text_2": _OPENCLIP_BIGG_TEXT,
    "text_3": _T5_XXL,
}
_FLUX_DIT = {  # FluxTransformer2DModel of FLUX.1 dev and schnell
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x 2 x 2 packed
    "num_layers": 19,  # double-stream (MM-DiT) blocks
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL
    "pooled_projection_dim": 768,  # CLIP-L pooled
    "axes_dims_rope": (16, 56, 56),
}
_FLUX_TEXT_VAE = {"vae": _FLUX_VAE, "text": _CLIP_L_TEXT, "text_2": _T5_XXL}  # dev and schnell
# The test suite's tiny flow models (tests/tiny_models.py tiny_sd3_parts, tiny_flux_parts,
# tiny_flow_vae, tiny_t5): a 16-channel VAE of factor 2, T5 stand-in 64 wide.
_TINY_T5 = {
    "vocab_size": 520,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "pad_token_id": 513,
}
_TINY_FLOW_VAE = {
    **_FLOW_VAE,
    "block_out_channels": (8, 16),
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "force_upcast": False,
    "sample_size": 64,
}


@dataclass(frozen=True)
class Architecture:
    """A published model's shape: its family (the builder in :data:`FAMILIES`) and the configs
    of its parts, enough to build it with random weights."""

    family: str  # "sd", "sdxl", "ldm": a key of FAMILIES
    parts: dict[str, dict[str, Any]]  # part -> config (unet, vae, text, text_2)
    resolution: int  # px
    clip: dict[str, Any] = field(default_factory=lambda: _CLIP_B16)  # the ranking model
    scheduler: dict[str, Any] = field(default_factory=lambda: _SD_DDIM)
    batch: int = 24  # the ranked batch a bench run uses unless told (the paper's)
    source: str = ""  # the published model it copies
    realtime: str | None = None  # its few-step preset (blendedit.config), for ``--realtime``


def _sd(
    unet: dict[str, Any], text: dict[str, Any], resolution: int, source: str, **kw: Any
) -> Architecture:
    vae = {**_SD_VAE, "sample_size": resolution}
    parts = {"unet": unet, "vae": vae, "text": text}
    return Architecture("sd", parts, resolution, source=source, **kw)


_SD2_UNET = {
    **_SD_UNET,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
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
        **_SD_VAE,
        "scaling_factor": 0.13025,
        "force_upcast": True,
        "sample_size": 1024,
    },
    "text": _CLIP_L_TEXT,
    "text_2": _OPENCLIP_BIGG_TEXT,
}

ARCHITECTURES: dict[str, Architecture] = {
    "sd15": _sd(
        {**_SD_UNET, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
        _CLIP_L_TEXT,
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
        scheduler={**_SD_DDIM, "prediction_type": "v_prediction"},
    ),
    "sdxl": Architecture(  # Podell et al. 2023: 2.6B UNet, two text encoders, 1024x1024
        "sdxl",
        _SDXL_PARTS,
        1024,
        scheduler=_SDXL_EULER,
        batch=4,  # the official BLD SDXL script's batch (text_editing_SDXL.py)
        source="stabilityai/stable-diffusion-xl-base-1.0",
    ),
    "ldm-1.45b": Architecture(  # Rombach et al. 2022, the BLD paper's model: 256x256
        "ldm",
        {
            "unet": {  # model_channels 320, channel_mult (1, 2, 4, 4), 8 heads, context 1280
                **_SD_UNET,
                "sample_size": 32,
                "cross_attention_dim": 1280,
                "attention_head_dim": 8,
            },
            "vae": {**_SD_VAE, "sample_size": 256},  # KL-f8
            "text": _LDM_BERT,
        },
        256,
        scheduler=_LDM_DDIM,
        batch=24,  # the BLD paper's Table 2 setting (a ranked batch of 24)
        source="CompVis/ldm-text2im-large-256",
    ),
    "tiny": Architecture(  # the test suite's tiny models: seconds on a CPU
        "sd",
        {
            "unet": _TINY_UNET,
            "vae": _TINY_VAE,
            "text": _TINY_TEXT,
        },
        128,
        clip=_TINY_CLIP,
    ),
    "tiny-sdxl": Architecture(  # tests/tiny_models.py tiny_sdxl_*: diffusers' own tiny SDXL shape
        "sdxl",
        {
            "unet": {
                "in_channels": 4,
                "out_channels": 4,
                "layers_per_block": 2,
                "block_out_channels": (32, 64),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "attention_head_dim": (2, 4),
                "use_linear_projection": True,
                "transformer_layers_per_block": (1, 2),
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 6 * 8 + 32,  # 6 time ids + pooled 32
                "cross_attention_dim": 32 + 64,  # both encoders' widths
                "sample_size": 16,
            },
            "vae": {**_TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True},
            "text": _TINY_TEXT,  # CLIP-L stand-in
            # bigG stand-in: wider than the first (as in the real pair), exact GELU, projection
            "text_2": {
                **_TINY_TEXT,
                "hidden_size": 64,
                "num_hidden_layers": 10,
                "hidden_act": "gelu",
            },
        },
        128,
        clip=_TINY_CLIP,
        scheduler=_SDXL_EULER,
        realtime="realtime-sdxl-turbo",  # the code path of `--preset sdxl-turbo --realtime`
    ),
    "tiny-ldm": Architecture(  # LDM-1.45B's layout at toy size (tests/test_latent_ldm.py)
        "ldm",
        {
            "unet": _TINY_UNET,
            "vae": _TINY_VAE,
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
        clip=_TINY_CLIP,
        scheduler=_LDM_DDIM,
    ),
    # SDXL-Turbo (Sauer et al. 2023): SDXL base's networks, trained at 512x512, trailing Euler-a.
    "sdxl-turbo": Architecture(
        "sdxl",
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
    # SD3.5 (Esser et al. 2024; Stability AI 2024): MMDiT, CLIP-L and CLIP-G with projections
    # (SD3 takes their pooled outputs and penultimate states), T5-XXL, 16-channel VAE.
    "sd35-medium": Architecture(  # MMDiT-X: self-attention beside the joint one in blocks 0-12
        "sd3",
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
    "sd35-large": Architecture(
        "sd3",
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
    # FLUX.1 (Black Forest Labs 2024): 19 double- and 38 single-stream blocks, CLIP-L pooled and
    # T5-XXL text; dev embeds the guidance scale, schnell (timestep-distilled, 4 steps) does not.
    "flux-dev": Architecture(
        "flux",
        {
            "transformer": {**_FLUX_DIT, "guidance_embeds": True},
            **_FLUX_TEXT_VAE,
        },
        1024,
        scheduler=_FLUX_DEV_FLOW,
        batch=4,
        source="black-forest-labs/FLUX.1-dev",
    ),
    "flux-schnell": Architecture(
        "flux",
        {
            "transformer": {**_FLUX_DIT, "guidance_embeds": False},
            **_FLUX_TEXT_VAE,
        },
        1024,
        scheduler=_FLUX_SCHNELL_FLOW,
        batch=8,
        source="black-forest-labs/FLUX.1-schnell",
        realtime="realtime-schnell",
    ),
    "tiny-sd3": Architecture(  # tests/tiny_models.py tiny_sd3_parts, at 64 px (32x32 latents)
        "sd3",
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
            "vae": {**_TINY_FLOW_VAE, **_SD3_LATENTS},
            "text": _TINY_TEXT,
            "text_2": _TINY_TEXT,
            "text_3": _TINY_T5,
        },
        64,
        clip=_TINY_CLIP,
        scheduler=_SD3_FLOW,
    ),
    "tiny-flux": Architecture(  # tests/tiny_models.py tiny_flux_parts(dev=False): schnell's shape
        "flux",
        {
            "transformer": {
                "patch_size": 1,
                "in_channels": 64,
                "num_layers": 1,
                "num_single_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 64,
                "pooled_projection_dim": 32,
                "axes_dims_rope": (4, 4, 8),
                "guidance_embeds": False,
            },
            "vae": {**_TINY_FLOW_VAE, **_FLUX_LATENTS},
            "text": _TINY_TEXT,
            "text_2": _TINY_T5,
        },
        64,
        clip=_TINY_CLIP,
        scheduler=_FLUX_SCHNELL_FLOW,
        batch=8,
        realtime="realtime-schnell",
    ),
}

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H100 80GB HBM3": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.4,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


# -- building random-weight components ---------------------------------------------------------------


def _special_tokens(cfg: dict[str, Any]) -> dict[str, Any]:
    # Our tokenizer's ids: <|startoftext|> 512, <|endoftext|> 513 (pooling reads the eos position).
    return {
        **cfg,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 513,
        "max_position_embeddings": 77,
    }


def _clip_tokenizer(workdir: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        str(write_char_vocab(workdir / "clip")), model_max_length=77
    )


def _build_sd(arch: Architecture, device: torch.device, workdir: Path) -> Backbone:
    """SD 1.x/2.x: UNet, KL-f8 VAE, one CLIP text encoder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from blendedit.latent.backbones import StableDiffusion

    p = arch.parts
    with torch.device(device):
        unet = UNet2DConditionModel(**p["unet"])
        vae = AutoencoderKL(**p["vae"])
        text = CLIPTextModel(CLIPTextConfig(**_special_tokens(p["text"])))
    return StableDiffusion(vae, unet, text, _clip_tokenizer(workdir), own_scheduler(arch.scheduler))


def _build_sdxl(arch: Architecture, device: torch.device, workdir: Path) -> Backbone:
    """SDXL: text_time UNet, VAE, CLIP-L and OpenCLIP bigG (with projection) text encoders."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from blendedit.latent.backbones import StableDiffusionXL

    p = arch.parts
    with torch.device(device):
        unet = UNet2DConditionModel(**p["unet"])
        vae = AutoencoderKL(**p["vae"])
        text = CLIPTextModel(CLIPTextConfig(**_special_tokens(p["text"])))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_special_tokens(p["text_2"])))
    tok = _clip_tokenizer(workdir)
    return StableDiffusionXL(vae, unet, text, text_2, tok, tok, own_scheduler(arch.scheduler))


def _build_ldm(arch: Architecture, device: torch.device, workdir: Path) -> Backbone:
    """The CompVis LDM: UNet, KL-f8 VAE, LDMBert with a BERT tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )
    from transformers import BertTokenizer

    from blendedit.latent.backbones import LatentDiffusion

    p = arch.parts
    with torch.device(device):
        unet = UNet2DConditionModel(**p["unet"])
        vae = AutoencoderKL(**p["vae"])
        bert = LDMBertModel(LDMBertConfig(**p["text"]))
    vocab = write_bert_vocab(workdir / "bert")
    tokenizer = BertTokenizer(str(vocab), model_max_length=p["text"]["max_position_embeddings"])
    return LatentDiffusion(vae, unet, bert, tokenizer, own_scheduler(arch.scheduler))


def _t5(cfg: dict[str, Any]) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**cfg))


def _build_sd3(arch: Architecture, device: torch.device, workdir: Path) -> Backbone:
    """SD3 / SD3.5: MMDiT, 16-channel VAE, CLIP-L and CLIP-G (with projections), T5-XXL. The
    character-level CLIP tokenizer serves T5 too (random weights need only ids in range)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from blendedit.latent.backbones.sd3 import StableDiffusion3

    p = arch.parts
    with torch.device(device):
        transformer = SD3Transformer2DModel(**p["transformer"])
        vae = AutoencoderKL(**p["vae"])
        text = CLIPTextModelWithProjection(CLIPTextConfig(**_special_tokens(p["text"])))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_special_tokens(p["text_2"])))
        text_3 = _t5(p["text_3"])
    tok = _clip_tokenizer(workdir)
    sched = own_scheduler(arch.scheduler)
    return StableDiffusion3(vae, transformer, text, text_2, text_3, tok, tok, tok, sched)


def _build_flux(arch: Architecture, device: torch.device, workdir: Path) -> Backbone:
    """FLUX.1: the double/single-stream transformer, 16-channel VAE, CLIP-L (pooled), T5-XXL."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from blendedit.latent.backbones.flux import Flux

    p = arch.parts
    with torch.device(device):
        transformer = FluxTransformer2DModel(**p["transformer"])
        vae = AutoencoderKL(**p["vae"])
        text = CLIPTextModel(CLIPTextConfig(**_special_tokens(p["text"])))
        text_2 = _t5(p["text_2"])
    tok = _clip_tokenizer(workdir)
    return Flux(vae, transformer, text, text_2, tok, tok, own_scheduler(arch.scheduler))


def _prompt_as_text(backbone: Backbone, prompt: str, n: int) -> dict[str, Any]:
    return {"prompt": prompt, "num_images_per_prompt": n}


def _prompt_as_embeddings(backbone: Backbone, prompt: str, n: int) -> dict[str, Any]:
    """diffusers' SD inpaint pipeline cannot tokenize for LDMBert: it gets the embeddings."""
    encode = backbone.encode_prompt  # type: ignore[attr-defined]
    return {
        "prompt_embeds": encode(prompt),
        "negative_prompt_embeds": encode(""),
        "num_images_per_prompt": n,  # the SD pipeline repeats given embeddings
    }


def _prompt_as_sd3_embeddings(backbone: Backbone, prompt: str, n: int) -> dict[str, Any]:
    """diffusers' SD3 inpaint pipeline gets blendedit's own embeddings (the same 77 CLIP + 256
    T5 tokens), encoded inside the timed call; it does not repeat given embeddings, so they come
    ``n`` times, one image each."""
    encode = backbone.encode_prompt  # type: ignore[attr-defined]
    (cond, pooled), (uncond, pooled_u) = encode(prompt), encode("")
    return {
        "prompt_embeds": cond.expand(n, -1, -1),  # (n, 77 + 256, 4096)
        "pooled_prompt_embeds": pooled.expand(n, -1),  # (n, 2048)
        "negative_prompt_embeds": uncond.expand(n, -1, -1),
        "negative_pooled_prompt_embeds": pooled_u.expand(n, -1),
        "num_images_per_prompt": 1,
    }


def _prompt_as_flux_embeddings(backbone: Backbone, prompt: str, n: int) -> dict[str, Any]:
    """diffusers' FLUX inpaint pipeline gets blendedit's T5 states and CLIP pooled output (its
    T5 length: dev 512, schnell 256), encoded inside the timed call, ``n`` times."""
    t5, pooled = backbone.encode_prompt(prompt)  # type: ignore[attr-defined]
    return {
        "prompt_embeds": t5.expand(n, -1, -1),  # (n, T, 4096)
        "pooled_prompt_embeds": pooled.expand(n, -1),  # (n, 768)
        "num_images_per_prompt": 1,
    }


@dataclass(frozen=True)
class Family:
    """How to build a family's backbone with random weights, and how its diffusers reference
    pipeline (``Backbone.inpaint_reference``) takes the prompt."""

    build: Callable[[Architecture, torch.device, Path], Backbone]
    # (backbone, prompt, number of images) -> the pipeline's prompt arguments
    reference_prompt: Callable[[Backbone, str, int], dict[str, Any]] = _prompt_as_text


FAMILIES: dict[str, Family] = {
    "sd": Family(_build_sd),
    "sdxl": Family(_build_sdxl),
    "ldm": Family(_build_ldm, _prompt_as_embeddings),
    "sd3": Family(_build_sd3, _prompt_as_sd3_embeddings),
    "flux": Family(_build_flux, _prompt_as_flux_embeddings),
}


def build_backbone(arch: Architecture, device: torch.device | str, workdir: Path) -> Backbone:
    """The architecture's backbone with random weights (seed 0), float32, built on ``device``
    (``"meta"``: shapes only, nothing allocated); ``workdir`` receives the tokenizer files."""
    torch.manual_seed(0)
    return FAMILIES[arch.family].build(arch, torch.device(device), workdir)


def build_editor(
    arch: Architecture, device: torch.device, dtype: torch.dtype, workdir: Path
) -> Any:
    """A BlendedLatentDiffusion of the given architecture with random weights, built on ``device``."""
    from transformers import CLIPConfig, CLIPModel

    from blendedit.frame.ranking import ClipScorer
    from blendedit.latent.pipeline import BlendedLatentDiffusion

    backbone = build_backbone(arch, device, workdir)
    with torch.device(device):
        clip = CLIPModel(
            CLIPConfig(
                text_config=_special_tokens(arch.clip["text"]),
                vision_config=arch.clip["vision"],
                projection_dim=arch.clip["projection_dim"],
            )
        )
    scorer = ClipScorer(clip.to(dtype), _clip_tokenizer(workdir))
    return BlendedLatentDiffusion(backbone, scorer, "random").to(device, dtype)


def write_char_vocab(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (no merges); enough to tokenize any prompt."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def write_bert_vocab(folder: Path) -> Path:
    """A character-level BERT WordPiece vocabulary (``vocab.txt``, 141 ids): BERT's special tokens,
    then every printable ASCII character (lower case) alone and as a ``##`` continuation, so any
    prompt tokenizes into ids in range of any LDMBert."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1) if not chr(c).isupper()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


# -- measuring ----------------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """One benchmark run; every number the table shows."""

    preset: str
    device: str
    dtype: str
    batch: int
    steps_run: int
    resolution: int
    scheduler: str
    compile: bool
    family: str = ""
    realtime: str | None = None  # the few-step preset run (``--realtime``), if any
    guidance_scale: float | None = None
    warmup_s: float = 0.0
    total_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)
    per_step_ms: float = 0.0
    images_per_s: float = 0.0
    unet_tflop_per_step: float = 0.0
    unet_tflops: float = 0.0
    peak_fraction: float | None = None
    peak_memory_gb: float | None = None
    diffusers_total_s: float | None = None
    diffusers_per_step_ms: float | None = None
    speedup_vs_diffusers: float | None = None
    per_step_ratio_vs_diffusers: float | None = None
    notes: list[str] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_flops(
    backbone: Backbone, batch: int, latent_hw: tuple[int, int], guidance_scale: float = 7.5
) -> float:
    """FLOPs of one step's model call (classifier-free guidance: both halves, 2 x batch) by
    torch's FLOP counter, through the family's own model function and conditioning (SDXL's pooled
    text and time ids too)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = latent_hw
    f = backbone.latent_factor
    dev, dt = backbone.device, backbone.dtype
    c = backbone.encode_text("a vase of red roses", "", (w * f, h * f), (w * f, h * f))
    z = torch.zeros(batch, backbone.vae.config.latent_channels, h, w, device=dev, dtype=dt)
    compiled = backbone.unet  # count the eager module: a compiled one would recompile here
    backbone.unet = getattr(compiled, "_orig_mod", compiled)
    try:
        model_fn = backbone.model_fn(c, batch, guidance_scale)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model_fn(z, torch.tensor(500, device=dev))
    finally:
        backbone.unet = compiled
    return float(counter.get_total_flops())


def _timed_steps(device: torch.device, run: Callable[[Callable[[], None]], Any]) -> float:
    """Mean ms per denoising step, from device-synchronised timestamps at the end of every step;
    blendedit (progress callback) and diffusers (callback_on_step_end) are timed the same way."""
    stamps: list[float] = []

    def mark() -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    run(mark)
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1) * 1000


def run_bench(
    preset: str = "sd2-base",
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16,
    batch: int | None = None,
    steps: int | None = None,
    blend_start: float = 0.25,
    scheduler: str | None = None,
    compile: bool = False,
    channels_last: bool = True,
    repeats: int = 2,
    compare_diffusers: bool = True,
    background: str = "stitch",
    keep: int | None = None,
    image: str | Path | None = None,
    mask: str | Path | None = None,
    peak_tflops: float | None = None,
    realtime: bool = False,
) -> BenchResult:
    """Benchmark one configuration. Random weights; a real photo and mask (examples/);
    ``batch`` None: the preset's own (24, the paper's; SDXL 4, its official script's); ``steps``
    and ``scheduler`` None: the family's defaults (SD, SDXL, LDM: DDIM 50; SD3, FLUX.1-dev:
    flow Euler 28; schnell: 4). ``realtime``: the architecture's few-step preset
    (``Architecture.realtime``, e.g. ``realtime-schnell``) on a ranked batch of 8 unless told;
    ``total_s`` is then the warm wall-clock time from the call to the ranked results."""
    from blendedit.config import preset_on
    from blendedit.latent.sampling import blend_timesteps
    from blendedit.models import make_scheduler

    if preset not in ARCHITECTURES:
        raise InputError(f"preset: unknown {preset!r}; choose one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[preset]
    if realtime and arch.realtime is None:
        have = ", ".join(k for k, a in ARCHITECTURES.items() if a.realtime)
        raise InputError(
            f"preset: {preset!r} has no realtime preset (--realtime); use one of {have}"
        )
    batch = (8 if realtime else arch.batch) if batch is None else batch
    dev = torch.device(device)
    photo, photo_mask = _inputs(image, mask, arch.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        editor = build_editor(arch, dev, dtype, Path(tmp))
    editor.optimize(channels_last=channels_last and dev.type == "cuda", compile=compile)
    base = editor.default_config()  # the family's defaults (SDXL, LDM: guidance 5; flow models)
    if realtime:
        base = preset_on(arch.realtime, base)  # type: ignore[arg-type]
    steps = base.num_inference_steps if steps is None else steps
    scheduler = base.scheduler if scheduler is None else scheduler
    cfg = base.replace(
        num_images=batch,
        batch_size=batch,
        decode_batch_size=min(batch, 8),
        num_inference_steps=steps,
        blend_start=blend_start,
        scheduler=scheduler,
        size=arch.resolution,
        background=background,
        keep=keep,
        mask_shrink="off",
        metrics=False,
    ).validate()
    latent_hw = tuple(
        s // editor.vae_scale_factor
        for s in _work_hw(photo, arch.resolution, editor.vae_scale_factor)
    )
    n_steps = len(
        blend_timesteps(
            make_scheduler(scheduler, editor.scheduler.config),
            steps,
            blend_start,
            **editor.backbone.timestep_kwargs(steps, latent_hw),  # flow models: sigmas, shift
        )
    )
    res = BenchResult(
        preset,
        device_name(dev),
        str(dtype).removeprefix("torch."),
        batch,
        n_steps,
        arch.resolution,
        scheduler,
        compile,
        arch.family,
        arch.realtime if realtime else None,
        cfg.guidance_scale,
    )

    # Warm-up (and compilation), reported apart from the steady state.
    t0 = time.perf_counter()
    editor(photo, photo_mask, "a vase of red roses", config=cfg, seed=0)
    _sync(dev)
    res.warmup_s = time.perf_counter() - t0

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = editor(photo, photo_mask, "a vase of red roses", config=cfg, seed=100 * (r + 1))
        _sync(dev)
        runs.append((time.perf_counter() - t0, out.timings))
    total, timings = min(runs, key=lambda x: x[0])
    res.total_s = total
    res.stages_s = {
        k: round(v, 4) for k, v in timings.to_dict().items() if k not in ("total", "load")
    }
    res.images_per_s = batch / total
    if dev.type == "cuda":
        res.peak_memory_gb = torch.cuda.max_memory_allocated(dev) / 1e9

    res.per_step_ms = min(
        _timed_steps(
            dev,
            lambda mark: editor(
                photo,
                photo_mask,
                "a vase of red roses",
                config=cfg,
                seed=7,
                progress=lambda done, all_: mark(),
            ),
        )
        for _ in range(repeats)
    )
    flops = unet_flops(editor.backbone, batch, latent_hw, cfg.guidance_scale)  # type: ignore[arg-type]
    res.unet_tflop_per_step = flops / 1e12
    res.unet_tflops = flops / (res.stages_s["denoise"] / n_steps) / 1e12
    peak = peak_tflops or device_peak_tflops(dev)
    res.peak_fraction = res.unet_tflops / peak if peak else None

    if compare_diffusers:
        _bench_diffusers(editor, photo, photo_mask, cfg, dev, res, repeats)
    return res


def _work_hw(photo: Image.Image, long_side: int, f: int) -> tuple[int, int]:
    from blendedit.io import working_size

    w, h = working_size(photo.size, long_side, f)
    return h, w


def _inputs(
    image: str | Path | None, mask: str | Path | None, resolution: int
) -> tuple[Image.Image, np.ndarray]:
    from blendedit.frame.masks import load_mask, open_image
    from blendedit.io import load_image

    examples = Path(__file__).resolve().parents[2] / "examples"
    if image is None and (examples / "chelsea.png").is_file():
        image, mask = examples / "chelsea.png", examples / "chelsea.mask-eyes.png"
    if image is None:  # installed without the examples: a square of noise, a centred box mask
        rng = np.random.default_rng(0)
        photo = Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8))
        m = np.zeros((resolution, resolution), bool)
        m[resolution // 4 : resolution // 2, resolution // 4 : 3 * resolution // 4] = True
        return photo, m
    photo = load_image(image)
    # Square at the model's resolution: the table's numbers are for a 512x512 (768x768) edit.
    photo = photo.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return photo, load_mask(open_image(mask, "mask").resize(photo.size), photo.size, False)


def _bench_diffusers(
    editor: Any,
    photo: Image.Image,
    mask: np.ndarray,
    cfg: Any,
    dev: torch.device,
    res: BenchResult,
    repeats: int,
) -> None:
    """The same work through diffusers' inpaint pipeline of the family (``Backbone.
    inpaint_reference``: SD's or SDXL's; the LDM in SD's, fed LDMBert's embeddings, encoded inside
    the timed call), a 4-channel UNet so it blends like BLD; same components, dtype, scheduler,
    steps, batch; no ranking, no stitching."""
    pipe, strength = editor.diffusers_inpaint(cfg)  # runs BLD's number of steps
    backbone = editor.backbone
    reference_prompt = FAMILIES[backbone.family].reference_prompt
    mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
    call = {
        "image": photo,
        "mask_image": mask_img,
        "height": res.resolution,
        "width": res.resolution,
        "strength": strength,
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "output_type": "pil",
    }

    def gens(seed: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(cfg.num_images)]

    def edit(seed: int, **kw: Any) -> Any:
        prompt = reference_prompt(backbone, "a vase of red roses", cfg.num_images)
        return pipe(**prompt, **call, **kw, generator=gens(seed))

    try:
        edit(0)  # warm-up
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            edit(100 * (r + 1))
            _sync(dev)
            times.append(time.perf_counter() - t0)
        res.diffusers_total_s = min(times)
        res.diffusers_per_step_ms = min(
            _timed_steps(
                dev,
                lambda mark: edit(7, callback_on_step_end=lambda p, i, t, kw: (mark(), kw)[1]),
            )
            for _ in range(repeats)
        )
    finally:  # diffusers' SDXL pipeline leaves an upcast (force_upcast) VAE in the UNet's dtype
        backbone.vae.to(backbone.vae_dtype_for(backbone.dtype))
    res.speedup_vs_diffusers = res.diffusers_total_s / res.total_s
    res.per_step_ratio_vs_diffusers = res.per_step_ms / res.diffusers_per_step_ms


# -- reporting ------------------------------------------------------------------------------------------


def table(results: list[BenchResult]) -> str:
    """Markdown table of the runs."""
    head = (
        "| preset | device | dtype | batch | steps | compile | end to end (s) | images/s | per step (ms) "
        "| UNet TFLOP/s | of peak | peak mem (GB) | diffusers (s) | speed-up | per-step ratio | warm-up (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    for r in results:
        name = f"{r.preset} ({r.realtime})" if r.realtime else r.preset
        lines.append(
            f"| {name} | {r.device} | {r.dtype} | {r.batch} | {r.steps_run} | {r.compile} | "
            f"{r.total_s:.3f} | {r.images_per_s:.2f} | {r.per_step_ms:.1f} | {r.unet_tflops:.3g} | "
            f"{f(r.peak_fraction and 100 * r.peak_fraction, '.0f')}{'%' if r.peak_fraction else ''} | "
            f"{f(r.peak_memory_gb, '.1f')} | {f(r.diffusers_total_s, '.3f')} | "
            f"{f(r.speedup_vs_diffusers, '.2f')}{'x' if r.speedup_vs_diffusers else ''} | {f(r.per_step_ratio_vs_diffusers, '.3f')} | {r.warmup_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def realtime_line(r: BenchResult) -> str:
    """The realtime figure: warm wall-clock time from the call to the ranked batch."""
    return (
        f"Time to a ranked batch of {r.batch} ({r.preset}, {r.realtime}: {r.scheduler}, "
        f"{r.steps_run} of the schedule's steps, guidance {r.guidance_scale:g}, {r.resolution}x"
        f"{r.resolution}, {r.dtype}, warm, best of the repeats): **{r.total_s:.3f} s** on {r.device}"
    )


def stages_table(results: list[BenchResult]) -> str:
    names = ["encode", "denoise", "decode", "rank", "background"]
    lines = [
        "| preset | device | " + " | ".join(f"{n} (s)" for n in names) + " |",
        "|" + "---|" * (len(names) + 2),
    ]
    for r in results:
        lines.append(
            f"| {r.preset} | {r.device} | "
            + " | ".join(f"{r.stages_s.get(n, 0):.3f}" for n in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


def append_report(results: list[BenchResult], path: Path, command: str) -> None:
    """Add a dated section to ``docs/benchmarks.md`` (earlier sections are kept) and a JSON copy."""
    from blendedit.io import write_text

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (
        f"\n## {stamp}: {results[0].device}\n\n`{command}`; torch {torch.__version__}, random weights.\n\n"
        + table(results)
        + "\nStages of the best end-to-end run:\n\n"
        + stages_table(results)
        + "".join(f"\n{realtime_line(r)}.\n" for r in results if r.realtime)
    )
    old = path.read_text() if path.is_file() else "# Benchmarks\n\nWritten by `blendedit bench`.\n"
    tmp = path.with_name(path.name + ".new")
    write_text(old + section, tmp)
    tmp.replace(path)
    json_path = path.with_suffix(".json")
    data = json.loads(json_path.read_text()) if json_path.is_file() else []
    data.extend({"time": stamp, "command": command, **asdict(r)} for r in results)
    tmp = json_path.with_name(json_path.name + ".new")
    write_text(json.dumps(data, indent=2) + "\n", tmp)
    tmp.replace(json_path)


# -- command line -----------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="time a ranked batch edit, per stage, next to diffusers' inpaint pipeline",
        description=(
            "Times a ranked batch edit end to end and per stage (encode, denoise, decode, rank, "
            "background) with random weights of a full-size architecture (no download), and the "
            "same work through diffusers' inpaint pipeline of the model's family (SD's, SDXL's; "
            "the LDM's parts in SD's) on the same components. "
            "Prints a table (seconds, images/s, per-step ms, UNet TFLOP/s and share of the device's "
            "dense bf16/fp16 peak, peak memory, ratio to diffusers) and appends it to --report."
        ),
    )
    p.add_argument(
        "--preset",
        default="sd2-base",
        choices=list(ARCHITECTURES),
        help="architecture (default sd2-base, 512x512): sd15, sd2-base, sd2 (768x768), sdxl "
        "(1024x1024), ldm-1.45b (the paper's LDM, 256x256, batch 24), sdxl-turbo (512x512), "
        "sd35-medium, sd35-large, flux-dev, flux-schnell (1024x1024); tiny, tiny-sdxl, tiny-ldm, "
        "tiny-sd3, tiny-flux for a CPU",
    )
    p.add_argument("--device", default="auto", help="cuda, cpu, ...; auto = CUDA if present")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto = fp16 on a GPU, fp32 on a CPU",
    )
    p.add_argument(
        "--batch",
        type=int,
        help="ranked batch size (default: the preset's; 24, the paper's; sdxl 4, its official "
        "script's)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="full schedule length (default: the family's; 50 SD/SDXL/LDM, 28 SD3/FLUX.1-dev, "
        "4 schnell and --realtime)",
    )
    p.add_argument(
        "--blend-start",
        type=float,
        default=0.25,
        help="fraction skipped (default 0.25: 38 steps run)",
    )
    p.add_argument(
        "--scheduler",
        help="noise scheduler (default: the family's; ddim, flow-euler for SD3/FLUX, the "
        "realtime preset's with --realtime)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="the preset's few-step realtime preset (sdxl-turbo: realtime-sdxl-turbo, "
        "flux-schnell: realtime-schnell) on a ranked batch of 8 unless --batch: reports the warm "
        "time from the call to the ranked results",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet (warm-up reported apart)"
    )
    p.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument(
        "--repeats", type=int, default=2, help="timed runs; the best is reported (default 2)"
    )
    p.add_argument(
        "--background", default="stitch", help="background mode to time (default stitch)"
    )
    p.add_argument("--keep", type=int, help="reconstruct only the top K")
    p.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak, if not in the built-in table"
    )
    p.add_argument(
        "--photo-sizes",
        help="instead: one edit per photo size in MP (e.g. 0.25,12,24,48), time per stage and "
        "peak memory on the CPU, a ~500x400 px mask (--batch images, --steps steps)",
    )
    p.add_argument(
        "--report",
        default="docs/benchmarks.md",
        help="markdown file to append to (default docs/benchmarks.md)",
    )
    p.set_defaults(run=run)


def run(args: Any) -> int:
    import sys

    from blendedit.models import parse_device, parse_dtype, quiet_libraries

    quiet_libraries()
    if args.photo_sizes:
        return run_photo_sizes(args)
    dev = parse_device(args.device)
    dtype = parse_dtype(args.dtype, dev)
    result = run_bench(
        args.preset,
        dev,
        dtype,
        batch=args.batch,
        steps=args.steps,
        blend_start=args.blend_start,
        scheduler=args.scheduler,
        compile=args.compile,
        channels_last=not args.no_channels_last,
        repeats=args.repeats,
        compare_diffusers=not args.no_diffusers,
        background=args.background,
        keep=args.keep,
        peak_tflops=args.peak_tflops,
        realtime=args.realtime,
    )
    print(table([result]) + "\n" + stages_table([result]))
    if result.realtime:
        print(realtime_line(result))
    append_report([result], Path(args.report), "blendedit " + " ".join(sys.argv[1:]))
    print(f"appended to {args.report}", file=sys.stderr)
    return 0


def run_photo_sizes(args: Any) -> int:
    """``--photo-sizes``: the photo-size table (``blendedit.bench_photos``), appended to --report."""
    import sys

    from blendedit.bench_photos import run_sizes
    from blendedit.bench_photos import table as photo_table
    from blendedit.io import write_text

    try:
        sizes = [float(v) for v in args.photo_sizes.split(",")]
    except ValueError:
        raise InputError(
            f"photo-sizes: {args.photo_sizes!r} is not a list like 0.25,12,24"
        ) from None
    batch = ARCHITECTURES[args.preset].batch if args.batch is None else args.batch
    steps = 50 if args.steps is None else args.steps
    rows = run_sizes(sizes, args.preset, batch, steps)
    text = photo_table(rows)
    print(text)
    report = Path(args.report)
    cmd = "blendedit " + " ".join(sys.argv[1:])
    section = (
        f"\n## Photo size: `{args.preset}` preset, CPU ({device_name(torch.device('cpu'))}), "
        f"{batch} image(s), {steps} steps\n\n`{cmd}`\n\n{text}"
    )
    old = report.read_text() if report.is_file() else "# Benchmarks\n"
    tmp = report.with_name(report.name + ".new")
    write_text(old + section, tmp)
    tmp.replace(report)
    print(f"appended to {args.report}", file=sys.stderr)
    return 0
