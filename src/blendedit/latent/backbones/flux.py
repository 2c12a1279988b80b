"""FLUX.1 dev and schnell (Black Forest Labs 2024): a rectified-flow transformer on 16-channel
latents packed in 2x2 patches (64 values per token), CLIP-L pooled + T5-XXL text, a guidance
embedding (dev; schnell has none) instead of classifier-free guidance, and a resolution-dependent
timestep shift.

The loop keeps latents unpacked (B, 16, h, w): packing is a permutation, so blending packed or
unpacked tensors is the same (``../shared/notes/backbones.md`` section 2); only the transformer
sees tokens. The latent mask works on whole tokens: a 2x2 patch is edited when any of its cells
is (``Backbone.patch_size``), so a thin stroke still survives. ``FluxInpaintPipeline`` blends
after every step like BLD and is the parity reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from blendedit.errors import InputError
from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.common import image_ids, pack, unpack
from blendedit.latent.backbones.files import has_key, read_json, single_file_keys
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn
from blendedit.models import load_cached_first

# -- bench presets: FLUX.1 (Black Forest Labs 2024): 19 double- and 38 single-stream blocks,
# CLIP-L pooled and T5-XXL text; dev embeds the guidance scale, schnell (timestep-distilled,
# 4 steps) does not ------------------------------------------------------------------------------

_DEV_FLOW = {  # black-forest-labs/FLUX.1-dev/scheduler: shift by the image's token count
    **P.FLOW,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
_SCHNELL_FLOW = {**_DEV_FLOW, "shift": 1.0, "use_dynamic_shifting": False}
_LATENTS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
_DIT = {  # FluxTransformer2DModel of FLUX.1 dev and schnell
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x 2 x 2 packed
    "num_layers": 19,  # double-stream (MM-DiT) blocks
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL
    "pooled_projection_dim": 768,  # CLIP-L pooled
    "axes_dims_rope": (16, 56, 56),
}
_TEXT_VAE = {"vae": {**P.FLOW_VAE, **_LATENTS}, "text": P.CLIP_L_TEXT, "text_2": P.T5_XXL}


def _published(dev: bool, **kw: Any) -> P.Architecture:
    """FLUX.1-dev or -schnell: the same networks but for dev's guidance embedding."""
    parts = {"transformer": {**_DIT, "guidance_embeds": dev}, **_TEXT_VAE}
    name = "dev" if dev else "schnell"
    flow = _DEV_FLOW if dev else _SCHNELL_FLOW
    return P.Architecture(
        parts, 1024, scheduler=flow, source=f"black-forest-labs/FLUX.1-{name}", **kw
    )


