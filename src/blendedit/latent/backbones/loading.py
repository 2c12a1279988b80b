"""Loading each family from a hub id, a diffusers folder or a single checkpoint file (cache first,
one line on failure; see ``blendedit.models``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError
from blendedit.latent.backbones.base import Backbone
from blendedit.latent.backbones.files import read_json, single_file_keys
from blendedit.latent.backbones.flux import Flux
from blendedit.latent.backbones.ldm import LatentDiffusion
from blendedit.latent.backbones.sd import StableDiffusion
from blendedit.latent.backbones.sd3 import StableDiffusion3
from blendedit.latent.backbones.sdxl import StableDiffusionXL
from blendedit.models import (
    from_single_file,
    load_cached_first,
    load_sd_components,
    single_file_error,
)

Name = str | os.PathLike[str]

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


def load_sd(
    name: Name, dtype: torch.dtype | None, local: bool | None, config: str | None
) -> Backbone:
    p = load_sd_components(name, dtype, local, config)
    return StableDiffusion(p.vae, p.unet, p.text_encoder, p.tokenizer, p.scheduler)


def load_sdxl(
    name: Name, dtype: torch.dtype | None, local: bool | None, config: str | None
) -> Backbone:
    from diffusers import StableDiffusionXLPipeline

    path = Path(name)
    if path.is_file():
        pipe = from_single_file(
            StableDiffusionXLPipeline, path, config, torch_dtype=dtype, add_watermarker=False
        )
        return _sdxl_from_parts(pipe.components, pipe.config)

    def load(local_only: bool) -> Backbone:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        src = str(name)
        index = read_json(src, "model_index.json", local_only)
        kw: dict[str, Any] = {"local_files_only": local_only}
        dt = {"torch_dtype": dtype, **kw}
        has_te1 = (index.get("text_encoder") or [None])[0] is not None
        parts = {
            "vae": AutoencoderKL.from_pretrained(src, subfolder="vae", **dt),
            "unet": UNet2DConditionModel.from_pretrained(src, subfolder="unet", **dt),
            "text_encoder": CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **dt)
            if has_te1
            else None,
            "tokenizer": CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
            if has_te1
            else None,
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                src, subfolder="text_encoder_2", **dt
            ),
            "tokenizer_2": CLIPTokenizer.from_pretrained(src, subfolder="tokenizer_2", **kw),
            "scheduler": own_scheduler(DDIMScheduler.load_config(src, subfolder="scheduler", **kw)),
        }
        return _sdxl_from_parts(parts, index)

    return load_cached_first("model", str(name), load, local)


def own_scheduler(config: dict[str, Any]) -> Any:
    """The model's own scheduler class (its config is the base of every scheduler made per call;
    a DDIM made from an Euler config would fill in DDIM's defaults, clip_sample among them)."""
    import diffusers

    return getattr(diffusers, str(config.get("_class_name")), diffusers.DDIMScheduler).from_config(
        config
    )


def _sdxl_from_parts(parts: dict[str, Any], index: Any) -> Backbone:
    get = index.get if hasattr(index, "get") else lambda k, d=None: getattr(index, k, d)
    return StableDiffusionXL(
        parts["vae"],
        parts["unet"],
        parts.get("text_encoder"),
        parts["text_encoder_2"],
        parts.get("tokenizer"),
        parts["tokenizer_2"],
        parts["scheduler"],
        force_zeros_for_empty_prompt=bool(get("force_zeros_for_empty_prompt", True)),
    )


def load_ldm(
    name: Name, dtype: torch.dtype | None, local: bool | None, config: str | None
) -> Backbone:
    if Path(name).is_file():
        raise InputError(
            f"model: {str(name)!r}: the CompVis LDM loads from a diffusers folder or hub id "
            "(CompVis/ldm-text2im-large-256), not a single file"
        )

    def load(local_only: bool) -> Backbone:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from diffusers.pipelines.latent_diffusion import LDMBertModel
        from transformers import BertTokenizer

        src = str(name)
        kw: dict[str, Any] = {"local_files_only": local_only}
        dt = {"torch_dtype": dtype, **kw}
        sched = DDIMScheduler.load_config(src, subfolder="scheduler", **kw)
        return LatentDiffusion(
            AutoencoderKL.from_pretrained(src, subfolder="vqvae", **dt),
            UNet2DConditionModel.from_pretrained(src, subfolder="unet", **dt),
            LDMBertModel.from_pretrained(src, subfolder="bert", **dt),
            BertTokenizer.from_pretrained(src, subfolder="tokenizer", **kw),
            DDIMScheduler.from_config({**sched, **LDM_SAMPLER}),
        )

    return load_cached_first("model", str(name), load, local)


