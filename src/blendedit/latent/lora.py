"""LoRA adapters (Hu et al. 2021, W + s·B·A) on a model's denoiser (a UNet or a transformer) and,
where the family's diffusers loader takes them, its text encoder(s), loaded as PEFT adapters and
never fused, so removal gives back the very same base modules and weights.

Each family names the diffusers LoRA mixin its own pipelines inherit (``Backbone.lora_loader``,
e.g. ``"Flux2LoraLoaderMixin"``); one code path loads through whichever it names.

Sources: a local ``.safetensors`` file (diffusers/PEFT, kohya/A1111 or the other formats the
family's mixin converts), a local folder holding ``pytorch_lora_weights.safetensors`` (or one other
weights file), or a hub id ``owner/name`` (``owner/name/file.safetensors`` names the file), from
the Hugging Face cache first. Pickled ``.bin``/``.pt`` files are read only with
``torch.load(weights_only=True)``.

Built on diffusers' public LoRA contract: the mixin's ``lora_state_dict`` (format conversion),
``load_lora_into_unet`` / ``load_lora_into_transformer`` / ``load_lora_into_text_encoder`` (PEFT
injection), and its ``set_adapters`` / ``unload_lora_weights`` on a small host object that
carries the given components under the names the mixin expects (``_lora_loadable_modules``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError, ModelNotFoundError, first_line

LORA_WEIGHT_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[^:]+)?$")
_ADAPTER_PREFIX = "blendedit_lora_"
# diffusers' mixins of Stable Diffusion 1.x/2.x and SDXL: apply_loras without a loader
_SD_LOADERS = ("StableDiffusionLoraLoaderMixin", "StableDiffusionXLLoraLoaderMixin")
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora`` argument: where the LoRA is and its strength s in W + s·ΔW."""

    source: str
    scale: float = 1.0


def parse_lora_spec(text: str) -> LoraSpec:
    """``FILE_OR_ID[:SCALE]``: a path that exists is taken whole (even with ':' in it); otherwise a
    number after the last ':' is the scale (default 1.0)."""
    text = str(text).strip()
    if not text:
        raise InputError("lora: empty value; expected FILE_OR_ID[:SCALE]")
    if Path(text).expanduser().exists() or ":" not in text:
        return LoraSpec(text, 1.0)
    source, _, tail = text.rpartition(":")
    try:
        scale = float(tail)
    except ValueError:
        raise InputError(
            f"lora: {text!r} is not an existing file, and {tail!r} after its last ':' is not a "
            "scale (a number)"
        ) from None
    if not math.isfinite(scale):
        raise InputError(f"lora: {text!r}: the scale must be a finite number, got {tail!r}")
    if not source.strip():
        raise InputError(f"lora: {text!r} names no file or hub id before the ':'")
    return LoraSpec(source.strip(), scale)


@dataclass
class LoraHandle:
    """The adapters :func:`apply_loras` put on the models; ``remove()`` takes them all off."""

    specs: list[LoraSpec]
    adapter_names: list[str]
    files: list[Path]  # the weights file each spec resolved to
    _host: Any = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self._host is not None

    def set_scales(self, scales: Sequence[float]) -> None:
        """New strengths, one per LoRA, without reloading (adapter weights of ``set_adapters``)."""
        if self._host is None:
            raise InputError("lora: the LoRAs were already removed")
        scales = [float(s) for s in scales]
        if len(scales) != len(self.adapter_names):
            raise InputError(f"lora: {len(scales)} scales for {len(self.adapter_names)} LoRAs")
        bad = [s for s in scales if not math.isfinite(s)]
        if bad:
            raise InputError(f"lora: scale {bad[0]!r} is not a finite number")
        self._host.set_adapters(self.adapter_names, scales)
        self.specs = [LoraSpec(sp.source, s) for sp, s in zip(self.specs, scales, strict=True)]

    def remove(self) -> None:
        """Take every LoRA layer off: the models get back their original modules (same objects,
        same tensors). Idempotent."""
        if self._host is not None:
            self._host.unload_lora_weights()
            self._host = None


def remove_loras(handle: LoraHandle) -> None:
    """Same as ``handle.remove()``."""
    handle.remove()


