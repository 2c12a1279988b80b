"""Write a diffusers Stable Diffusion folder as one ``.safetensors`` in the original key layout.

Test-only. A1111 and ComfyUI checkpoints keep the key names of the original training code:
CompVis/Stability ``ldm`` (SD 1.x, SD 2.x) and Stability ``sgm`` (SDXL). This module is the inverse
of what ``diffusers.loaders.single_file_utils`` reads, written from the layouts themselves, so the
single-file loading path can be tested offline with tiny random-weight models.

Layout (prefix -> module):

- ``model.diffusion_model.``: the openaimodel UNet. ``time_embed.{0,2}``, ``label_emb.0.{0,2}``
  (SDXL's added text/time embedding), ``input_blocks.k.{0: ResBlock, 1: SpatialTransformer}``
  (``input_blocks.0.0`` is ``conv_in``, a downsampler is ``input_blocks.k.0.op``),
  ``middle_block.{0,1,2}``, ``output_blocks.k.{0,1,2}`` (an upsampler is the last ``.conv``),
  ``out.{0,2}``. ResBlocks name their layers ``in_layers.{0,2}``, ``emb_layers.1``,
  ``out_layers.{0,3}``, ``skip_connection``; SpatialTransformer keys equal diffusers' names.
- ``first_stage_model.``: the ldm autoencoder. ``{encoder,decoder}.{down,up}.i.block.j``,
  ``.downsample.conv``/``.upsample.conv`` (decoder levels in reverse order),
  ``mid.block_{1,2}``, ``mid.attn_1.{norm,q,k,v,proj_out}`` as 1x1 convs [out, in, 1, 1],
  ``norm_out``, ``nin_shortcut``.
- Text encoders. OpenAI CLIP (SD 1.x, SDXL's first) keeps the Hugging Face layout under
  ``cond_stage_model.transformer.`` / ``conditioner.embedders.0.transformer.``. OpenCLIP (SD 2.x,
  SDXL's bigG second) lives under ``cond_stage_model.model.`` / ``conditioner.embedders.1.model.``:
  ``token_embedding``, ``positional_embedding``, ``transformer.resblocks.i.{ln_1, attn.in_proj_*
  (q, k, v stacked on dim 0), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final`` and
  ``text_projection`` [width, embed_dim] (applied as ``x @ text_projection``).
- SD3/SD3.5 (Stability ``sd3_impls`` MMDiT, ComfyUI ``*_incl_clips_t5xxl`` files): the MMDiT under
  ``model.diffusion_model.``: ``x_embedder.proj``, ``pos_embed`` [1, max^2, width],
  ``t_embedder.mlp.{0,2}``, ``y_embedder.mlp.{0,2}``, ``context_embedder``,
  ``joint_blocks.i.{x_block, context_block}.{attn.qkv (q, k, v stacked), attn.proj, attn.ln_{q,k}
  (3.5), adaLN_modulation.1, mlp.fc{1,2}}``, ``x_block.attn2.*`` (3.5 medium's dual attention),
  ``final_layer.{linear, adaLN_modulation.1}``. The VAE under ``first_stage_model.`` as above; the
  text encoders in the Hugging Face layout under ``text_encoders.{clip_l, clip_g,
  t5xxl}.transformer.``.
- FLUX.1 (Black Forest Labs ``flux`` repo, ``flux1-dev.safetensors``): the transformer alone, no
  prefix: ``img_in``, ``txt_in``, ``time_in``/``vector_in``/``guidance_in`` (dev only)
  ``.{in,out}_layer``, ``double_blocks.i.{img,txt}_{mod.lin, attn.qkv, attn.norm.{query,key}_norm
  .scale, attn.proj, mlp.{0,2}}``, ``single_blocks.i.{linear1 (q, k, v, mlp stacked), linear2,
  norm.{query,key}_norm.scale, modulation.lin}``, ``final_layer.{linear, adaLN_modulation.1}``.
- Both MMDiTs order the final (and SD3's last context) adaLN output (shift, scale); diffusers'
  ``AdaLayerNormContinuous`` reads (scale, shift), so those two halves swap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")

UNET_PREFIX = "model.diffusion_model."
COMFY = UNET_PREFIX  # ComfyUI's prefix of a denoiser file's keys (issue 20's files)
VAE_PREFIX = "first_stage_model."

# diffusers ResnetBlock2D (UNet) -> openaimodel ResBlock
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers top-level UNet layers -> openaimodel
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL: Sequential(Sequential(Linear, SiLU, Linear))
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",  # "projection" class embedding (e.g. SD 2 unCLIP)
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers VAE Attention -> ldm AttnBlock (1x1 convs)
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
# Hugging Face CLIP encoder layer -> OpenCLIP ResidualAttentionBlock (q/k/v are fused separately)
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def write_original_checkpoint(
    folder: Path, out: Path, family: str, text_encoders: bool = True
) -> Path:
    """Write a saved diffusers pipeline ``folder`` as one ``.safetensors`` at ``out`` in the
    original layout of ``family`` ("sd1", "sd2", "sdxl", "sd3" or "flux").

    SD 1.x/2.x/SDXL: UNet, VAE and text encoder(s). SD3: MMDiT and VAE, plus the three text
    encoders unless ``text_encoders`` is False (the folder has none). FLUX: the transformer alone,
    as Black Forest Labs ship it. Every weight is written (an unmapped one raises ValueError);
    ``out`` must not exist yet.
    """
    folder, out = Path(folder), Path(out)
    if family not in FAMILIES:
        raise ValueError(f"family: unknown {family!r}; choose one of {', '.join(FAMILIES)}")
    if out.suffix != ".safetensors":
        raise ValueError(f"out: {str(out)!r} is not a .safetensors path")
    if out.exists():
        raise FileExistsError(f"out: {str(out)!r} exists; not overwriting it")

    if family in ("sd3", "flux"):
        tensors = _flow_tensors(folder, family, text_encoders)
    else:
        tensors = _unet_tensors(folder, family)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # tied weights (T5's shared / embed_tokens) share storage, which safetensors refuses
        save_file(
            {k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()},
            str(tmp),
            {"format": "pt"},
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _unet_tensors(folder: Path, family: str) -> dict[str, torch.Tensor]:
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    tensors = _prefixed(UNET_PREFIX, unet_to_original(unet.state_dict(), unet.config))
    tensors |= _prefixed(VAE_PREFIX, vae_to_original(vae.state_dict()))
    if family == "sd1":
        text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        tensors |= _prefixed("cond_stage_model.transformer.", clip_to_original(text.state_dict()))
    elif family == "sd2":
        text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        tensors |= _prefixed("cond_stage_model.model.", open_clip_to_original(text.state_dict()))
    else:
        text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        text_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        tensors |= _prefixed(
            "conditioner.embedders.0.transformer.", clip_to_original(text.state_dict())
        )
        tensors |= _prefixed(
            "conditioner.embedders.1.model.", open_clip_to_original(text_2.state_dict())
        )
    return tensors


def _flow_tensors(folder: Path, family: str, text_encoders: bool) -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import T5EncoderModel

    if family == "flux":
        flux = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
        return flux_transformer_to_original(flux.state_dict())
    mmdit = SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    tensors = _prefixed(UNET_PREFIX, sd3_transformer_to_original(mmdit.state_dict(), mmdit.config))
    tensors |= _prefixed(VAE_PREFIX, vae_to_original(vae.state_dict()))
    if text_encoders:
        clip_l = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder")
        clip_g = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        t5 = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_3")
        proj = clip_l.text_projection.weight
        if proj.shape[0] != proj.shape[1] or not torch.equal(proj, torch.eye(len(proj))):
            # diffusers' SD3 loader sets CLIP-L's projection to the identity, whatever the file says
            raise ValueError("text_encoder: CLIP-L's text_projection must be the identity for SD3")
        tensors |= _prefixed("text_encoders.clip_l.transformer.", hf_clip_to_original(clip_l))
        tensors |= _prefixed("text_encoders.clip_g.transformer.", hf_clip_to_original(clip_g))
        tensors |= _prefixed("text_encoders.t5xxl.transformer.", dict(t5.state_dict()))
    return tensors


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _rename(key: str, table: dict[str, str]) -> str:
    """Replace the dotted leading part of ``key`` found in ``table``; unknown keys raise."""
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    raise ValueError(f"no original-layout name for {key!r}")


def unet_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> openaimodel UNet keys (without the prefix).

    Level b of ``layers_per_block`` L occupies ``input_blocks`` 1 + b(L+1) ... and, on the way
    up, ``output_blocks`` b(L+1) ... (L+1 ResBlocks per up level).
    """
    per_level = config.layers_per_block
    if not isinstance(per_level, int):
        raise ValueError(f"layers_per_block: {per_level!r}; only one int for all levels")
    up_has_attention = ["CrossAttn" in t for t in config.up_block_types]

    def resnet(rest: str) -> str:
        return _rename(rest, _UNET_RESNET)

    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (
            r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
            lambda m: (
                f"input_blocks.{1 + int(m[1]) * (per_level + 1) + int(m[2])}.0." + resnet(m[3])
            ),
        ),
        (
            r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
            lambda m: f"input_blocks.{1 + int(m[1]) * (per_level + 1) + int(m[2])}.1.{m[3]}",
        ),
        (
            r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)",
            lambda m: f"input_blocks.{(int(m[1]) + 1) * (per_level + 1)}.0.op.{m[2]}",
        ),
        (
            r"mid_block\.resnets\.(\d+)\.(.+)",
            lambda m: f"middle_block.{2 * int(m[1])}." + resnet(m[2]),
        ),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle_block.1.{m[1]}"),
        (
            r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
            lambda m: f"output_blocks.{int(m[1]) * (per_level + 1) + int(m[2])}.0." + resnet(m[3]),
        ),
        (
            r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
            lambda m: f"output_blocks.{int(m[1]) * (per_level + 1) + int(m[2])}.1.{m[3]}",
        ),
        (
            # the upsampler follows the level's last ResBlock (and its transformer, if any)
            r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
            lambda m: (
                f"output_blocks.{int(m[1]) * (per_level + 1) + per_level}."
                f"{2 if up_has_attention[int(m[1])] else 1}.conv.{m[2]}"
            ),
        ),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, name in rules:
            m = re.fullmatch(pattern, key)
            if m:
                out[name(m)] = value
                break
        else:
            out[_rename(key, _UNET_TOP)] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> ldm AutoencoderKL keys (without the prefix).

    The decoder's ``up_blocks`` run from the lowest resolution up, ldm's ``up`` levels the other
    way; the mid attention's linear layers [out, in] become 1x1 convs [out, in, 1, 1].
    """
    levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)", k)))

    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut", "nin_shortcut")

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            name = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTENTION)}"
            if value.ndim == 2:  # Linear [out, in] -> Conv2d 1x1 [out, in, 1, 1]
                value = value[:, :, None, None]
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            name = f"{m[1]}.norm_out.{m[2]}"
        elif re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.\w+|(post_)?quant_conv\.\w+", key):
            name = key
        else:
            raise ValueError(f"no original-layout name for VAE key {key!r}")
        out[name] = value
    return out


def _text_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys relative to ``text_model.`` (transformers >= 5.6 saves CLIPTextModel flattened)."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict in the Hugging Face layout ``text_model.*`` that SD 1.x and
    SDXL's first embedder keep (``position_ids`` is a buffer, not a weight, and is left out)."""
    inner = _text_model_keys(state)
    if "text_projection.weight" in inner:
        raise ValueError("clip_to_original: a projection has no place in this layout")
    return {f"text_model.{k}": v for k, v in inner.items() if not k.endswith("position_ids")}


