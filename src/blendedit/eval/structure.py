"""PIE-Bench's structure distance (Ju et al., PnPInversion, ICLR 2024, section 4; the measure of
Tumanyan et al., Splice, CVPR 2022, section 3.2): the mean squared difference between the
self-similarity matrices of DINO-ViT keys in the last layer of the result and of the source.

As PIE-Bench's ``evaluation/matrics_calculator.py`` computes it: DINO ViT-B/8, each image
resized so its short side is 224 (long side at most 480; bilinear with antialiasing), normalised
with ImageNet's mean and deviation *without* first dividing by 255 (PIE-Bench feeds 0..255
values; the published numbers come from that), the keys of the last block (all heads
concatenated, the CLS token included), cosine self-similarity, ``mean((S_result - S_source)^2)``.
PIE-Bench reports it x 10^3. Built on transformers' ``ViTModel`` (``facebook/dino-vitb8`` is that
model); the keys are read with a forward hook on the last layer's key projection.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from blendedit.errors import InputError

DEFAULT_STRUCTURE_MODEL = "facebook/dino-vitb8"  # PIE-Bench's dino_vitb8
SHORT_SIDE, MAX_SIDE = 224, 480
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def key_projection(model: Any) -> torch.nn.Module:
    """The last layer's key projection of a transformers ViT (names of 5.x, then of 4.x)."""
    layers = getattr(model, "layers", None)
    if layers is not None:
        return layers[-1].attention.k_proj
    return model.encoder.layer[-1].attention.attention.key


def resize_short(x: Tensor, short: int = SHORT_SIDE, most: int = MAX_SIDE) -> Tensor:
    """(B, 3, H, W) -> short side ``short``, long side at most ``most`` (torchvision's Resize)."""
    h, w = x.shape[-2:]
    lo, hi = min(h, w), max(h, w)
    new_lo, new_hi = short, int(short * hi / lo)
    if new_hi > most:
        new_lo, new_hi = int(most * new_lo / new_hi), most
    size = (new_lo, new_hi) if h <= w else (new_hi, new_lo)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def cosine_self_similarity(keys: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, T, D) -> (B, T, T) cosine similarity of every token pair (norms clamped at ``eps``)."""
    norm = keys.norm(dim=-1, keepdim=True)  # (B, T, 1)
    return keys @ keys.transpose(1, 2) / (norm @ norm.transpose(1, 2)).clamp(min=eps)


class StructureDistance:
    """PIE-Bench's structure distance with a transformers ViT (DINO ViT-B/8 by default)."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike[str] = DEFAULT_STRUCTURE_MODEL) -> Any:
        from transformers import ViTModel

        try:
            return cls(ViTModel.from_pretrained(str(name), add_pooling_layer=False))
        except OSError as e:
            raise InputError(f"structure-model: {str(name)!r} cannot be loaded ({e})") from None

    def prepare(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in 0..255 -> resized and normalised as PIE-Bench's (no division by 255)."""
        x = resize_short(images.float())
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def self_similarity(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in 0..255 -> (B, T, T), T = 1 + patches: the last layer's keys' cosine
        self-similarity."""
        got: list[Tensor] = []
        hook = key_projection(self.model).register_forward_hook(lambda m, i, o: got.append(o))
        try:
            x = self.prepare(images).to(self.model.device, self.model.dtype)
            self.model(pixel_values=x, interpolate_pos_encoding=True)  # DINO: any size
        finally:
            hook.remove()
        return cosine_self_similarity(got[-1].float())  # keys (B, T, heads * head_dim)

    def __call__(self, result: Tensor, source: Tensor) -> Tensor:
        """(B, 3, H, W) each in 0..255 -> (B,) mean squared self-similarity difference."""
        if result.shape != source.shape:
            raise InputError(f"result: shape {tuple(result.shape)} is not the source's")
        d = self.self_similarity(result) - self.self_similarity(source)  # (B, T, T)
        return (d**2).mean(dim=(1, 2)).cpu()
