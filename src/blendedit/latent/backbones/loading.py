"""Loading helpers the families share (each family's ``Backbone.load`` is in its module): the model's
own scheduler, a diffusers pipeline from a hub id, folder or single file (the parts a single file
lacks from ``--model-config``), and ``--vae``. Cache first, one line on failure
(``blendedit.models``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError
from blendedit.latent.backbones.base import Backbone, LoadOptions, Name
from blendedit.latent.backbones.files import COMFY_PREFIX, read_json, single_file_keys
from blendedit.latent.quantize import gguf_denoiser, pipeline_config
from blendedit.models import from_single_file, load_cached_first, single_file_error

# component -> key prefixes: what a single file of a family may carry besides the denoiser
FileParts = dict[str, tuple[str, ...]]


def own_scheduler(config: dict[str, Any]) -> Any:
    """The model's own scheduler class (its config is the base of every scheduler made per call;
    a DDIM made from an Euler config would fill in DDIM's defaults, clip_sample among them)."""
    import diffusers

    return getattr(diffusers, str(config.get("_class_name")), diffusers.DDIMScheduler).from_config(
        config
    )


def _parts_from_config(
    file_parts: FileParts, path: Path, config: str, dtype: torch.dtype | None, given: dict[str, Any]
) -> dict[str, Any]:
    """The components a single file lacks, loaded from the diffusers folder ``config`` (diffusers'
    single-file loader looks there only for the denoiser's config, not for missing weights)."""
    import diffusers

    keys = single_file_keys(path)
    index = read_json(config, "model_index.json", True)
    out: dict[str, Any] = {}
    for part, prefixes in file_parts.items():
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


def load_pipeline(
    cls_name: str, file_parts: FileParts, name: Name, opts: LoadOptions, **parts: Any
) -> Any:
    """A model through diffusers' own pipeline loader ``cls_name`` (folder, hub id or single
    file; a single file's missing parts, by ``file_parts``, from the folder ``opts.config``). A
    family whose files hold the denoiser alone (no ``file_parts``) and any GGUF file: the
    denoiser from the file, the rest from ``opts.config`` (:func:`pipeline_with_file_denoiser`)."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    path = Path(name)
    dtype, local, config = opts.dtype, opts.local_files_only, opts.config
    if opts.quantize == "gguf" or (path.is_file() and not file_parts):
        return pipeline_with_file_denoiser(cls, path, opts, **parts)
    if opts.quantize is not None:
        quantized = {k: v for k, v in opts.quantized.items() if k not in parts}  # not dropped
        parts["quantization_config"] = pipeline_config(opts.quantize, quantized, dtype)
    if path.is_file():
        if file_parts and config is not None and Path(config).is_dir():
            try:
                parts = {**_parts_from_config(file_parts, path, config, dtype, parts), **parts}
            except Exception as e:  # a config folder that does not fit: one line
                raise single_file_error(path, e, config) from None
        return from_single_file(cls, path, config, torch_dtype=dtype, **parts)
    return load_cached_first(
        "model", str(name),
        lambda local_only: cls.from_pretrained(
            str(name), torch_dtype=dtype, local_files_only=local_only, **parts
        ), local,
    )  # fmt: skip


def denoiser_from_file(
    path: Path, opts: LoadOptions, part: str = "transformer", cls_name: str | None = None
) -> Any:
    """The denoiser ``part`` of a single file: a GGUF file (``--quantize gguf``, diffusers' GGUF
    loader) or an original-layout ``.safetensors`` (BFL, ComfyUI, lodestones files) through its
    class's ``from_single_file`` and the converter diffusers registers for it; the class and its
    config from the diffusers folder ``opts.config`` (``--model-config``), required: the file
    holds the denoiser alone (``cls_name``: its class where the folder has no full
    ``model_index.json``). ``--quantize`` int8/fp8/nf4 are refused for a .safetensors file."""
    gguf = opts.quantize == "gguf"
    if gguf and (path.suffix != ".gguf" or not path.is_file()):
        raise InputError(f"quantize: gguf takes a .gguf file as --model, not {str(path)!r}")
    if not gguf and path.suffix.lower() != ".safetensors":  # no pickles for the new formats
        raise InputError(
            f"model: {str(path)!r} holds only the {part}; its single file loads from "
            ".safetensors (or .gguf with --quantize gguf)"
        )
    if opts.config is None or not Path(opts.config).is_dir():
        raise InputError(
            f"model-config: {path.name!r} holds only the {part}; pass --model-config, the "
            "model's diffusers folder, for its other parts"
        )
    if opts.quantize not in (None, "gguf"):  # diffusers 0.42's from_single_file takes weights as
        # quantized already (pre_quantized): a bf16 file would load unquantized
        raise InputError(
            f"quantize: {opts.quantize} applies to a diffusers folder, not to the single file "
            f"{path.name!r}; use --quantize gguf with a .gguf file, or the model's folder"
        )
    if cls_name is None:
        try:
            index = read_json(opts.config, "model_index.json", True)
        except (OSError, ValueError):
            index = {}
        cls_name = (index.get(part) or [None, None])[1]
    if cls_name is None:
        raise InputError(f"model-config: {opts.config!r} has no {part} in its model_index.json")
    if gguf:
        return gguf_denoiser(cls_name, path, opts.config, opts.dtype, part)
    import diffusers

    try:
        return getattr(diffusers, cls_name).from_single_file(
            _without_comfy_prefix(path), config=opts.config, subfolder=part,
            torch_dtype=opts.dtype, local_files_only=True,
        )  # fmt: skip
    except Exception as e:  # a file of another architecture or size: one line
        raise single_file_error(path, e, opts.config) from None


def _without_comfy_prefix(path: Path) -> str | dict[str, torch.Tensor]:
    """The file's path, or its tensors without ComfyUI's ``model.diffusion_model.`` prefix where
    every key has it (some of diffusers' converters strip it, FLUX.2's and Qwen-Image's not)."""
    keys = single_file_keys(path)
    if not keys or not all(k.startswith(COMFY_PREFIX) for k in keys):
        return str(path)
    from safetensors.torch import load_file

    return {k.removeprefix(COMFY_PREFIX): v for k, v in load_file(str(path)).items()}


def pipeline_with_file_denoiser(
    cls: Any, path: Path, opts: LoadOptions, part: str = "transformer", **parts: Any
) -> Any:
    """The denoiser from a single file (:func:`denoiser_from_file`), the other parts from the
    diffusers folder ``--model-config``."""
    parts[part] = denoiser_from_file(path, opts, part)
    return cls.from_pretrained(opts.config, torch_dtype=opts.dtype, local_files_only=True, **parts)


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
