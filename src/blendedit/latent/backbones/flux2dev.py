"""FLUX.2 [dev] (Black Forest Labs 2025): FLUX.2 [klein]'s latents and transformer layout at 32B,
Mistral Small 3.1 (24B) as text encoder (the prompt after BFL's system message, hidden layers 10,
20 and 30 side by side) and a guidance embedding instead of classifier-free guidance: one pass
a step.

The VAE, the fold, the 4D positions and the schedule are klein's, so this class extends
:class:`Flux2Klein`. diffusers has no FLUX.2 [dev] inpaint pipeline: the parity reference is
``Flux2Pipeline``'s own denoising loop run as an img2img with diffusers' blend added by a callback
(tests/test_latent_2026.py), and ``bench`` times that loop (``bench.reference.LoopRun``). Its
processor (Pixtral's) needs torchvision: a real model loads where torchvision is installed; the
tests build the pipeline with a tokenizer in the processor's place (only its chat template is used
for text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Configs, LoadOptions, Name
from blendedit.latent.backbones.flux2 import Flux2Klein
from blendedit.latent.backbones.loading import load_pipeline

_FLOW = {**P.FLOW, "shift": 3.0, "use_dynamic_shifting": True}
MISTRAL_SMALL_31: P.Config = {  # mistralai/Mistral-Small-3.1-24B-Instruct-2503 ("24B")
    "text_config": {
        "model_type": "mistral",
        "vocab_size": 131072,
        "hidden_size": 5120,
        "intermediate_size": 32768,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rope_theta": 1000000000.0,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "pixtral",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "head_dim": 64,
        "patch_size": 14,
        "image_size": 1540,
    },
    "spatial_merge_size": 2,
    "multimodal_projector_bias": False,
    "tie_word_embeddings": False,
}
_TINY_MISTRAL3: P.Config = {  # 16 wide, 30 layers (the pipeline reads layers 10, 20, 30)
    "text_config": {
        "model_type": "mistral",
        "vocab_size": 264,
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 30,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "max_position_embeddings": 1024,
    },
    "vision_config": {
        "model_type": "pixtral",
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": 8,
        "patch_size": 14,
        "image_size": 28,
    },
    "spatial_merge_size": 2,
    "image_token_index": 259,
}
_CATALOGUE = {
    "flux2-dev": P.Architecture(  # Flux2Transformer2DModel's defaults are FLUX.2 [dev]'s (32B)
        {"transformer": {}, "vae": {}, "text": MISTRAL_SMALL_31},
        1024,
        scheduler=_FLOW,
        batch=2,
        source="black-forest-labs/FLUX.2-dev",
    ),
    "tiny-flux2-dev": P.Architecture(  # tests/tiny_models.py tiny_flux2_dev_parts
        {
            "transformer": {
                **Flux2Klein.catalogue["tiny-flux2-klein"].parts["transformer"],
                "guidance_embeds": True,
            },
            "vae": Flux2Klein.catalogue["tiny-flux2-klein"].parts["vae"],
            "text": _TINY_MISTRAL3,
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
        "flux2-dev": (
            P.CacheVerdict(
                "default", "taylorseer", 38, 28, None, "skipped call not measured", None
            ),
        ),
    },
)
TEXT_LAYERS = (10, 20, 30)  # Flux2Pipeline's hidden layers, side by side


class Flux2Dev(Flux2Klein):
    """FLUX.2 [dev]: ``transformer`` (Flux2Transformer2DModel with a guidance embedding), ``vae``
    (AutoencoderKLFlux2), ``text_encoder`` (Mistral3ForConditionalGeneration), ``tokenizer``
    (Pixtral's processor, or any tokenizer with a chat template)."""

    family = "flux2-dev"
    name = "FLUX.2 dev"
    title = "FLUX.2 [dev]"
    pipelines = ("Flux2Pipeline",)
    catalogue = _CATALOGUE
    reference_pipeline = ""  # diffusers has no FLUX.2 [dev] inpaint pipeline
    timing_pipeline = "Flux2Pipeline"  # bench's step ratio: its own loop, the blend added
    lora_loader = "Flux2LoraLoaderMixin"  # klein's: the transformer
    # Flux2Pipeline's defaults, 50 steps at guidance 4, are klein's base ones (not distilled).

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """A FLUX.2 file with a guidance embedding (``guidance_in``): [dev]."""
        return cls.is_flux2_file(keys) and cls.has_guidance(keys)

    @classmethod
    def flag_of(cls, model: Name, local_files_only: bool | None = None) -> bool:
        return False  # one model, guidance-distilled, not step-distilled

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A folder or hub id; a transformer file with the other parts from ``--model-config``."""
        p = load_pipeline("Flux2Pipeline", {}, model, opts)
        return cls(p.vae, p.transformer, p.text_encoder, p.tokenizer, p.scheduler)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """FLUX.2 [dev]: the transformer, the FLUX.2 VAE, Mistral 3 (the byte-level tokenizer)."""
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        with torch.device(device):
            transformer = Flux2Transformer2DModel(**parts["transformer"])
            vae = AutoencoderKLFlux2(**parts["vae"])
            text = Mistral3ForConditionalGeneration(Mistral3Config(**parts["text"]))
        return cls(vae, transformer, text, C.qwen_tokenizer(workdir), scheduler)

    @property
    def guidance_embedded(self) -> bool:
        return True  # the scale is an input: one pass

    def guidance_input(self, n: int, guidance_scale: float) -> torch.Tensor | None:
        return torch.full((n,), guidance_scale, device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, 512, 3D): BFL's system message and the prompt as chat turns, Mistral's
        hidden layers 10, 20 and 30 side by side, padding included (the pipeline's rule)."""
        from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

        chat = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
            {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]},
        ]
        tok = self.tokenizer.apply_chat_template(
            [chat], add_generation_prompt=False, tokenize=True, return_dict=True,
            return_tensors="pt", padding="max_length", truncation=True,
            max_length=self.max_sequence_length,
        )  # fmt: skip
        out = self.text_encoder(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            output_hidden_states=True,
            use_cache=False,
        )
        return torch.cat([out.hidden_states[k] for k in TEXT_LAYERS], dim=-1).to(self.dtype)

    def reference_options(self) -> dict[str, Any]:
        return {}

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The text, or blendedit's embeddings ``n`` times (one pass: no negative)."""
        if embeddings:
            return {"prompt_embeds": self.encode_prompt(prompt).expand(n, -1, -1)}
        return {"prompt": prompt, "num_images_per_prompt": n}
