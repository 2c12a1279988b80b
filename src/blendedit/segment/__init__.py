"""Masks from words and clicks: segmenters (CLIPSeg, SAM, SAM-HQ, SAM 2, SAM 3, GroundingDINO +
SAM) that turn a selection into a soft mask at the photo's full resolution, which then takes the mask path a
painted mask takes (``blendedit.frame.masks``). One module per kind of model; this registry finds
the kind from a model's config (``model_type``)."""

from __future__ import annotations

from pathlib import Path

import torch

from blendedit.errors import InputError
from blendedit.models import check_hub_id
from blendedit.segment.base import Point, Segmentation, Segmenter, Selection, load_part
from blendedit.segment.clipseg import ClipSegSegmenter
from blendedit.segment.grounded import GroundedSamSegmenter
from blendedit.segment.sam import SamHQSegmenter, SamSegmenter
from blendedit.segment.sam2 import Sam2Segmenter
from blendedit.segment.sam3 import Sam3Segmenter
from blendedit.segment.select import parse_box, parse_point, select_mask, selection_from

# Defaults (docs/segment.md): text by GroundingDINO-tiny (172M, Apache-2.0) + SAM ViT-B (94M,
# Apache-2.0): instance masks with sharp edges, where CLIPSeg's (150M, Apache-2.0) are blurry
# 352 px heat maps; clicks by SAM ViT-B alone.
DEFAULT_TEXT_SEGMENTER = "IDEA-Research/grounding-dino-tiny+facebook/sam-vit-base"
DEFAULT_CLICK_SEGMENTER = "facebook/sam-vit-base"

KINDS: dict[str, type[Segmenter]] = {}


def register_segmenter(cls: type[Segmenter]) -> type[Segmenter]:
    """Add a kind of segmenter under each transformers ``model_type`` it reads."""
    for t in cls.model_types:
        KINDS[t] = cls
    return cls


for _cls in (
    ClipSegSegmenter, SamSegmenter, SamHQSegmenter, Sam2Segmenter, Sam3Segmenter,
    GroundedSamSegmenter,
):  # fmt: skip
    register_segmenter(_cls)


def default_segmenter(selection: Selection) -> str:
    """The default for a selection: the text one when it names something, else the click one."""
    return DEFAULT_TEXT_SEGMENTER if selection.text else DEFAULT_CLICK_SEGMENTER


def load_segmenter(
    name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    local_files_only: bool | None = None,
) -> Segmenter:  # fmt: skip
    """The segmenter ``name`` (hub id or folder; ``DETECTOR+SAM`` for a detector with SAM), its
    kind found from its config; a model not on disk (nor reachable) is one line naming it."""
    from transformers import AutoConfig

    first = name.partition("+")[0]
    for part in name.split("+"):
        if not Path(part).expanduser().exists():
            check_hub_id(part, "segmenter")
    config = load_part(
        "segmenter", first,
        lambda lo: AutoConfig.from_pretrained(first, local_files_only=lo), local_files_only,
    )  # fmt: skip
    kind = KINDS.get(config.model_type)
    if kind is None:
        raise InputError(
            f"segmenter: {name!r} is a {config.model_type!r} model; blendedit segments with "
            f"{', '.join(sorted(KINDS))}"
        )
    return kind.load(name, torch.device(device), dtype, local_files_only)


__all__ = [
    "DEFAULT_CLICK_SEGMENTER",
    "DEFAULT_TEXT_SEGMENTER",
    "KINDS",
    "ClipSegSegmenter",
    "GroundedSamSegmenter",
    "Point",
    "Sam2Segmenter",
    "Sam3Segmenter",
    "SamHQSegmenter",
    "SamSegmenter",
    "Segmentation",
    "Segmenter",
    "Selection",
    "default_segmenter",
    "load_segmenter",
    "parse_box",
    "parse_point",
    "register_segmenter",
    "select_mask",
    "selection_from",
]