def apply_loras(
    unet: Any,
    text_encoders: Sequence[Any],
    specs: Sequence[LoraSpec | str],
    *,
    local_files_only: bool | None = None,
    loader: str | None = None,
) -> LoraHandle:
    """Load each LoRA as a PEFT adapter on the denoiser ``unet`` (a UNet or a transformer) and,
    where it has text-encoder weights and ``loader`` takes them, on the text encoder(s), given in
    the order the loader names them (``Backbone.text_encoders()``; ``None`` for a missing one).
    ``loader``: the family's diffusers LoRA mixin (``Backbone.lora_loader``, e.g.
    ``"Flux2LoraLoaderMixin"``); None: Stable Diffusion's for one text encoder, SDXL's for two.
    Adapters stay separate and unfused; the output is W x + Σ_i s_i·B_i A_i x. On any failure
    nothing stays loaded and one ``lora: ...`` line is raised."""
    parsed = [s if isinstance(s, LoraSpec) else parse_lora_spec(s) for s in specs]
    if not parsed:
        return LoraHandle([], [], [])
    bad = [s for s in parsed if not math.isfinite(s.scale)]
    if bad:
        raise InputError(f"lora: scale {bad[0].scale!r} of {bad[0].source!r} is not finite")
    if loader is None:
        if len(text_encoders) not in (1, 2):
            raise InputError(
                f"lora: expected 1 (SD) or 2 (SDXL) text encoders, got {len(text_encoders)}"
            )
        loader = _SD_LOADERS[len(text_encoders) - 1]
    try:
        import peft  # noqa: F401
    except ImportError:
        raise InputError("lora: needs the `peft` package (pip install 'peft>=0.17')") from None
    host = _host_for(loader, unet, list(text_encoders))
    if _has_lora_layers(host):
        raise InputError("lora: the model already carries LoRA layers; remove those first")

    names: list[str] = []
    files: list[Path] = []
    try:
        with _quiet_loading():
            for i, spec in enumerate(parsed):
                path = resolve_lora_file(spec.source, local_files_only=local_files_only)
                name = f"{_ADAPTER_PREFIX}{i}"
                _load_one(host, path, spec.source, name)
                names.append(name)
                files.append(path)
            host.set_adapters(names, [s.scale for s in parsed])
    except BaseException:
        host.unload_lora_weights()
        raise
    return LoraHandle(parsed, names, files, host)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Our one-line errors replace diffusers' multi-line load reports, PEFT's warnings about
    several adapters or unmatched keys (checked by count instead) and transformers' progress bar."""
    import transformers.utils.logging as tf_logging
    from diffusers.utils import logging as df_logging

    level = df_logging.get_verbosity()
    bar = tf_logging.is_progress_bar_enabled()
    df_logging.set_verbosity(logging.CRITICAL)
    tf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(peft_config|PEFT config|was active).*")
            yield
    finally:
        df_logging.set_verbosity(level)
        if bar:
            tf_logging.enable_progress_bar()


