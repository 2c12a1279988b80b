"""Qwen-Image (Qwen team 2025): a 20B MMDiT on the 16-channel latents of its own causal video VAE
(one frame, per-channel mean/std normalisation instead of a scaling factor) packed in 2x2 patches,
Qwen2.5-VL-7B as text encoder (the prompt in a fixed system template whose first 34 tokens are
dropped, last hidden states), and true classifier-free guidance whose result is rescaled, token by
token, to the norm of the conditional prediction.

The loop keeps latents unpacked (B, 16, h, w); the mask works on whole tokens (a thin stroke
survives, ``Backbone.patch_size``). ``QwenImageInpaintPipeline`` blends ``scale_noise(z0,
t_{i+1})`` after every step like BLD and is the parity reference. Its guidance needs a negative
prompt: blendedit's empty one is " " (the model card's), so guidance is on whenever the scale
is above 1, as for the other families."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.errors import InputError
from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.files import has_key
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn

# -- bench presets: Qwen-Image (Qwen/Qwen-Image, "20B"): 60 MMDiT blocks, Qwen2.5-VL-7B ("8.29B"
# with its vision tower), the Qwen-Image VAE (Wan 2.1's layout) ----------------------------------

_FLOW = {  # Qwen/Qwen-Image/scheduler: exponential shift by the token count, stretched to 0.02
    **P.FLOW,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "shift_terminal": 0.02,
}
QWEN25_VL_7B: P.Config = {  # Qwen/Qwen2.5-VL-7B-Instruct
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "tie_word_embeddings": False,
}
_TINY_QWEN25_VL: P.Config = {  # 32 wide, the byte-level Qwen tokenizer's ids (common.py)
    "text_config": {
        "vocab_size": 264,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
        "bos_token_id": 256,
        "eos_token_id": 258,
        "pad_token_id": 256,
    },
    "vision_config": {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": 32,
        "window_size": 28,
        "fullatt_block_indexes": [0],
    },
}
_CATALOGUE = {
    "qwen-image": P.Architecture(
        {
            "transformer": {  # QwenImageTransformer2DModel of Qwen-Image
                "patch_size": 2,
                "in_channels": 64,
                "out_channels": 16,
                "num_layers": 60,
                "attention_head_dim": 128,
                "num_attention_heads": 24,
                "joint_attention_dim": 3584,  # Qwen2.5-VL-7B
                "guidance_embeds": False,
                "axes_dims_rope": (16, 56, 56),
            },
            "vae": {},  # AutoencoderKLQwenImage's defaults are Qwen-Image's VAE
            "text": QWEN25_VL_7B,
        },
        1024,  # its pipeline's default (128 latent cells); trained up to 1328
        scheduler=_FLOW,
        batch=2,
        source="Qwen/Qwen-Image",
    ),
    "tiny-qwen-image": P.Architecture(  # tests/tiny_models.py tiny_qwenimage_parts
        {
            "transformer": {
                "patch_size": 2,
                "in_channels": 64,
                "out_channels": 16,
                "num_layers": 2,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 32,
                "axes_dims_rope": (4, 6, 6),
            },
            "vae": {  # factor 2 (one downsampling), as the other tiny flow VAEs
                "base_dim": 8,
                "z_dim": 16,
                "dim_mult": [1, 2],
                "num_res_blocks": 1,
                "temperal_downsample": [False],
            },
            "text": _TINY_QWEN25_VL,
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
        "qwen-image": (
            P.CacheVerdict(
                "default",
                "taylorseer",
                38,
                28,
                0.634,
                "qwen-image, 128 px, from 2 of 60 blocks, cache-bench.json",
                None,
            ),
        ),
    },
)
TEMPLATE = (  # QwenImagePipeline's prompt template; its first 34 tokens are dropped
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
DROP = 34
MAX_TOKENS = 1024  # after the template


class QwenImage(C.OneTextEncoder, C.QwenImageLatents, Backbone):
    """Qwen-Image: ``transformer`` (QwenImageTransformer2DModel), ``vae``
    (AutoencoderKLQwenImage), ``text_encoder`` (Qwen2.5-VL), ``tokenizer`` (Qwen2's)."""

    family = "qwen-image"
    name = "Qwen-Image"
    title = "Qwen-Image"
    pipelines = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
    refused: ClassVar[dict[str, str]] = {
        "QwenImageEditPlusPipeline": (
            "a Qwen-Image-Edit-2509 (Plus) model, edited from several images; blendedit takes "
            "Qwen-Image-Edit (QwenImageEditPipeline) restricted by the mask"
        ),
    }
    catalogue = _CATALOGUE
    reference_pipeline = "QwenImageInpaintPipeline"
    single_file = True  # ComfyUI's transformer file (diffusers' names), with --model-config
    lora_loader = "QwenImageLoraLoaderMixin"  # the transformer
    # QwenImagePipeline's defaults: 50 steps, true CFG at 4.0.
    defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 50,
        "guidance_scale": 4.0,
        "scheduler": "flow-euler",
    }

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """ComfyUI's file keeps diffusers' names (its converter is the identity): per-block
        modulation ``transformer_blocks.i.img_mod.1`` and ``txt_norm`` (Qwen-Image 2.1 shares one
        modulation, Krea 2 has neither). Qwen-Image-Edit has the same keys; its file (by name)
        is refused in one line."""
        if not has_key(keys, r"txt_norm\.weight") or not has_key(
            keys, r"transformer_blocks\.\d+\.img_mod\.1\.weight"
        ):
            return False
        if "edit" in Path(name).name.lower():
            raise InputError(
                f"model: {name!r} is named as a Qwen-Image-Edit transformer; blendedit loads "
                "Qwen-Image-Edit from its diffusers folder or hub id"
            )
        return True

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A folder or hub id; a transformer file with the other parts from ``--model-config``."""
        p = load_pipeline("QwenImagePipeline", {}, model, opts)
        return cls(p.vae, p.transformer, p.text_encoder, p.tokenizer, p.scheduler)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """Qwen-Image: the MMDiT, its VAE, Qwen2.5-VL (the byte-level Qwen tokenizer stands in)."""
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        with torch.device(device):
            transformer = QwenImageTransformer2DModel(**parts["transformer"])
            vae = AutoencoderKLQwenImage(**parts["vae"])
            text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**parts["text"]))
        return cls(vae, transformer, text, C.qwen_tokenizer(workdir), scheduler)

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """QwenImagePipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the token
        count (SD3 paper section 5.3.2; exponential, stretched to the terminal sigma)."""
        return C.token_shift(self.scheduler, num_steps, (latent_hw[0] // 2) * (latent_hw[1] // 2))

    # -- text and guidance ---------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, L, D): Qwen2.5-VL's last hidden states of the templated prompt, the
        template's first 34 tokens dropped."""
        tok = self.tokenizer(
            TEMPLATE.format(prompt), max_length=MAX_TOKENS + DROP, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        out = self.text_encoder(
            input_ids=tok.input_ids.to(self.device),
            attention_mask=tok.attention_mask.to(self.device),
            output_hidden_states=True,
        )
        return out.hidden_states[-1][:, DROP:].to(self.dtype)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """The prompt and the negative (" " when none: the model card's, guidance stays on)."""
        return Conditioning(self.encode_prompt(prompt), self.encode_prompt(negative or " "))

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        """One transformer call per part (prompt and negative have their own lengths), each in
        its own cache context (diffusers' ``cache_context``, as QwenImagePipeline calls it): a
        step cache keeps one state per branch instead of mixing the two."""
        contexts = [(c.cond if p == "cond" else c.uncond).expand(batch, -1, -1) for p in parts]

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 16, h, w)
            h, w = z.shape[-2:]
            shapes = [[(1, h // 2, w // 2)]] * batch
            time = t.expand(batch).to(z.dtype) / 1000
            outs = []
            for part, zp, ctx in zip(parts, z.split(batch), contexts, strict=True):
                with C.branch_context(self.unet, part, parts):
                    out = self.unet(
                        hidden_states=C.pack(zp), encoder_hidden_states=ctx, timestep=time,
                        img_shapes=shapes, return_dict=False,
                    )[0]  # fmt: skip
                outs.append(out)  # (B, N, 64) tokens
            return C.unpack(torch.cat(outs), h, w)

        return denoise

    def model_fn(self, c: Conditioning, batch: int, guidance_scale: float) -> ModelFn:
        """True classifier-free guidance (Ho & Salimans 2022) rescaled to the conditional
        prediction's norm over each token's 64 values (QwenImagePipeline); a scale of 1 or less
        is the conditional prediction alone, in one pass."""
        if guidance_scale <= 1.0 or c.same():
            return self.denoiser(c, batch, ("cond",), guidance_scale)
        both = self.denoiser(c, batch, ("uncond", "cond"), guidance_scale)
        return C.norm_rescaled_cfg(both, guidance_scale)

    # -- the reference ---------------------------------------------------------------------------

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The text (negative " " when none), or blendedit's own embeddings ``n`` times."""
        if embeddings:
            cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative or " ")
            return {
                "prompt_embeds": cond.expand(n, -1, -1),  # (n, L, 3584)
                "prompt_embeds_mask": torch.ones(n, cond.shape[1], dtype=torch.long),
                "negative_prompt_embeds": uncond.expand(n, -1, -1),
                "negative_prompt_embeds_mask": torch.ones(n, uncond.shape[1], dtype=torch.long),
                "num_images_per_prompt": 1,
            }
        return {"prompt": prompt, "negative_prompt": negative or " ", "num_images_per_prompt": n}

    @staticmethod
    def reference_inpaint(
        pipe: Any, prompt: dict[str, Any], image: Any, mask_image: Any, size: Size, **call: Any
    ) -> Any:
        """The reference call: blendedit's guidance scale is the pipeline's ``true_cfg_scale``."""
        if "guidance_scale" in call:
            call["true_cfg_scale"] = call.pop("guidance_scale")
        return Backbone.reference_inpaint(pipe, prompt, image, mask_image, size, **call)
