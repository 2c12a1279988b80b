"""Krea 2 (Krea 2026): a 12.8B single-stream MMDiT on Qwen-Image's VAE (16 channels, one frame,
mean/std normalised) packed in 2x2 patches, Qwen3-VL-4B as text encoder (12 of its hidden layers
stacked per token, fused inside the transformer; the Qwen-Image system template with the padding
in the middle and positions counting real tokens only), guidance written ``cond + s (cond -
uncond)``, and a fixed shift for the few-step distilled checkpoint.

The VAE and its geometry are Qwen-Image's, so this class extends :class:`QwenImage` (the VAE's
rules, one place). blendedit's ``guidance_scale`` keeps the house meaning (1: the conditional
prediction alone), so Krea 2's s is blendedit's s + 1: Krea2Pipeline's 4.5 is 5.5 here. diffusers
has no inpaint pipeline for Krea 2: the parity reference is ``Krea2Pipeline``'s own denoising loop
run as an img2img with diffusers' blend added by a callback (tests/test_latent_2026.py), and
``bench`` times that loop (``timing_pipeline``, ``bench.reference.LoopRun``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.files import has_key
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.backbones.qwenimage import QwenImage
from blendedit.latent.sampling import ModelFn

# -- bench preset: Krea 2 (the transformer's default config), Qwen3-VL-4B, Qwen-Image's VAE ---------

_FLOW = {  # Krea2Pipeline's documented scheduler: exponential shift by the token count
    **P.FLOW,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "base_image_seq_len": 256,
    "max_image_seq_len": 6400,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
QWEN3_VL_4B: P.Config = {  # Qwen/Qwen3-VL-4B-Instruct ("4.44B")
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "out_hidden_size": 2560,
        "deepstack_visual_indexes": [5, 11, 17],
        "num_position_embeddings": 2304,
        "patch_size": 16,
    },
    "tie_word_embeddings": True,
}
_TINY_QWEN3_VL: P.Config = {  # 16 wide, 3 layers (all three tapped), the byte-level tokenizer
    "text_config": {
        "vocab_size": 264,
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [1, 1, 2],
        },
    },
    "vision_config": {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": 16,
        "deepstack_visual_indexes": [0],
        "num_position_embeddings": 16,
    },
}
_TINY_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2], "num_res_blocks": 1}
_CATALOGUE = {
    "krea2": P.Architecture(
        {"transformer": {}, "vae": {}, "text": QWEN3_VL_4B},  # the defaults are Krea 2's
        1024,
        scheduler=_FLOW,
        batch=4,
        source="krea/Krea-2",
    ),
    "tiny-krea2": P.Architecture(  # tests/tiny_models.py tiny_krea2_parts
        {
            "transformer": {
                "in_channels": 64,
                "num_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "intermediate_size": 32,
                "timestep_embed_dim": 32,
                "text_hidden_dim": 16,
                "num_text_layers": 3,
                "text_num_attention_heads": 2,
                "text_num_key_value_heads": 1,
                "text_intermediate_size": 24,
                "num_layerwise_text_blocks": 1,
                "num_refiner_text_blocks": 1,
                "axes_dims_rope": (4, 6, 6),
            },
            "vae": {**_TINY_VAE, "temperal_downsample": [False]},
            "text": _TINY_QWEN3_VL,
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
        "krea2": (
            P.CacheVerdict(
                "default", "taylorseer", 21, 14, None, "skipped call not measured", None
            ),
        ),
    },
)
PREFIX = (  # Krea2Pipeline's template: [prefix | prompt | padding | suffix]; 34 prefix tokens
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
DROP, SUFFIX_TOKENS, TEXT_TOKENS = 34, 5, 512
KREA_LAYERS = (2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35)  # Qwen3-VL-4B's tapped layers


class Krea2(C.FlagDefaults, QwenImage):
    """Krea 2: ``transformer`` (Krea2Transformer2DModel), ``vae`` (Qwen-Image's),
    ``text_encoder`` (Qwen3VLModel), ``tokenizer`` (Qwen2's)."""

    family = "krea2"
    name = "Krea 2"
    title = "Krea 2"
    pipelines = ("Krea2Pipeline",)
    refused: ClassVar[dict[str, str]] = {}
    catalogue = _CATALOGUE
    reference_pipeline = ""  # diffusers has no Krea 2 inpaint pipeline
    timing_pipeline = "Krea2Pipeline"  # bench's step ratio: its own loop, the blend added
    lora_loader = "Krea2LoraLoaderMixin"  # the transformer
    max_sequence_length = TEXT_TOKENS
    single_file = True  # Krea's transformer file, with --model-config

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
        layers: Sequence[int] = KREA_LAYERS, is_distilled: bool = False,
    ):  # fmt: skip
        super().__init__(vae, transformer, text_encoder, tokenizer, scheduler)
        self.layers, self.is_distilled = tuple(layers), is_distilled

    @staticmethod
    def defaults_for(distilled: bool) -> dict[str, Any]:
        """Krea2Pipeline's 28 steps at its scale 4.5 (5.5 here); the distilled checkpoint: 4
        steps, no guidance."""
        if distilled:
            return {"num_inference_steps": 4, "guidance_scale": 1.0, "scheduler": "flow-euler"}
        return {"num_inference_steps": 28, "guidance_scale": 5.5, "scheduler": "flow-euler"}

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """Krea's layout (``first``, ``tmlp``, ``txtfusion``, ``blocks``; ComfyUI's under
        ``model.diffusion_model.``) or diffusers': the text-layer fusion's ``projector``."""
        return has_key(keys, r"(txtfusion|text_fusion)\.projector\.weight")

    @classmethod
    def flag_of(cls, model: Name, local_files_only: bool | None = None) -> bool:
        """Step-distilled: a folder's ``model_index.json`` says it; a file's name ("distill")."""
        if Path(model).is_file():
            return "distill" in Path(model).name.lower()
        return super().flag_of(model, local_files_only)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A folder or hub id; a transformer file with the other parts from ``--model-config``
        (distilled when the folder or the file's name says so)."""
        p = load_pipeline("Krea2Pipeline", {}, model, opts)
        layers, distilled = p.config.text_encoder_select_layers, bool(p.config.is_distilled)
        distilled = distilled or (Path(model).is_file() and cls.flag_of(model))
        return cls(
            p.vae, p.transformer, p.text_encoder, p.tokenizer, p.scheduler, layers, distilled
        )

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """Krea 2: the MMDiT, Qwen-Image's VAE, Qwen3-VL (the byte-level Qwen tokenizer); the
        tapped layers: Krea's, or every layer of a smaller encoder."""
        from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel
        from transformers import Qwen3VLConfig, Qwen3VLModel

        with torch.device(device):
            transformer = Krea2Transformer2DModel(**parts["transformer"])
            vae = AutoencoderKLQwenImage(**parts["vae"])
            text = Qwen3VLModel(Qwen3VLConfig(**parts["text"]))
        n = transformer.config.num_text_layers
        layers = KREA_LAYERS if n == len(KREA_LAYERS) else tuple(range(1, n + 1))
        return cls(vae, transformer, text, C.qwen_tokenizer(workdir), scheduler, layers)

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """Krea2Pipeline's schedule: sigmas linspace(1, 1/N, N), shifted by mu of the token count
        (the distilled checkpoint: mu = 1.15)."""
        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        cfg = self.scheduler.config
        mu = 1.15 if self.is_distilled else C.calculate_shift(cfg, seq, max_shift=1.15)
        return C.flow_sigmas(num_steps, mu)

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Text -> ((1, 512, K, D) the K tapped layers per token, (1, 512) bool mask): the prompt
        padded inside the template, positions counting real tokens only, the prefix dropped."""
        body = self.tokenizer(
            PREFIX + prompt, truncation=True, padding="max_length",
            max_length=TEXT_TOKENS + DROP - SUFFIX_TOKENS, return_tensors="pt",
        )  # fmt: skip
        tail = self.tokenizer(SUFFIX, return_tensors="pt")
        ids = torch.cat([body.input_ids, tail.input_ids], dim=1).to(self.device)
        mask = torch.cat([body.attention_mask, tail.attention_mask], dim=1).bool().to(self.device)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)  # (3, 1, T)
        out = self.text_encoder(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True
        )
        states = torch.stack([out.hidden_states[i] for i in self.layers], dim=2)
        return states[:, DROP:].to(self.dtype), mask[:, DROP:]

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """The prompt and the negative ("" when none, as Krea2Pipeline encodes it)."""
        cond, mask = self.encode_prompt(prompt)
        uncond, mask_u = self.encode_prompt(negative)
        return Conditioning(cond, uncond, {"mask": mask}, {"mask": mask_u})

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, added = self.stack(c, batch, parts)  # (P * B, 512, K, D), mask (P * B, 512)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 16, h, w)
            h, w = z.shape[-2:]
            img = torch.zeros(h // 2, w // 2, 3, device=z.device)
            img[..., 1] = torch.arange(h // 2, device=z.device)[:, None]
            img[..., 2] = torch.arange(w // 2, device=z.device)[None, :]
            ids = torch.cat([img.new_zeros(context.shape[1], 3), img.reshape(-1, 3)])  # (T+N, 3)
            time = (t / self.scheduler.config.num_train_timesteps).expand(len(z)).to(z.dtype)
            out = self.unet(
                hidden_states=C.pack(z), encoder_hidden_states=context, timestep=time,
                position_ids=ids, encoder_attention_mask=added["mask"], return_dict=False,
            )[0]  # fmt: skip
            return C.unpack(out, h, w)

        return denoise

    def model_fn(self, c: Conditioning, batch: int, guidance_scale: float) -> ModelFn:
        """Classifier-free guidance as every family but Qwen-Image (no norm rescaling)."""
        return Backbone.model_fn(self, c, batch, guidance_scale)

    # -- bench's timing reference: Krea2Pipeline's own loop (``bench.reference.LoopRun``) ----------

    def reference_options(self) -> dict[str, Any]:
        return {"text_encoder_select_layers": self.layers, "is_distilled": self.is_distilled}

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The text (negative "" when none), or blendedit's own embeddings ``n`` times."""
        if not embeddings:
            return {"prompt": prompt, "negative_prompt": negative, "num_images_per_prompt": n}
        (cond, mask), (uncond, mask_u) = self.encode_prompt(prompt), self.encode_prompt(negative)
        return {
            "prompt_embeds": cond.expand(n, -1, -1, -1),  # (n, 512, K, D)
            "prompt_embeds_mask": mask.expand(n, -1),  # (n, 512) bool
            "negative_prompt_embeds": uncond.expand(n, -1, -1, -1),
            "negative_prompt_embeds_mask": mask_u.expand(n, -1),
            "num_images_per_prompt": 1,
        }

    def reference_guidance(self, guidance_scale: float) -> float:
        """Krea2Pipeline writes ``cond + s (cond - uncond)``: its s is blendedit's s - 1."""
        return guidance_scale - 1.0

    def reference_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) -> (B, h * w / 4, 64): Krea2Pipeline's packed 2x2 patches."""
        return C.pack(z)

    def reference_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Krea2Pipeline takes its ``latents`` packed."""
        return C.pack(z)