def resolve_lora_file(source: str, *, local_files_only: bool | None = None) -> Path:
    """The local weights file for a file path, a folder, or a hub id (cache first; the hub only
    when the cache lacks it, ``local_files_only`` is not set and the hub answers)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _weights_in_folder(path, source)
    parts = source.split("/")
    looks_local = (
        source.startswith((".", "/", "~"))
        or (os.sep != "/" and os.sep in source)
        or not _HUB_ID.match(source)
        or (len(parts) == 2 and source.lower().endswith(_WEIGHT_SUFFIXES))
    )
    if looks_local:
        raise InputError(f"lora: no such file or folder: {source!r}")
    return _from_hub("/".join(parts[:2]), "/".join(parts[2:]) or None, source, local_files_only)


# --- loading -------------------------------------------------------------------------------------


def _host_for(loader: str, denoiser: Any, text_encoders: list[Any]) -> Any:
    """An object of the mixin ``loader`` carrying the denoiser and text encoders under the names
    the mixin works on (``unet`` or ``transformer``, ``text_encoder``, ``text_encoder_2``)."""
    host = _host_class(loader)()
    setattr(host, host.denoiser_attr, denoiser)
    for attr, model in zip(host.text_encoder_attrs, text_encoders, strict=False):
        setattr(host, attr, model)
    return host


@functools.cache
def _host_class(loader: str) -> type:
    """A subclass of diffusers' LoRA mixin ``loader`` that knows which of its loadable modules
    is the denoiser and which are text encoders."""
    import diffusers.loaders
    from diffusers.loaders.lora_base import LoraBaseMixin

    mixin = getattr(diffusers.loaders, loader, None)
    if not (isinstance(mixin, type) and issubclass(mixin, LoraBaseMixin)):
        raise InputError(f"lora: diffusers has no LoRA loader {loader!r}")
    modules = list(mixin._lora_loadable_modules)
    attrs = {
        "denoiser_attr": "unet" if "unet" in modules else "transformer",
        "text_encoder_attrs": tuple(m for m in modules if m.startswith("text_encoder")),
    }
    return type(f"_{loader}Host", (mixin,), attrs)


def _components(host: Any) -> dict[str, Any]:
    """Prefix in the converted state dict -> model (only the models that are present), the
    denoiser first."""
    names = [host.denoiser_attr, *host.text_encoder_attrs]
    return {n: getattr(host, n, None) for n in names if getattr(host, n, None) is not None}


def _has_lora_layers(host: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(
        isinstance(m, BaseTunerLayer)
        for model in _components(host).values()
        for m in model.modules()
    )


def _read_weights(path: Path, source: str) -> dict[str, torch.Tensor] | str:
    """A pickled file read with ``weights_only=True`` (as a dict); a safetensors file stays a path
    so diffusers also reads the LoRA config stored in its header."""
    if path.suffix.lower() == ".safetensors":
        return str(path)
    if path.suffix.lower() not in _WEIGHT_SUFFIXES:
        raise InputError(f"lora: {source!r} is not a .safetensors, .bin or .pt weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"lora: could not read {source!r}: {first_line(e)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"lora: {source!r} holds no tensor dictionary; not a LoRA file")
    return obj


def _load_one(host: Any, path: Path, source: str, name: str) -> None:
    """One LoRA under adapter ``name``: convert its keys (kohya, ... -> diffusers), check that
    every weight has a home in these models, inject and load."""
    components = _components(host)
    state_dict, alphas, metadata = _converted(host, path, source)
    counts = _weights_per_component(state_dict, components, source)
    try:
        for prefix, model in components.items():
            if not counts[prefix]:
                continue
            if prefix == host.denoiser_attr:  # load_lora_into_unet / load_lora_into_transformer
                load = getattr(host, f"load_lora_into_{prefix}")
                given = {"network_alphas": alphas, prefix: model}
                accepted = inspect.signature(load).parameters
                given = {k: v for k, v in given.items() if k in accepted}
                load(state_dict, adapter_name=name, metadata=metadata, **given)
            else:
                host.load_lora_into_text_encoder(
                    state_dict,
                    network_alphas=alphas,
                    text_encoder=model,
                    prefix=prefix,
                    adapter_name=name,
                    metadata=metadata,
                )
    except Exception as e:
        layer = next(iter(state_dict)).split(".", 1)[-1].split(".lora_")[0]  # no component
        raise InputError(f"lora: could not load {source!r}: {_misfit(e, layer)}") from None

    for prefix, model in components.items():
        loaded = _count_adapter_tensors(model, name)
        if loaded != counts[prefix]:
            raise InputError(
                f"lora: {source!r}: only {loaded} of its {counts[prefix]} {prefix} weights match a "
                f"layer of this model; is it a LoRA for another architecture?"
            )
    _match_devices(components, name)


def _converted(host: Any, path: Path, source: str) -> tuple[dict[str, Any], Any, Any]:
    """The mixin's ``lora_state_dict`` of the file: (state dict with diffusers keys, network
    alphas or None, the LoRA config stored in the file's header or None)."""
    kwargs: dict[str, Any] = {"return_lora_metadata": True}
    if "return_alphas" in inspect.signature(host.lora_state_dict).parameters:
        kwargs["return_alphas"] = True  # FLUX.1's mixin: alphas only when asked
    if host.denoiser_attr == "unet" and "text_encoder_2" in host.text_encoder_attrs:
        kwargs["unet_config"] = host.unet.config  # kohya SDXL: SGM block numbers -> diffusers
    try:
        out = host.lora_state_dict(_read_weights(path, source), **kwargs)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"lora: could not read {source!r}: {first_line(e)}") from None
    # (state_dict, alphas, metadata) where the mixin has alphas, else (state_dict, metadata)
    state_dict, alphas, metadata = out if len(out) == 3 else (out[0], None, out[1])
    if not state_dict or not all("lora" in k for k in state_dict):
        example = next((k for k in state_dict if "lora" not in k), None)
        what = f"weights such as {example!r}" if example else "no weights"
        raise InputError(f"lora: {source!r} is not a LoRA file ({what})")
    return state_dict, alphas, metadata


