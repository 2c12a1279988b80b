"""``--quantize``: a family's big denoiser (and its language-model text encoder) loaded through
diffusers' own quantization backends (``PipelineQuantizationConfig`` with a per-component
``quant_mapping``: diffusers' config for the denoiser, transformers' for the encoder), and the
weight memory each mode needs, computed before loading from the parameter counts of the model's
parts built on the meta device.

Modes, as the backends call them: ``nf4`` (bitsandbytes 4-bit NormalFloat, QLoRA's data type),
``int8`` and ``fp8`` (torchao weight-only int8 / float8), ``gguf`` (a GGUF single file, dequantized
per layer by diffusers' GGUF loader). A mode whose backend is not installed is one line naming the
package to install."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blendedit.errors import InputError


@dataclass(frozen=True)
class Mode:
    """One ``--quantize`` mode: the package its backend needs and the bytes a quantized weight
    takes (with the block scales: NF4 64-weight blocks of one fp32 absmax, 4.5 bits; int8/fp8 one
    scale per row, about 8 bits)."""

    package: str  # the import name ...
    install: str  # ... and what to ``pip install``
    bytes_per_weight: float
    help: str


MODES: dict[str, Mode] = {
    "nf4": Mode("bitsandbytes", "bitsandbytes", 0.5625, "bitsandbytes 4-bit NF4 (CUDA)"),
    "int8": Mode("torchao", "torchao", 1.0, "torchao int8 weight-only (CPU and CUDA)"),
    "fp8": Mode("torchao", "torchao", 1.0, "torchao float8 weight-only (CPU and CUDA)"),
    "gguf": Mode("gguf", "gguf", 0.0, "a GGUF single file's denoiser (Q8_0, Q4_K, ...)"),
}
QUANTIZE_MODES = tuple(MODES)


def check_mode(mode: str) -> Mode:
    """The mode, its backend installed; else one line naming the package to install."""
    if mode not in MODES:
        raise InputError(f"quantize: {mode!r} is not one of {', '.join(MODES)}")
    m = MODES[mode]
    if importlib.util.find_spec(m.package) is None:
        raise InputError(
            f"quantize: {mode} needs the {m.package} package (pip install {m.install})"
        )
    return m


def _ao_config(mode: str) -> Any:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[mode]()


def component_config(mode: str, library: str, dtype: torch.dtype | None) -> Any:
    """The ``quantization_config`` of one component of ``library`` ("diffusers" or
    "transformers") in ``mode`` (not gguf: a GGUF file carries its own quantization)."""
    lib = __import__(library)
    if mode == "nf4":
        return lib.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype or torch.bfloat16,
        )  # fmt: skip
    return lib.TorchAoConfig(_ao_config(mode))


def pipeline_config(mode: str, parts: Mapping[str, str], dtype: torch.dtype | None) -> Any:
    """diffusers' ``PipelineQuantizationConfig`` quantizing ``parts`` (component -> its
    library) in ``mode``."""
    from diffusers import PipelineQuantizationConfig

    check_mode(mode)
    mapping = {part: component_config(mode, lib, dtype) for part, lib in parts.items()}
    return PipelineQuantizationConfig(quant_mapping=mapping)


def gguf_denoiser(
    cls_name: str, path: Path, config: str, dtype: torch.dtype | None, part: str = "transformer"
) -> Any:
    """The denoiser ``cls_name`` (a diffusers model class) of a GGUF single file through
    diffusers' ``from_single_file`` with ``GGUFQuantizationConfig`` (weights stay quantized,
    dequantized per layer in ``dtype``); its config from the folder ``config``."""
    import diffusers

    check_mode("gguf")
    q = diffusers.GGUFQuantizationConfig(compute_dtype=dtype or torch.bfloat16)
    cls = getattr(diffusers, cls_name)
    return cls.from_single_file(
        str(path), quantization_config=q, config=config, subfolder=part,
        torch_dtype=dtype, local_files_only=True,
    )  # fmt: skip


def parameter_counts(modules: Mapping[str, Any]) -> dict[str, int]:
    """Component -> parameters, of modules built anywhere (the meta device: nothing allocated)."""
    return {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}


def meta_counts(folder: str | os.PathLike[str]) -> dict[str, int]:
    """The parameter counts of a diffusers folder's parts, each built from its ``config.json``
    on the meta device (no weights read)."""
    import json

    import diffusers
    import transformers

    root = Path(folder)
    index = json.loads((root / "model_index.json").read_text())
    out: dict[str, int] = {}
    for part, spec in index.items():
        if not isinstance(spec, list) or not (root / part / "config.json").is_file():
            continue
        library, cls_name = spec
        lib = {"diffusers": diffusers, "transformers": transformers}.get(library)
        cls = getattr(lib, cls_name, None) if lib is not None else None
        if cls is None or not hasattr(
            cls, "config_class" if lib is transformers else "from_config"
        ):
            continue
        with torch.device("meta"):
            if lib is transformers:
                config = cls.config_class.from_pretrained(root / part)
                model = cls._from_config(config)
            else:
                model = cls.from_config(cls.load_config(root / part))
        out[part] = sum(p.numel() for p in model.parameters())
    return out


def weight_gb(
    counts: Mapping[str, int], dtype: torch.dtype, mode: str | None, quantized: Iterable[str]
) -> float:
    """The weights' memory in GB (1e9 bytes): ``quantized`` parts at the mode's bytes per
    weight, the others in ``dtype`` (gguf: pass the file's own size as the denoiser's)."""
    size = torch.empty((), dtype=dtype).element_size()
    q = set(quantized) if mode not in (None, "gguf") else set()
    per = MODES[mode].bytes_per_weight if mode in MODES else size
    return sum(n * (per if k in q else size) for k, n in counts.items()) / 1e9


def check_fits(
    name: str, need_gb: float, label: str, device: torch.device, free_gb: float | None = None
) -> None:
    """Refuse, before loading, a model whose weights need more than ``device``'s free memory
    (``torch.cuda.mem_get_info`` on CUDA; ``free_gb`` given: that instead): one line naming the
    mode or dtype ``label``."""
    if free_gb is None:
        if device.type != "cuda":
            return
        free_gb = torch.cuda.mem_get_info(device)[0] / 1e9
    if need_gb <= free_gb:
        return
    hint = "--quantize nf4 or --offload model" if label != "nf4" else "--offload model"
    raise InputError(
        f"model: {name} needs about {need_gb:.1f} GB in {label}; this GPU has "
        f"{free_gb:.1f} GB free; try {hint}"
    )
