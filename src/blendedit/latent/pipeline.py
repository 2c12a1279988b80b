"""The Blended Latent Diffusion editor: image + mask + prompt in, ranked candidate edits out.

Reads as numbered stages, like a diffusers pipeline; the loop itself is ``sampling.py``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from blendedit import masks as M
from blendedit import reconstruct as R
from blendedit.config import EditConfig, resolve_seeds
from blendedit.errors import InputError
from blendedit.io import ImageInput, load_image, pil_to_tensor, tensor_to_pil, working_size
from blendedit.latent.sampling import (
    blend_timesteps,
    blended_latent_diffusion,
    classifier_free_guidance,
    step_kwargs,
)
from blendedit.metrics import background_report
from blendedit.models import (
    DEFAULT_MODEL,
    SDComponents,
    load_sd_components,
    make_scheduler,
    parse_dtype,
)
from blendedit.ranking import DEFAULT_CLIP_MODEL, ClipScorer, rank_order
from blendedit.results import Candidate, EditResult, ProgressFn, Timings

logger = logging.getLogger(__name__)


class BlendedLatentDiffusion:
    """Blended Latent Diffusion (Avrahami, Fried, Lischinski 2023) on a Stable Diffusion 1.x/2.x
    model. ``editor(image, mask, prompt, seed=0)`` returns an :class:`EditResult`."""

    def __init__(
        self,
        vae: Any,
        unet: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        clip: ClipScorer | None = None,
        name: str = "",
    ) -> None:
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.scheduler = scheduler  # its config is the base of every scheduler made per call
        self.clip = clip
        self.name = name
        for m in (vae, unet, text_encoder):
            m.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        clip_model: str | None = DEFAULT_CLIP_MODEL,
        torch_dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
        model_config: str | None = None,
    ) -> BlendedLatentDiffusion:
        """Load from a hub id, a local diffusers folder or a single .safetensors/.ckpt file.
        ``clip_model=None`` skips the ranking model (results then come in generation order)."""
        dtype = parse_dtype(torch_dtype)
        parts: SDComponents = load_sd_components(model, dtype, local_files_only, model_config)
        clip = ClipScorer.from_pretrained(clip_model, dtype) if clip_model else None
        return cls(
            parts.vae,
            parts.unet,
            parts.text_encoder,
            parts.tokenizer,
            parts.scheduler,
            clip,
            str(model),
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BlendedLatentDiffusion:
        for m in (self.vae, self.unet, self.text_encoder):
            m.to(device=device, dtype=dtype)
        if self.clip is not None and device is not None:
            self.clip.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at (512 for SD 2.1-base and 1.5, 768 for SD 2.1)."""
        s = self.unet.config.sample_size
        return int(s if isinstance(s, int) else max(s)) * self.vae_scale_factor

    # -- building blocks -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text -> (1, L, D) CLIP text-encoder hidden states, padded to the tokenizer's length."""
        max_len = min(
            self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings
        )
        tok = self.tokenizer(
            prompt, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        )
        if len(self.tokenizer(prompt).input_ids) > max_len:
            logger.warning("prompt longer than %d tokens; the rest is ignored", max_len)
        mask = (
            tok.attention_mask.to(self.device)
            if getattr(self.text_encoder.config, "use_attention_mask", False)
            else None
        )
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """SPEC 1 step 1: (B, 3, H, W) in [-1, 1] -> z = E(x) (posterior mean), scaled by the VAE's
        own ``scaling_factor`` (and ``shift_factor`` where the VAE has one)."""
        z = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    @staticmethod
    def decode_with(vae: Any, z: torch.Tensor) -> torch.Tensor:
        """x = D(z): (B, C, h, w) scaled latents -> (B, 3, H, W) in [-1, 1]; differentiable."""
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        param = next(vae.parameters())
        return vae.decode(z.to(param) / vae.config.scaling_factor + shift, return_dict=False)[0]

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1], decoded ``chunk`` at a time."""
        parts = [self.decode_with(self.vae, part).float() for part in z.split(chunk)]
        return (torch.cat(parts) / 2 + 0.5).clamp(0, 1)

    # -- the edit ---------------------------------------------------------------------------------

    def __call__(
        self,
        image: ImageInput,
        mask: M.MaskInput,
        prompt: str,
        *,
        config: EditConfig | None = None,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        progress: bool | ProgressFn = False,
        return_process: bool = False,
        **settings: Any,
    ) -> EditResult:
        """Edit the masked region of ``image`` to follow ``prompt``.

        Settings come from ``config`` (an :class:`EditConfig`, e.g. a preset) overridden by keyword
        arguments of the same names (``num_images=4, guidance_scale=5, ...``). Randomness only
        through ``seed`` (default ``config.seed``), explicit ``seeds``, or a ``generator``.
        ``return_process`` keeps each step's one-step clean estimate for the best result.
        """
        t_start = time.perf_counter()
        timings = Timings()
        cfg = (config or EditConfig()).replace(**settings).validate()
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt: must be a non-empty text")
        if seed is None and seeds is None and generator is None:
            seed = cfg.seed
        seed_list = resolve_seeds(cfg.num_images, seed, seeds, generator)

        # 1. Inputs: the photo, and its mask at the photo's size (bool (H, W)).
        src = load_image(image, "image")
        mask_np = M.load_mask(mask, src.size, cfg.invert_mask)

        # 2. Working resolution: long side = size (default: the model's), multiples of 8.
        f = self.vae_scale_factor
        work_w, work_h = working_size(src.size, cfg.size or self.native_size, f)
        latent_hw = (work_h // f, work_w // f)
        src_work = (
            src
            if src.size == (work_w, work_h)
            else src.resize((work_w, work_h), Image.Resampling.LANCZOS)
        )
        x = pil_to_tensor(src_work) * 2 - 1  # (1, 3, H, W) in [-1, 1]
        mask_full = M.to_tensor(mask_np)  # (1, 1, H0, W0)
        mask_work = M.resize_mask(mask_full, (work_h, work_w))  # (1, 1, H, W) coverage

        # 3. Text: prompt and negative prompt for classifier-free guidance.
        t0 = time.perf_counter()
        cond = self.encode_prompt(prompt)  # (1, L, D)
        uncond = self.encode_prompt(cfg.negative_prompt)

        # 4. z_init = E(x) * scaling factor.
        z_init = self.encode_image(x).to(self.dtype)  # (1, C, h, w)
        self._sync()
        timings.encode = time.perf_counter() - t0

        # 5. Latent mask (max-pool keeps thin strokes) and the progressive shrinking stages.
        m_latent = M.latent_mask(mask_full, latent_hw)  # (1, 1, h, w)
        shrink = cfg.mask_shrink == "on" or (
            cfg.mask_shrink == "auto" and M.has_thin_parts(m_latent, min(cfg.shrink_kernels))
        )
        stages = M.shrink_stages(m_latent, cfg.shrink_kernels) if shrink else m_latent[None]
        timesteps = blend_timesteps(self._scheduler(cfg), cfg.num_inference_steps, cfg.blend_start)
        n_steps = len(timesteps)
        stage_per_step = M.stage_of_step(n_steps, stages.shape[0])
        stages_dev = stages.to(self.device, self.dtype)
        step_masks = [stages_dev[s] for s in stage_per_step]  # each (1, 1, h, w)

        # 6-7. Denoise: candidates in chunks of batch_size, each with its own seed's noise.
        t0 = time.perf_counter()
        total = len(seed_list) * n_steps
        bar = tqdm(
            total=total, desc="denoising", unit="step", disable=progress is not True, leave=False
        )
        report = progress if callable(progress) else None
        latents: list[torch.Tensor] = []
        x0_frames: list[torch.Tensor] = []  # per candidate: (steps, C, h, w) clean estimates
        done, chunk_size = 0, cfg.batch_size
        try:
            while done < len(seed_list):
                chunk = seed_list[done : done + chunk_size]
                try:
                    z, frames = self._denoise_chunk(
                        cfg,
                        chunk,
                        z_init,
                        cond,
                        uncond,
                        step_masks,
                        bar,
                        report,
                        done * n_steps,
                        return_process,
                    )
                except torch.OutOfMemoryError:
                    if chunk_size == 1:
                        raise
                    chunk_size = max(1, chunk_size // 2)  # a batch that does not fit: halve it
                    logger.warning("out of memory: continuing with batch_size %d", chunk_size)
                    self._empty_cache()
                    bar.n = done * n_steps
                    continue
                latents.append(z)
                x0_frames.extend(frames)
                done += len(chunk)
        finally:
            bar.close()
        z_all = torch.cat(latents)  # (N, C, h, w) on the device
        self._sync()
        timings.denoise = time.perf_counter() - t0

        # 8. Decode: x_hat = D(z).
        t0 = time.perf_counter()
        decoded = self.decode_latents(z_all, cfg.decode_batch_size)  # (N, 3, H, W) in [0, 1]
        self._sync()
        timings.decode = time.perf_counter() - t0

        # 9. Rank by CLIP similarity of the masked result to the prompt (paper 4.4).
        t0 = time.perf_counter()
        scores = None
        if cfg.rank and self.clip is not None:
            scores = self.clip.score(decoded, mask_work, prompt)
        elif cfg.rank and self.clip is None and len(seed_list) > 1:
            logger.warning("no CLIP model loaded: results are not ranked")
        order = rank_order(scores, len(seed_list))
        timings.rank = time.perf_counter() - t0

        # 10. Keep the top K; reconstruct their background (paper 4.2) at the input's size.
        t0 = time.perf_counter()
        src_np = np.asarray(src)
        alpha = M.feather(mask_np, cfg.feather)  # (H0, W0): one feather for every candidate
        candidates = []
        for rank, idx in enumerate(order[: cfg.keep or len(order)], start=1):
            dec_img = self._to_input_size(decoded[idx : idx + 1], src.size)
            out = self._background(
                cfg,
                z_all[idx : idx + 1],
                decoded[idx : idx + 1],
                x,
                mask_work,
                dec_img,
                src_np,
                mask_np,
                alpha,
            )
            process = None
            if return_process and rank == 1 and x0_frames:
                frames = self.decode_latents(x0_frames[idx].to(self.device))
                process = [tensor_to_pil(im) for im in frames]
            candidates.append(
                Candidate(
                    image=out,
                    seed=seed_list[idx],
                    rank=rank,
                    score=None if scores is None else float(scores[idx]),
                    decoded=dec_img,
                    latent=z_all[idx].cpu(),
                    process=process,
                    metrics=background_report(out, src_np, mask_np) if cfg.metrics else {},
                )
            )
        timings.background = time.perf_counter() - t0
        timings.total = time.perf_counter() - t_start

        return EditResult(
            candidates=candidates,
            prompt=prompt,
            settings={
                **cfg.to_dict(),
                "model": self.name,
                "dtype": str(self.dtype).removeprefix("torch."),
                "shrink_applied": shrink,
                "batch_size_used": chunk_size,  # smaller than batch_size after out-of-memory
            },
            working_size=(work_w, work_h),
            input_size=src.size,
            latent_masks=stages[:, 0].cpu(),
            stage_per_step=stage_per_step,
            timesteps=[int(t) for t in timesteps.tolist()],
            timings=timings,
        )

    @staticmethod
    def _to_input_size(image: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        """(1, 3, H, W) in [0, 1] at the working size -> PIL at the input's (W, H)."""
        if tuple(image.shape[-2:]) != (size[1], size[0]):
            image = F.interpolate(image, size=(size[1], size[0]), mode="bicubic", antialias=True)
        return tensor_to_pil(image[0].clamp(0, 1))

    def _background(
        self,
        cfg: EditConfig,
        z: torch.Tensor,
        decoded: torch.Tensor,
        x: torch.Tensor,
        mask_work: torch.Tensor,
        dec_img: Image.Image,
        src_np: np.ndarray,
        mask_np: np.ndarray,
        alpha: np.ndarray,
    ) -> Image.Image:
        """SPEC 1 "Background reconstruction" for one kept result. z (1, C, h, w); decoded
        (1, 3, H, W) in [0, 1] and x (1, 3, H, W) in [-1, 1] at the working size; mask_work
        (1, 1, H, W) coverage; dec_img, src_np, mask_np at the input's size."""
        mode = cfg.background
        if mode == "decoded":
            return dec_img
        if mode == "stitch":
            return Image.fromarray(R.composite(np.asarray(dec_img), src_np, alpha))
        if mode == "poisson":
            out = R.poisson(np.asarray(dec_img), src_np, mask_np)
        else:
            args = (decoded.to(self.device) * 2 - 1, x.to(self.device), mask_work.to(self.device))
            opts = {"steps": cfg.recon_steps, "lam": cfg.recon_lambda}
            opts["lr"] = cfg.recon_lr or R.RECON_DEFAULTS[mode]["lr"]
            z0 = z.to(self.device)
            if mode == "latent":
                decode = partial(self.decode_with, self.vae)
                z_star = R.optimise_latent(decode, z0, *args, **opts)
                recon = self.decode_latents(z_star)
            else:  # decoder
                recon = (
                    R.finetune_decoder(self.vae, self.decode_with, z0, *args, **opts) / 2 + 0.5
                ).clamp(0, 1)
            out = np.asarray(self._to_input_size(recon, (src_np.shape[1], src_np.shape[0])))
        if cfg.paste_back:  # the input's own pixels beyond the feather band
            out = R.composite(out, src_np, alpha)
        return Image.fromarray(out)

    def diffusers_inpaint(self, cfg: EditConfig) -> tuple[Any, float]:
        """diffusers' ``StableDiffusionInpaintPipeline`` on this editor's own components (with a
        4-channel UNet it blends like BLD, SPEC 5), and the ``strength`` that makes it run the same
        steps: diffusers runs ``int(steps * strength)``, BLD ``steps - floor(steps * blend_start)``;
        half a step above that count makes the two equal. For comparisons (bench, eval)."""
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self._scheduler(cfg),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        n = cfg.num_inference_steps
        return pipe, (n - int(n * cfg.blend_start) + 0.5) / n

    def _sync(self) -> None:
        """Wait for the device at a stage boundary, so stage timings are true (never per step)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def optimize(self, channels_last: bool = True, compile: bool = False) -> BlendedLatentDiffusion:
        """The fast path for GPUs: channels-last UNet/VAE memory layout and, optionally,
        ``torch.compile`` of the UNet (its first call compiles; ``blendedit bench`` reports that
        warm-up apart). Attention already runs through PyTorch SDPA in diffusers."""
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if compile:
            self.unet = torch.compile(self.unet, fullgraph=False, dynamic=False)
        return self

    def _scheduler(self, cfg: EditConfig) -> Any:
        """A fresh scheduler per run: schedulers keep state (step index, solver history)."""
        return make_scheduler(cfg.scheduler, self.scheduler.config)

    @torch.no_grad()
    def _denoise_chunk(
        self,
        cfg: EditConfig,
        chunk_seeds: list[int],
        z_init: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        step_masks: list[torch.Tensor],
        bar: Any,
        report: ProgressFn | None,
        steps_before: int,
        keep_process: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = len(chunk_seeds)
        gens = [torch.Generator("cpu").manual_seed(s) for s in chunk_seeds]
        # Noise drawn on the CPU in float32 from each seed: identical on any device and dtype.
        noise = torch.cat([torch.randn(z_init.shape, generator=g) for g in gens]).to(
            self.device, self.dtype
        )
        scheduler = self._scheduler(cfg)
        timesteps = blend_timesteps(scheduler, cfg.num_inference_steps, cfg.blend_start)
        model_fn = classifier_free_guidance(
            self.unet, cond.expand(b, -1, -1), uncond.expand(b, -1, -1), cfg.guidance_scale
        )
        z0 = z_init.expand(b, -1, -1, -1)
        frames: list[torch.Tensor] = []
        total = bar.total

        def on_step(i: int, t: torch.Tensor, z: torch.Tensor, out: Any) -> None:
            bar.update(b)
            if report is not None:
                report(steps_before + (i + 1) * b, total)
            if keep_process:
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is not None:  # the one-step estimate of the clean latent, blended (fig. 6)
                    frames.append((x0 * step_masks[i] + z0 * (1 - step_masks[i])).cpu())

        z = blended_latent_diffusion(
            model_fn,
            scheduler,
            z0,
            noise,
            timesteps,
            step_masks,
            step_kwargs(scheduler, gens, cfg.eta),
            on_step,
        )
        per_image = [torch.stack([f[j] for f in frames]) for j in range(b)] if frames else []
        return z, per_image
