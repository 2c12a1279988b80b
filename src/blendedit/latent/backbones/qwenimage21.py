"""Qwen-Image 2.1 (``QwenImage21Pipeline``): a single-stream block-causal transformer reading
the 64-channel latents of its own 16x VAE unpatched (one token per latent pixel), conditioned on
Qwen3-VL's last decoder layer before its final norm. The class extends Qwen-Image's (one frame of
a video VAE normalised per channel by ``latents_mean`` / ``latents_std``).

The pipeline's Qwen3-VL processor needs torchvision; blendedit loads the parts one by one and
reads the processor folder's tokenizer only, so no processor is built. Guidance: true CFG,
``neg + s (cond - neg)`` as the pipeline's ``true_cfg_scale`` (1 = off)."""

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
from blendedit.latent.backbones.krea2 import _TINY_QWEN3_VL
from blendedit.latent.backbones.loading import denoiser_from_file
from blendedit.latent.backbones.qwenimage import QwenImage
from blendedit.latent.quantize import check_mode, component_config
from blendedit.latent.sampling import ModelFn
from blendedit.models import load_cached_first

SYSTEM = "<|im_start|>system\nComprehend and analyze the provided prompt.<|im_end|>\n"
TEMPLATE = SYSTEM + "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
_FLOW = {**P.FLOW, "use_dynamic_shifting": True, "base_image_seq_len": 256}
_FLOW |= {"max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
_TINY_Z = 8
# -- bench preset: Qwen-Image 2.1 (Qwen/Qwen-Image-2.1, "7B"). No config of the published model is
# reachable here; the shapes are diffusers' own defaults for both classes, which match the two
# public descriptions found: ling0322/libwaifu docs/qwen_image.md (the checkpoint's config.json:
# 32 single-stream blocks, 4096 = 32 heads x 128, SwiGLU 12288, 64 latent channels in and out,
# rope axes (16, 56, 56); VAE base 96 in, 144 out, dim_mult (1, 2, 4, 8, 8), 16x, z 64) and a
# "real Qwen-Image-2.1 transformer config" in a public fp8 test (the same values); the text
# encoder is Qwen/Qwen3-VL-8B-Instruct's config.json ("8.8B", vision tower and untied head).
QWEN3_VL_8B: P.Config = {
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "out_hidden_size": 4096,
        "deepstack_visual_indexes": [8, 16, 24],
        "num_position_embeddings": 2304,
        "patch_size": 16,
    },
    "tie_word_embeddings": False,
}
_CATALOGUE = {
    "qwen-image-2.1": P.Architecture(
        {"transformer": {}, "vae": {}, "text": QWEN3_VL_8B},  # diffusers' defaults: see above
        1024,
        scheduler=_FLOW,
        batch=4,
        source="Qwen/Qwen-Image-2.1",
    ),
    "tiny-qwen-image-2.1": P.Architecture(  # tests/test_qwenimage21.py
        {
            "transformer": {
                "in_channels": _TINY_Z, "out_channels": _TINY_Z, "num_layers": 1,
                "attention_head_dim": 16, "num_attention_heads": 2, "context_in_dim": 16,
                "axes_dims_rope": (4, 6, 6),
            },
            "vae": {
                "base_dim": 8, "decoder_base_dim": 8, "z_dim": _TINY_Z, "dim_mult": [1, 2, 2],
                "num_res_blocks": 1, "temperal_downsample": [False, False],
                "latents_mean": [0.1 * i for i in range(_TINY_Z)],
                "latents_std": [1.0 + 0.1 * i for i in range(_TINY_Z)],
            },
            "text": _TINY_QWEN3_VL,  # Krea 2's tiny Qwen3-VL
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_FLOW,
        batch=4,
    ),
}  # fmt: skip

# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "qwen-image-2.1": (
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


class QwenImage21(QwenImage):
    """Qwen-Image 2.1: ``transformer`` (QwenImage21Transformer2DModel), ``vae``
    (AutoencoderKLQwenImage21), ``text_encoder`` (Qwen3VLForConditionalGeneration),
    ``tokenizer`` (the processor's Qwen2 tokenizer)."""

    family = "qwen-image-2.1"
    name = "Qwen-Image 2.1"
    title = "Qwen-Image 2.1"
    pipelines = ("QwenImage21Pipeline",)
    refused: ClassVar[dict[str, str]] = {}
    catalogue = _CATALOGUE
    reference_pipeline = ""  # diffusers has no Qwen-Image 2.1 inpaint pipeline
    single_file = True  # ComfyUI's transformer file, with --model-config
    lora_loader = "QwenImageLoraLoaderMixin"  # QwenImage21Pipeline's: the transformer
    defaults: ClassVar[dict[str, Any]] = {  # QwenImage21Pipeline's 40 steps; CFG 4 (1 = off)
        "num_inference_steps": 40,
        "guidance_scale": 4.0,
        "scheduler": "flow-euler",
    }

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """ComfyUI's layout (diffusers' names, the SwiGLU's gate and up projections fused as
        ``img_mlp.gate_up``) or diffusers': the text input's ``txt_in.text_norm``, which neither
        Qwen-Image (``txt_norm``) nor Krea 2 (``txt_in.norm``) has."""
        return has_key(keys, r"txt_in\.text_norm\.weight")

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """The parts one by one (no processor: it needs torchvision), the tokenizer from the
        processor folder; a transformer file with the other parts from ``--model-config``."""
        import diffusers
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

        name, dt = str(model), {"torch_dtype": opts.dtype}
        qd, qt = cls._quantization(opts)
        transformer = None
        if Path(model).is_file():
            transformer = denoiser_from_file(
                Path(model), opts, cls_name="QwenImage21Transformer2DModel"
            )
            name = str(opts.config)

        def load(local: bool) -> Backbone:
            kw = {"local_files_only": local}
            return cls(
                diffusers.AutoencoderKLQwenImage21.from_pretrained(
                    name, subfolder="vae", **dt, **kw
                ),
                transformer
                or diffusers.QwenImage21Transformer2DModel.from_pretrained(
                    name, subfolder="transformer", **dt, **kw, **qd
                ),
                Qwen3VLForConditionalGeneration.from_pretrained(
                    name, subfolder="text_encoder", **dt, **kw, **qt
                ),
                AutoTokenizer.from_pretrained(name, subfolder="processor", **kw),
                diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                    name, subfolder="scheduler", **kw
                ),
            )

        return load_cached_first("model", name, load, opts.local_files_only)

    @staticmethod
    def _quantization(opts: LoadOptions) -> tuple[dict[str, Any], dict[str, Any]]:
        """``--quantize``: the transformer's and the encoder's ``quantization_config`` (each
        library's own); gguf single files are not taken for this family."""
        if opts.quantize is None:
            return {}, {}
        if opts.quantize == "gguf":
            raise InputError("quantize: gguf is not supported for Qwen-Image 2.1; try int8 or nf4")
        check_mode(opts.quantize)
        return (
            {"quantization_config": component_config(opts.quantize, "diffusers", opts.dtype)},
            {"quantization_config": component_config(opts.quantize, "transformers", opts.dtype)},
        )

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """The transformer, its VAE, Qwen3-VL (the byte-level Qwen tokenizer stands in)."""
        from diffusers import AutoencoderKLQwenImage21, QwenImage21Transformer2DModel
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        with torch.device(device):
            transformer = QwenImage21Transformer2DModel(**parts["transformer"])
            vae = AutoencoderKLQwenImage21(**parts["vae"])
            text = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**parts["text"]))
        return cls(vae, transformer, text, C.qwen_tokenizer(workdir), scheduler)

    @property
    def patch_size(self) -> int:
        return 1  # one token per latent pixel

    @property
    def size_multiple(self) -> int:
        return self.latent_factor * 2  # the pipeline's rule: an even latent grid

    @property
    def model_in_channels(self) -> int:
        return self.latent_channels  # unpatched

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, h, w): the VAE reads RGBA, the photo opaque (alpha
        1, as the pipeline's RGBA preprocessing gives)."""
        rgba = torch.cat([image, torch.ones_like(image[:, :1])], dim=1)  # (B, 4, H, W)
        return super().encode_image(rgba)

    @staticmethod
    def decode_with(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised latents -> (B, 3, H, W): the decoded RGBA's colour."""
        return QwenImage.decode_with(vae, z)[:, :3]

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """QwenImage21Pipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the
        token count (one token per latent pixel)."""
        return C.token_shift(self.scheduler, num_steps, latent_hw[0] * latent_hw[1])

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:  # type: ignore[override]
        """Text -> (1, L, D): Qwen3-VL's last decoder layer before its final norm (the
        pipeline's hook), the system message's tokens dropped; " " for an empty prompt."""
        drop = len(self.tokenizer(SYSTEM).input_ids)
        tok = self.tokenizer(TEMPLATE.format(prompt or " "), return_tensors="pt")
        lm = self.text_encoder.model.language_model
        handle = lm.norm.register_forward_hook(lambda module, args, output: args[0])
        try:
            out = self.text_encoder(
                input_ids=tok.input_ids.to(self.device),
                attention_mask=tok.attention_mask.to(self.device),
                output_hidden_states=True,
            )
        finally:
            handle.remove()
        return out.hidden_states[-1][:, drop:].to(self.dtype)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        return Conditioning(self.encode_prompt(prompt), self.encode_prompt(negative))

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        """One transformer call per part (prompt and negative have their own lengths)."""
        contexts = [(c.cond if p == "cond" else c.uncond).expand(batch, -1, -1) for p in parts]

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, C, h, w)
            _, ch, h, w = z.shape
            time = (t / self.scheduler.config.num_train_timesteps).expand(batch).to(z.dtype)
            outs = []
            for part, zp, ctx in zip(parts, z.split(batch), contexts, strict=True):
                tokens = zp.reshape(batch, ch, h * w).transpose(1, 2)  # (B, h * w, C)
                text = torch.zeros(batch, ctx.shape[1], dtype=torch.bool, device=z.device)
                img_mask = torch.cat([text, text.new_ones(batch, h * w // 4)], dim=1)
                with C.branch_context(self.unet, part, parts):  # a step cache's state each
                    out = self.unet(
                        hidden_states=tokens, encoder_hidden_states=ctx, timestep=time,
                        img_shapes=[[(1, h, w)]] * batch, img_mask=img_mask, return_dict=False,
                    )[0]  # fmt: skip
                out = out[:, -h * w :]  # the image tokens: the sequence is [text, image]
                outs.append(out.transpose(1, 2).reshape(batch, ch, h, w))
            return torch.cat(outs)

        return denoise

    def model_fn(self, c: Conditioning, batch: int, guidance_scale: float) -> ModelFn:
        """Classifier-free guidance without Qwen-Image's norm rescaling."""
        return Backbone.model_fn(self, c, batch, guidance_scale)
