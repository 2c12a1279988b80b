"""The same work through diffusers' inpaint pipeline of the model's family (SPEC 5): the family's
reference call (``Backbone.inpaint_reference``, ``reference_prompt``, ``reference_inpaint``) on
the editor's own components, dtype, scheduler, steps and batch; no ranking, no stitching.

Its steps are timed interleaved with blendedit's (``measure._time_steps``: one of ours, one of
diffusers', ``repeats`` times), so a change of the machine's load between the two does not
enter the per-step ratio."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.bench.timing import best_time, timed_steps

PROMPT = "a vase of red roses"  # every timed edit's, blendedit's and diffusers'


class DiffusersRun:
    """diffusers' pipeline on ``editor``'s components, a 4-channel model so it blends like BLD;
    the prompt as the family gives it (the LDM's, SD3's, FLUX's and the 2026 families' own
    embeddings, encoded inside the timed call, as blendedit encodes its prompt in its own)."""

    def __init__(
        self, editor: Any, photo: Image.Image, mask: np.ndarray, cfg: Any, dev: torch.device
    ):
        self.pipe, self.strength = editor.diffusers_inpaint(cfg)  # runs BLD's number of steps
        self.backbone, self.cfg, self.dev, self.photo = editor.backbone, cfg, dev, photo
        self.mask_image = Image.fromarray(mask.astype(np.uint8) * 255)

    def edit(self, seed: int, **kw: Any) -> Any:
        """One call of the pipeline: ``cfg.num_images`` images, seeds ``seed``, ``seed + 1``..."""
        cfg, backbone = self.cfg, self.backbone
        prompt = backbone.reference_prompt(PROMPT, "", cfg.num_images, embeddings=True)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(cfg.num_images)]
        with backbone.keeping_vae_dtype():
            return backbone.reference_inpaint(
                self.pipe, prompt, self.photo, self.mask_image, self.photo.size,
                strength=self.strength, num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale, output_type="pil", generator=gens, **kw,
            )  # fmt: skip

    def total_s(self, repeats: int) -> float:
        """The best end-to-end seconds of ``repeats`` calls, after one warm-up call."""
        self.edit(0)
        return best_time(self.dev, self.edit, repeats)[0]

    def step_ms(self) -> float:
        """The mean ms per denoising step of one call (``timing.timed_steps``)."""
        return timed_steps(
            self.dev,
            lambda mark: self.edit(7, callback_on_step_end=lambda p, i, t, kw: (mark(), kw)[1]),
        )
