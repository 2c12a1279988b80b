"""Tiny random-weight segmenters (CLIPSeg, SAM, GroundingDINO), built from config in code and saved
as folders with their processors, so the real loading path reads them (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SwinConfig,
)
from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
    GroundingDinoImageProcessorPil,
)
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from blendedit.bench import write_char_vocab

SAM_SIZE = 64  # the tiny SAM's input side (1024 released)
CLIPSEG_SIZE = 32  # the tiny CLIPSeg's input side (352 released)


def build_clipseg(folder: Path, seed: int = 0) -> Path:
    """A CLIPSeg with a 2-layer CLIP (character vocabulary) and a 2-layer decoder."""
    torch.manual_seed(seed)
    text = dict(
        vocab_size=520, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
        pad_token_id=513,
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=CLIPSEG_SIZE, patch_size=8,
    )  # fmt: skip
    config = CLIPSegConfig(
        text_config=text, vision_config=vision, projection_dim=32, extract_layers=[0, 1],
        reduce_dim=16, decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )  # fmt: skip
    model = CLIPSegForImageSegmentation(config).eval()
    write_char_vocab(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    images = ViTImageProcessorPil(size={"height": CLIPSEG_SIZE, "width": CLIPSEG_SIZE})
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def build_sam(folder: Path, seed: int = 0, size: int = SAM_SIZE, patch: int = 8) -> Path:
    """A SAM with a 2-block ViT at ``size`` px (default 64, 8 px patches: an 8x8 embedding) and
    its processor; ``size=1024, patch=16`` keeps the released model's resolutions (a 64x64
    embedding, 256 px mask logits) with tiny widths, for timings."""
    torch.manual_seed(seed)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
            image_size=size, patch_size=patch, window_size=4 if size == SAM_SIZE else 14,
            global_attn_indexes=[1], num_pos_feats=8, mlp_dim=64,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=16, image_size=size, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )  # fmt: skip
    model = SamModel(config).eval()
    grid = size // patch * 4  # the mask decoder's output side
    images = SamImageProcessorPil(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": grid}, mask_pad_size={"height": grid, "width": grid},
    )  # fmt: skip
    SamProcessor(image_processor=images).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


BERT_WORDS = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_vocab(folder: Path) -> Path:
    """A BERT word-piece vocabulary keeping the ids GroundingDINO hard-codes ([CLS] 101, [SEP]
    102, "." 1012, "?" 1029) with lower-case letters and their ``##`` pieces between."""
    words = list(BERT_WORDS)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += letters + [f"##{c}" for c in letters] + list("0123456789,!")
    words += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(words))]
    words.append(".")  # 1012
    words += [f"[unused{i}]" for i in range(200, 200 + 1029 - len(words))]
    words.append("?")  # 1029
    assert words.index(".") == 1012 and words.index("?") == 1029 and words.index("[SEP]") == 102
    path = folder / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def build_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """A GroundingDINO with a 2-stage tiny Swin, a 2-layer BERT and 2 decoder layers."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(str(_bert_vocab(folder)), do_lower_case=True)
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        window_size=2, out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    text = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=10, encoder_layers=1,
        decoder_layers=2, d_model=32, encoder_ffn_dim=16, decoder_ffn_dim=16,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2,
        decoder_n_points=2, num_feature_levels=4, max_text_len=256,
    )  # fmt: skip
    model = GroundingDinoForObjectDetection(config).eval()
    images = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def build_sam2(folder: Path, seed: int = 0, size: int = 128) -> Path:
    """A SAM 2 with a 4-stage Hiera of 5 blocks (the first block of a pooling stage windowed,
    one global block) at ``size`` px, saved without a processor (``Sam2Processor`` needs
    torchvision here)."""
    from transformers import Sam2Config, Sam2Model

    torch.manual_seed(seed)
    backbone = {
        "model_type": "sam2_hiera_det_model", "image_size": [size, size], "hidden_size": 16,
        "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [16, 32, 64, 128],
        "num_attention_heads_per_stage": [1, 1, 1, 1], "window_size_per_stage": [8, 4, 4, 4],
        "global_attention_blocks": [3], "window_positional_embedding_background_size": [2, 2],
    }  # fmt: skip
    config = Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model", "backbone_config": backbone,
            "backbone_channel_list": [128, 64, 32, 16], "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
        },
        prompt_encoder_config={
            "hidden_size": 32, "image_size": size, "patch_size": 16, "mask_input_channels": 4
        },
        mask_decoder_config={
            "hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32
        },
    )  # fmt: skip
    Sam2Model(config).eval().save_pretrained(folder)
    return folder


def build_sam_hq(folder: Path, seed: int = 0, size: int = SAM_SIZE, patch: int = 8) -> Path:
    """A SAM-HQ as :func:`build_sam` (2-block ViT at 64 px, 8 px patches) with its processor."""
    from transformers import SamHQConfig, SamHQModel, SamHQProcessor

    torch.manual_seed(seed)
    config = SamHQConfig(
        vision_config={
            "hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": size, "patch_size": patch, "window_size": 4,
            "global_attn_indexes": [1], "num_pos_feats": 8, "mlp_dim": 64,
        },
        prompt_encoder_config={
            "hidden_size": 16, "image_size": size, "patch_size": patch, "mask_input_channels": 4
        },
        mask_decoder_config={
            "hidden_size": 16, "mlp_dim": 32, "num_attention_heads": 2, "iou_head_hidden_dim": 16,
            "vit_dim": 32,
        },
    )  # fmt: skip
    model = SamHQModel(config).eval()
    with torch.no_grad():  # the HQ branch's random mask is ~1e-7 of SAM's at this init: lift it
        for n, p in model.mask_decoder.named_parameters():
            if "hq" in n or "compress_vit" in n or "encoder_conv" in n:
                p.mul_(30)
    grid = size // patch * 4
    images = SamImageProcessorPil(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": grid}, mask_pad_size={"height": grid, "width": grid},
    )  # fmt: skip
    SamHQProcessor(image_processor=images).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


SAM3_SIZE = 56  # the tiny SAM 3's input side (1008 released), 14 px patches: a 4x4 grid


def build_sam3(folder: Path, seed: int = 0) -> Path:
    """A SAM 3 with a 2-block ViT (one global block), a 2-layer CLIP text encoder (character
    vocabulary, 32 positions), one-layer DETR encoder and decoder (8 queries); saved with its
    tokenizer only (``Sam3Processor`` needs torchvision here)."""
    from transformers import Sam3Config, Sam3Model

    torch.manual_seed(seed)
    grid = SAM3_SIZE // 14
    vit = {
        "model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": SAM3_SIZE,
        "patch_size": 14, "window_size": 2, "global_attn_indexes": [1],
        "pretrain_image_size": SAM3_SIZE,
    }  # fmt: skip
    small = {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = Sam3Config(
        vision_config={
            "model_type": "sam3_vision_model", "backbone_config": vit, "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        },
        text_config={
            "model_type": "clip_text_model", "vocab_size": 520, "hidden_size": 32,
            "intermediate_size": 64, "projection_dim": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 512,
            "eos_token_id": 513, "pad_token_id": 513,
        },
        geometry_encoder_config=small, detr_encoder_config=small,
        detr_decoder_config={**small, "num_queries": 8},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )  # fmt: skip
    model = Sam3Model(config).eval()
    write_char_vocab(folder)
    CLIPTokenizer.from_pretrained(str(folder), model_max_length=32).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
