"""Model families under the BLD loop, detected from the model itself and loaded by one function.

Detection: a diffusers folder or hub id by its ``model_index.json`` (``_class_name``), a single
checkpoint file by its key names (read from the header, nothing loaded). An unsupported model (a
9-channel inpainting UNet, a FLUX Fill model, a family without a module here) is one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError
from blendedit.latent.backbones.base import Backbone, Conditioning
from blendedit.latent.backbones.files import read_json, single_file_keys
from blendedit.latent.backbones.flux import Flux
from blendedit.latent.backbones.ldm import LatentDiffusion
from blendedit.latent.backbones.sd import StableDiffusion
from blendedit.latent.backbones.sd3 import StableDiffusion3
from blendedit.latent.backbones.sdxl import StableDiffusionXL
from blendedit.models import SINGLE_FILE_SUFFIXES, check_hub_id, load_cached_first

__all__ = [
    "FAMILIES",
    "Backbone",
    "Conditioning",
    "Flux",
    "LatentDiffusion",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "detect_family",
    "family_defaults",
    "load_backbone",
]

FAMILIES: dict[str, type[Backbone]] = {
    "sd": StableDiffusion,
    "sdxl": StableDiffusionXL,
    "ldm": LatentDiffusion,
    "sd3": StableDiffusion3,
    "flux": Flux,
}

# model_index.json ``_class_name`` -> family; None: known, but not a model BLD can blend with.
PIPELINE_FAMILIES: dict[str, str | None] = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",  # refused below when its UNet has 9 channels
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "LDMTextToImagePipeline": "ldm",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",  # refused below when its transformer is not 16-ch
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxInpaintPipeline": "flux",
    "FluxFillPipeline": None,
    "FluxKontextPipeline": None,
}
_UNSUPPORTED = {
    "FluxKontextPipeline": (
        "a FLUX Kontext model (editing by image conditioning); Blended Latent Diffusion needs "
        "the plain text-to-image model"
    ),
    "FluxFillPipeline": (
        "a FLUX Fill model (inpainting by channel concatenation); Blended Latent Diffusion needs "
        "the plain text-to-image model"
    ),
}


def family_of_keys(keys: dict[str, tuple[int, ...]], name: str) -> str:
    """The family of an original-layout checkpoint (A1111/ComfyUI single file) by its key names."""
    conv_in = keys.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise InputError(
            f"model: {name!r} has a {conv_in[1]}-channel UNet (an inpainting model); Blended "
            "Latent Diffusion needs a plain text-to-image model with 4 latent channels"
        )
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd"
    if any(".joint_blocks." in k for k in keys):
        return "sd3"
    if any("double_blocks." in k for k in keys):
        img_in = next((v for k, v in keys.items() if k.endswith("img_in.weight")), None)
        if img_in is not None and len(img_in) == 2 and img_in[1] != 64:
            raise InputError(f"model: {name!r} is {_UNSUPPORTED['FluxFillPipeline']}")
        return "flux"
    raise InputError(
        f"model: {name!r} is not a checkpoint blendedit recognises (no SD 1.x/2.x, SDXL, SD3 or "
        "FLUX keys); pass a diffusers folder instead"
    )


def family_of_index(index: dict[str, Any], name: str) -> str:
    cls = str(index.get("_class_name", ""))
    if cls not in PIPELINE_FAMILIES:
        raise InputError(
            f"model: {name!r} is a {cls or 'unknown'} model; the latent method supports "
            "Stable Diffusion 1.x/2.x, SDXL, SD3/3.5, FLUX.1 and the CompVis LDM"
        )
    family = PIPELINE_FAMILIES[cls]
    if family is None:
        raise InputError(f"model: {name!r} is {_UNSUPPORTED[cls]}")
    return family


def detect_family(model: str | os.PathLike[str], local_files_only: bool | None = None) -> str:
    """The family (a key of ``FAMILIES``) of a hub id, a diffusers folder or a single file."""
    path, name = Path(model), str(model)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise InputError(
                f"model: {name!r} is a file but not a .safetensors or .ckpt checkpoint"
            )
        try:
            keys = single_file_keys(path)
        except Exception as e:  # a truncated or foreign file: one line
            raise InputError(
                f"model: {name!r} is not a readable checkpoint ({type(e).__name__})"
            ) from None
        return family_of_keys(keys, name)
    if path.is_dir() and not (path / "model_index.json").is_file():
        return "sd"  # a bare folder of SD parts; load_sd_components names what is missing
    if not path.exists():
        check_hub_id(name)
    index = load_cached_first(
        "model", name, lambda local: read_json(name, "model_index.json", local), local_files_only
    )
    return family_of_index(index, name)


def family_defaults(
    model: str | os.PathLike[str], local_files_only: bool | None = None
) -> dict[str, Any]:
    """The EditConfig fields a model's family changes (``Backbone.defaults``), without loading
    it: for tools that set up settings before the model (``blendedit eval``)."""
    family = detect_family(model, local_files_only)
    if family != "flux":
        return dict(FAMILIES[family].defaults)
    path, name = Path(model), str(model)
    if path.is_file():  # dev has a guidance embedding, schnell none
        dev = any("guidance_in" in k for k in single_file_keys(path))
    else:
        config = load_cached_first(
            "model", name, lambda local: read_json(name, "transformer/config.json", local),
            local_files_only,
        )  # fmt: skip
        dev = bool(config.get("guidance_embeds"))
    return Flux.defaults_for(dev)


def load_backbone(
    model: str | os.PathLike[str],
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    model_config: str | None = None,
    vae: str | os.PathLike[str] | None = None,
    drop_t5: bool = False,
) -> Backbone:
    """The model's family, loaded: hub id, diffusers folder, or single file (``model_config``:
    a diffusers folder or hub id of the same architecture, for offline single files). ``vae``
    replaces the model's VAE (a folder or hub id, e.g. an fp16-safe SDXL VAE); ``drop_t5`` loads
    SD3 without its T5 encoder (its tokens become zeros)."""
    from blendedit.latent.backbones import loading

    family = detect_family(model, local_files_only)
    opts = {"drop_t5": True} if drop_t5 else {}
    if drop_t5 and family != "sd3":
        raise InputError(f"t5: --no-t5 applies to SD3 models, not {family}")
    backbone = loading.LOADERS[family](model, torch_dtype, local_files_only, model_config, **opts)
    if vae is not None:
        loading.replace_vae(backbone, vae, torch_dtype, local_files_only)
    want = backbone.model_in_channels
    if backbone.unet.config.in_channels != want:
        raise InputError(
            f"model: {str(model)!r} has a {backbone.unet.config.in_channels}-channel denoiser (an "
            "inpainting model); Blended Latent Diffusion needs the plain text-to-image model"
        )
    return backbone
