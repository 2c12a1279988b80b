"""An open_clip CLIP checkpoint (HPS v2's ViT-H-14) read key for key onto a transformers
``CLIPModel`` (Radford et al. 2021, CLIP, section 2.4: the same towers, two layouts).

open_clip's layout: ``visual.conv1`` (the patch embedding, no bias), ``visual.class_embedding``,
``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.{i}`` (``ln_1``,
``attn.in_proj_{weight,bias}`` with q, k, v stacked, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``,
``mlp.c_proj``), ``visual.ln_post``, ``visual.proj`` (width, embed: ``x @ proj``); the text tower
at the top level (``token_embedding``, ``positional_embedding``, ``transformer.resblocks.{i}``,
``ln_final``, ``text_projection`` (width, embed)) and ``logit_scale``. Its text tower pools at
the largest token id (the end token) and pads with 0; transformers' pools at the first end token,
the same position. The tower sizes come from the tensors' shapes; the heads (not in the tensors)
from open_clip's model config (``open_clip_config.json`` beside the checkpoint: ``vision_cfg.
head_width``, ``text_cfg.heads``), else ViT-H-14's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import ModelNotFoundError

VIT_H_14_CONFIG = {  # open_clip's model_configs/ViT-H-14.json
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                   "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                 "layers": 24},
}  # fmt: skip
_BLOCK = {  # open_clip resblock key -> transformers encoder layer key
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP = {  # open_clip key -> transformers key (tensors copied as they are)
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_IGNORED = ("attn_mask",)  # open_clip's causal mask buffer, saved by some versions


def _tower(key: str) -> tuple[str, str] | None:
    """``visual.transformer.resblocks.3.ln_1.weight`` -> (transformers prefix, rest)."""
    m = re.fullmatch(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)", key)
    if m is None:
        return None
    model = "vision_model" if m.group(1) else "text_model"
    return f"{model}.encoder.layers.{m.group(2)}.", m.group(3)


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip state dict -> ``CLIPModel`` state dict; every key is used (one line otherwise)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "visual.proj":  # (width, embed): x @ proj; a Linear holds its transpose
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif (tower := _tower(key)) is not None:
            prefix, rest = tower
            if rest.startswith("attn.in_proj_"):  # (3W, ...) q, k, v stacked
                kind = rest.removeprefix("attn.in_proj_")
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            base, _, kind = rest.rpartition(".")
            if base not in _BLOCK:
                raise ModelNotFoundError(f"judge-model: open_clip key {key!r} is not known")
            out[f"{prefix}{_BLOCK[base]}.{kind}"] = value
        elif key.split(".")[-1] not in _IGNORED:
            raise ModelNotFoundError(f"judge-model: open_clip key {key!r} is not known")
    return out


def _layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def clip_config(state: dict[str, torch.Tensor], open_clip_config: dict[str, Any]) -> Any:
    """The ``CLIPConfig`` of an open_clip checkpoint: sizes from its shapes, heads from the
    model config; GELU (open_clip's ViT-H-14 has no QuickGELU), LayerNorm eps 1e-5."""
    from transformers import CLIPConfig

    try:
        conv = state["visual.conv1.weight"]  # (W, 3, P, P)
        v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        t_len, t_width = state["positional_embedding"].shape
        vocab = int(state["token_embedding.weight"].shape[0])
        embed = int(state["visual.proj"].shape[1])
    except KeyError as e:
        raise ModelNotFoundError(f"judge-model: not an open_clip checkpoint (no {e})") from None
    vis, txt = open_clip_config.get("vision_cfg", {}), open_clip_config.get("text_cfg", {})
    head_width = int(vis.get("head_width", 64))
    common = {"hidden_act": "gelu", "layer_norm_eps": 1e-5, "projection_dim": embed}
    vision = {
        **common, "hidden_size": v_width, "intermediate_size": int(
            state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": _layers(state, "visual.transformer.resblocks."),
        "num_attention_heads": max(1, v_width // head_width), "image_size": grid * patch,
        "patch_size": patch,
    }  # fmt: skip
    text = {
        **common, "hidden_size": int(t_width), "intermediate_size": int(
            state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": _layers(state, "transformer.resblocks."),
        "num_attention_heads": int(txt.get("heads", 8)), "max_position_embeddings": int(t_len),
        "vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1,
        "pad_token_id": 0,
    }  # fmt: skip
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def clip_model_from_open_clip(state: dict[str, torch.Tensor], config_path: Path | None) -> Any:
    """A ``CLIPModel`` holding an open_clip checkpoint's weights (strict: every tensor of both
    layouts accounted for). ``config_path``: open_clip's model config JSON (heads), if it exists."""
    from accelerate import init_empty_weights
    from transformers import CLIPModel

    cfg = VIT_H_14_CONFIG
    if config_path is not None and Path(config_path).is_file():
        cfg = json.loads(Path(config_path).read_text())
    with init_empty_weights():  # no random init of a billion weights about to be replaced
        model = CLIPModel(clip_config(state, cfg))
    converted = convert_state(state)
    missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelNotFoundError(
            f"judge-model: the open_clip checkpoint does not fill a CLIPModel (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()
