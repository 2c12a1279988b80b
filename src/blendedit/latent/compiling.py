"""``--compile``: regional compilation of the denoiser (the PyTorch recipe "regional compilation":
compile the repeated block once and reuse it for every copy, instead of the whole network).

diffusers' ``ModelMixin.compile_repeated_blocks`` where the model names its repeated blocks (the
UNets' ``BasicTransformerBlock``, FLUX's two block kinds); otherwise each block of a transformer's
block lists, or, lacking both, the whole module. Every call compiles in place (``nn.Module.compile``),
so the editor keeps the same module and its hooks, LoRAs and offloading. Working shapes: a crop
takes one of a few bucketed shapes (``frame.region.shapes_at``) and a whole photo's working size
is rounded to 64 px while compiling (``BlendedLatentDiffusion.full_work_size``), so a long-running
editor compiles for a handful of shapes, not one per photo; ``dynamic=None`` lets torch mark a
dimension dynamic after its first change (the batch of the last, smaller chunk) instead of
recompiling for each.
"""

from __future__ import annotations

from typing import Any

import torch

from blendedit.latent.cache import blocks_of

COMPILE_MULTIPLE = 64  # px: whole-photo working sizes while compiling


def compile_denoiser(module: torch.nn.Module, **options: Any) -> str:
    """Compile ``module``'s repeated blocks in place; returns what was compiled ("repeated
    blocks", "blocks" or "whole model"). ``options`` go to ``torch.compile`` (e.g. ``backend``)."""
    options = {"fullgraph": False, "dynamic": None, **options}
    if getattr(module, "_repeated_blocks", None):
        module.compile_repeated_blocks(**options)
        return "repeated blocks"
    if blocks := blocks_of(module):
        for block in blocks:
            block.compile(**options)
        return "blocks"
    module.compile(**options)
    return "whole model"
