"""What an edit returns: ranked candidates with everything needed to regenerate any one of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.frame.photo import Photo, format_parameters, output_format, save_photo
from blendedit.frame.stop import checkpoint

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
    """One edit: ``patch`` is the result inside the working region's ``box`` of ``photo``, in the
    photo's own colour space and bit depth; outside it the result is the photo itself. ``rank`` is
    1 for the best."""

    patch: np.ndarray = field(repr=False)  # (h, w, C) like photo.pixels
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the photo as shown
    photo: Photo = field(repr=False)
    seed: int
    rank: int
    score: float | None = None
    decoded: Image.Image | None = None  # raw model output at the box's size, before background
    latent: torch.Tensor | None = None  # (C, h, w) final latent, on the CPU
    process: list[Image.Image] | None = None  # one-step clean estimates per step (paper fig. 6)
    metrics: dict[str, float] = field(default_factory=dict)
    judges: dict[str, float] = field(default_factory=dict)  # each judge's own score (--rank)

    def pixels(self) -> np.ndarray:
        """The whole result (H, W, C) in the photo's own colour space and bit depth (a new array)."""
        out = self.photo.pixels.copy()
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.patch
        return out

    @property
    def image(self) -> Image.Image:
        """The whole result as a Pillow image, shown like the input (made on each access)."""
        return self.photo.to_pil(self.pixels())

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        quality: int | None = None,
        parameters: str | None = None,
        marker: bool = True,
    ) -> Path:
        """Write the result atomically in the input's colour space, profile and bit depth, with
        the generation ``parameters`` and the AI-edit marker (:func:`blendedit.frame.photo.save_photo`)."""
        return save_photo(
            self.pixels(),
            self.photo,
            path,
            format=format,
            quality=quality,
            parameters=parameters,
            marker=marker,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "seed": self.seed,
            "clip_score": None if self.score is None else round(self.score, 6),
            **self._judged(),
            **({"metrics": self.metrics} if self.metrics else {}),
        }

    def _judged(self) -> dict[str, Any]:
        """With a judge other than CLIP alone: ``score`` (the ranking's: an ensemble's weighted
        sum of per-batch z-scores) and ``judges`` (each judge's own score); ``clip_score`` is then
        CLIP's own, or None."""
        if not self.judges or set(self.judges) == {"clip"}:
            return {}
        clip = self.judges.get("clip")
        return {
            "clip_score": None if clip is None else round(clip, 6),
            "score": None if self.score is None else round(self.score, 6),
            "judges": {k: round(v, 6) for k, v in self.judges.items()},
        }


@dataclass
class EditResult:
    """Candidates best first, plus the settings, masks and timings that made them."""

    candidates: list[Candidate]
    prompt: str
    settings: dict[str, Any]
    working_size: tuple[int, int]  # (W, H) the model ran at
    input_size: tuple[int, int]  # (W, H) of the input and of every result image
    timings: Timings
    timesteps: list[int] = field(default_factory=list)  # the model timesteps that were run
    method: str = "latent"
    region: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) the core worked on
    latent_masks: torch.Tensor | None = None  # (S, 1, h, w) blend mask per shrinking stage
    stage_per_step: list[int] | None = None  # which of latent_masks each denoising step used
    failed: list[dict[str, Any]] = field(default_factory=list)  # candidates dropped: seed, reason
    input_frames: int = 1  # frames (pages) in the input file; the first one is edited

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

    def save(
        self,
        folder: str | os.PathLike[str],
        *,
        format: str | None = None,
        quality: int | None = None,
        metadata: bool = True,
    ) -> list[str]:
        """Write every candidate into ``folder`` as ``{rank:02d}-seed{seed}.{ext}``, best first, in
        ``format`` or the input's own (:func:`blendedit.frame.photo.output_format`), with its generation
        parameters unless ``metadata`` is off (the AI-edit marker always); returns the names."""
        fmt = output_format(format, self.best.photo)
        names = []
        for c in self.candidates:
            checkpoint("saving")  # a caller's stop scope (blendedit.frame.stop) ends it here
            name = f"{c.rank:02d}-seed{c.seed}.{'jpg' if fmt == 'jpeg' else fmt}"
            params = self.parameters(c) if metadata else None
            c.save(Path(folder) / name, format=fmt, quality=quality, parameters=params)
            names.append(name)
        return names

    def parameters(self, candidate: Candidate) -> str:
        """A1111-style generation parameters of one result, for the file's metadata."""
        return format_parameters(
            self.prompt,
            {**self.settings, "method": self.method, "size": self.working_size},
            candidate.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "prompt": self.prompt,
            "settings": self.settings,
            "input_size": list(self.input_size),
            "working_size": list(self.working_size),
            "region": None if self.region is None else list(self.region),
            "timesteps": self.timesteps,
            "mask_stages": None if self.latent_masks is None else int(self.latent_masks.shape[0]),
            "stage_per_step": self.stage_per_step,
            "timings": self.timings.to_dict(),
            "results": [c.to_dict() for c in self.candidates],
            # Only when there is something to say, so other results' files are as before.
            **({"failed": self.failed} if self.failed else {}),
            **({"input_frame": {"used": 1, "of": n}} if (n := self.input_frames) > 1 else {}),
        }