def open_clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP text model in the OpenCLIP layout (SD 2.x ``cond_stage_model.model``, SDXL bigG).

    q, k, v [d, d] stack into ``in_proj_weight`` [3d, d]. ``text_projection`` is [d, e], the
    transpose of the Linear weight; a model without one (SD 2.x's text encoder stops before it)
    gets the identity [d, d], since diffusers reads the attention width d from its first dim.
    """
    inner = _text_model_keys(state)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in inner.items():
        if key.endswith("position_ids"):
            continue
        if m := re.fullmatch(
            r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key
        ):
            fused.setdefault(f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", {})[m[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            out[f"transformer.resblocks.{m[1]}.{_rename(m[2], _OPEN_CLIP_LAYER)}"] = value
        elif key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value  # a bare Parameter [positions, d] in OpenCLIP
        elif m := re.fullmatch(r"final_layer_norm\.(weight|bias)", key):
            out[f"ln_final.{m[1]}"] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T  # Linear [e, d] -> [d, e]
        else:
            raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
    for name, parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"{name}: q, k and v are not all present")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if "text_projection" not in out:
        width = out["token_embedding.weight"].shape[1]
        out["text_projection"] = torch.eye(width, dtype=out["token_embedding.weight"].dtype)
    return out


def hf_clip_to_original(model: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """SD3's CLIP-L/G: the Hugging Face layout ``text_model.*`` plus ``text_projection.weight``."""
    state = model.state_dict()
    out = {
        f"text_model.{k}": v
        for k, v in _text_model_keys(state).items()
        if not k.endswith("position_ids") and k != "text_projection.weight"
    }
    out["text_projection.weight"] = state["text_projection.weight"]
    return out


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(scale, shift) <-> (shift, scale) along dim 0 of an adaLN projection [2d, ...]."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _fuse(
    fused: dict[str, dict[str, torch.Tensor]], order: dict[str, tuple[str, ...]]
) -> dict[str, torch.Tensor]:
    """Stack the collected parts of each fused projection on dim 0 in the original order."""
    out: dict[str, torch.Tensor] = {}
    for name, parts in fused.items():
        want = order[name.rsplit(".", 2)[-2]]  # keyed by the fused layer's own name
        if sorted(parts) != sorted(want):
            raise ValueError(f"{name}: parts {sorted(parts)}, expected {list(want)}")
        out[name] = torch.cat([parts[p] for p in want], dim=0)
    return out


