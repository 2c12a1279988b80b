"""Published models as data: a catalogue entry (:class:`Architecture`, a family's model with the
diffusers / transformers configs of its parts, enough to build it with random weights, since speed
does not depend on the weights) and the part configs several families share. Each family lists its
own entries (``Backbone.catalogue``); ``blendedit bench`` collects them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

Config = dict[str, Any]

SD_UNET: Config = {  # the SD 1.x/2.x UNet layout (also the CompVis LDM's)
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD_VAE: Config = {  # the KL-f8 autoencoder of LDM, SD 1.x/2.x and (rescaled) SDXL
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "scaling_factor": 0.18215,
}
CLIP_L_TEXT: Config = {  # OpenAI CLIP ViT-L/14's text model (SD 1.x, SDXL, SD3, FLUX)
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_BIGG_TEXT: Config = {  # OpenCLIP ViT-bigG/14 with its projection (SDXL, SD3 CLIP-G)
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
T5_XXL: Config = {  # google/t5-v1_1-xxl's encoder (SD3 text_encoder_3, FLUX text_encoder_2)
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
FLOW_VAE: Config = {  # the 16-channel KL-f8 autoencoder of SD3 and FLUX.1 (no quant convs)
    **SD_VAE,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
    "sample_size": 1024,
}
CLIP_B16: Config = {  # the ranking model: OpenAI CLIP ViT-B/16
    "text": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "projection_dim": 512,
    },
    "vision": {
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 512,
    },
    "projection_dim": 512,
}

# Schedulers as the published models ship them (``_class_name`` + config).
SD_DDIM: Config = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
FLOW: Config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}

# The test suite's tiny parts (tests/tiny_models.py): seconds on a CPU.
TINY_TEXT: Config = {
    "vocab_size": 520,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}
TINY_CLIP: Config = {
    "text": TINY_TEXT,
    "vision": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    },
    "projection_dim": 32,
}
TINY_UNET: Config = {  # the tiny SD and LDM UNet
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "sample_size": 16,
}
TINY_VAE: Config = {  # four blocks: the 8x latent factor of the real ones
    **SD_VAE,
    "block_out_channels": (8, 8, 16, 16),
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "sample_size": 128,
}
# The tiny flow models (tiny_sd3_parts, tiny_flux_parts, tiny_flow_vae, tiny_t5): a 16-channel
# VAE of factor 2, a T5 stand-in 64 wide.
TINY_T5: Config = {
    "vocab_size": 520,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "pad_token_id": 513,
}
TINY_FLOW_VAE: Config = {
    **FLOW_VAE,
    "block_out_channels": (8, 16),
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "force_upcast": False,
    "sample_size": 64,
}


@dataclass(frozen=True)
class CacheVerdict:
    """Whether a step cache (``--cache``, ``blendedit.latent.cache``) helps one schedule of a
    preset, by measurement (issue 24), derived by ``tools/cache_presets.py``
    (docs/cache-presets.md): the cache of the largest speed-up ``calls / (calls - skipped +
    skipped * cost)`` (DeepCache, Ma et al. 2024, sec. 3.3's 1:N count; TaylorSeer, PAB and
    MagCache counted with diffusers' hooks on the schedule). It helps where it saves 10% and the
    toy world's quality measurement (docs/quality.md, "Step caches") does not refute it."""

    schedule: str  # "default" (the family's defaults) or a realtime preset's name
    cache: str  # the best cache by that speed-up ("none": no cache applies to the denoiser)
    calls: int  # denoiser calls per candidate (the steps after blend start)
    skipped: int  # of them the cache skips on this schedule, counted with its hook
    cost: float | None = None  # a skipped call's time over a full one's (None: not measured)
    measured: str = ""  # what ``cost`` rests on (cache-bench.json's model and size), or why none
    quality: bool | None = None  # within noise of the uncached edit (toy world), None: unmeasured

    @property
    def speedup(self) -> float | None:
        """The time per candidate without the cache over the time with it (None: unmeasured;
        1 where the cache skips no call, whatever a skipped call would cost)."""
        if self.skipped == 0 and self.cache != "none":
            return 1.0
        if self.cost is None:
            return None
        return self.calls / (self.calls - self.skipped + self.skipped * self.cost)

    @property
    def helps(self) -> bool | None:
        """A saving of 10% or more with the quality kept; None: faster, but the cost or the
        quality was not measured."""
        speed = self.speedup
        if (speed is not None and speed < 1.1) or self.quality is False:
            return False
        return None if speed is None or self.quality is None else True

    def line(self) -> str:
        """The verdict in one line (``blendedit bench``'s report)."""
        head = f"Step cache verdict ({self.schedule}, {self.calls} calls a candidate): "
        if self.cache == "none":
            return head + f"no cache applies ({self.measured})"
        skips = f"{self.cache} skips {self.skipped} of {self.calls} calls"
        if self.speedup is None:
            return head + f"not measured: {skips}; {self.measured}"
        word = {True: "helps", False: "does not help", None: "faster, quality not measured"}
        quality = {True: "; toy world within noise", False: "; toy world: quality drops"}
        cost = "" if self.cost is None else f", a skipped call costs {self.cost:.2f} of a full one"
        return head + (
            f"{word[self.helps]}: {skips}{cost}, {self.speedup:.2f}x ({self.measured}"
            f"{'' if self.quality is None else quality[self.quality]})"
        )


def record_caches(
    catalogue: dict[str, Architecture], verdicts: dict[str, tuple[CacheVerdict, ...]]
) -> None:
    """Each catalogue entry named in ``verdicts`` gets its :class:`CacheVerdict` s (in place)."""
    for name, found in verdicts.items():
        catalogue[name] = replace(catalogue[name], caches=found)


@dataclass(frozen=True)
class Architecture:
    """A published model's shape: the configs of its parts (by the names its family's
    ``Backbone.build`` reads: unet or transformer, vae, text, text_2, text_3), its resolution, its
    scheduler and ranking model, enough to build it with random weights."""

    parts: dict[str, Config]  # part -> config
    resolution: int  # px
    clip: Config = field(default_factory=lambda: CLIP_B16)  # the ranking model
    scheduler: Config = field(default_factory=lambda: SD_DDIM)
    batch: int = 24  # the ranked batch a bench run uses unless told (the paper's)
    source: str = ""  # the published model it copies ("": the test suite's tiny shapes)
    realtime: str | None = None  # its few-step preset (blendedit.config), for ``--realtime``
    family: str = ""  # the family listing it (filled in by the catalogue)
    caches: tuple[CacheVerdict, ...] = ()  # whether a step cache helps, by measurement (issue 24)

    def cache_verdict(self, schedule: str = "default") -> CacheVerdict | None:
        """The step-cache verdict of this preset on ``schedule`` (a realtime preset's name, or
        "default"), None if none is recorded."""
        return next((v for v in self.caches if v.schedule == schedule), None)
