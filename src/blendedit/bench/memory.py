"""``blendedit bench --memory``: the memory a preset's weights need in bf16 and in each
``--quantize`` mode, from the parameter counts of its parts built on the meta device (nothing
allocated; activations come on top). The quantized parts are the family's
(``Backbone.quantized_parts``: the denoiser and the language-model encoder); gguf quantizes the
denoiser only (a Q8_0 file: 8.5 bits a weight; Q4_K: 4.5)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from blendedit.bench.build import build_backbone
from blendedit.bench.catalogue import ARCHITECTURES
from blendedit.latent.backbones import FAMILIES
from blendedit.latent.quantize import MODES, parameter_counts, weight_gb

GGUF_BYTES = {"gguf Q8_0": 1.0625, "gguf Q4_K": 0.5625}  # bytes a weight, with block scales


def preset_memory(preset: str) -> tuple[dict[str, int], dict[str, float]]:
    """A preset's parameter counts by part (the denoiser as ``unet``) and the GB (1e9 bytes) of
    its weights in bf16 and each quantize mode."""
    arch = ARCHITECTURES[preset]
    cls = FAMILIES[arch.family]
    with tempfile.TemporaryDirectory() as tmp:
        counts = parameter_counts(build_backbone(arch, "meta", Path(tmp)).modules())
    parts = {"unet" if k == cls.denoiser_name else k for k in cls.quantized_parts}
    out = {"bf16": weight_gb(counts, torch.bfloat16, None, ())}
    if not parts:
        return counts, out
    for mode in (m for m in MODES if m != "gguf"):
        out[mode] = weight_gb(counts, torch.bfloat16, mode, parts)
    rest = {k: n for k, n in counts.items() if k != "unet"}
    for name, per in GGUF_BYTES.items():
        out[name] = weight_gb(rest, torch.bfloat16, None, ()) + counts.get("unet", 0) * per / 1e9
    return counts, out


def memory_table(preset: str) -> str:
    """One preset's parameter counts and weight memory per mode, as markdown."""
    counts, gb = preset_memory(preset)
    sizes = ", ".join(f"{k} {n:,}" for k, n in counts.items())
    head = "| preset | parameters | " + " | ".join(f"{m} (GB)" for m in gb) + " |"
    rule = "|---|---|" + "---|" * len(gb)
    row = f"| `{preset}` | {sizes} | " + " | ".join(f"{v:.1f}" for v in gb.values()) + " |"
    return "\n".join((head, rule, row))