# diffusers SD3Transformer2DModel top level -> sd3_impls MMDiT
_SD3_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
# diffusers JointTransformerBlock -> sd3_impls JointBlock (q, k, v fuse into attn.qkv)
_SD3_BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
_SD3_QKV = {
    r"attn\.to_([qkv])": "x_block.attn.qkv",
    r"attn\.add_([qkv])_proj": "context_block.attn.qkv",
    r"attn2\.to_([qkv])": "x_block.attn2.qkv",
}


def sd3_transformer_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel keys -> sd3_impls MMDiT keys (without the prefix).

    The last block's context stream only feeds the image stream (``context_pre_only``): no
    output projection or MLP, and its adaLN [2d] is (shift, scale) like the final layer's.
    """
    last = config.num_layers - 1
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            if key.startswith("norm_out.linear."):
                value = _swap_halves(value)
            out[_rename(key, _SD3_TOP)] = value
            continue
        i, layer, kind = int(m[1]), m[2], m[3]
        for pattern, name in _SD3_QKV.items():
            if q := re.fullmatch(pattern, layer):
                fused.setdefault(f"joint_blocks.{i}.{name}.{kind}", {})[q[1]] = value
                break
        else:
            if layer == "norm1_context.linear" and i == last:
                value = _swap_halves(value)
            out[f"joint_blocks.{i}.{_rename(layer, _SD3_BLOCK)}.{kind}"] = value
    return out | _fuse(fused, {"qkv": ("q", "k", "v")})


# diffusers FluxTransformer2DModel top level -> BFL Flux
_FLUX_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
# diffusers FluxTransformerBlock -> BFL DoubleStreamBlock (q, k, v fuse into {img,txt}_attn.qkv)
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
# diffusers FluxSingleTransformerBlock -> BFL SingleStreamBlock (q, k, v, mlp fuse into linear1)
_FLUX_SINGLE = {
    "norm.linear": "modulation.lin",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
    "proj_out": "linear2",
}


def flux_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel keys -> Black Forest Labs Flux keys (no prefix).

    A single block's ``linear1`` [3d + mlp, d] stacks q, k, v and the MLP input projection.
    """
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := re.fullmatch(
            r"transformer_blocks\.(\d+)\.attn\.(to|add)_([qkv])(_proj)?\.(\w+)", key
        ):
            stream = "img" if m[2] == "to" else "txt"
            fused.setdefault(f"double_blocks.{m[1]}.{stream}_attn.qkv.{m[5]}", {})[m[3]] = value
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key):
            out[f"double_blocks.{m[1]}.{_rename(m[2], _FLUX_DOUBLE)}"] = value
        elif m := re.fullmatch(
            r"single_transformer_blocks\.(\d+)\.(attn\.to_([qkv])|proj_(mlp))\.(\w+)", key
        ):
            fused.setdefault(f"single_blocks.{m[1]}.linear1.{m[5]}", {})[m[3] or m[4]] = value
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", key):
            out[f"single_blocks.{m[1]}.{_rename(m[2], _FLUX_SINGLE)}"] = value
        else:
            if key.startswith("norm_out.linear."):
                value = _swap_halves(value)
            out[_rename(key, _FLUX_TOP)] = value
    return out | _fuse(fused, {"qkv": ("q", "k", "v"), "linear1": ("q", "k", "v", "mlp")})