_CATALOGUE = {
    "flux-dev": _published(dev=True, batch=4),
    "flux-schnell": _published(dev=False, batch=8, realtime="realtime-schnell"),
    # FLUX.1 Fill dev: dev's networks, the transformer taking 384 channels per token (issue 19)
    "flux-fill": P.Architecture(
        {
            "transformer": {
                **_DIT,
                "guidance_embeds": True,
                "in_channels": 384,
                "out_channels": 64,
            },
            **_TEXT_VAE,
        },
        1024,
        scheduler=_DEV_FLOW,
        source="black-forest-labs/FLUX.1-Fill-dev",
        batch=4,
    ),
    "tiny-flux": P.Architecture(  # tests/tiny_models.py tiny_flux_parts(dev=False): schnell's shape
        {
            "transformer": {
                "patch_size": 1,
                "in_channels": 64,
                "num_layers": 1,
                "num_single_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 64,
                "pooled_projection_dim": 32,
                "axes_dims_rope": (4, 4, 8),
                "guidance_embeds": False,
            },
            "vae": {**P.TINY_FLOW_VAE, **_LATENTS},
            "text": P.TINY_TEXT,
            "text_2": P.TINY_T5,
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_SCHNELL_FLOW,
        batch=8,
        realtime="realtime-schnell",
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "flux-dev": (
            P.CacheVerdict(
                "default",
                "magcache",
                21,
                13,
                0.001,
                "flux-dev, 128 px, from 2+4 of 19+38 blocks, cache-bench.json",
                None,
            ),
        ),
        "flux-schnell": (
            P.CacheVerdict(
                "default",
                "magcache",
                3,
                1,
                0.001,
                "flux-dev, 128 px, from 2+4 of 19+38 blocks, cache-bench.json",
                None,
            ),
            P.CacheVerdict(
                "realtime-schnell",
                "magcache",
                3,
                1,
                0.001,
                "flux-dev, 128 px, from 2+4 of 19+38 blocks, cache-bench.json",
                None,
            ),
        ),
        "flux-fill": (
            P.CacheVerdict(
                "default",
                "magcache",
                50,
                24,
                0.001,
                "flux-dev, 128 px, from 2+4 of 19+38 blocks, cache-bench.json",
                None,
            ),
        ),
    },
)


class Flux(Backbone):
    """FLUX.1: ``transformer`` (FluxTransformer2DModel), ``text_encoder`` (CLIP-L, pooled only),
    ``text_encoder_2`` (T5-XXL)."""

    family = "flux"
    name = "FLUX"
    title = "FLUX.1"
    pipelines = (
        "FluxPipeline",
        "FluxImg2ImgPipeline",
        "FluxInpaintPipeline",
        "FluxFillPipeline",  # FLUX.1 Fill: the masked image and mask enter the transformer
    )
    refused: ClassVar[dict[str, str]] = {}
    single_file = True
    catalogue = _CATALOGUE
    denoiser_name = "transformer"
    # --lora: the transformer and CLIP-L (not T5); kohya, XLabs and BFL files converted
    lora_loader = "FluxLoraLoaderMixin"
    quantized_parts: ClassVar[dict[str, str]] = {
        "transformer": "diffusers",
        "text_encoder_2": "transformers",
    }
    # What a file may hold besides the transformer (BFL layout: always the transformer alone).
    file_parts: ClassVar[dict[str, tuple[str, ...]]] = {
        "vae": ("vae.", "first_stage_model."),
        "text_encoder": ("text_encoders.clip_l.",),
        "text_encoder_2": ("text_encoders.t5xxl.",),
    }
    flow = True

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, text_encoder_2: Any,
        tokenizer: Any, tokenizer_2: Any, scheduler: Any, max_sequence_length: int | None = None,
    ):  # fmt: skip
        self.vae, self.unet, self.scheduler = vae, transformer, scheduler
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        # T5 tokens: 512 for dev, 256 for schnell (diffusers' docs), at most the T5's n_positions
        # (T5-XXL's config: 512; the toy world's FLUX, examples/toy-flux: 16)
        cap = getattr(getattr(text_encoder_2, "config", None), "n_positions", None) or 512
        self.max_sequence_length = max_sequence_length or min(512 if self.is_dev else 256, cap)
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """BFL's layout: ``double_blocks`` and the pooled CLIP-L input ``vector_in`` (other
        transformers with ``double_blocks`` have no pooled input); ``img_in`` takes 64 packed
        channels (dev, schnell) or more than twice that (Fill: latent, masked image's latent and
        the mask's cells, each packed 2x2: 384 for FLUX.1-Fill-dev; the exact width is checked
        once loaded)."""
        if not any("double_blocks." in k for k in keys) or not has_key(keys, r"vector_in\..*"):
            return False
        if "kontext" in Path(name).name.lower():  # FLUX.1 Kontext's own keys (kontext.py)
            return False
        img_in = next((v for k, v in keys.items() if k.endswith("img_in.weight")), None)
        if img_in is not None and len(img_in) == 2 and img_in[1] != 64 and img_in[1] <= 128:
            raise InputError(
                f"model: {name!r} is a FLUX transformer taking {img_in[1]} channels; blendedit "
                "takes FLUX.1 dev/schnell (64) and FLUX.1 Fill (384)"
            )
        return True

    @classmethod
    def model_defaults(cls, model: Name, local_files_only: bool | None = None) -> dict[str, Any]:
        """dev or schnell, from the transformer's config or a file's keys, without loading."""
        path, name = Path(model), str(model)
        if path.is_file():  # dev has a guidance embedding, schnell none
            keys = single_file_keys(path)
            dev = any("guidance_in" in k for k in keys)
            img_in = next((v for k, v in keys.items() if k.endswith("img_in.weight")), (0, 64))
            fill = img_in[-1] > 128  # FLUX.1 Fill's img_in: (D, 384)
        else:
            config = load_cached_first(
                "model", name, lambda local: read_json(name, "transformer/config.json", local),
                local_files_only,
            )  # fmt: skip
            dev = bool(config.get("guidance_embeds"))
            out = config.get("out_channels")  # Fill: 384 in, 64 out; dev/schnell: None
            fill = out is not None and out != config.get("in_channels")
        return cls.defaults_for(dev, fill)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        p = load_pipeline("FluxPipeline", cls.file_parts, model, opts)
        return cls(
            p.vae, p.transformer, p.text_encoder, p.text_encoder_2, p.tokenizer, p.tokenizer_2,
            p.scheduler,
        )  # fmt: skip

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """FLUX.1: the double/single-stream transformer, 16-channel VAE, CLIP-L (pooled), T5-XXL."""
        from diffusers import AutoencoderKL, FluxTransformer2DModel

        with torch.device(device):
            transformer = FluxTransformer2DModel(**parts["transformer"])
            vae = AutoencoderKL(**parts["vae"])
            text = C.clip_text(parts["text"])
            text_2 = C.t5_encoder(parts["text_2"])
        tok = C.clip_tokenizer(workdir)
        return cls(vae, transformer, text, text_2, tok, tok, scheduler)

    @property
    def is_dev(self) -> bool:
        """dev is guidance-distilled (a guidance embedding); schnell is timestep-distilled."""
        return bool(self.unet.config.guidance_embeds)

    @staticmethod
    def defaults_for(dev: bool, fill: bool = False) -> dict[str, Any]:
        """dev: FluxPipeline's 28 steps at guidance 3.5; schnell: 4 steps, no guidance; Fill:
        FluxFillPipeline's 50 steps at guidance 30 from pure noise (strength 1), with
        ``C.INPAINT_BLEND``."""
        if fill:
            return {
                "num_inference_steps": 50, "guidance_scale": 30.0, "scheduler": "flow-euler",
                "blend_start": 0.0, "blend": C.INPAINT_BLEND,
            }  # fmt: skip
        if dev:
            return {"num_inference_steps": 28, "guidance_scale": 3.5, "scheduler": "flow-euler"}
        return {"num_inference_steps": 4, "guidance_scale": 1.0, "scheduler": "flow-euler"}

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.defaults_for(self.is_dev, self.inpainting)

    @property
    def inpainting(self) -> bool:
        """FLUX.1 Fill: the transformer takes [packed latent (4C), packed masked image's latent
        (4C), packed pixel mask (4 f^2)] per token (384 = 64 + 64 + 256 for FLUX.1-Fill-dev)."""
        latent, f = int(self.vae.config.latent_channels), self.latent_factor
        return bool(self.unet.config.in_channels == 8 * latent + 4 * f * f)

    @property
    def reference_pipeline(self) -> str:  # type: ignore[override]
        """FluxFillPipeline for a Fill model (no blend), FluxInpaintPipeline otherwise."""
        return "FluxFillPipeline" if self.inpainting else "FluxInpaintPipeline"

    def condition_on_image(
        self, c: Conditioning, x: torch.Tensor, mask: torch.Tensor, z_init: torch.Tensor
    ) -> Conditioning:
        """FLUX.1 Fill (FluxFillPipeline's conditioning): the masked image ``x * (mask < 0.5)``
        encoded like the source and packed, then the pixel mask (grey levels kept) unshuffled into
        f x f channels per latent cell and packed: ``c.image["tokens"]`` (1, T, 4C + 4 f^2)."""
        if not self.inpainting:
            return c
        mask = mask.to(x)
        masked = pack(self.encode_image(x * (mask < 0.5).to(x)))  # (1, T, 4C)
        cells = torch.nn.functional.pixel_unshuffle(mask, self.latent_factor)  # (1, f^2, h, w)
        tokens = torch.cat([masked, pack(cells.to(self.device, self.dtype))], dim=-1)
        c.image = {"tokens": tokens}
        return c

    def modules(self) -> dict[str, Any]:
        return {
            "vae": self.vae, "unet": self.unet,
            "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
        }  # fmt: skip

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder, self.text_encoder_2]

    @property
    def patch_size(self) -> int:
        return 2  # 2x2 latent cells per token

    @property
    def native_size(self) -> int:
        return 1024

    @property
    def model_in_channels(self) -> int:
        return int(self.vae.config.latent_channels) * 4  # packed 2x2 patches

    @property
    def guidance_embedded(self) -> bool:
        return True  # dev embeds the scale; schnell takes none: one pass either way

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """FluxPipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the token count."""
        cfg = self.scheduler.config
        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        mu = C.calculate_shift(cfg, seq, max_shift=1.15)
        return {"sigmas": np.linspace(1.0, 1 / num_steps, num_steps).tolist(), "mu": mu}

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text -> ((1, T, D) T5 states, (1, P) CLIP pooled output)."""
        ids = C.tokenize(self.tokenizer, prompt, self.tokenizer.model_max_length).input_ids
        pooled = self.text_encoder(ids.to(self.device), output_hidden_states=False).pooler_output
        ids2 = C.tokenize(self.tokenizer_2, prompt, self.max_sequence_length).input_ids
        t5 = self.text_encoder_2(ids2.to(self.device), output_hidden_states=False)[0]
        return t5.to(self.dtype), pooled.to(self.dtype)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """No unconditional branch: FLUX.1 has no classifier-free guidance (the negative prompt
        is not used)."""
        cond, pooled = self.encode_prompt(prompt)
        return Conditioning(cond, cond, {"pooled": pooled}, {"pooled": pooled})

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, added = self.stack(c, batch, parts)  # (B, T, D), pooled (B, P)
        n = len(context)
        guidance = (
            torch.full((n,), guidance_scale, device=self.device, dtype=torch.float32)
            if self.is_dev
            else None
        )
        txt_ids = torch.zeros(context.shape[1], 3, device=self.device, dtype=self.dtype)

        img_ids: dict[tuple[int, int], torch.Tensor] = {}  # made once per latent size

        fill = c.image.get("tokens")  # FLUX.1 Fill: (1, T, 4C + 4 f^2)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (B, 16, h, w)
            h, w = z.shape[-2:]
            if (h, w) not in img_ids:
                img_ids[h, w] = image_ids(h, w).to(self.device, self.dtype)
            tokens = pack(z)  # (B, T, 4C)
            if fill is not None:
                tokens = torch.cat([tokens, fill.expand(len(tokens), -1, -1)], dim=-1)
            out = self.unet(
                hidden_states=tokens, timestep=t.expand(n) / 1000, guidance=guidance,
                pooled_projections=added["pooled"], encoder_hidden_states=context,
                txt_ids=txt_ids, img_ids=img_ids[h, w], return_dict=False,
            )[0]  # fmt: skip
            return unpack(out, h, w)

        return denoise

    def reference_embeddings(self, prompt: str, negative: str, n: int) -> dict[str, Any]:
        """blendedit's T5 states and CLIP pooled output (its T5 length: dev 512, schnell 256) for
        diffusers' FLUX inpaint pipeline, ``n`` times (no negative: FLUX.1 has no CFG)."""
        t5, pooled = self.encode_prompt(prompt)
        return {
            "prompt_embeds": t5.expand(n, -1, -1),  # (n, T, 4096)
            "pooled_prompt_embeds": pooled.expand(n, -1),  # (n, 768)
            "num_images_per_prompt": 1,
        }
