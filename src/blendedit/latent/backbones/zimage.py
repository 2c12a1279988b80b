"""Z-Image and Z-Image-Turbo (Tongyi-MAI 2025): a single-stream rectified-flow transformer (S3-DiT,
6B) on FLUX.1's 16-channel latents in 2x2 patches, a Qwen3-4B language model as text encoder (the
prompt as a chat turn, its second-to-last hidden states, padding dropped: one caption of its own
length per image), and classifier-free guidance written ``cond + s (cond - uncond)``.

blendedit's ``guidance_scale`` keeps the house meaning (1: the conditional prediction alone), so
Z-Image's scale s is blendedit's s + 1: ZImagePipeline's 5.0 is 6.0 here, Turbo's 0.0 is 1.0. The
transformer predicts ``noise - x0`` on time ``1 - sigma``; the velocity the flow scheduler steps
with is its negation. The model takes latents unpacked (it patchifies them itself); the mask works
on whole 2x2 tokens (a thin stroke survives, ``Backbone.patch_size``). ``ZImageInpaintPipeline``
blends ``scale_noise(z0, t_{i+1})`` after every step like BLD and is the parity reference."""

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
from blendedit.latent.sampling import ModelFn

# -- bench presets: Z-Image-Turbo (Tongyi-MAI/Z-Image-Turbo, "6B"): S3-DiT with 30 layers of
# width 3840 and 2 refiner layers each for the image and the caption; Qwen3-4B; FLUX.1's VAE ----

