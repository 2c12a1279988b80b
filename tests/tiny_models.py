"""Tiny random-weight Stable Diffusion and CLIP components, built from config in code (no downloads).

Shared by the ``conftest.py`` fixtures; ``blendedit bench --preset tiny`` builds the same shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
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


def tiny_unet(
    seed: int = 0, prediction_type: str = "epsilon", **config: Any
) -> UNet2DConditionModel:
    """SD's UNet shape at 16x16 latents; ``config`` adds or overrides UNet arguments."""
    del prediction_type  # the UNet is agnostic; the scheduler config carries it
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        **{
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "norm_num_groups": 32,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            **config,
        }
    ).eval()


def tiny_lcm_unet(seed: int = 0, time_cond_proj_dim: int = 256) -> UNet2DConditionModel:
    """:func:`tiny_unet`'s shape as an LCM-distilled UNet: the guidance scale enters as a
    ``time_cond_proj_dim``-wide embedding added to the time embedding (diffusers' LCM tests: 256)."""
    return tiny_unet(seed, time_cond_proj_dim=time_cond_proj_dim)


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


# Tiny SDXL. The two text encoders have different widths on purpose: diffusers' single-file loader
# tells CLIP-L from OpenCLIP bigG by the width of the positional embedding, so equal widths would
# load the first encoder's weights into the second.
SDXL_TEXT_HIDDEN = 32  # CLIP-L stand-in (text_encoder)
SDXL_TEXT_2_HIDDEN = 64  # OpenCLIP bigG stand-in (text_encoder_2)
SDXL_TEXT_2_LAYERS = 10  # diffusers names a checkpoint "xl_base" by bigG's resblocks.9
SDXL_PROJECTION_DIM = 32  # pooled text embedding (text_encoder_2's projection)
SDXL_TIME_EMBED_DIM = 8  # per added time id; SDXL base has 6 ids (original size, crop, target)


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """diffusers' own tiny SDXL UNet shape (text_time added embedding), with 16x16 latents."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        # pooled text (32) + 6 time ids x 8
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + SDXL_PROJECTION_DIM,
        # both encoders' hidden states concatenated: 32 + 64
        cross_attention_dim=SDXL_TEXT_HIDDEN + SDXL_TEXT_2_HIDDEN,
    ).eval()


def tiny_sdxl_text_encoders(seed: int = 0) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """CLIP-L and OpenCLIP bigG stand-ins: widths 32 and 64, bigG with a 32-d projection."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_config()).eval()
    cfg = tiny_text_config()
    cfg.hidden_size = SDXL_TEXT_2_HIDDEN
    cfg.num_hidden_layers = SDXL_TEXT_2_LAYERS
    cfg.projection_dim = SDXL_PROJECTION_DIM
    cfg.hidden_act = "gelu"  # OpenCLIP uses exact GELU, OpenAI's CLIP-L quick GELU
    return text_encoder, CLIPTextModelWithProjection(cfg).eval()