# What an SD3 / FLUX single file may carry besides the denoiser: component -> key prefixes.
# A1111/ComfyUI files often hold the transformer alone (FLUX: BFL layout, always; SD3: with or
# without text encoders); the rest then comes from ``--model-config``.
_FILE_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "StableDiffusion3Pipeline": {
        "vae": ("first_stage_model.",),
        "text_encoder": ("text_encoders.clip_l.",),
        "text_encoder_2": ("text_encoders.clip_g.",),
        "text_encoder_3": ("text_encoders.t5xxl.",),
    },
    "FluxPipeline": {
        "vae": ("vae.", "first_stage_model."),
        "text_encoder": ("text_encoders.clip_l.",),
        "text_encoder_2": ("text_encoders.t5xxl.",),
    },
}


def _parts_from_config(
    cls_name: str, path: Path, config: str, dtype: torch.dtype | None, given: dict[str, Any]
) -> dict[str, Any]:
    """The components a single file lacks, loaded from the diffusers folder ``config`` (diffusers'
    single-file loader looks there only for the denoiser's config, not for missing weights)."""
    import diffusers

    keys = single_file_keys(path)
    index = read_json(config, "model_index.json", True)
    out: dict[str, Any] = {}
    for part, prefixes in _FILE_PARTS[cls_name].items():
        if part in given or any(k.startswith(prefixes) for k in keys):
            continue
        library, cls = index.get(part) or (None, None)
        if cls is None:
            continue
        module = diffusers if library == "diffusers" else __import__(library)
        out[part] = getattr(module, cls).from_pretrained(
            config, subfolder=part, torch_dtype=dtype, local_files_only=True
        )
    return out


def _flow_pipeline(
    cls_name: str,
    name: Name,
    dtype: torch.dtype | None,
    local: bool | None,
    config: str | None,
    **parts: Any,
) -> Any:
    """SD3 / FLUX through diffusers' own pipeline loader (folder, hub id or single file)."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    path = Path(name)
    if path.is_file():
        kw: dict[str, Any] = {"torch_dtype": dtype, **parts}
        try:
            if config is not None:
                kw["config"] = config
                if Path(config).is_dir():
                    kw.update(_parts_from_config(cls_name, path, config, dtype, parts))
            return cls.from_single_file(str(path), **kw)
        except Exception as e:  # diffusers raises many types for a bad or unrecognised checkpoint
            raise single_file_error(path, e, config) from None
    return load_cached_first(
        "model", str(name),
        lambda local_only: cls.from_pretrained(
            str(name), torch_dtype=dtype, local_files_only=local_only, **parts
        ), local,
    )  # fmt: skip


def load_sd3(
    name: Name, dtype: torch.dtype | None, local: bool | None, config: str | None,
    drop_t5: bool = False,
) -> Backbone:  # fmt: skip
    parts = {"text_encoder_3": None, "tokenizer_3": None} if drop_t5 else {}
    p = _flow_pipeline("StableDiffusion3Pipeline", name, dtype, local, config, **parts)
    return StableDiffusion3(
        p.vae, p.transformer, p.text_encoder, p.text_encoder_2, p.text_encoder_3,
        p.tokenizer, p.tokenizer_2, p.tokenizer_3, p.scheduler,
    )  # fmt: skip


def load_flux(
    name: Name, dtype: torch.dtype | None, local: bool | None, config: str | None,
    drop_t5: bool = False,
) -> Backbone:  # fmt: skip
    if drop_t5:
        raise InputError("t5: FLUX.1 needs its T5 text encoder; only SD3 runs without it")
    p = _flow_pipeline("FluxPipeline", name, dtype, local, config)
    return Flux(
        p.vae, p.transformer, p.text_encoder, p.text_encoder_2, p.tokenizer, p.tokenizer_2,
        p.scheduler,
    )  # fmt: skip


Loader = Callable[..., Backbone]  # (name, dtype, local_files_only, config, **options)
LOADERS: dict[str, Loader] = {
    "sd": load_sd,
    "sdxl": load_sdxl,
    "ldm": load_ldm,
    "sd3": load_sd3,
    "flux": load_flux,
}


def replace_vae(
    backbone: Backbone, vae: Name, dtype: torch.dtype | None, local: bool | None
) -> None:
    """``--vae``: a VAE folder (``config.json`` + weights) or hub id, e.g. an fp16-safe SDXL VAE."""
    from diffusers import AutoencoderKL

    src = str(vae)
    if Path(src).is_file():
        raise InputError(f"vae: {src!r} is a file; pass a diffusers VAE folder or hub id")
    new = load_cached_first(
        "vae", src, lambda local_only: AutoencoderKL.from_pretrained(
            src, torch_dtype=dtype, local_files_only=local_only
        ), local,
    )  # fmt: skip
    old = backbone.vae
    if new.config.latent_channels != old.config.latent_channels:
        raise InputError(
            f"vae: {src!r} has {new.config.latent_channels} latent channels, the model "
            f"{old.config.latent_channels}"
        )
    new.eval().requires_grad_(False)
    backbone.vae = new
    new.to(backbone.vae_dtype_for(new.dtype))
