"""Building a preset with random weights (speed does not depend on the weights): the backbone by
its family's builder (``Backbone.build``), and the whole editor with its ranking CLIP."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from blendedit.latent.backbones import FAMILIES
from blendedit.latent.backbones.common import clip_tokenizer, special_tokens
from blendedit.latent.backbones.loading import own_scheduler
from blendedit.latent.backbones.parts import Architecture

if TYPE_CHECKING:
    from blendedit.latent.backbones import Backbone


def build_backbone(arch: Architecture, device: torch.device | str, workdir: Path) -> Backbone:
    """The architecture's backbone with random weights (seed 0), float32, built on ``device``
    (``"meta"``: shapes only, nothing allocated); ``workdir`` receives the tokenizer files."""
    import diffusers.hooks  # noqa: F401  its module-level tensors (MagCache's FLUX ratios) made
    # now, not on "meta" by the first model class imported under the family's device context

    torch.manual_seed(0)
    family = FAMILIES[arch.family]
    return family.build(arch.parts, own_scheduler(arch.scheduler), torch.device(device), workdir)


def build_editor(
    arch: Architecture, device: torch.device, dtype: torch.dtype, workdir: Path
) -> Any:
    """A BlendedLatentDiffusion of the given architecture with random weights, built on ``device``."""
    from transformers import CLIPConfig, CLIPModel

    from blendedit.frame.ranking import ClipScorer
    from blendedit.latent.pipeline import BlendedLatentDiffusion

    backbone = build_backbone(arch, device, workdir)
    with torch.device(device):
        clip = CLIPModel(
            CLIPConfig(
                text_config=special_tokens(arch.clip["text"]),
                vision_config=arch.clip["vision"],
                projection_dim=arch.clip["projection_dim"],
            )
        )
    scorer = ClipScorer(clip.to(dtype), clip_tokenizer(workdir))
    return BlendedLatentDiffusion(backbone, scorer, "random").to(device, dtype)