def tiny_sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def tiny_sdxl_pipeline(folder: Path, seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny random-weight SDXL base pipeline; ``folder`` receives the tokenizers' vocabulary.

    UNet cross-attention width 96 (32 + 64), pooled text 32, 6 time ids of 8 (added embedding
    input 80), the 8x VAE of :func:`tiny_vae` (128 px images, 16x16 latents), Euler scheduler.
    """
    text_encoder, text_encoder_2 = tiny_sdxl_text_encoders(seed)
    tokenizer = tiny_tokenizer(folder)
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_sdxl_unet(seed),
        scheduler=tiny_sdxl_scheduler(),
    )


# Tiny rectified-flow models (SD3, FLUX): a 16-channel VAE with factor 2, so 2x2-patch tokens
# cover 4x4 pixels; T5 stand-ins 64 wide; the character tokenizer serves every text encoder.
def tiny_flow_vae(seed: int = 0, shift: float = 0.0609, scale: float = 1.5035):
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift,
        scaling_factor=scale,
    ).eval()


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=520, d_model=64, d_kv=16, d_ff=37, num_layers=2, num_heads=4, pad_token_id=513
    )
    return T5EncoderModel(cfg).eval()


def tiny_sd3_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny SD3: MMDiT (patch 2, 16 latent channels, 32 px native), CLIP-L/G
    stand-ins with projection (pooled 32 + 32), T5 64 wide."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
    ).eval()
    te = CLIPTextModelWithProjection(tiny_text_config()).eval()
    te2 = CLIPTextModelWithProjection(tiny_text_config()).eval()
    tok = tiny_tokenizer(folder)
    return {
        "transformer": transformer,
        "vae": tiny_flow_vae(seed),
        "text_encoder": te,
        "text_encoder_2": te2,
        "text_encoder_3": tiny_t5(seed),
        "tokenizer": tok,
        "tokenizer_2": tok,
        "tokenizer_3": tok,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def tiny_flux_parts(folder: Path, seed: int = 0, dev: bool = True) -> dict:
    """Components of a tiny FLUX.1: dev (guidance embedding, dynamic shift) or schnell."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=dev,
    ).eval()
    tok = tiny_tokenizer(folder)
    sched = (
        FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
        if dev
        else FlowMatchEulerDiscreteScheduler(shift=1.0)
    )
    return {
        "transformer": transformer,
        "vae": tiny_flow_vae(seed, shift=0.1159, scale=0.3611),
        "text_encoder": CLIPTextModel(tiny_text_config()).eval(),
        "text_encoder_2": tiny_t5(seed),
        "tokenizer": tok,
        "tokenizer_2": tok,
        "scheduler": sched,
    }


def tiny_sd3_single_file_parts(folder: Path, seed: int = 0) -> dict:
    """``tiny_sd3_parts`` with text encoders diffusers' SD3 single-file loader reads back exactly:
    it tells CLIP-L from CLIP-G by width (here 24 and 40; pooled 24 + 40 = the MMDiT's 64, prompt
    24 + 40 = T5's 64) and sets CLIP-L's projection to the identity."""
    parts = tiny_sd3_parts(folder, seed)
    widths = {"text_encoder": (24, 4), "text_encoder_2": (40, 5)}  # (width, heads)
    for name, (width, heads) in widths.items():
        cfg = tiny_text_config()
        cfg.hidden_size = cfg.projection_dim = width
        cfg.num_attention_heads = heads
        parts[name] = CLIPTextModelWithProjection(cfg).eval()
    with torch.no_grad():
        parts["text_encoder"].text_projection.weight.copy_(torch.eye(widths["text_encoder"][0]))
    return parts


