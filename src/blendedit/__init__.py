"""blendedit: text-driven local editing of real photos with diffusion models.

from blendedit import BlendedLatentDiffusion
editor = BlendedLatentDiffusion.from_pretrained(torch_dtype="fp16").to("cuda")
result = editor("photo.png", "mask.png", "a vase of red roses", seed=0)
result.best.image.save("edit.png")
"""

from __future__ import annotations

from blendedit.config import PRESETS, EditConfig
from blendedit.errors import BlendEditError, InputError, ModelNotFoundError
from blendedit.latent.pipeline import BlendedLatentDiffusion
from blendedit.pixel.pipeline import PIXEL_PRESETS, BlendedDiffusion, PixelConfig
from blendedit.results import Candidate, EditResult, Timings

__version__ = "0.1.0"

__all__ = [
    "PIXEL_PRESETS",
    "PRESETS",
    "BlendEditError",
    "BlendedDiffusion",
    "BlendedLatentDiffusion",
    "Candidate",
    "EditConfig",
    "EditResult",
    "InputError",
    "ModelNotFoundError",
    "PixelConfig",
    "Timings",
]
