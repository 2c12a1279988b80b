"""The Blended Diffusion editor (pixel space, ADM + CLIP guidance) and the local CLIP-guided baseline.

Same call and result as :class:`~blendedit.latent.pipeline.BlendedLatentDiffusion`: image + mask +
prompt in, ranked candidate edits out; the method's core as the stages the edit frame drives
(``blendedit.frame``). SPEC 2; official code ``omriav/blended-diffusion``.

Models. The official script runs guided-diffusion's unconditional ``256x256_diffusion_uncond.pt``
or, with ``--model_output_size 512``, the class-conditional ``512x512_diffusion.pt``, to which it
hands a random ImageNet class per candidate at every step (``randomize_class``): the class is noise
here, not a choice. A checkpoint with a class embedding selects the 512 settings
(:func:`~blendedit.pixel.adm.default_config`) and the ``adm512`` preset (:func:`default_preset`);
``class_label`` fixes one class instead.

Working resolution. ADM works at a fixed square size (256 or 512 for the released models). A crop region
(the default whenever it helps) is already square. For the whole photo, ``fit="stretch"`` (default,
as the official code does) resizes it to image_size x image_size, changing its aspect ratio, and
each result is resized back; ``fit="pad"`` keeps the aspect ratio instead: the long side is scaled
to image_size and the short side reflect-padded (the padding counts as background: blended back /
preserved, never edited), and the padding is cropped off afterwards. Results always come back at
the input's size.

Where this follows the brief / SPEC rather than the official code, on purpose:

* Blending after the step t -> t-1 uses the input noised to t-1, the level just reached, and the
  clean input after the last step (official: ``q_sample(x0, t)``, one level noisier, so its last
  blend adds a little noise; its final image is x̂_0 of the last step, ours the last sample, which
  differ only by the tiny guided shift at t = 0).
* ``aug_num`` counts augmented copies, plus one plain resize (official: ``aug_num`` copies in all,
  one plain, the rest augmented with probability 0.7 per transform; here always).
* The working mask marks every pixel the mask touches (max-pool; official: nearest resize).
* Every random draw (start noise, the class of a class-conditional model, step noise, blending
  noise, augmentation parameters) comes from the candidate's own CPU generator (official: one
  global seed, the same blending noise for the whole batch), and losses are per sample, so a
  candidate does not depend on its batch. At each step the class is drawn first, as officially.
* The local baseline's LPIPS term needs local weight files (``lpips_weights``); without them it
  uses the L2 term alone and logs a warning once. ``background="stitch"`` pastes the input back
  outside the mask in local mode too (official: not for the baseline; use "decoded" for that).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from blendedit.config import (  # noqa: F401 (PixelConfig and its presets are this method's)
    PIXEL_PRESETS,
    FrameConfig,
    PixelConfig,
    pixel_preset,
)
from blendedit.errors import InputError
from blendedit.frame import FrameMethod, Generated, Work
from blendedit.frame import masks as M
from blendedit.frame.metrics import LPIPS
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL, ClipScorer
from blendedit.models import parse_dtype
from blendedit.pixel.adm import ADMConfig, ADMUNet, default_config, is_class_conditional, load_adm
from blendedit.pixel.gaussian import GaussianDiffusion, MeanVariance
from blendedit.pixel.guidance import (
    Augmenter,
    clip_guidance_grad,
    guided_mean_variance,
    make_augmenter,
)

logger = logging.getLogger(__name__)


def default_preset(checkpoint: str | os.PathLike[str] | None) -> str:
    """The preset a checkpoint selects when none is named: ``adm512`` for a class-conditional ADM
    (a ``label_emb.weight`` in its state dict, as in ``512x512_diffusion.pt``), else ``default``."""
    return "adm512" if checkpoint is not None and is_class_conditional(checkpoint) else "default"


def _model_config(
    model_config: str | os.PathLike[str] | ADMConfig | dict | None, checkpoint: Path
) -> ADMConfig:
    if model_config is None:
        return default_config(checkpoint)
    if isinstance(model_config, ADMConfig):
        return model_config
    if isinstance(model_config, dict):
        return ADMConfig.from_dict(model_config)
    path = Path(model_config)
    if not path.is_file():
        raise InputError(f"model_config: no such file: {str(path)!r} (a guided-diffusion JSON)")
    return ADMConfig.from_json(path)


@dataclass
class _PixelState:
    """What :meth:`BlendedDiffusion.prepare` shares between the candidates."""

    diffusion: GaussianDiffusion
    steps: list[int]  # respaced steps to run, t_start..0
    x0: torch.Tensor  # (1, 3, S, S) in [-1, 1], the region in the model's square
    mask: torch.Tensor  # (1, 1, S, S) 0/1, every pixel the mask touches
    step_masks: list[torch.Tensor]  # per step (1, 1, S, S): the blend mask (soft: thresholded)
    box: tuple[int, int, int, int]  # (left, top, w, h) of the region in the square
    text_embed: torch.Tensor | None
    augmenter: Augmenter | None
    lpips: LPIPS | None
    num_steps: int
    latent_space: bool = False  # samples are images
    unguided: bool = False  # empty prompt: no guidance at all (official: zero gradient)


class BlendedDiffusion(FrameMethod):
    """Blended Diffusion (Avrahami, Lischinski, Fried 2022) on OpenAI's ADM model with CLIP
    guidance; ``local=True`` gives the local CLIP-guided diffusion baseline.
    ``editor(image, mask, prompt, seed=0)`` returns an :class:`EditResult`."""

    config_class = PixelConfig
    method = "pixel"

    def __init__(
        self,
        model: ADMUNet,
        clip: ClipScorer | None,
        lpips: LPIPS | None = None,
        name: str = "",
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.config: ADMConfig = model.config
        self.clip = clip
        self.lpips = lpips.eval().requires_grad_(False) if lpips is not None else None
        self.name = name
        self._warned_lpips = False

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike[str],
        *,
        model_config: str | os.PathLike[str] | ADMConfig | dict | None = None,
        clip_model: str | None = DEFAULT_CLIP_MODEL,
        lpips_weights: tuple[str, str] | None = None,
        lpips_net: str = "vgg",
        torch_dtype: torch.dtype | str | None = None,
    ) -> BlendedDiffusion:
        """Load an ADM checkpoint (``256x256_diffusion_uncond.pt``, ``512x512_diffusion.pt`` or a
        .safetensors copy).

        ``model_config``: an :class:`ADMConfig`, a guided-diffusion JSON file, or None for the
        official settings of the checkpoint: :data:`~blendedit.pixel.adm.ADM512_COND` if it has a
        class embedding, else :data:`~blendedit.pixel.adm.ADM256_UNCOND` (their
        ``timestep_respacing`` is not used; :class:`PixelConfig`'s is).
        ``clip_model``: hub id or local folder of the guiding/ranking CLIP (None: no guidance,
        for clip_guidance_lambda=0 only). ``lpips_weights``: local (trunk, lin) files for the local
        baseline's LPIPS term (:meth:`LPIPS.from_pretrained`, official net "vgg"); None leaves the
        term out. ``torch_dtype`` "fp16" uses guided-diffusion's mixed precision (the official
        setting on the GPU); any other dtype casts the whole UNet.
        """
        cfg = _model_config(model_config, Path(checkpoint))
        dtype = parse_dtype(torch_dtype)
        if dtype == torch.float16:
            cfg, load_dtype = dataclasses.replace(cfg, use_fp16=True), torch.float32
        else:
            load_dtype = dtype or torch.float32
        model = load_adm(checkpoint, cfg, dtype=load_dtype)
        clip = ClipScorer.from_pretrained(clip_model, dtype) if clip_model else None
        lpips = (
            LPIPS.from_pretrained(lpips_weights[0], lpips_weights[1], lpips_net)  # type: ignore[arg-type]
            if lpips_weights is not None
            else None
        )
        return cls(model, clip, lpips, str(checkpoint))

    def to(self, device: torch.device | str | None = None) -> BlendedDiffusion:
        if device is not None:
            self.model.to(device)
            if self.clip is not None:
                self.clip.to(device)
            if self.lpips is not None:
                self.lpips.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # -- building blocks -------------------------------------------------------------------------

    def make_diffusion(self, cfg: PixelConfig) -> GaussianDiffusion:
        """The model's diffusion with ``cfg.timestep_respacing``."""
        return GaussianDiffusion.from_config(self.config, cfg.timestep_respacing)

    def fit_input(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
        """The working region in the model's square: x (1, 3, h, w) in [-1, 1] and its mask
        (1, 1, h, w), h, w <= S, reflect-padded (the padding is background) to (1, 3, S, S) and
        (1, 1, S, S); returns them and the box (left, top, w, h) of the region in the square."""
        s = self.image_size
        h, w = x.shape[-2:]
        left, top = (s - w) // 2, (s - h) // 2
        pad = (left, s - w - left, top, s - h - top)
        if any(pad):
            reflect = max(pad[0], pad[1]) < w and max(pad[2], pad[3]) < h
            x = F.pad(x, pad, mode="reflect" if reflect else "replicate")
            mask = F.pad(mask, pad)
        return x, mask, (left, top, w, h)

    # -- the edit: the frame's core protocol (blendedit.frame) ------------------------------------

    def check(self, cfg: PixelConfig) -> None:
        if cfg.clip_guidance_lambda and self.clip is None:
            raise InputError(
                "clip_guidance_lambda: CLIP guidance needs a CLIP model (load with clip_model=...)"
            )
        n = self.model.num_classes
        if cfg.class_label != -1 and not 0 <= cfg.class_label < n:
            raise InputError(
                f"class_label: {cfg.class_label} "
                + (f"is not a class index 0..{n - 1}" if n else "needs a class-conditional model")
            )

    def full_work_size(self, size: tuple[int, int], cfg: PixelConfig) -> tuple[int, int]:
        """The whole photo: stretched to the model's square (official), or its aspect kept with
        the long side at the square's size (``fit="pad"``; padded in :meth:`prepare`)."""
        s = self.image_size
        if cfg.fit == "stretch":
            return s, s
        scale = s / max(size)
        return max(1, min(s, round(size[0] * scale))), max(1, min(s, round(size[1] * scale)))

    def work_shapes(self, cfg: PixelConfig) -> list[tuple[int, int]]:
        return [(self.image_size, self.image_size)]

    def prepare(self, work: Work, cfg: PixelConfig) -> _PixelState:
        """SPEC 2: the region in the model's square, the schedule, the text and augmentations."""
        m = M.latent_mask(work.mask, tuple(work.mask.shape[-2:]), work.soft)  # every touched pixel
        x0, m_work, box = self.fit_input(work.x, m)
        x0, m_work = x0.to(self.device), m_work.to(self.device)
        # Schedule: start at t_start = K - skip - 1 and run t_start..0.
        diffusion = self.make_diffusion(cfg)
        k = diffusion.num_steps
        if cfg.skip_timesteps >= k:
            raise InputError(
                f"skip_timesteps: {cfg.skip_timesteps} leaves no step of the {k} in"
                f" timestep_respacing={cfg.timestep_respacing!r}"
            )
        steps = list(range(k - cfg.skip_timesteps - 1, -1, -1))
        step_masks = M.step_masks(m_work[None], [0] * len(steps), work.soft)
        # Text: the prompt's CLIP embedding; the augmentations at CLIP's input size. An empty
        # prompt (fill from the surroundings) is unguided, as in the official cond_fn.
        text_embed = augmenter = None
        if cfg.clip_guidance_lambda and self.clip is not None and work.prompt:
            text_embed = self.clip.embed_text([work.prompt])  # (1, D)
            augmenter = make_augmenter(cfg.aug_num, self.clip.image_size)
        lpips = None
        if cfg.local and cfg.lpips_sim_lambda:
            lpips = self.lpips
            if lpips is None and not self._warned_lpips:
                logger.warning(
                    "local mode: no LPIPS weights loaded (lpips_weights=None); the background"
                    " loss uses the L2 term only"
                )
                self._warned_lpips = True
        return _PixelState(
            diffusion, steps, x0, (m_work > 0).to(x0), step_masks, box, text_embed, augmenter,
            lpips, len(steps), unguided=not work.prompt,
        )  # fmt: skip

    def generate(
        self,
        state: _PixelState,
        seeds: list[int],
        cfg: PixelConfig,
        tick: Callable[[int], None],
        keep_process: bool,
    ) -> Generated:
        """SPEC 2 for one chunk: CLIP-guided denoising, blending the noised input outside the
        mask (or the background loss instead, local mode); no guidance for an empty prompt."""
        guidance: Callable[..., Any] | None = None  # an empty prompt: unguided
        if not state.unguided:
            guidance = partial(
                clip_guidance_grad,
                diffusion=state.diffusion,
                mask=state.mask,
                clip=self.clip,
                text_embed=state.text_embed,
                augmenter=state.augmenter,
                clip_weight=cfg.clip_guidance_lambda if state.augmenter is not None else 0.0,
                range_weight=cfg.range_lambda,
                source=state.x0 if cfg.local else None,
                l2_weight=cfg.l2_sim_lambda if cfg.local else 0.0,
                lpips_weight=cfg.lpips_sim_lambda if cfg.local else 0.0,
                lpips=state.lpips,
            )
        x, frames = self._denoise_chunk(cfg, state, seeds, guidance, tick, keep_process)
        return Generated(x.cpu(), frames)

    def decode(self, state: _PixelState, samples: torch.Tensor) -> torch.Tensor:
        """No decoder in pixel space: (N, 3, S, S) in [-1, 1] (or uint8 process frames) -> the
        region's box in the square, (N, 3, h, w) in [0, 1]."""
        left, top, w, h = state.box
        x = samples.float() / 127.5 - 1 if samples.dtype == torch.uint8 else samples.float()
        return ((x[..., top : top + h, left : left + w] + 1) / 2).clamp(0, 1)

    def reconstruct(
        self, state: _PixelState, sample: torch.Tensor, decoded: torch.Tensor, cfg: PixelConfig
    ) -> torch.Tensor:
        raise InputError(f"background: {cfg.background!r} needs a latent model's decoder")

    def describe(self, state: _PixelState, cfg: PixelConfig) -> dict[str, Any]:
        return {
            "settings": {
                "algorithm": "local-clip-guided-diffusion" if cfg.local else "blended-diffusion",
                "model": self.name,
                "dtype": str(self.dtype).removeprefix("torch."),
                "image_size": self.image_size,
                "class_conditional": self.config.class_cond,
                "lpips_used": state.lpips is not None,
            },
            "timesteps": [int(state.diffusion.timestep_map[t]) for t in state.steps],
        }

    def _denoise_chunk(
        self,
        cfg: PixelConfig,
        state: _PixelState,
        chunk_seeds: list[int],
        guidance: Any,
        tick: Callable[[int], None],
        keep_process: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        diffusion, x0, mask = state.diffusion, state.x0, state.mask
        b = len(chunk_seeds)
        gens = [torch.Generator("cpu").manual_seed(s) for s in chunk_seeds]
        # Start: the input noised to t_start, noise drawn on the CPU from each candidate's seed.
        x = torch.cat([diffusion.q_sample(x0, state.steps[0], generator=g) for g in gens])
        guide = guidance  # the augmentations draw from the candidates' generators
        if guidance is not None and state.augmenter is not None:
            guide = partial(guidance, generators=gens)
        ddim = cfg.sampler == "ddim"
        history: list[torch.Tensor] = []
        for n, t in enumerate(state.steps):
            model: Callable[..., torch.Tensor] = self.model
            if self.config.class_cond:  # the step's class, drawn before anything else
                model = partial(self.model, y=self._classes(gens, cfg.class_label))
            out = guided_mean_variance(model, diffusion, x, t, guide, score=ddim)
            x = self._step(diffusion, out, x, t, gens, ddim, cfg.eta)
            if not cfg.local:  # blend: the input noised to the level just reached (x0 at the end)
                bg = (
                    torch.cat([diffusion.q_sample(x0, t - 1, generator=g) for g in gens])
                    if t > 0
                    else x0
                )
                x = x * state.step_masks[n] + bg * (1 - state.step_masks[n])
            if keep_process:  # the clean estimate, with the input outside the mask (paper fig. 6)
                est = out.pred_xstart if cfg.local else out.pred_xstart * mask + x0 * (1 - mask)
                history.append(((est.clamp(-1, 1) + 1) * 127.5).round().byte().cpu())
            tick(b)
        per_image = [torch.stack([h[j] for h in history]) for j in range(b)] if history else []
        return x.detach(), per_image

    def _classes(self, gens: list[torch.Generator], class_label: int) -> torch.Tensor:
        """(B,) int64 class labels for one step: ``class_label``, or for -1 a uniform draw from
        the model's classes from each candidate's generator (official ``randomize_class``)."""
        if class_label != -1:
            return torch.full((len(gens),), class_label, dtype=torch.long)
        n = self.model.num_classes
        return torch.cat([torch.randint(0, n, (1,), generator=g) for g in gens])

    @staticmethod
    def _step(
        diffusion: GaussianDiffusion,
        out: MeanVariance,
        x: torch.Tensor,
        t: int,
        gens: list[torch.Generator],
        ddim: bool,
        eta: float,
    ) -> torch.Tensor:
        """x_{t-1} from the guided ``out``; each candidate's noise from its own generator."""
        if ddim and eta == 0:
            return diffusion.ddim_step(out, x, t)
        parts = []
        for j, g in enumerate(gens):
            fields = (out.mean, out.variance, out.log_variance, out.pred_xstart)
            o = MeanVariance(*(v[j : j + 1] for v in fields))
            if ddim:
                parts.append(diffusion.ddim_step(o, x[j : j + 1], t, eta, g))
            else:
                parts.append(diffusion.ddpm_step(o, t, g))
        return torch.cat(parts)