def tiny_kontext_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny FLUX.1 Kontext [dev]: FLUX.1-dev's shapes (guidance embedding, dynamic
    shift); what makes it Kontext is how it is called (the source image's tokens appended)."""
    return tiny_flux_parts(folder, seed, dev=True)


# -- Qwen-Image-Edit: its processor (Qwen2VLProcessor) needs torchvision in transformers 5 -----------


def tiny_qwen_tokenizer(folder: Path) -> Any:
    """blendedit's byte-level Qwen2 tokenizer with Qwen2.5-VL's special tokens at small ids
    (<|endoftext|> 256, then 257-263; <|image_pad|> = 262): a vocabulary of 264."""
    from blendedit.latent.backbones.qwen_edit import SPECIAL_IDS, byte_tokenizer

    return byte_tokenizer(folder, {k: 256 + i for i, k in enumerate(SPECIAL_IDS)})


def tiny_qwen_processor(tokenizer: Any, max_pixels: int = 56 * 56) -> Any:
    """What stands in for ``Qwen2VLProcessor`` here (it needs torchvision in transformers 5):
    blendedit's ``QwenVLInputs`` on transformers' PIL Qwen2-VL image processor (at most
    ``max_pixels`` pixels: a few image tokens), counting its calls."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from blendedit.latent.backbones.qwen_edit import QwenVLInputs

    class Counted(QwenVLInputs):
        calls = 0

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return super().__call__(*args, **kwargs)

    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=max_pixels)
    return Counted(images, tokenizer)


def tiny_qwen_edit_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny Qwen-Image-Edit: the MMDiT of diffusers' own test (16 packed channels,
    2 blocks), a Qwen-Image VAE of factor 4 with non-trivial latent mean/std, Qwen2.5-VL 16 wide
    (vision tower 2 blocks), the byte-level tokenizer and the stand-in processor."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ).eval()  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.05, 0.3],
        latents_std=[0.8, 1.5, 1.1, 2.0],
    ).eval()  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 264,
            "bos_token_id": None, "eos_token_id": 258, "pad_token_id": 256,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={
            "depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
            "out_hidden_size": 16,
        },
        hidden_size=16, vocab_size=264, vision_start_token_id=259, vision_end_token_id=260,
        image_token_id=262, video_token_id=263,
    )  # fmt: skip
    tok = tiny_qwen_tokenizer(folder / "qwen-tokenizer")
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": Qwen2_5_VLForConditionalGeneration(config).eval(),
        "tokenizer": tok,
        "processor": tiny_qwen_processor(tok),
        "scheduler": FlowMatchEulerDiscreteScheduler(
            shift=1.0,
            use_dynamic_shifting=True,
            shift_terminal=0.02,
            max_shift=0.9,
            time_shift_type="exponential",
            max_image_seq_len=8192,
        ),
    }


# Tiny models of 2025-2026 (issue 20): the random builders of their families' "tiny-*" presets,
# with the 16-channel factor-2 VAE above (PointMassVAE-able) and seeded weights.
def tiny_chroma_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny Chroma (FLUX.1-schnell shape, modulation approximator, T5 only)."""
    from blendedit.latent.backbones.chroma import Chroma

    return _tiny_parts(Chroma, "tiny-chroma", folder, seed)


def tiny_zimage_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny Z-Image (S3-DiT, Qwen3 32 wide, the byte-level Qwen tokenizer)."""
    from blendedit.latent.backbones.zimage import ZImage

    return _tiny_parts(ZImage, "tiny-zimage", folder, seed)


def tiny_qwenimage_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny Qwen-Image (MMDiT, its video VAE at factor 2, Qwen2.5-VL 32 wide)."""
    from blendedit.latent.backbones.qwenimage import QwenImage

    return _tiny_parts(QwenImage, "tiny-qwen-image", folder, seed, own_vae=True)


def tiny_flux2_klein_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny FLUX.2 [klein] (base: true CFG): its VAE at factor 2 with random
    batch-norm statistics (so that the normalisation is seen), Qwen3 16 wide and 27 layers."""
    from blendedit.latent.backbones.flux2 import Flux2Klein

    parts = _tiny_parts(Flux2Klein, "tiny-flux2-klein", folder, seed, own_vae=True)
    bn = parts["vae"].bn
    bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.3)
    bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return parts


def tiny_flux2_dev_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny FLUX.2 [dev] (klein's tiny transformer with a guidance embedding,
    Mistral 3 16 wide and 30 layers, random batch-norm statistics)."""
    from blendedit.latent.backbones.flux2dev import Flux2Dev

    parts = _tiny_parts(Flux2Dev, "tiny-flux2-dev", folder, seed, own_vae=True)
    bn = parts["vae"].bn
    bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.3)
    bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return parts


def tiny_krea2_parts(folder: Path, seed: int = 0) -> dict:
    """Components of a tiny Krea 2 (MMDiT, Qwen-Image's VAE at factor 2, Qwen3-VL 16 wide with
    its 3 layers tapped)."""
    from blendedit.latent.backbones.krea2 import Krea2

    parts = _tiny_parts(Krea2, "tiny-krea2", folder, seed, own_vae=True)
    return {**parts, "text_encoder_select_layers": (1, 2, 3)}


def _tiny_parts(cls, preset: str, folder: Path, seed: int, own_vae: bool = False) -> dict:
    from blendedit.latent.backbones.loading import own_scheduler

    arch = cls.catalogue[preset]
    torch.manual_seed(seed)
    bb = cls.build(arch.parts, own_scheduler(arch.scheduler), torch.device("cpu"), folder)
    return {
        "transformer": bb.unet,
        "vae": bb.vae.eval() if own_vae else tiny_flow_vae(seed, shift=0.1159, scale=0.3611),
        "text_encoder": bb.text_encoder,
        "tokenizer": bb.tokenizer,
        "scheduler": bb.scheduler,
    }
