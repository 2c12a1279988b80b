"""Qwen-Image-Edit (Qwen team 2025, "Qwen-Image Technical Report", arXiv 2508.02324, its image
editing task and MSRoPE): the 20B MMDiT of Qwen-Image on 16-channel latents of its own VAE
(Wan-style, causal 3D, one frame here), packed in 2x2 patches; Qwen2.5-VL-7B reads the source
image and the instruction together (its last hidden states, the system prompt's tokens dropped),
and the source's latents enter the MMDiT as extra image tokens (a second frame of the 3D rotary
positions). The prompt is an instruction ("replace the cat by a dog") or a description.

Restricted by the mask: the BLD blend keeps the noised source outside it after every step, as
diffusers' ``QwenImageEditInpaintPipeline`` does (its parity reference). Guidance is true
classifier-free guidance over the negative prompt, the combination rescaled per token to the
conditional prediction's norm (the pipeline's ``true_cfg_scale``, 4 by default; blendedit's
``guidance_scale`` is that scale). Defaults from the pipeline: 50 steps, scale 4, strength 0.6
(``blend_start`` 0.4), the negative prompt " " of its example; the shifted flow schedule of the
token count.

The text encoder takes what the model's ``Qwen2VLProcessor`` prepares (the image resized and
patchified, the prompt's image placeholder expanded). In transformers 5 that processor's image
processor needs torchvision; without torchvision the model loads with :class:`QwenVLInputs`, the
same preparation on transformers' PIL backend of the Qwen2-VL image processor (the model's own
``processor/`` settings and tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn
from blendedit.models import load_cached_first

# The pipeline's prompt template: a system prompt (its first 64 tokens are dropped from the
# encoder's states), the image's placeholder, the instruction.
TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should alter or "
    "modify the image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
DROP = 64  # the template's tokens before the image

# -- bench presets: Qwen/Qwen-Image-Edit (20B MMDiT, Qwen2.5-VL-7B-Instruct, the Qwen-Image VAE) ---

_FLOW = {  # Qwen/Qwen-Image-Edit/scheduler
    **P.FLOW,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
_MMDIT = {  # QwenImageTransformer2DModel: 60 blocks, 24 heads x 128, Qwen2.5-VL's 3584 states
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
_VAE: dict[str, Any] = {}  # AutoencoderKLQwenImage's defaults are Qwen-Image's VAE
_QWEN25_VL_7B = {  # Qwen/Qwen2.5-VL-7B-Instruct (the pipeline's text_encoder)
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "default"},
        "rope_theta": 1000000.0,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}

_CATALOGUE = {
    "qwen-image-edit": P.Architecture(
        {"transformer": _MMDIT, "vae": _VAE, "text": _QWEN25_VL_7B},
        1024,
        scheduler=_FLOW,
        source="Qwen/Qwen-Image-Edit",
        batch=4,
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "qwen-image-edit": (
            P.CacheVerdict(
                "default",
                "taylorseer",
                30,
                21,
                0.634,
                "qwen-image, 128 px, from 2 of 60 blocks, cache-bench.json",
                None,
            ),
        ),
    },
)


# Qwen2.5-VL's special tokens and their ids (Qwen/Qwen2.5-VL-7B-Instruct's tokenizer).
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


def byte_tokenizer(folder: Path, special_ids: dict[str, int] = SPECIAL_IDS) -> Any:
    """A byte-level Qwen2 tokenizer for random-weight models (``build``): the 256 bytes as ids
    0-255, no merges, and Qwen2.5-VL's special tokens at ``special_ids``; saved to ``folder``."""
    from transformers import Qwen2Tokenizer

    vocab = {**{chr(c): i for i, c in enumerate(C.byte_table()[1])}, **special_ids}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": list(special_ids)[1:]})
    tok.save_pretrained(folder)
    return Qwen2Tokenizer.from_pretrained(folder)


def to_pil(x: torch.Tensor) -> Any:
    """(1, 3, H, W) in [-1, 1] -> the PIL image the pipeline hands its processor."""
    from PIL import Image

    arr = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu()
    return Image.fromarray(arr.numpy())


