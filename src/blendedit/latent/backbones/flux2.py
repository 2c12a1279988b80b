"""FLUX.2 [klein] 4B and 9B (Black Forest Labs 2026): a rectified-flow transformer on the FLUX.2
VAE's 32-channel latents, each 2x2 patch folded into 128 channels and normalised by the VAE's
batch-norm statistics (so one latent cell of the loop is one token, 16 px wide), a Qwen3 language
model as text encoder (three of its hidden layers side by side), 4D rotary positions, and either
true classifier-free guidance (the base models) or none (the step-distilled models, 4 steps).

Parity: ``Flux2KleinInpaintPipeline`` also feeds the source image to the transformer as in-context
reference tokens (an image-conditioned edit); Blended Latent Diffusion does not, so the reference
is ``Flux2KleinPipeline``'s own denoising loop run as an img2img with diffusers' blend added by a
callback (tests/test_latent_2026.py says how)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from blendedit.latent.backbones import common as C
from blendedit.latent.backbones import parts as P
from blendedit.latent.backbones.base import Backbone, Conditioning, Configs, LoadOptions, Name, Size
from blendedit.latent.backbones.files import has_key
from blendedit.latent.backbones.loading import load_pipeline
from blendedit.latent.sampling import ModelFn

# -- bench presets: FLUX.2 [klein] 4B (Qwen3-4B) and 9B (Qwen3-8B), the FLUX.2 VAE --------------

_FLOW = {**P.FLOW, "shift": 3.0, "use_dynamic_shifting": True}  # mu from the pipeline's fit
_VAE: P.Config = {}  # AutoencoderKLFlux2's defaults are FLUX.2's VAE
QWEN3_4B_LM: P.Config = {  # Qwen/Qwen3-4B (Qwen3ForCausalLM; its head tied to the embeddings)
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
QWEN3_8B_LM: P.Config = {  # Qwen/Qwen3-8B
    **QWEN3_4B_LM,
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}
_KLEIN = {  # Flux2Transformer2DModel of klein: no guidance embedding
    "patch_size": 1,
    "in_channels": 128,
    "attention_head_dim": 128,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "guidance_embeds": False,
}
_TINY_QWEN3_LM: P.Config = {  # 27 layers: the pipeline reads hidden layers 9, 18 and 27
    "vocab_size": 264,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 27,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "max_position_embeddings": 1024,
}


def _klein(size: str, layers: int, single: int, heads: int, text: P.Config) -> P.Architecture:
    transformer = {**_KLEIN, "num_layers": layers, "num_single_layers": single}
    transformer |= {"num_attention_heads": heads, "joint_attention_dim": 3 * text["hidden_size"]}
    return P.Architecture(
        {"transformer": transformer, "vae": _VAE, "text": text},
        1024,
        scheduler=_FLOW,
        batch=4,
        source=f"black-forest-labs/FLUX.2-klein-{size}",
        realtime="realtime-klein",
    )


_CATALOGUE = {
    "flux2-klein-4b": _klein("4B", 5, 20, 24, QWEN3_4B_LM),
    "flux2-klein-9b": _klein("9B", 8, 24, 32, QWEN3_8B_LM),
    "tiny-flux2-klein": P.Architecture(  # tests/tiny_models.py tiny_flux2_klein_parts
        {
            "transformer": {
                **_KLEIN,
                "num_layers": 1,
                "num_single_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 48,  # 3 x 16
                "timestep_guidance_channels": 32,
                "axes_dims_rope": (4, 4, 4, 4),
            },
            "vae": {  # factor 2, then the 2x2 fold: 4 px per latent cell
                "block_out_channels": (8, 16),
                "layers_per_block": 1,
                "norm_num_groups": 8,
                "down_block_types": ("DownEncoderBlock2D",) * 2,
                "up_block_types": ("UpDecoderBlock2D",) * 2,
                "sample_size": 64,
            },
            "text": _TINY_QWEN3_LM,
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_FLOW,
        batch=4,
        realtime="realtime-klein",
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "flux2-klein-4b": (
            P.CacheVerdict(
                "default",
                "taylorseer",
                38,
                28,
                0.15,
                "flux2-klein-4b, 128 px, from 1+2 of 5+20 blocks, cache-bench.json",
                None,
            ),
            P.CacheVerdict(
                "realtime-klein",
                "taylorseer",
                3,
                0,
                0.15,
                "flux2-klein-4b, 128 px, from 1+2 of 5+20 blocks, cache-bench.json",
                None,
            ),
        ),
        "flux2-klein-9b": (
            P.CacheVerdict(
                "default", "taylorseer", 38, 28, None, "skipped call not measured", None
            ),
            P.CacheVerdict(
                "realtime-klein", "taylorseer", 3, 0, None, "skipped call not measured", None
            ),
        ),
    },
)
TEXT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's hidden layers, side by side


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's timestep shift mu: a fit linear in the token count (from 200 steps down to 10,
    interpolated linearly in the step count; beyond 4300 tokens the 200-step line alone)."""
    at_200 = 0.00016927 * image_seq_len + 0.45666666
    if image_seq_len > 4300:
        return float(at_200)
    at_10 = 8.73809524e-05 * image_seq_len + 1.89833333
    slope = (at_200 - at_10) / 190.0
    return float(slope * num_steps + at_200 - 200.0 * slope)