# --- The transformer files of 2025-2026 (issue 20) --------------------------------------------
# Each ships its denoiser alone (the other parts come from ``--model-config``), in the layout of
# its authors' code; diffusers' converters (``single_file_utils.convert_*``) read these layouts:
#
# - Chroma (lodestones): FLUX.1's BFL names without ``img_mod``/``txt_mod``/``modulation`` (the
#   blocks' modulation comes from ``distilled_guidance_layer.{in_proj, layers.i.{in,out}_layer,
#   norms.i.scale, out_proj}``), no ``time_in``/``vector_in``/``guidance_in``, no final adaLN.
# - FLUX.2 (BFL): ``img_in``, ``txt_in``, ``time_in``/``guidance_in`` (dev) ``.{in,out}_layer``,
#   ``double_stream_modulation_{img,txt}.lin``, ``single_stream_modulation.lin``,
#   ``double_blocks.i.{img,txt}_{attn.qkv, attn.norm.{query,key}_norm.scale, attn.proj,
#   mlp.{0,2}}``, ``single_blocks.i.{linear1 (q, k, v, mlp-in stacked: diffusers keeps it fused),
#   linear2, norm.{query,key}_norm.scale}``, ``final_layer.{linear, adaLN_modulation.1 (shift,
#   scale)}``; no biases.
# - Z-Image (Tongyi, ComfyUI under ``model.diffusion_model.``): diffusers' names but
#   ``x_embedder``/``final_layer`` (diffusers: ``all_x_embedder.2-1``, ``all_final_layer.2-1``)
#   and attention ``qkv`` (q, k, v stacked), ``out``, ``q_norm``, ``k_norm``.
# - Qwen-Image (ComfyUI): diffusers' names (diffusers' mapping is the identity).
# - Qwen-Image 2.1 (ComfyUI): diffusers' names but the SwiGLU's ``img_mlp.gate_up`` (the gate's
#   rows, then the up projection's), under ``model.diffusion_model.``.
# - Krea 2: ``first``, ``tmlp.{0,2}``, ``tproj.1``, ``txtmlp.{0.scale,1,3}``, ``txtfusion``,
#   ``blocks.i.{attn.{wq,wk,wv,wo,gate,qknorm.{q,k}norm.scale}, mlp, prenorm.scale,
#   postnorm.scale, mod.lin (the six modulation vectors flattened)}``, ``last.{linear,
#   norm.scale, modulation.lin}``.