class QwenVLInputs:
    """``Qwen2VLProcessor``'s preparation without torchvision: transformers'
    ``Qwen2VLImageProcessorPil`` (resize to multiples of 28 within the pixel limits, normalise,
    14 px patches x 2 frames in merge order) gives ``pixel_values`` and ``image_grid_thw``, and
    each <|image_pad|> of the text becomes grid_t x grid_h x grid_w / merge**2 of them before the
    tokenizer runs, as the processor does."""

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    @classmethod
    def from_pretrained(cls, model: Name, local_files_only: bool | None = None) -> QwenVLInputs:
        """The model's ``processor/`` settings and ``tokenizer/`` (cache first)."""
        from transformers import Qwen2Tokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        def load(local: bool) -> QwenVLInputs:
            kw = {"local_files_only": local}
            images = Qwen2VLImageProcessorPil.from_pretrained(
                str(model), subfolder="processor", **kw
            )
            return cls(
                images, Qwen2Tokenizer.from_pretrained(str(model), subfolder="tokenizer", **kw)
            )

        return load_cached_first("model", str(model), load, local_files_only)

    def __call__(
        self, text: list[str], images: Any = None, padding: bool = True, return_tensors: str = "pt"
    ) -> Any:
        from transformers import BatchFeature

        pixels = self.image_processor(images=images, return_tensors=return_tensors)
        n = int(pixels["image_grid_thw"][0].prod()) // self.image_processor.merge_size**2
        text = [t.replace("<|image_pad|>", "<|image_pad|>" * n) for t in text]
        tokens = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        return BatchFeature({**tokens, **pixels})


def has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


