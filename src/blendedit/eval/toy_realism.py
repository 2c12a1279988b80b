"""A realism judge for the toy world: a small CNN telling the generator's real scenes from
composites with the flaws a local edit can leave (seams of a pasted patch, colour shifts, blur,
noise inside a box) -- the "whole image looks right" view the BLD paper's section 6 finds
missing from CLIP ranking. Trained by ``tools/train_toy_realism.py``; its weights are small
enough to live in the repository (``tools/toy_realism.safetensors``).

:class:`ToyRealismJudge` has the judges' ``score(images, masks, prompt)`` (the logit of "real",
higher is better), so it enters an ensemble (:func:`blendedit.frame.judges.ensemble`) like any
other judge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blendedit.errors import ModelNotFoundError


class ToyRealismNet(nn.Module):
    """(B, 3, 64, 64) in [0, 1] -> (B,) logits of "a real scene". The image's high-pass residual
    (the image less its 3x3 mean: where seams, noise and missing detail show), a learned 3x3
    convolution of image and residual, local energies over 4x4 cells, their mean, maximum,
    minimum and spread over the image, a linear layer (a few hundred parameters)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, width, 3, padding=1)
        self.head = nn.Linear(4 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - 0.5) / 0.5  # (B, 3, H, W)
        smooth = F.avg_pool2d(F.pad(h, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        r = torch.cat([h, 8 * (h - smooth)], dim=1)  # (B, 6, H, W)
        e = F.avg_pool2d(self.conv(r).abs(), 4)  # (B, C, H/4, W/4) local energies
        flat = e.flatten(2)  # (B, C, cells)
        stats = [flat.mean(-1), flat.amax(-1), flat.amin(-1), flat.std(-1)]
        return self.head(torch.log1p(torch.cat(stats, dim=1))).squeeze(-1)


class ToyRealismJudge:
    """The trained net as a judge of whole images (it needs no prompt)."""

    name = "realism"
    needs_prompt = False

    def __init__(self, net: ToyRealismNet) -> None:
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path) -> ToyRealismJudge:
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise ModelNotFoundError(f"realism: {str(path)!r} is not a file")
        state = load_file(str(path))
        net = ToyRealismNet(int(state["conv.weight"].shape[0]))
        net.load_state_dict(state)
        return cls(net)

    @torch.no_grad()
    def score(self, images: torch.Tensor, masks: torch.Tensor, prompt: str) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
        return self.net(x).cpu()


def _box(rng: np.random.Generator, size: int = 64) -> tuple[int, int, int, int]:
    side = int(rng.integers(14, 33))
    x0, y0 = (int(v) for v in rng.integers(0, size - side, size=2))
    return x0, y0, x0 + side, y0 + side


def composite(real: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flawed copy of scene ``real`` (64, 64, 3) uint8: inside a random box, one of a pasted
    patch of scene ``other`` (a seam), a colour shift, a blur, or noise; the flaws an edit's
    paste-back, decoder or sampler can leave."""
    out = real.astype(np.float32) / 255.0
    x0, y0, x1, y1 = _box(rng)
    patch = out[y0:y1, x0:x1]
    kind = int(rng.integers(4))
    if kind == 0:
        patch = other.astype(np.float32)[y0:y1, x0:x1] / 255.0
    elif kind == 1:
        patch = patch * rng.uniform(0.75, 1.25, size=3) + rng.uniform(-0.12, 0.12, size=3)
    elif kind == 2:
        t = torch.from_numpy(patch).permute(2, 0, 1)[None]
        for _ in range(int(rng.integers(1, 4))):
            t = F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        patch = t[0].permute(1, 2, 0).numpy()
    else:
        patch = patch + rng.normal(0, rng.uniform(0.04, 0.12), size=patch.shape)
    out[y0:y1, x0:x1] = patch
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