# diffusers ChromaTransformer2DModel's modulation approximator -> lodestones' names
_CHROMA_GUIDANCE = {
    "linear_1": "in_layer",
    "linear_2": "out_layer",
}


def chroma_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ChromaTransformer2DModel keys -> lodestones' Chroma keys (FLUX.1's for the
    rest: :func:`flux_transformer_to_original`)."""
    out: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"distilled_guidance_layer\.layers\.(\d+)\.(linear_[12])\.(\w+)", key):
            out[f"distilled_guidance_layer.layers.{m[1]}.{_CHROMA_GUIDANCE[m[2]]}.{m[3]}"] = value
        elif m := re.fullmatch(r"distilled_guidance_layer\.norms\.(\d+)\.weight", key):
            out[f"distilled_guidance_layer.norms.{m[1]}.scale"] = value
        elif key.startswith("distilled_guidance_layer."):
            out[key] = value  # in_proj, out_proj
        else:
            rest[key] = value
    return out | flux_transformer_to_original(rest)


# diffusers Flux2Transformer2DModel top level -> BFL FLUX.2
_FLUX2_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
_FLUX2_DOUBLE = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
_FLUX2_SINGLE = {
    "attn.to_qkv_mlp_proj": "linear1",
    "attn.to_out": "linear2",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}


def flux2_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers Flux2Transformer2DModel keys -> Black Forest Labs FLUX.2 keys (no prefix)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := re.fullmatch(
            r"transformer_blocks\.(\d+)\.attn\.(to|add)_([qkv])(_proj)?\.(\w+)", key
        ):
            stream = "img" if m[2] == "to" else "txt"
            fused.setdefault(f"double_blocks.{m[1]}.{stream}_attn.qkv.{m[5]}", {})[m[3]] = value
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key):
            out[f"double_blocks.{m[1]}.{_rename(m[2], _FLUX2_DOUBLE)}"] = value
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", key):
            out[f"single_blocks.{m[1]}.{_rename(m[2], _FLUX2_SINGLE)}"] = value
        else:
            if key.startswith("norm_out.linear."):
                value = _swap_halves(value)
            out[_rename(key, _FLUX2_TOP)] = value
    return out | _fuse(fused, {"qkv": ("q", "k", "v")})


def zimage_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ZImageTransformer2DModel keys -> Tongyi's Z-Image keys (without the prefix)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(.+)\.attention\.to_([qkv])\.weight", key):
            fused.setdefault(f"{m[1]}.attention.qkv.weight", {})[m[2]] = value
            continue
        key = re.sub(r"^all_x_embedder\.2-1\.", "x_embedder.", key)
        key = re.sub(r"^all_final_layer\.2-1\.", "final_layer.", key)
        key = key.replace(".attention.to_out.0.", ".attention.out.")
        key = key.replace(".attention.norm_q.", ".attention.q_norm.")
        key = key.replace(".attention.norm_k.", ".attention.k_norm.")
        out[key] = value
    return out | _fuse(fused, {"qkv": ("q", "k", "v")})


def qwenimage_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers QwenImageTransformer2DModel keys -> ComfyUI's Qwen-Image keys: the same."""
    return dict(state)