def fold(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 4C, h/2, w/2): each 2x2 patch into channels, channel-major."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * 4, h // 2, w // 2)


def unfold(z: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w), the inverse of :func:`fold`."""
    b, c4, h, w = z.shape
    z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // 4, h * 2, w * 2)


def positions(t: int, h: int, w: int, length: int) -> torch.Tensor:
    """(t * h * w * length, 4) rotary coordinates (T, H, W, L), row-major."""
    axes = [torch.arange(n) for n in (t, h, w, length)]
    return torch.cartesian_prod(*axes)


class Flux2Klein(C.OneTextEncoder, C.FlagDefaults, Backbone):
    """FLUX.2 [klein]: ``transformer`` (Flux2Transformer2DModel), ``vae`` (AutoencoderKLFlux2),
    ``text_encoder`` (Qwen3ForCausalLM), ``tokenizer`` (Qwen2's, with its chat template)."""

    family = "flux2-klein"
    name = "FLUX.2 klein"
    title = "FLUX.2 [klein]"
    pipelines = ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline")
    catalogue = _CATALOGUE
    # bench and eval time the inpaint pipeline (what a diffusers user runs); parity: see above
    reference_pipeline = "Flux2KleinInpaintPipeline"
    timing_pipeline = "Flux2KleinPipeline"  # the same tokens as blendedit's (bench, step ratio)
    lora_loader = "Flux2LoraLoaderMixin"  # the transformer
    max_sequence_length: int = 512
    single_file = True  # BFL's transformer file (flux-2-klein-4b.safetensors), --model-config

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
        is_distilled: bool = False,
    ):  # fmt: skip
        super().__init__(vae, transformer, text_encoder, tokenizer, scheduler)
        self.is_distilled = is_distilled

    @staticmethod
    def defaults_for(distilled: bool) -> dict[str, Any]:
        """Flux2KleinPipeline's 50 steps at guidance 4; the distilled models' card: 4 steps,
        no guidance."""
        if distilled:
            return {"num_inference_steps": 4, "guidance_scale": 1.0, "scheduler": "flow-euler"}
        return {"num_inference_steps": 50, "guidance_scale": 4.0, "scheduler": "flow-euler"}

    @staticmethod
    def is_flux2_file(keys: dict[str, tuple[int, ...]]) -> bool:
        """BFL's FLUX.2 layout (ComfyUI's under ``model.diffusion_model.``) or diffusers': the
        shared per-stream modulation ``double_stream_modulation_img`` (FLUX.1 and Chroma modulate
        per block or from an approximator)."""
        return has_key(keys, r"double_stream_modulation_img\.(lin|linear)\.weight")

    @staticmethod
    def has_guidance(keys: dict[str, tuple[int, ...]]) -> bool:
        """A guidance embedding (``guidance_in``; diffusers' ``guidance_embedder``): [dev]."""
        return has_key(keys, r"(guidance_in|time_guidance_embed\.guidance_embedder)\..*")

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """A FLUX.2 file without a guidance embedding: [klein] 4B or 9B (their widths, 3072 and
        4096, differ; their defaults do not)."""
        return cls.is_flux2_file(keys) and not cls.has_guidance(keys)

    @classmethod
    def flag_of(cls, model: Name, local_files_only: bool | None = None) -> bool:
        """Step-distilled: a folder's ``model_index.json`` says it; a file's name, as BFL names
        them: the base models' say "base" (flux-2-klein-base-4b), the distilled ones' do not."""
        if Path(model).is_file():
            return "base" not in Path(model).name.lower()
        return super().flag_of(model, local_files_only)

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A folder or hub id; a transformer file with the other parts from ``--model-config``
        (distilled or base by the file's name)."""
        p = load_pipeline("Flux2KleinPipeline", {}, model, opts)
        distilled = bool(p.config.get("is_distilled", False))
        if Path(model).is_file():
            distilled = cls.flag_of(model)
        return cls(p.vae, p.transformer, p.text_encoder, p.tokenizer, p.scheduler, distilled)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """klein: the transformer, the FLUX.2 VAE, Qwen3 (the byte-level Qwen tokenizer)."""
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import Qwen3Config, Qwen3ForCausalLM

        with torch.device(device):
            transformer = Flux2Transformer2DModel(**parts["transformer"])
            vae = AutoencoderKLFlux2(**parts["vae"])
            text = Qwen3ForCausalLM(Qwen3Config(**parts["text"]))
        return cls(vae, transformer, text, C.qwen_tokenizer(workdir), scheduler)

    # -- geometry and the VAE: 2x2 patches folded into channels, batch-norm normalised ----------------

    @property
    def latent_factor(self) -> int:
        return 2 ** len(self.vae.config.block_out_channels)  # the VAE's 8, x2 by the fold

    @property
    def native_size(self) -> int:
        return 1024

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels) * 4  # 128

    @property
    def model_in_channels(self) -> int:
        return self.latent_channels  # one token per latent cell

    @staticmethod
    def _stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's batch-norm mean and std of folded latents, (1, 4C, 1, 1)."""
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return mean.to(like), std.to(like)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 128, H/16, W/16): posterior mean, folded, normalised."""
        vae = self.vae
        z = fold(vae.encode(image.to(self.device, vae.dtype)).latent_dist.mode())
        mean, std = self._stats(vae, z)
        return ((z - mean) / std).to(self.dtype)

    @staticmethod
    def decode_with(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """(B, 128, h, w) normalised latents -> (B, 3, 16h, 16w) in [-1, 1] (differentiable)."""
        param = next(vae.parameters())
        z = z.to(dtype=param.dtype) if param.device.type == "meta" else z.to(param)
        mean, std = Flux2Klein._stats(vae, z)
        return vae.decode(unfold(z * std + mean), return_dict=False)[0]

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """Flux2KleinPipeline's schedule: sigmas linspace(1, 1/N, N), shifted by the empirical
        mu of the token count and the step count."""
        return C.flow_sigmas(num_steps, empirical_mu(latent_hw[0] * latent_hw[1], num_steps))

    # -- text and the model ------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, 512, 3D): the prompt as a chat turn (no thinking), Qwen3's hidden layers
        9, 18 and 27 side by side, padding included (the pipeline's rule)."""
        chat = [{"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        tok = C.tokenize(self.tokenizer, text, self.max_sequence_length)
        out = self.text_encoder(
            input_ids=tok.input_ids.to(self.device),
            attention_mask=tok.attention_mask.to(self.device),
            output_hidden_states=True,
            use_cache=False,
        )
        return torch.cat([out.hidden_states[k] for k in TEXT_LAYERS], dim=-1).to(self.dtype)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """The prompt and the negative ("" by default, which is the pipeline's fixed one)."""
        return Conditioning(self.encode_prompt(prompt), self.encode_prompt(negative))

    @property
    def guidance_embedded(self) -> bool:
        return self.is_distilled  # step-distilled: one pass, no guidance

    def guidance_input(self, n: int, guidance_scale: float) -> torch.Tensor | None:
        """The transformer's guidance input: none for klein (FLUX.2 dev embeds the scale)."""
        return None

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        context, _ = self.stack(c, batch, parts)  # (P * B, 512, 3D)
        n = len(context)
        txt_ids = positions(1, 1, 1, context.shape[1]).expand(n, -1, -1).to(self.device)

        guidance = self.guidance_input(n, guidance_scale)

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (P * B, 128, h, w)
            h, w = z.shape[-2:]
            img_ids = positions(1, h, w, 1).expand(n, -1, -1).to(self.device)
            out = self.unet(
                hidden_states=z.flatten(2).transpose(1, 2), timestep=t.expand(n).to(z.dtype) / 1000,
                guidance=guidance, encoder_hidden_states=context, txt_ids=txt_ids, img_ids=img_ids,
                return_dict=False,
            )[0]  # fmt: skip
            return out.transpose(1, 2).reshape(z.shape)  # tokens (B, h * w, 128) -> grid

        return denoise

    def reference_prompt(
        self, prompt: str, negative: str, n: int, embeddings: bool = False
    ) -> dict[str, Any]:
        """The text (the pipeline takes no negative: its own is ""), or blendedit's embeddings."""
        if embeddings:
            cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative)
            return {
                "prompt_embeds": cond.expand(n, -1, -1),  # (n, 512, 3D)
                "negative_prompt_embeds": uncond.expand(n, -1, -1),
                "num_images_per_prompt": 1,
            }
        return {"prompt": prompt, "num_images_per_prompt": n}

    def reference_options(self) -> dict[str, Any]:
        return {"is_distilled": self.is_distilled}

    def reference_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 128, h, w) -> (B, h * w, 128): Flux2KleinPipeline's packed latents."""
        return z.flatten(2).transpose(1, 2)
