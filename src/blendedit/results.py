"""What an edit returns: ranked candidates with everything needed to regenerate any one of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

ProgressFn = Callable[[int, int], None]  # (steps done, steps in all); raise inside to cancel


@dataclass
class Timings:
    """Seconds spent in each stage of one call."""

    load: float = 0.0
    encode: float = 0.0
    denoise: float = 0.0
    decode: float = 0.0
    rank: float = 0.0
    background: float = 0.0
    total: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass
class Candidate:
    """One edit. ``image`` has the input's size; ``rank`` is 1 for the best."""

    image: Image.Image
    seed: int
    rank: int
    score: float | None = None
    decoded: Image.Image | None = None  # raw decoder output, input size, before background handling
    latent: torch.Tensor | None = None  # (C, h, w) final latent, on the CPU
    process: list[Image.Image] | None = None  # one-step clean estimates per step (paper fig. 6)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "seed": self.seed,
            "clip_score": None if self.score is None else round(self.score, 6),
            **({"metrics": self.metrics} if self.metrics else {}),
        }


@dataclass
class EditResult:
    """Candidates best first, plus the settings, masks and timings that made them."""

    candidates: list[Candidate]
    prompt: str
    settings: dict[str, Any]
    working_size: tuple[int, int]  # (W, H) the model ran at
    input_size: tuple[int, int]  # (W, H) of the input and of every result image
    timesteps: list[int]  # the model timesteps that were run
    timings: Timings
    method: str = "latent"
    latent_masks: torch.Tensor | None = None  # (S, 1, h, w) blend mask per shrinking stage
    stage_per_step: list[int] | None = None  # which of latent_masks each denoising step used

    @property
    def images(self) -> list[Image.Image]:
        return [c.image for c in self.candidates]

    @property
    def scores(self) -> list[float | None]:
        return [c.score for c in self.candidates]

    @property
    def seeds(self) -> list[int]:
        return [c.seed for c in self.candidates]

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "prompt": self.prompt,
            "settings": self.settings,
            "input_size": list(self.input_size),
            "working_size": list(self.working_size),
            "timesteps": self.timesteps,
            "mask_stages": None if self.latent_masks is None else int(self.latent_masks.shape[0]),
            "stage_per_step": self.stage_per_step,
            "timings": self.timings.to_dict(),
            "results": [c.to_dict() for c in self.candidates],
        }
