"""ImageReward (Xu et al. 2023, ImageReward, section 3.2) read key for key onto transformers' BLIP
classes: the BLIP ViT (``BlipVisionModel``), the BERT text encoder with cross-attention to the
image in every layer (``BlipTextModel``, run as an encoder), and the reward MLP.

The published ``ImageReward.pt`` is one state dict: ``blip.visual_encoder.*`` (BLIP's timm-style
ViT: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}``, ``norm``), ``blip.text_encoder.*`` (BLIP's ``med.py`` BERT, the names
transformers' BLIP text model keeps), ``blip.vision_proj`` / ``blip.text_proj`` (not used by the
reward) and ``mlp.layers.{0,2,4,6,7}`` (the aesthetic predictor's five linears, on 768). The
reward: the text's first token after the cross-attending encoder, through the MLP, standardised
by the training set's mean and deviation (``(r - 0.16717...) / 1.03333...``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import ModelNotFoundError

REWARD_MEAN = 0.16717362830052426  # ImageReward's standardisation of the raw reward
REWARD_STD = 1.0333394966054072
BERT_BASE = "google-bert/bert-base-uncased"  # ImageReward's tokenizer (its [DEC]/[ENC] unused)
TEXT_LENGTH = 35  # ImageReward pads and truncates prompts to 35 tokens
_VISION = {  # BLIP ViT block key -> transformers BlipEncoderLayer key
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """``ImageReward.pt`` -> (vision, text, head) state dicts in transformers' BLIP names and the
    MLP's ``{0,2,4,6,7}.*``; an unknown key is one line."""
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_UNUSED):
            continue
        if key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.layers.")] = value
        elif key.startswith("blip.text_encoder."):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("blip.visual_encoder."):
            rest = key.removeprefix("blip.visual_encoder.")
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
            if rest in _VISION_TOP:
                vision[_VISION_TOP[rest]] = value
            elif m is not None and m.group(2) in _VISION:
                vision[f"encoder.layers.{m.group(1)}.{_VISION[m.group(2)]}.{m.group(3)}"] = value
            else:
                raise ModelNotFoundError(f"judge-model: ImageReward key {key!r} is not known")
        else:
            raise ModelNotFoundError(f"judge-model: ImageReward key {key!r} is not known")
    return vision, text, head


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def blip_configs(vision: dict, text: dict, med_config: dict[str, Any]) -> tuple[Any, Any]:
    """``BlipVisionConfig`` from the ViT's shapes (heads: width / 64, as BLIP's base and large
    ViTs; LayerNorm eps 1e-6), ``BlipTextConfig`` from the shapes and BLIP's ``med_config.json``
    (heads, eps), its cross-attention as wide as the ViT."""
    from transformers import BlipTextConfig, BlipVisionConfig

    try:
        patch_w = vision["embeddings.patch_embedding.weight"]  # (W, 3, P, P)
        width, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
        grid = round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
        words = text["embeddings.word_embeddings.weight"]  # (vocab, hidden)
        positions = int(text["embeddings.position_embeddings.weight"].shape[0])
        inter = int(text["encoder.layer.0.intermediate.dense.weight"].shape[0])
    except KeyError as e:
        raise ModelNotFoundError(f"judge-model: not an ImageReward checkpoint (no {e})") from None
    vision_cfg = BlipVisionConfig(
        hidden_size=width, intermediate_size=int(vision["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_count(vision, r"encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, width // 64), image_size=grid * patch, patch_size=patch,
        layer_norm_eps=1e-6, hidden_act="gelu",
    )  # fmt: skip
    text_cfg = BlipTextConfig(
        vocab_size=int(words.shape[0]), hidden_size=int(words.shape[1]), intermediate_size=inter,
        num_hidden_layers=_count(text, r"encoder\.layer\.(\d+)\."),
        num_attention_heads=int(med_config.get("num_attention_heads", 12)),
        max_position_embeddings=positions, encoder_hidden_size=width,
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)), hidden_act="gelu",
        is_decoder=True,  # builds the cross-attention; run with is_decoder=False (an encoder)
        pad_token_id=int(med_config.get("pad_token_id", 0)),
    )  # fmt: skip
    return vision_cfg, text_cfg


def aesthetic_head(width: int) -> torch.nn.Sequential:
    """The MLP of ImageReward and of the LAION improved aesthetic predictor: Linear(width, 1024),
    Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16),
    Linear(16, 1), without activations; state dict keys ``{0,2,4,6,7}.*``."""
    return torch.nn.Sequential(
        torch.nn.Linear(width, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    ).eval()


class ImageRewardModel(torch.nn.Module):
    """BLIP ViT + cross-attending BERT + the reward MLP, in transformers' BLIP classes."""

    def __init__(self, vision_cfg: Any, text_cfg: Any) -> None:
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.head = aesthetic_head(int(text_cfg.hidden_size))

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) normalised; ids, mask (1, L) -> standardised rewards (B,)."""
        image = self.vision(pixel_values=pixels).last_hidden_state  # (B, 1 + g*g, W)
        b = image.shape[0]
        out = self.text(
            input_ids=ids.expand(b, -1),
            attention_mask=mask.expand(b, -1),
            encoder_hidden_states=image,
            encoder_attention_mask=torch.ones(
                image.shape[:2], dtype=torch.long, device=image.device
            ),
            is_decoder=False,
        ).last_hidden_state  # (B, L, hidden)
        reward = self.head(out[:, 0].float()).squeeze(-1)  # (B,)
        return (reward - REWARD_MEAN) / REWARD_STD


def load_imagereward_model(state: dict[str, torch.Tensor], med_config: Path | None) -> Any:
    """The model holding ``ImageReward.pt``'s weights, every tensor of both layouts accounted for."""
    from accelerate import init_empty_weights

    vision, text, head = split_state(state)
    cfg = json.loads(med_config.read_text()) if med_config and med_config.is_file() else {}
    with init_empty_weights():  # no random init of weights about to be replaced
        model = ImageRewardModel(*blip_configs(vision, text, cfg))
    for part, sd in ((model.vision, vision), (model.text, text), (model.head, head)):
        missing, unexpected = part.load_state_dict(sd, strict=False, assign=True)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ModelNotFoundError(
                f"judge-model: the ImageReward checkpoint does not fill {type(part).__name__} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return model.eval().requires_grad_(False)
