"""FLUX.1 Kontext (Black Forest Labs 2025, "FLUX.1 Kontext: Flow Matching for In-Context Image
Generation and Editing in Latent Space", section 3): FLUX.1's transformer, text encoders and VAE,
trained to edit an image given as context. The source image's latents are packed into tokens like
the noisy latents and appended to them along the sequence (their position ids carry a first
coordinate of 1, the noisy tokens' 0: the paper's 3D RoPE offset); the model's output for the
context tokens is dropped. The prompt is an instruction ("make the car red") or a description.

Restricted by the mask: the BLD blend keeps the noised source outside it after every step, as
diffusers' ``FluxKontextInpaintPipeline`` does (its parity reference). The context tokens are the
whole crop, unmasked (the model sees what it edits). Guidance is distilled (an embedded scale, one
pass, no negative prompt), the schedule FLUX.1-dev's with the resolution-dependent shift; the
pipeline's defaults: 28 steps, guidance 3.5, strength 1 (``blend_start`` 0).

Packing and position ids come from ``flux.py``; detection: a diffusers folder or hub id of a
``FluxKontext*Pipeline``, or a BFL-layout single file (the same keys as FLUX.1-dev) whose file
name says "kontext" (``flux1-kontext-dev.safetensors``, as BFL and ComfyUI name it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, LoadOptions, Name, Size
from blendedit.latent.backbones.files import has_key
from blendedit.latent.backbones.flux import Flux, image_ids, pack, unpack
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn

# -- bench presets: FLUX.1 Kontext [dev] has FLUX.1-dev's networks ("12B" transformer, CLIP-L,
# T5-XXL, the 16-channel VAE) and scheduler -------------------------------------------------

_FLOW = {  # black-forest-labs/FLUX.1-Kontext-dev/scheduler (= FLUX.1-dev's)
    **P.FLOW,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
_LATENTS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
_DIT = {  # FluxTransformer2DModel of FLUX.1 Kontext [dev]
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x 2 x 2 packed (context tokens alike)
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL
    "pooled_projection_dim": 768,  # CLIP-L pooled
    "axes_dims_rope": (16, 56, 56),
    "guidance_embeds": True,
}
_TINY_DIT = {  # tests/tiny_models.py tiny_kontext_parts()
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 32,
    "axes_dims_rope": (4, 4, 8),
    "guidance_embeds": True,
}

_CATALOGUE = {
    "flux-kontext-dev": P.Architecture(
        {
            "transformer": _DIT,
            "vae": {**P.FLOW_VAE, **_LATENTS},
            "text": P.CLIP_L_TEXT,
            "text_2": P.T5_XXL,
        },
        1024,
        scheduler=_FLOW,
        source="black-forest-labs/FLUX.1-Kontext-dev",
        batch=4,
    ),
    "tiny-flux-kontext": P.Architecture(
        {
            "transformer": _TINY_DIT,
            "vae": {**P.TINY_FLOW_VAE, **_LATENTS},
            "text": P.TINY_TEXT,
            "text_2": P.TINY_T5,
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_FLOW,
        batch=4,
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "flux-kontext-dev": (
            P.CacheVerdict(
                "default",
                "magcache",
                28,
                14,
                0.001,
                "flux-dev, 128 px, from 2+4 of 19+38 blocks, cache-bench.json",
                None,
            ),
        ),
    },
)


def is_kontext_file(name: str) -> bool:
    """A BFL-layout file is Kontext's by its name (its keys are FLUX.1-dev's)."""
    return "kontext" in Path(name).name.lower()


class FluxKontext(Flux):
    """FLUX.1 Kontext: :class:`Flux`'s parts; the source crop's latents as context tokens."""

    family = "flux-kontext"
    name = "FLUX Kontext"
    title = "FLUX.1 Kontext"
    purpose = (
        "an editing model: the photo is its context and the prompt an instruction ('make it "
        "red') or a description; the mask keeps everything else"
    )
    pipelines = (
        "FluxKontextPipeline",
        "FluxKontextInpaintPipeline",
    )
    refused: ClassVar[dict[str, str]] = {}
    catalogue = _CATALOGUE
    reference_pipeline = "FluxKontextInpaintPipeline"
    lora_loader = "FluxLoraLoaderMixin"  # FLUX.1's
    # FluxKontextInpaintPipeline's defaults: 28 steps, guidance 3.5, strength 1.
    defaults: ClassVar[dict[str, Any]] = {  # type: ignore[assignment]
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
        "blend_start": 0.0,
        "scheduler": "flow-euler",
    }

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """BFL's layout (``double_blocks``, the pooled input ``vector_in``, a 64-wide
        ``img_in``) and "kontext" in the name."""
        if not is_kontext_file(name) or not any("double_blocks." in k for k in keys):
            return False
        if not has_key(keys, r"vector_in\..*"):
            return False
        img_in = next((v for k, v in keys.items() if k.endswith("img_in.weight")), None)
        return img_in is None or len(img_in) != 2 or img_in[1] == 64

    @classmethod
    def model_defaults(cls, model: Name, local_files_only: bool | None = None) -> dict[str, Any]:
        return dict(cls.defaults)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """Through ``FluxKontextPipeline`` (folder, hub id, or a single file with the other parts
        from ``--model-config``)."""
        p = load_pipeline("FluxKontextPipeline", cls.file_parts, model, opts)
        return cls(
            p.vae, p.transformer, p.text_encoder, p.text_encoder_2, p.tokenizer, p.tokenizer_2,
            p.scheduler,
        )  # fmt: skip

    def condition_on_image(
        self, c: Conditioning, x: torch.Tensor, mask: torch.Tensor, z_init: torch.Tensor
    ) -> Conditioning:
        """The context: the whole crop's latents E(x) (1, 16, h, w) (the posterior mode, as the
        pipeline encodes its ``image``), packed in the denoiser; not masked."""
        c.image["latents"] = z_init
        return c

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        """FLUX.1's model function on ``[noisy tokens, context tokens]``; the context tokens' ids
        are (1, row, column), their output is dropped (paper section 3)."""
        context, added = self.stack(c, batch, parts)  # (n, T, D), pooled (n, P)
        n = len(context)
        guidance = (
            torch.full((n,), guidance_scale, device=self.device, dtype=torch.float32)
            if self.is_dev
            else None
        )
        txt_ids = torch.zeros(context.shape[1], 3, device=self.device, dtype=self.dtype)
        src = c.image["latents"].to(self.device, self.dtype)  # (1, 16, h', w')
        src_tokens = pack(src).expand(n, -1, -1)  # (n, h'/2 * w'/2, 64)
        src_ids = image_ids(*src.shape[-2:])
        src_ids[:, 0] = 1  # the context's first coordinate
        ids: dict[tuple[int, int], torch.Tensor] = {}  # [noisy ids; context ids], per size

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (n, 16, h, w)
            h, w = z.shape[-2:]
            if (h, w) not in ids:
                ids[h, w] = torch.cat([image_ids(h, w), src_ids]).to(self.device, self.dtype)
            tokens = pack(z)  # (n, h/2 * w/2, 64)
            out = self.unet(
                hidden_states=torch.cat([tokens, src_tokens], dim=1),
                timestep=t.expand(n) / 1000, guidance=guidance,
                pooled_projections=added["pooled"], encoder_hidden_states=context,
                txt_ids=txt_ids, img_ids=ids[h, w], return_dict=False,
            )[0]  # fmt: skip
            return unpack(out[:, : tokens.shape[1]], h, w)

        return denoise

    @staticmethod
    def reference_inpaint(
        pipe: Any, prompt: dict[str, Any], image: Any, mask_image: Any, size: Size, **call: Any
    ) -> Any:
        """``FluxKontextInpaintPipeline`` at the image's own size (``_auto_resize=False``: it
        otherwise snaps to Kontext's preferred resolutions; it takes the size from ``image``)."""
        call.pop("eta", None)
        call.setdefault("max_area", size[0] * size[1])  # its size check: the working area
        return Flux.reference_inpaint(
            pipe, prompt, image, mask_image, size, _auto_resize=False, **call
        )
