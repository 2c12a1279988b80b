"""The same work through diffusers' inpaint pipeline of the model's family (SPEC 5): the family's
reference call (``Backbone.inpaint_reference``, ``reference_prompt``, ``reference_inpaint``) on
the editor's own components, dtype, scheduler, steps and batch; no ranking, no stitching."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.bench.timing import best_time, timed_steps

PROMPT = "a vase of red roses"  # every timed edit's, blendedit's and diffusers'


def time_diffusers(
    editor: Any,
    photo: Image.Image,
    mask: np.ndarray,
    cfg: Any,
    dev: torch.device,
    repeats: int,
) -> tuple[float, float]:
    """(best end-to-end seconds, best mean ms per step) of diffusers' pipeline on ``editor``'s
    components, a 4-channel model so it blends like BLD; the prompt as the family gives it (the
    LDM's, SD3's and FLUX's own embeddings, encoded inside the timed call)."""
    pipe, strength = editor.diffusers_inpaint(cfg)  # runs BLD's number of steps
    backbone = editor.backbone
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255)
    size = (photo.size[0], photo.size[1])

    def edit(seed: int, **kw: Any) -> Any:
        prompt = backbone.reference_prompt(PROMPT, "", cfg.num_images, embeddings=True)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(cfg.num_images)]
        return backbone.reference_inpaint(
            pipe, prompt, photo, mask_image, size, strength=strength,
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
            output_type="pil", generator=gens, **kw,
        )  # fmt: skip

    with backbone.keeping_vae_dtype():
        edit(0)  # warm-up
        total, _ = best_time(dev, edit, repeats)
        per_step = min(
            timed_steps(
                dev,
                lambda mark: edit(7, callback_on_step_end=lambda p, i, t, kw: (mark(), kw)[1]),
            )
            for _ in range(repeats)
        )
    return total, per_step
