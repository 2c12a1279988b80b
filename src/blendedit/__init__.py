"""blendedit: text-driven local editing of real photos with diffusion models.

from blendedit import BlendedLatentDiffusion
editor = BlendedLatentDiffusion.from_pretrained(torch_dtype="fp16").to("cuda")
result = editor("photo.png", "mask.png", "a vase of red roses", seed=0)
result.best.image.save("edit.png")
"""

from __future__ import annotations

from blendedit._version import __version__
from blendedit.config import PRESETS, EditConfig
from blendedit.errors import BlendEditError, InputError, ModelNotFoundError
from blendedit.frame.results import Candidate, EditResult, Timings
from blendedit.latent.pipeline import BlendedLatentDiffusion
from blendedit.pixel.pipeline import PIXEL_PRESETS, BlendedDiffusion, PixelConfig

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
    "__version__",
]
