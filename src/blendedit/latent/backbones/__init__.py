"""Model families under the BLD loop: one registry of family classes, detection and loading.

Each family is one module (``sd``, ``sdxl``, ``sd3``, ``flux``, ``ldm``): a :class:`Backbone`
subclass that says which models are its own, loads them, builds them with random weights and
lists its bench presets. :func:`register_family` adds one (a plugin or a test can add its own at
run time); nothing outside this package names a family.

Detection: a diffusers folder or hub id by its ``model_index.json`` (``_class_name``), a single
checkpoint file by its key names (read from the header, nothing loaded). Models trained for
inpainting (9-channel SD/SDXL UNets, FLUX.1 Fill) load in their family; an unsupported model (a
family without a module here, a denoiser of another width) is one clear line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError
from blendedit.latent.backbones.base import Backbone, Conditioning, LoadOptions
from blendedit.latent.backbones.chroma import Chroma
from blendedit.latent.backbones.files import read_json, single_file_keys
from blendedit.latent.backbones.flux import Flux
from blendedit.latent.backbones.flux2 import Flux2Klein
from blendedit.latent.backbones.flux2dev import Flux2Dev
from blendedit.latent.backbones.kontext import FluxKontext
from blendedit.latent.backbones.krea2 import Krea2
from blendedit.latent.backbones.ldm import LatentDiffusion
from blendedit.latent.backbones.qwen_edit import QwenImageEdit
from blendedit.latent.backbones.qwenimage import QwenImage
from blendedit.latent.backbones.qwenimage21 import QwenImage21
from blendedit.latent.backbones.sd import StableDiffusion
from blendedit.latent.backbones.sd3 import StableDiffusion3
from blendedit.latent.backbones.sdxl import StableDiffusionXL
from blendedit.latent.backbones.zimage import ZImage
from blendedit.models import check_hub_id, check_single_file, load_cached_first

__all__ = [
    "FAMILIES",
    "Backbone",
    "Chroma",
    "Conditioning",
    "Flux",
    "Flux2Dev",
    "Flux2Klein",
    "FluxKontext",
    "Krea2",
    "LatentDiffusion",
    "LoadOptions",
    "QwenImage",
    "QwenImage21",
    "QwenImageEdit",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "ZImage",
    "detect_family",
    "family_defaults",
    "family_names",
    "load_backbone",
    "register_family",
    "unregister_family",
]

FAMILIES: dict[str, type[Backbone]] = {}  # family -> class, in the order detection asks them


def register_family(cls: type[Backbone]) -> type[Backbone]:
    """Add a model family (a :class:`Backbone` subclass with ``family``, ``pipelines``, ``load``,
    ...): every front end (edit, batch, eval, serve, bench) then loads its models and lists its
    bench presets. Its family name, pipeline class names and preset names must be new. Returns
    ``cls`` (usable as a class decorator)."""
    if not cls.family or cls.family in FAMILIES:
        raise ValueError(f"family: {cls.family!r} is empty or registered already")
    for other in FAMILIES.values():
        claimed = {*other.pipelines, *other.refused} & {*cls.pipelines, *cls.refused}
        presets = set(other.catalogue) & set(cls.catalogue)
        if claimed or presets:
            raise ValueError(
                f"family: {cls.family!r} claims {', '.join(sorted(claimed | presets))} of "
                f"{other.family!r}"
            )
    FAMILIES[cls.family] = cls
    return cls


def unregister_family(family: str) -> None:
    """Remove a family added by :func:`register_family`."""
    FAMILIES.pop(family, None)


for _cls in (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux, LatentDiffusion):
    register_family(_cls)
register_family(FluxKontext)  # image-conditioned editing (issue 19)
register_family(QwenImageEdit)
for _cls in (
    Chroma,
    ZImage,
    QwenImage,
    Flux2Klein,
    Flux2Dev,
    Krea2,
    QwenImage21,
):  # the models of 2025-2026 (issue 20)
    register_family(_cls)


def family_names(
    where: Callable[[type[Backbone]], bool] = lambda cls: True,
    last: str = "and",
    long: bool = False,
) -> str:
    """The registered families ``where`` holds, for a message: "SD 1.x/2.x, SDXL and SD3"
    (``long``: their titles)."""
    names = list(dict.fromkeys(c.title if long else c.name for c in FAMILIES.values() if where(c)))
    return f" {last} ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def family_of_keys(keys: dict[str, tuple[int, ...]], name: str) -> str:
    """The family of an original-layout checkpoint (A1111/ComfyUI single file) by its key names."""
    for cls in FAMILIES.values():
        if cls.single_file and cls.claims_keys(keys, name):
            return cls.family
    kinds = family_names(lambda c: c.single_file, last="or")
    raise InputError(
        f"model: {name!r} is not a checkpoint blendedit recognises (no {kinds} keys); pass a "
        "diffusers folder instead"
    )


def family_of_index(index: dict[str, Any], name: str) -> str:
    """The family of a diffusers model by its ``model_index.json`` ``_class_name``."""
    cls_name = str(index.get("_class_name", ""))
    for cls in FAMILIES.values():
        if cls_name in cls.refused:
            raise InputError(f"model: {name!r} is {cls.refused[cls_name]}")
        if cls_name in cls.pipelines:
            return cls.family
    raise InputError(
        f"model: {name!r} is a {cls_name or 'unknown'} model; the latent method supports "
        f"{family_names(long=True)}"
    )


def detect_family(model: str | os.PathLike[str], local_files_only: bool | None = None) -> str:
    """The family (a key of ``FAMILIES``) of a hub id, a diffusers folder or a single file."""
    path, name = Path(model), str(model)
    if path.is_file():
        check_single_file(path, name)
        try:
            keys = single_file_keys(path)
        except Exception as e:  # a truncated or foreign file: one line
            raise InputError(
                f"model: {name!r} is not a readable checkpoint ({type(e).__name__})"
            ) from None
        return family_of_keys(keys, name)
    if path.is_dir() and not (path / "model_index.json").is_file():
        # a bare folder of parts: the family that loads one names what is missing
        return next(c.family for c in FAMILIES.values() if c.bare_folder)
    if not path.exists():
        check_hub_id(name)
    index = load_cached_first(
        "model", name, lambda local: read_json(name, "model_index.json", local), local_files_only
    )
    return family_of_index(index, name)


def family_defaults(
    model: str | os.PathLike[str], local_files_only: bool | None = None
) -> dict[str, Any]:
    """The EditConfig fields a model's family changes (``Backbone.defaults``; FLUX: dev or
    schnell), without loading it: for tools that set up settings before the model (``eval``)."""
    family = detect_family(model, local_files_only)
    return FAMILIES[family].model_defaults(model, local_files_only)


def load_backbone(
    model: str | os.PathLike[str],
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    model_config: str | None = None,
    vae: str | os.PathLike[str] | None = None,
    drop_t5: bool = False,
    quantize: str | None = None,
) -> Backbone:
    """The model's family, loaded: hub id, diffusers folder, or single file (``model_config``:
    a diffusers folder or hub id of the same architecture, for offline single files). ``vae``
    replaces the model's VAE (a folder or hub id, e.g. an fp16-safe SDXL VAE); ``drop_t5`` loads
    SD3 without its T5 encoder (its tokens become zeros); ``quantize`` loads the family's
    denoiser and language-model encoder through diffusers' quantization backends (gguf: ``model``
    is a .gguf file of the denoiser, ``model_config`` the model's folder)."""
    from blendedit.latent.backbones.loading import replace_vae

    gguf = quantize == "gguf" and model_config is not None
    family = detect_family(model_config if gguf else model, local_files_only)  # type: ignore[arg-type]
    cls = FAMILIES[family]
    if drop_t5 and not cls.can_drop_t5:
        kinds = family_names(lambda c: c.can_drop_t5)
        raise InputError(f"t5: --no-t5 applies to {kinds} models, not {family}")
    if quantize is not None and not cls.quantized_parts:
        kinds = family_names(lambda c: bool(c.quantized_parts))
        raise InputError(f"quantize: --quantize applies to {kinds} models, not {family}")
    opts = LoadOptions(torch_dtype, local_files_only, model_config, drop_t5, quantize)
    backbone = cls.load(model, replace(opts, quantized=dict(cls.quantized_parts)))
    if vae is not None:
        replace_vae(backbone, vae, torch_dtype, local_files_only)
    want = backbone.model_in_channels
    if backbone.unet.config.in_channels != want and not backbone.inpainting:
        raise InputError(
            f"model: {str(model)!r} has a {backbone.unet.config.in_channels}-channel denoiser, "
            f"neither a text-to-image ({want}) nor an inpainting model blendedit knows"
        )
    return backbone


def weight_memory(
    model: str | os.PathLike[str],
    dtype: torch.dtype,
    quantize: str | None = None,
    model_config: str | None = None,
    local_files_only: bool | None = None,
) -> float | None:
    """The GB (1e9 bytes) a model's weights need in ``dtype`` or ``quantize`` mode, before
    loading: a folder's parts built on the meta device (``blendedit.latent.quantize``), the
    family's quantized parts at the mode's bytes per weight; a GGUF denoiser at its file's size.
    None where it cannot be told without loading (a hub id not in the cache, a single file)."""
    from blendedit.latent.quantize import meta_counts, weight_gb

    gguf = quantize == "gguf" and model_config is not None
    folder = Path(model_config if gguf else model)  # type: ignore[arg-type]
    if not (folder / "model_index.json").is_file():
        return None
    cls = FAMILIES[detect_family(folder, local_files_only)]
    counts = meta_counts(folder)
    if gguf:
        denoiser = next(iter(cls.quantized_parts), cls.denoiser_name)
        counts.pop(denoiser, None)
        extra = Path(model).stat().st_size / 1e9
        return weight_gb(counts, dtype, None, ()) + extra
    return weight_gb(counts, dtype, quantize, cls.quantized_parts)
