"""The paper's own backbone: the CompVis LDM text-to-image model (Rombach et al. 2022; 1.45B,
``CompVis/ldm-text2im-large-256``): LDMBert text encoder with a BERT tokenizer, a KL-f8 VAE, a
UNet conditioned on LDMBert's hidden states, 256x256. The BLD paper's numbers come from it."""

from __future__ import annotations

from typing import Any, ClassVar

from blendedit.latent.backbones.sd import StableDiffusion


class LatentDiffusion(StableDiffusion):
    """LDM-1.45B. The conditioning is SD 1.x's (hidden states of the whole padded prompt, the
    empty prompt encoded for guidance), only the encoder is LDMBert (77 tokens, 1280 wide).

    diffusers has no LDM inpaint pipeline; its SD one (:meth:`inpaint_reference`) is the same loop
    on SD1-shaped parts (``../shared/notes/backbones.md`` section 3): call it with
    ``prompt_embeds`` and ``negative_prompt_embeds`` from :meth:`encode_prompt` (it cannot
    tokenize for LDMBert)."""

    family: ClassVar[str] = "ldm"
    # The paper's setting: DDIM 50 steps, eta 0, guidance 5, 256x256 (appendix C; SPEC 3).
    defaults: ClassVar[dict[str, Any]] = {"guidance_scale": 5.0}