_FLOW = {**P.FLOW, "shift": 3.0, "use_dynamic_shifting": False}  # Z-Image-Turbo/scheduler
_LATENTS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's VAE
QWEN3_4B: P.Config = {  # Qwen/Qwen3-4B's language model (no head: Qwen3Model)
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
_TINY_QWEN3: P.Config = {  # tests/tiny_models.py tiny_zimage_parts: 32 wide, the byte tokenizer
    "vocab_size": 264,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 1024,
}
_CATALOGUE = {
    "zimage-turbo": P.Architecture(
        {
            "transformer": {  # ZImageTransformer2DModel of Z-Image-Turbo
                "all_patch_size": (2,),
                "all_f_patch_size": (1,),
                "in_channels": 16,
                "dim": 3840,
                "n_layers": 30,
                "n_refiner_layers": 2,
                "n_heads": 30,
                "n_kv_heads": 30,
                "norm_eps": 1e-5,
                "qk_norm": True,
                "cap_feat_dim": 2560,  # Qwen3-4B
                "rope_theta": 256.0,
                "t_scale": 1000.0,
                "axes_dims": [32, 48, 48],
                "axes_lens": [1536, 512, 512],
            },
            "vae": {**P.FLOW_VAE, **_LATENTS},
            "text": QWEN3_4B,
        },
        1024,
        scheduler=_FLOW,
        batch=8,
        source="Tongyi-MAI/Z-Image-Turbo",
        realtime="realtime-zimage-turbo",
    ),
    "tiny-zimage": P.Architecture(  # tests/tiny_models.py tiny_zimage_parts
        {
            "transformer": {
                "all_patch_size": (2,),
                "all_f_patch_size": (1,),
                "in_channels": 16,
                "dim": 32,
                "n_layers": 2,
                "n_refiner_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 2,
                "cap_feat_dim": 32,
                "axes_dims": [4, 6, 6],
                "axes_lens": [1024, 64, 64],
            },
            "vae": {**P.TINY_FLOW_VAE, **_LATENTS},
            "text": _TINY_QWEN3,
        },
        64,
        clip=P.TINY_CLIP,
        scheduler=_FLOW,
        batch=8,
        realtime="realtime-zimage-turbo",
    ),
}
# Issue 24: whether a step cache helps each preset, by measurement (tools/cache_presets.py,
# docs/cache-presets.md): schedule, cache, calls, skipped, skipped call / full, source, quality.
P.record_caches(
    _CATALOGUE,
    {
        "zimage-turbo": (
            P.CacheVerdict(
                "default",
                "none",
                7,
                0,
                None,
                "ZImageTransformer2DModel takes no cache of blendedit.latent.cache",
                None,
            ),
            P.CacheVerdict(
                "realtime-zimage-turbo",
                "none",
                7,
                0,
                None,
                "ZImageTransformer2DModel takes no cache of blendedit.latent.cache",
                None,
            ),
        ),
    },
)


class ZImage(C.OneTextEncoder, C.FlagDefaults, Backbone):
    """Z-Image: ``transformer`` (ZImageTransformer2DModel), ``text_encoder`` (Qwen3), ``tokenizer``
    (Qwen2's, with its chat template)."""

    family = "zimage"
    name = "Z-Image"
    title = "Z-Image/Z-Image-Turbo"
    pipelines = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")
    refused: ClassVar[dict[str, str]] = {
        "ZImageOmniPipeline": (
            "a Z-Image Omni model (editing by image conditioning); Blended Latent Diffusion needs "
            "the plain text-to-image model"
        ),
    }
    catalogue = _CATALOGUE
    reference_pipeline = "ZImageInpaintPipeline"
    lora_loader = "ZImageLoraLoaderMixin"  # the transformer
    flag = "turbo"
    single_file = True  # Tongyi's or ComfyUI's transformer file, with --model-config
    max_sequence_length: int = 512  # ZImagePipeline's default

    def __init__(
        self, vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any,
        turbo: bool = False,
    ):  # fmt: skip
        super().__init__(vae, transformer, text_encoder, tokenizer, scheduler)
        self.turbo = turbo

    @staticmethod
    def defaults_for(turbo: bool) -> dict[str, Any]:
        """ZImagePipeline's 50 steps at its scale 5 (6 here); Turbo's model card: 9 steps, scale
        0 (1 here: no guidance, one pass)."""
        if turbo:
            return {"num_inference_steps": 9, "guidance_scale": 1.0, "scheduler": "flow-euler"}
        return {"num_inference_steps": 50, "guidance_scale": 6.0, "scheduler": "flow-euler"}

    @staticmethod
    def is_turbo(model: Name) -> bool:
        """The two share one architecture; the distilled one is published as "...Turbo"."""
        return "turbo" in Path(str(model)).name.lower()

    @classmethod
    def flag_of(cls, model: Name, local_files_only: bool | None = None) -> bool:
        return cls.is_turbo(model)

    @classmethod
    def claims_keys(cls, keys: dict[str, tuple[int, ...]], name: str) -> bool:
        """Tongyi's layout (ComfyUI's under ``model.diffusion_model.``) or diffusers': the
        caption refiner ``context_refiner`` and the layers' single-linear ``adaLN_modulation.0``
        (Lumina 2's NextDiT, its ancestor, has ``adaLN_modulation.1``). Z-Image or Turbo: by the
        file's name, as for a folder."""
        return has_key(keys, r"context_refiner\..*") and has_key(
            keys, r"layers\.\d+\.adaLN_modulation\.0\.weight"
        )

    @classmethod
    def load(cls, model: Name, opts: LoadOptions) -> Backbone:
        """A folder or hub id; a transformer file with the other parts from ``--model-config``."""
        p = load_pipeline("ZImagePipeline", {}, model, opts)
        turbo = cls.is_turbo(model)
        return cls(p.vae, p.transformer, p.text_encoder, p.tokenizer, p.scheduler, turbo)

    @classmethod
    def build(cls, parts: Configs, scheduler: Any, device: torch.device, workdir: Path) -> Backbone:
        """Z-Image: the S3-DiT, FLUX.1's VAE, Qwen3 (the byte-level Qwen tokenizer stands in)."""
        from diffusers import AutoencoderKL, ZImageTransformer2DModel

        with torch.device(device):
            transformer = ZImageTransformer2DModel(**parts["transformer"])
            vae = AutoencoderKL(**parts["vae"])
            text = C.qwen3_encoder(parts["text"])
        return cls(vae, transformer, text, C.qwen_tokenizer(workdir), scheduler, turbo=True)

    @property
    def patch_size(self) -> int:
        return int(self.unet.config.all_patch_size[0])  # 2

    @property
    def native_size(self) -> int:
        return 1024

    def timestep_kwargs(self, num_steps: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
        """ZImagePipeline's schedule: sigmas linspace(1, 1/N, N); the shift mu of the token count
        where the scheduler shifts dynamically (Turbo's does not: a fixed shift of 3)."""
        return C.token_shift(self.scheduler, num_steps, (latent_hw[0] // 2) * (latent_hw[1] // 2))

    @torch.no_grad()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, L, D): the prompt as a user turn of the chat template, Qwen3's
        second-to-last hidden states of its L real tokens (padding dropped)."""
        chat = [{"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        tok = C.tokenize(self.tokenizer, text, self.max_sequence_length)
        keep = tok.attention_mask[0].bool()  # (T,)
        out = self.text_encoder(
            input_ids=tok.input_ids.to(self.device),
            attention_mask=tok.attention_mask.to(self.device).bool(),
            output_hidden_states=True,
        )
        return out.hidden_states[-2][:, keep.to(self.device)].to(self.dtype)  # (1, L, D)

    def encode_text(
        self, prompt: str, negative: str, work_size: Size, source_size: Size
    ) -> Conditioning:
        """The prompt and the negative ("" when none, as ZImagePipeline encodes it); their
        lengths differ, so the denoiser passes them as a list (:meth:`denoiser`)."""
        return Conditioning(self.encode_prompt(prompt), self.encode_prompt(negative))

    def denoiser(
        self, c: Conditioning, batch: int, parts: Sequence[str], guidance_scale: float
    ) -> ModelFn:
        caps = [(c.cond if p == "cond" else c.uncond)[0] for p in parts for _ in range(batch)]

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (B, 16, h, w)
            x = list(z.to(self.dtype).unsqueeze(2).unbind(0))  # B x (16, 1, h, w): one frame
            time = (1000 - t.expand(len(x)).float()) / 1000  # 1 - sigma
            out = self.unet(x, time, caps, return_dict=False)[0]  # B x (16, 1, h, w)
            return -torch.stack([o.float() for o in out]).squeeze(2)  # velocity (B, 16, h, w)

        return denoise

    def reference_embeddings(self, prompt: str, negative: str, n: int) -> dict[str, Any]:
        """blendedit's caption states for diffusers' Z-Image inpaint pipeline, one per image."""
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative)
        return {
            "prompt_embeds": [cond[0]] * n,  # n x (L, D)
            "negative_prompt_embeds": [uncond[0]] * n,
            "num_images_per_prompt": 1,
        }

    @staticmethod
    def reference_inpaint(
        pipe: Any, prompt: dict[str, Any], image: Any, mask_image: Any, size: Size, **call: Any
    ) -> Any:
        """The reference call with Z-Image's own scale: blendedit's s is Z-Image's s + 1."""
        if "guidance_scale" in call:
            call["guidance_scale"] = call["guidance_scale"] - 1.0
        return Backbone.reference_inpaint(pipe, prompt, image, mask_image, size, **call)
