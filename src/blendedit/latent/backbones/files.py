"""Reading what a model says about itself without loading it: a JSON file of a diffusers folder or
hub repository (``model_index.json``, a component's ``config.json``), a checkpoint's key names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def read_json(name: str, filename: str, local: bool) -> dict[str, Any]:
    """``filename`` (e.g. "model_index.json", "transformer/config.json") of a local folder or a
    hub repository (the cache only when ``local``); OSError when it is missing."""
    if Path(name).is_dir():
        p = Path(name) / filename
        if not p.is_file():
            raise OSError(f"{name} has no {filename}")
        return json.loads(p.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(name, filename, local_files_only=local)).read_text())


def single_file_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint, from the safetensors header (or an mmap'd .ckpt)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    sd = sd.get("state_dict", sd)
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


COMFY_PREFIX = "model.diffusion_model."  # ComfyUI's prefix of a denoiser's keys


def bare_keys(keys: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """A denoiser file's key -> shape without ComfyUI's ``model.diffusion_model.`` prefix (BFL,
    lodestones and Tongyi files have none; diffusers' converters strip it)."""
    return {k.removeprefix(COMFY_PREFIX): v for k, v in keys.items()}


def has_key(keys: dict[str, tuple[int, ...]], pattern: str) -> bool:
    """Whether a key (without ComfyUI's prefix) matches the regular expression ``pattern``."""
    import re

    rx = re.compile(pattern)
    return any(rx.fullmatch(k.removeprefix(COMFY_PREFIX)) for k in keys)
