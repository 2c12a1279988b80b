"""Tiny random-weight Stable Diffusion and CLIP components, built from config in code (no downloads).

Shared by the ``conftest.py`` fixtures; ``blendedit bench --preset tiny`` builds the same shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
)

from blendedit.bench import write_char_vocab


def write_tiny_vocab(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (no merges): every word splits into its characters."""
    return write_char_vocab(folder)


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    write_tiny_vocab(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def tiny_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=520,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_config()).eval()


def tiny_unet(seed: int = 0, prediction_type: str = "epsilon") -> UNet2DConditionModel:
    del prediction_type  # the UNet is agnostic; the scheduler config carries it
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Four blocks, so the spatial factor is 8 as in Stable Diffusion."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 8, 16, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=128,
        scaling_factor=0.3,
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=tiny_text_config().to_dict(),
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
        ).to_dict(),
        projection_dim=32,
    )
    return CLIPModel(cfg).eval()