def qwenimage21_transformer_to_original(
    state: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """diffusers QwenImage21Transformer2DModel keys -> ComfyUI's (without the prefix): the
    SwiGLU's gate and up projections fused as ``img_mlp.gate_up``, gate rows first."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(.+\.img_mlp)\.(gate_layer|proj)\.weight", key):
            fused.setdefault(f"{m[1]}.gate_up.weight", {})[m[2]] = value
        else:
            out[key] = value
    return out | _fuse(fused, {"gate_up": ("gate_layer", "proj")})


_KREA2_TOP = {  # diffusers Krea2Transformer2DModel top level -> Krea's
    "img_in": "first",
    "time_embed.linear_1": "tmlp.0",
    "time_embed.linear_2": "tmlp.2",
    "time_mod_proj": "tproj.1",
    "txt_in.norm.weight": "txtmlp.0.scale",
    "txt_in.linear_1": "txtmlp.1",
    "txt_in.linear_2": "txtmlp.3",
    "text_fusion": "txtfusion",
    "transformer_blocks": "blocks",
    "final_layer.linear": "last.linear",
    "final_layer.norm.weight": "last.norm.scale",
    "final_layer.scale_shift_table": "last.modulation.lin",
}
_KREA2_BLOCK = {  # inside a block (transformer, text fusion): diffusers -> Krea's
    ".attn.to_q.": ".attn.wq.",
    ".attn.to_k.": ".attn.wk.",
    ".attn.to_v.": ".attn.wv.",
    ".attn.to_out.0.": ".attn.wo.",
    ".attn.to_gate.": ".attn.gate.",
    ".attn.norm_q.weight": ".attn.qknorm.qnorm.scale",
    ".attn.norm_k.weight": ".attn.qknorm.knorm.scale",
    ".ff.": ".mlp.",
    ".norm1.weight": ".prenorm.scale",
    ".norm2.weight": ".postnorm.scale",
}


def krea2_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers Krea2Transformer2DModel keys -> Krea's (without the prefix); a block's
    ``scale_shift_table`` (6, d) is stored flattened as ``mod.lin`` (6d,)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"transformer_blocks\.(\d+)\.scale_shift_table", key):
            out[f"blocks.{m[1]}.mod.lin"] = value.reshape(-1)
            continue
        for old, new in _KREA2_BLOCK.items():
            key = key.replace(old, new)
        out[_rename(key, _KREA2_TOP)] = value
    return out


TRANSFORMER_FILES: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "chroma": chroma_transformer_to_original,
    "flux2": flux2_transformer_to_original,
    "zimage": zimage_transformer_to_original,
    "qwen-image": qwenimage_transformer_to_original,
    "qwen-image-2.1": qwenimage21_transformer_to_original,
    "krea2": krea2_transformer_to_original,
}


def write_transformer_file(transformer, out: Path, layout: str, prefix: str = "") -> Path:
    """Write a diffusers transformer (a module) as one ``.safetensors`` at ``out`` in the
    original layout ``layout`` (a key of :data:`TRANSFORMER_FILES`), each key under ``prefix``
    (ComfyUI's ``model.diffusion_model.``); ``out`` must not exist yet."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"out: {str(out)!r} exists; not overwriting it")
    tensors = _prefixed(prefix, TRANSFORMER_FILES[layout](dict(transformer.state_dict())))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), {"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
