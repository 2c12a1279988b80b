"""The Blended Latent Diffusion editor: image + mask + prompt in, ranked candidate edits out.

The method's core (paper Algorithm 1) as the stages the edit frame drives (``blendedit.frame``:
photo, region, ranking, background and results are the frame's); the loop is ``sampling.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from blendedit.config import EditConfig
from blendedit.errors import InputError
from blendedit.frame import FrameMethod, Generated, Work
from blendedit.frame import masks as M
from blendedit.frame import reconstruct as R
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL, ClipScorer
from blendedit.frame.region import shapes_at
from blendedit.io import working_size
from blendedit.latent.backbones import Backbone, Conditioning, family_names, load_backbone
from blendedit.latent.cache import check_cache, step_cache
from blendedit.latent.compiling import COMPILE_MULTIPLE, compile_denoiser
from blendedit.latent.lora import LoraHandle, LoraSpec, apply_loras
from blendedit.latent.sampling import (
    blend_timesteps,
    blended_latent_diffusion,
    first_step,
    step_kwargs,
)
from blendedit.latent.schedule import blend_rule, start_latent
from blendedit.models import DEFAULT_MODEL, FLOW_SCHEDULERS, make_scheduler, parse_dtype

logger = logging.getLogger(__name__)


@dataclass
class _LatentState:
    """What :meth:`BlendedLatentDiffusion.prepare` shares between the candidates."""

    text: Conditioning  # prompt and negative prompt, (1, ...) each
    z_init: torch.Tensor  # (1, C, h, w) E(x)
    x: torch.Tensor  # (1, 3, H, W) in [-1, 1], the region at the working size
    mask: torch.Tensor  # (1, 1, H, W) edit strength at the working size
    stages: torch.Tensor  # (S, 1, 1, h, w) latent mask per shrinking stage
    stage_per_step: list[int]
    step_masks: list[torch.Tensor]  # per step (1, 1, h, w), on the device
    timesteps: torch.Tensor  # the steps to run, on the host
    shrink: bool
    num_steps: int
    decode_chunk: int  # latents per VAE decode
    latent_space: bool = True  # samples are latents (kept per candidate)
    cache_calls: int = 0  # denoiser calls with --cache, over the chunks
    cache_skipped: int = 0  # of which did not run the whole network


class BlendedLatentDiffusion(FrameMethod):
    """Blended Latent Diffusion (Avrahami, Fried, Lischinski 2023) on a latent text-to-image model:
    Stable Diffusion 1.x/2.x, SDXL, SD3/3.5, FLUX.1 or the paper's own LDM (``latent/backbones``).
    ``editor(image, mask, prompt, seed=0)`` returns an :class:`EditResult`."""

    config_class = EditConfig
    method = "latent"

    def __init__(self, backbone: Backbone, clip: ClipScorer | None = None, name: str = "") -> None:
        self.backbone = backbone
        self.clip = clip
        self.name = name
        self._lora: LoraHandle | None = None
        self.compiled: str | None = None  # what --compile compiled (compiling.py)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        clip_model: str | None = DEFAULT_CLIP_MODEL,
        torch_dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
        model_config: str | None = None,
        vae: str | os.PathLike[str] | None = None,
        loras: Sequence[str | LoraSpec] = (),
        drop_t5: bool = False,
        quantize: str | None = None,
    ) -> BlendedLatentDiffusion:
        """Load from a hub id, a local diffusers folder or a single .safetensors/.ckpt file; the
        family (SD 1.x/2.x, SDXL, SD3, FLUX, LDM) is detected from the model. ``vae`` replaces
        its VAE (e.g. an fp16-safe SDXL VAE); ``loras``: "FILE_OR_ID[:SCALE]" each (see
        :meth:`load_loras`); ``drop_t5``: SD3 without its 4.7B-parameter T5 encoder;
        ``quantize``: nf4, int8, fp8 or gguf (``blendedit.latent.quantize``).
        ``clip_model=None`` skips the ranking model (results then come in generation order)."""
        dtype = parse_dtype(torch_dtype)
        backbone = load_backbone(
            model, dtype, local_files_only, model_config, vae, drop_t5, quantize
        )
        clip = ClipScorer.from_pretrained(clip_model, dtype) if clip_model else None
        editor = cls(backbone, clip, str(model))
        if loras:
            editor.load_loras(loras, local_files_only=local_files_only)
        return editor

    def load_loras(
        self, loras: Sequence[str | LoraSpec], *, local_files_only: bool | None = None
    ) -> BlendedLatentDiffusion:
        """Apply LoRAs ("FILE_OR_ID[:SCALE]": a .safetensors file in the diffusers, kohya/A1111
        or another format the family's diffusers loader converts, a folder or a hub id) as
        unfused PEFT adapters on the denoiser and, where the family's loader takes them, the text
        encoder(s), replacing any applied before; :meth:`unload_loras` restores the base weights
        bit for bit."""
        bb = self.backbone
        if not bb.lora_loader:
            kinds = family_names(lambda c: bool(c.lora_loader))
            raise InputError(f"lora: LoRAs apply to {kinds} models, not {self.family}")
        self.unload_loras()
        with bb.offload_paused():
            self._lora = apply_loras(
                bb.unet, bb.text_encoders(), list(loras), local_files_only=local_files_only,
                loader=bb.lora_loader,
            )  # fmt: skip
        self._forget_prompts()
        return self

    def unload_loras(self) -> BlendedLatentDiffusion:
        if self._lora is not None:
            with self.backbone.offload_paused():
                self._lora.remove()
            self._lora = None
            self._forget_prompts()
        return self

    def _forget_prompts(self) -> None:
        """A LoRA on a text encoder changes its encodings: the family's kept ones go."""
        prompts = getattr(self.backbone, "prompts", None)  # common.PromptCache, where kept
        if prompts is not None:
            prompts.clear()

    @property
    def loras(self) -> list[str]:
        """The LoRAs applied, as "source:scale"."""
        specs = self._lora.specs if self._lora is not None else []
        return [f"{s.source}:{s.scale:g}" for s in specs]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BlendedLatentDiffusion:
        self.backbone.to(device, dtype)
        if self.clip is not None and device is not None:
            self.clip.to(device)
        return self

    def check(self, cfg: Any) -> None:
        """A flow model takes a flow-matching scheduler, any other model a diffusion one;
        ``--blend off`` needs a model trained for inpainting."""
        if cfg.blend == "off" and not self.backbone.inpainting:
            raise InputError(
                f"blend: 'off' applies to models trained for inpainting; a plain {self.family} "
                "model edits only through the blend"
            )
        if (cfg.scheduler in FLOW_SCHEDULERS) != self.backbone.flow:
            fits = ", ".join(FLOW_SCHEDULERS) if self.backbone.flow else "ddim, euler, dpm++, ..."
            raise InputError(
                f"scheduler: {cfg.scheduler!r} does not fit a {self.family} model; use {fits}"
            )
        check_cache(cfg.cache, self.unet, self.backbone.name or self.family)

    def enable_offload(
        self, mode: str, device: torch.device | str = "cuda"
    ) -> BlendedLatentDiffusion:
        """``--offload model|sequential``: weights stay in CPU memory and move to ``device`` only
        while they run (see ``Backbone.enable_offload``); the ranking CLIP goes to ``device``."""
        self.backbone.enable_offload(mode, device)
        if self.clip is not None:
            self.clip.to(device)
        return self

    def default_config(self) -> EditConfig:
        """EditConfig's defaults with the model family's own (SDXL and LDM: guidance 5)."""
        bb = self.backbone
        return EditConfig(**{**bb.defaults, **(bb.inpaint_defaults if bb.inpainting else {})})

    @property
    def purpose(self) -> str:
        """What the loaded model is for, in one line (the web editor's model line): an editing
        model's own line, a model trained for inpainting, or a plain text-to-image model."""
        if self.backbone.purpose:
            return self.backbone.purpose
        if self.backbone.inpainting:
            return (
                "a model trained for inpainting: it sees the mask and the photo around it (best "
                "for removal and fills that match their surroundings; Blend on adds the paper's "
                "blend)"
            )
        return "a text-to-image model edited by Blended Latent Diffusion (the blend at every step)"

    # The backbone's modules, as attributes (``editor.unet`` etc.), for tools that swap them.
    @property
    def family(self) -> str:
        return self.backbone.family

    @property
    def unet(self) -> Any:
        return self.backbone.unet

    @unet.setter
    def unet(self, module: Any) -> None:
        self.backbone.unet = module

    @property
    def vae(self) -> Any:
        return self.backbone.vae

    @property
    def scheduler(self) -> Any:
        return self.backbone.scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        self.backbone.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def vae_scale_factor(self) -> int:
        return self.backbone.latent_factor

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at (512 SD 2.1-base, 1024 SDXL, 256 LDM)."""
        return self.backbone.native_size

    # -- building blocks -------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """SPEC 1 step 1: (B, 3, H, W) in [-1, 1] -> z = E(x) (posterior mean), scaled by the VAE's
        own ``scaling_factor`` (and ``shift_factor`` where the VAE has one)."""
        return self.backbone.encode_image(image)

    def decode_with(self, vae: Any, z: torch.Tensor) -> torch.Tensor:
        """x = D(z) by the family's own rule (differentiable: background reconstruction)."""
        return self.backbone.decode_with(vae, z)

    def decode_latents(self, z: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1], decoded ``chunk`` at a time."""
        return self.backbone.decode(z, chunk)

    # -- the edit: the frame's core protocol (blendedit.frame) ------------------------------------

    def full_work_size(self, size: tuple[int, int], cfg: EditConfig) -> tuple[int, int]:
        """The whole photo: long side = ``size`` (default the model's), multiples of 8."""
        multiple = self.backbone.size_multiple
        if cfg.compile:  # shape buckets: a compiled denoiser meets few shapes (compiling.py)
            multiple = max(multiple, COMPILE_MULTIPLE)
        return working_size(size, cfg.size or self.native_size, multiple)

    def work_shapes(self, cfg: EditConfig) -> list[tuple[int, int]]:
        """A crop: shapes of about native**2 pixels, multiples of 64 (512x512, 576x448, ...)."""
        return shapes_at(cfg.size or self.native_size)

    def prepare(self, work: Work, cfg: EditConfig) -> _LatentState:
        """Paper Algorithm 1 inputs: text, z_init = E(x), the latent mask and its stages."""
        # Text: prompt and negative prompt for classifier-free guidance, (1, ...) each, with the
        # family's pooled embeddings and micro-conditioning (SDXL: the region's real size).
        x = work.x
        work_size = (x.shape[-1], x.shape[-2])
        text = self.backbone.encode_text(
            work.prompt, cfg.negative_prompt, work_size, work.source_size or work_size
        )
        # z_init = E(x) * scaling factor, (1, C, h, w).
        z_init = self.encode_image(x)
        # Models made for editing: the source image as conditioning (plain families: unchanged).
        text = self.backbone.condition_on_image(text, x, work.mask, z_init)
        # Latent mask (max-pool keeps thin strokes) and the progressive shrinking stages.
        m_latent = M.latent_mask(work.mask, tuple(z_init.shape[-2:]), work.soft)  # (1, 1, h, w)
        if (p := self.backbone.patch_size) > 1:  # whole tokens: a patch any cell of which is edited
            m_latent = F.max_pool2d(m_latent, p).repeat_interleave(p, -2).repeat_interleave(p, -1)
        shrink = cfg.mask_shrink == "on" or (
            cfg.mask_shrink == "auto"
            and M.has_thin_parts((m_latent > 0).to(m_latent), min(cfg.shrink_kernels))
        )
        stages = M.shrink_stages(m_latent, cfg.shrink_kernels) if shrink else m_latent[None]
        timesteps = self._timesteps(self._scheduler(cfg), cfg, z_init)
        stage_per_step = M.stage_of_step(len(timesteps), stages.shape[0])
        step_masks = M.step_masks(stages.to(self.device, self.dtype), stage_per_step, work.soft)
        if not self.blends(cfg):  # an inpainting model alone: every step keeps its whole output
            step_masks = [torch.ones_like(m) for m in step_masks]
        return _LatentState(
            text, z_init, x, work.mask, stages, stage_per_step, step_masks, timesteps,
            shrink, len(timesteps), cfg.decode_batch_size,
        )  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        state: _LatentState,
        seeds: list[int],
        cfg: EditConfig,
        tick: Callable[[int], None],
        keep_process: bool,
    ) -> Generated:
        """SPEC 1 steps 3-4 for one chunk, each candidate with its own seed's noise."""
        b = len(seeds)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        # Noise drawn on the CPU in float32 from each seed: identical on any device and dtype.
        noise = torch.cat([torch.randn(state.z_init.shape, generator=g) for g in gens]).to(
            self.device, self.dtype
        )
        scheduler = self._scheduler(cfg)
        timesteps = self._timesteps(scheduler, cfg, state.z_init)
        begin = first_step(scheduler, cfg.num_inference_steps, cfg.blend_start)
        if cfg.compile and self.compiled is None:
            self.compiled = compile_denoiser(self.unet)
        model_fn = self.backbone.model_fn(state.text, b, cfg.guidance_scale)
        z0 = state.z_init.expand(b, -1, -1, -1)
        masks = state.step_masks
        frames: list[torch.Tensor] = []

        def on_step(i: int, t: torch.Tensor, z: torch.Tensor, out: Any) -> None:
            tick(b)
            x0 = getattr(out, "pred_original_sample", None)  # LCM names it "denoised"
            x0 = x0 if x0 is not None else getattr(out, "denoised", None)
            if keep_process and x0 is not None:  # the blended one-step clean estimate (fig. 6)
                frames.append((x0 * masks[i] + z0 * (1 - masks[i])).cpu())

        # Background levels from the schedule itself (schedule.py): t' or, "official", t.
        background = blend_rule(cfg.blend_rule, scheduler, z0, noise, begin, len(timesteps), gens)
        # --cache: fresh hooks for this chunk, removed after it (latent/cache.py).
        patch = self.backbone.patch_size
        steps = (begin, begin + len(timesteps))  # this chunk's calls in the full schedule
        with step_cache(self.unet, cfg.cache, masks[0], patch, steps) as cache:
            z = blended_latent_diffusion(
                cache.wrap(model_fn), scheduler, self._start(scheduler, z0, noise, begin),
                timesteps, masks, background, step_kwargs(scheduler, gens, cfg.eta), on_step,
            )  # fmt: skip
        state.cache_calls += cache.stats.calls
        state.cache_skipped += cache.stats.skipped
        per_image = [torch.stack([f[j] for f in frames]) for j in range(b)] if frames else []
        return Generated(z, per_image)

    def decode(self, state: _LatentState, samples: torch.Tensor) -> torch.Tensor:
        """SPEC 1 step 5: x_hat = D(z), (N, 3, H, W) in [0, 1]."""
        return self.decode_latents(samples.to(self.device), state.decode_chunk)

    def reconstruct(
        self, state: _LatentState, sample: torch.Tensor, decoded: torch.Tensor, cfg: EditConfig
    ) -> torch.Tensor:
        """Paper 4.2: latent optimisation or per-image decoder fine-tuning, (1, 3, H, W) in
        [0, 1] at the working size; the background term sees the input x outside the mask."""
        mode = cfg.background
        mask = (state.mask > 0).to(state.x)
        args = (decoded.to(self.device) * 2 - 1, state.x.to(self.device), mask.to(self.device))
        opts = {"steps": cfg.recon_steps, "lam": cfg.recon_lambda}
        opts["lr"] = cfg.recon_lr or R.RECON_DEFAULTS[mode]["lr"]
        z0 = sample.to(self.device)
        if mode == "latent":
            z_star = R.optimise_latent(
                partial(self.backbone.decode_with, self.vae), z0, *args, **opts
            )
            return self.decode_latents(z_star)
        if mode == "decoder":
            out = R.finetune_decoder(self.vae, self.backbone.decode_with, z0, *args, **opts)
            return (out / 2 + 0.5).clamp(0, 1)
        raise InputError(f"background: {mode!r} is not a reconstruction of the latent method")

    def describe(self, state: _LatentState, cfg: EditConfig) -> dict[str, Any]:
        return {
            "settings": {
                "model": self.name,
                "family": self.family,
                "loras": list(self.loras),
                "dtype": str(self.dtype).removeprefix("torch."),
                "shrink_applied": state.shrink,
                "cache_calls": state.cache_calls,
                "cache_skipped": state.cache_skipped,
                "compiled": self.compiled,
            },
            "timesteps": [int(t) for t in state.timesteps.tolist()],
            "latent_masks": state.stages[:, 0].cpu(),
            "stage_per_step": state.stage_per_step,
        }

    def diffusers_inpaint(self, cfg: EditConfig) -> tuple[Any, float]:
        """diffusers' inpaint pipeline of this family on this editor's own components (with a
        4-channel UNet it blends like BLD, SPEC 5), and the ``strength`` that makes it run the same
        steps (``Backbone.reference_strength``: each family rounds ``strength`` its own way). For
        comparisons (bench, eval)."""
        pipe = self.backbone.inpaint_reference(self._scheduler(cfg))
        pipe.set_progress_bar_config(disable=True)
        n = cfg.num_inference_steps
        return pipe, self.backbone.reference_strength(n, int(n * cfg.blend_start))

    def diffusers_timing(self, cfg: EditConfig) -> Any:
        """diffusers' text-to-image pipeline of this family (``Backbone.timing_pipeline``) on this
        editor's own components and a fresh scheduler of ``cfg``: ``bench``'s timing reference
        where the family has no inpaint pipeline doing the same work (``bench.reference.LoopRun``)."""
        pipe = self.backbone.diffusers_pipeline(self.backbone.timing_pipeline, self._scheduler(cfg))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def optimize(self, channels_last: bool = True, compile: bool = False) -> BlendedLatentDiffusion:
        """The fast path for GPUs: channels-last UNet/VAE memory layout and, optionally,
        ``torch.compile`` of the UNet (its first call compiles; ``blendedit bench`` reports that
        warm-up apart); regional, as ``--compile`` (``latent/compiling.py``). Attention already
        runs through PyTorch SDPA in diffusers."""
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if compile and self.compiled is None:
            self.compiled = compile_denoiser(self.unet)
        return self

    def blends(self, cfg: EditConfig) -> bool:
        """Whether the paper's blend runs: always for a plain model, per ``--blend`` for a model
        trained for inpainting (``Backbone.inpainting``)."""
        return cfg.blend == "on" or not self.backbone.inpainting

    def _start(
        self, scheduler: Any, z0: torch.Tensor, noise: torch.Tensor, begin: int
    ) -> torch.Tensor:
        """The first latent: the source noised to the first kept level; a model trained for
        inpainting at full strength (blend_start 0) starts from pure noise, as its diffusers
        pipeline does (SD-inpainting's ``is_strength_max``), so nothing of the masked object leaks."""
        if begin == 0 and self.backbone.inpainting:
            return noise * getattr(scheduler, "init_noise_sigma", 1.0)
        return start_latent(scheduler, z0, noise, begin)

    def _timesteps(self, scheduler: Any, cfg: EditConfig, z: torch.Tensor) -> torch.Tensor:
        """SPEC 1 step 3 on this family's schedule (flow models: sigmas and shift for the size)."""
        n = cfg.num_inference_steps
        extra = self.backbone.timestep_kwargs(n, (z.shape[-2], z.shape[-1]))
        return blend_timesteps(scheduler, n, cfg.blend_start, **extra)

    def _scheduler(self, cfg: EditConfig) -> Any:
        """A fresh scheduler per run: schedulers keep state (step index, solver history)."""
        return make_scheduler(cfg.scheduler, self.scheduler.config)