class QwenImageEdit(C.QwenImageLatents, Backbone):
    """Qwen-Image-Edit: ``transformer`` (QwenImageTransformer2DModel), ``vae``
    (AutoencoderKLQwenImage), ``text_encoder`` (Qwen2.5-VL), ``tokenizer``, ``processor``."""

    family = "qwen-image-edit"
    name = "Qwen-Image-Edit"
    title = "Qwen-Image-Edit"
    purpose = (
        "an editing model: Qwen2.5-VL reads the photo and the prompt as an instruction ('replace "
        "the cat by a dog'); the mask keeps everything else"
    )
    pipelines = ("QwenImageEditPipeline", "QwenImageEditInpaintPipeline")
    catalogue = _CATALOGUE
    reference_pipeline = "QwenImageEditInpaintPipeline"
    lora_loader = "QwenImageLoraLoaderMixin"  # Qwen-Image's: the transformer
    denoiser_name = "transformer"
    flow = True
    # QwenImageEditInpaintPipeline's defaults (true_cfg_scale 4, strength 0.6, its example's " ").
    defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 50,
        "guidance_scale": 4.0,
        "blend_start": 0.4,
        "negative_prompt": " ",
        "scheduler": "flow-euler",
    }

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, processor: Any,
        scheduler: Any,
    ):  # fmt: skip
        self.vae, self.unet, self.scheduler = vae, transformer, scheduler
        self.text_encoder, self.tokenizer, self.processor = text_encoder, tokenizer, processor
        self._texts: tuple[str, str] = ("", "")  # encode_text -> condition_on_image
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """Through ``QwenImageEditPipeline`` (hub id or folder); without torchvision its
        processor is :class:`QwenVLInputs` on the model's own settings."""
        if has_torchvision():
            p = load_pipeline("QwenImageEditPipeline", {}, model, opts)
            processor = p.processor
        else:  # the pipeline's loader type-checks a given processor: load it apart
            p = load_pipeline("QwenImageEditPipeline", {}, model, opts, processor=None)
            processor = QwenVLInputs.from_pretrained(model, opts.local_files_only)
        return cls(p.vae, p.transformer, p.text_encoder, p.tokenizer, processor, p.scheduler)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """The MMDiT, the VAE and Qwen2.5-VL with random weights, a byte-level tokenizer with
        Qwen2.5-VL's special tokens and :class:`QwenVLInputs` on the Qwen2-VL image processor's
        defaults."""
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        with torch.device(device):
            transformer = QwenImageTransformer2DModel(**parts["transformer"])
            vae = AutoencoderKLQwenImage(**parts["vae"])
            text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**parts["text"]))
        tok = byte_tokenizer(workdir / "qwen-tokenizer")
        processor = QwenVLInputs(Qwen2VLImageProcessorPil(), tok)
        return cls(vae, transformer, text, tok, processor, scheduler)

    def modules(self) -> dict[str, Any]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def text_encoders(self) -> list[Any]:
        return [self.text_encoder]

    @property
    def guidance_embedded(self) -> bool:
        return False

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """The pipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the token count."""
        return C.token_shift(self.scheduler, num_steps, (latent_hw[0] // 2) * (latent_hw[1] // 2))

    # -- text: Qwen2.5-VL on the image and the instruction ---------------------------------------

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """The prompts wait for the image (:meth:`condition_on_image` encodes them with it)."""
        self._texts = (prompt, negative)
        empty = torch.zeros(1, 0, self.unet.config.joint_attention_dim, device=self.device)
        return Conditioning(empty, empty.clone())

    def vl_inputs(self, prompt: str, image: Any) -> dict[str, torch.Tensor]:
        """The processor's tensors for one templated prompt and the image: ``input_ids``,
        ``attention_mask`` (1, L), ``pixel_values`` (patches, 3 x 2 x 14 x 14),
        ``image_grid_thw`` (1, 3)."""
        if self.processor is None:
            from blendedit.errors import InputError

            raise InputError("model: this Qwen-Image-Edit has no processor (it needs torchvision)")
        out = self.processor(
            text=[TEMPLATE.format(prompt)], images=image, padding=True, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in out.items()}

    @torch.no_grad()
    def encode_vl(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Qwen2.5-VL's last hidden states of the prompt's tokens after the system prompt,
        (1, L - 64, 3584) (one prompt: no padding, so no attention mask is needed after)."""
        out = self.text_encoder(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
            output_hidden_states=True,
        )  # fmt: skip
        keep = inputs["attention_mask"][0].bool()
        return out.hidden_states[-1][:, keep][:, DROP:].to(self.dtype)

    def encode_prompt(self, prompt: str, image: Any) -> torch.Tensor:
        return self.encode_vl(self.vl_inputs(prompt, image))

    def condition_on_image(
        self, c: Conditioning, x: torch.Tensor, mask: torch.Tensor, z_init: torch.Tensor
    ) -> Conditioning:
        """The instruction read with the crop (the whole crop, unmasked), and the crop's latents
        E(x) (1, 16, h, w) as the MMDiT's extra image tokens."""
        prompt, negative = self._texts
        image = to_pil(x)
        cond = self.encode_prompt(prompt, image)
        uncond = cond if negative == prompt else self.encode_prompt(negative, image)
        return Conditioning(cond, uncond, image={"latents": z_init})

    # -- the model function -----------------------------------------------------------------------

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        """The MMDiT on ``[noisy tokens, source tokens]`` per part (prompt and negative differ in
        length: one pass each); the source tokens' output is dropped."""
        src = c.image["latents"].to(self.device, self.dtype)  # (1, 16, h', w')
        src_tokens = C.pack(src).expand(batch, -1, -1)  # (B, h'/2 * w'/2, 64)
        hs, ws = src.shape[-2] // 2, src.shape[-1] // 2
        texts = [(c.cond if p == "cond" else c.uncond).expand(batch, -1, -1) for p in parts]
        guidance = None
        if self.unet.config.guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=self.device, dtype=torch.float32)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 16, h, w)
            h, w = z.shape[-2:]
            shapes = [[(1, h // 2, w // 2), (1, hs, ws)]] * batch
            outs = []
            for part, zp, text in zip(parts, z.split(batch), texts, strict=True):
                tokens = C.pack(zp)  # (B, h/2 * w/2, 64)
                with C.branch_context(self.unet, part, parts):  # a step cache's state each
                    out = self.unet(
                        hidden_states=torch.cat([tokens, src_tokens], dim=1),
                        timestep=t.expand(batch) / 1000, guidance=guidance,
                        encoder_hidden_states=text, encoder_hidden_states_mask=None,
                        img_shapes=shapes, return_dict=False,
                    )[0]  # fmt: skip
                outs.append(C.unpack(out[:, : tokens.shape[1]], h, w))
            return torch.cat(outs)

        return denoise

    def model_fn(self, c: Conditioning, batch: int, guidance_scale: float) -> ModelFn:
        """True classifier-free guidance (the pipeline's ``true_cfg_scale``) for scales above 1,
        ``u + s (c - u)`` rescaled per token to the norm of ``c`` (Qwen-Image's rule); the
        conditional prediction alone otherwise."""
        if guidance_scale <= 1.0:
            return self.denoiser(c, batch, ("cond",), guidance_scale)
        both = self.denoiser(c, batch, ("uncond", "cond"), guidance_scale)
        return C.norm_rescaled_cfg(both, guidance_scale)

    # -- the diffusers reference ------------------------------------------------------------------

    def reference_options(self) -> dict[str, Any]:
        return {"processor": self.processor}

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The text (the embeddings depend on the image); the negative even when empty (the
        pipeline runs guidance only with one)."""
        return {"prompt": prompt, "negative_prompt": negative, "num_images_per_prompt": n}

    @staticmethod
    def reference_inpaint(
        pipe: Any, prompt: dict[str, Any], image: Any, mask_image: Any, size: Size, **call: Any
    ) -> Any:
        """``QwenImageEditInpaintPipeline``: blendedit's scale is its ``true_cfg_scale`` (its
        ``guidance_scale`` is for guidance-distilled models). It works at about 1024 x 1024 px
        whatever ``size`` says."""
        call.pop("eta", None)
        call["true_cfg_scale"] = call.pop("guidance_scale", 4.0)
        return Backbone.reference_inpaint(pipe, prompt, image, mask_image, size, **call)