def _weights_per_component(
    state_dict: dict[str, Any], components: dict[str, Any], source: str
) -> dict[str, int]:
    """Prefix -> how many of the LoRA's weights address that component; one line for weights
    addressing none of them (a LoRA of another family, or for a text encoder the loader does
    not load into)."""
    counts = {prefix: 0 for prefix in components}
    strays: list[str] = []
    for key in state_dict:
        prefix = key.split(".", 1)[0]
        if prefix in counts:
            counts[prefix] += 1
        else:
            strays.append(key)
    if strays:
        hint = ""
        if any(k.startswith("text_encoder_2.") for k in strays) and "unet" in counts:
            hint = " (an SDXL LoRA on a one-text-encoder model?)"
        elif all(k.startswith("text_encoder") for k in strays):
            hint = " (text-encoder weights, which this family's LoRA loader does not take)"
        raise InputError(
            f"lora: {source!r} has {len(strays)} weights for no part of this model, such as "
            f"{strays[0]!r}{hint}; is it a LoRA for another architecture?"
        )
    return counts


def _misfit(e: Exception, layer: str) -> str:
    """Why loading failed, for the one line: the first mismatched layer's shapes where PEFT's
    size mismatch names them; ``layer`` (one the LoRA addresses) where PEFT finds none of its
    layers in the model."""
    found = _SIZE_MISMATCH.search(str(e))
    if found:
        layer = found.group(1).split(".lora_")[0]
        return (
            f"its shapes do not fit this model (at {layer}: [{found.group(2)}] in the file, "
            f"[{found.group(3)}] in the model); is it a LoRA for another architecture?"
        )
    if "size mismatch" in str(e):
        return "its shapes do not fit this model; is it a LoRA for another architecture?"
    if type(e).__name__ == "NoMatchingPeftModuleError" or "not found in the base model" in str(e):
        return (
            f"none of its layers (such as {layer}) is in this model; is it a LoRA for another "
            "architecture?"
        )
    return (
        f"its weights do not fit this model ({type(e).__name__}: {first_line(e)}); is it a LoRA "
        "for another architecture?"
    )


def _count_adapter_tensors(model: Any, name: str) -> int:
    """LoRA tensors of adapter ``name`` in ``model`` (lora_A/lora_B weights and biases, ...)."""
    return sum(1 for k, _ in model.named_parameters() if "lora_" in k and f".{name}." in f"{k}.")


def _match_devices(components: dict[str, Any], name: str) -> None:
    """Put adapter ``name``'s tensors on the device and in the dtype of the layer they wrap."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in components.values():
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
                base = module.get_base_layer().weight
                if not base.is_floating_point():
                    continue
                for part in (module.lora_A[name], module.lora_B[name]):
                    part.to(device=base.device, dtype=base.dtype)


# --- finding the file ----------------------------------------------------------------------------


def _pick_weights(names: Sequence[str], source: str) -> str:
    """The LoRA weights among a folder's (or repo's) top-level file names."""
    if LORA_WEIGHT_FILE in names:
        return LORA_WEIGHT_FILE
    skip = ("scheduler", "optimizer", "checkpoint")
    for suffix in (".safetensors", ".bin"):
        found = sorted(
            n
            for n in names
            if "/" not in n and n.lower().endswith(suffix) and not any(s in n for s in skip)
        )
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise InputError(
                f"lora: {source!r} holds several weight files ({listed}); name one, e.g. "
                f"{source.rstrip('/')}/{found[0]}"
            )
    raise InputError(f"lora: {source!r} holds no LoRA weights file ({LORA_WEIGHT_FILE})")


def _weights_in_folder(folder: Path, source: str) -> Path:
    return folder / _pick_weights([p.name for p in folder.iterdir() if p.is_file()], source)


def _from_hub(
    repo_id: str, filename: str | None, source: str, local_files_only: bool | None
) -> Path:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    from blendedit.models import hub_reachable

    def fetch(offline: bool) -> Path:
        if filename:
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
        if offline:
            return _weights_in_folder(
                Path(snapshot_download(repo_id, local_files_only=True)), source
            )
        name = _pick_weights(HfApi().list_repo_files(repo_id), source)
        return Path(hf_hub_download(repo_id, name))

    def fail(reason: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"lora: could not load {source!r}: not a local file or folder, {reason}. Download it "
            f"once with `hf download {repo_id}` on a machine with internet, or pass the file's path"
        )

    try:
        return fetch(True)
    except InputError:
        raise
    except Exception:
        if local_files_only:
            raise fail("not in the Hugging Face cache, and only local files are allowed") from None
    if not hub_reachable():
        raise fail("not in the Hugging Face cache, and the hub cannot be reached from here")
    try:
        return fetch(False)
    except InputError:
        raise
    except Exception as e:
        raise fail(f"not in the Hugging Face cache, and not on the hub ({first_line(e)})") from None
