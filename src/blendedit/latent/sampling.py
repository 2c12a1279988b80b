"""Blended Latent Diffusion, the loop (paper Algorithm 1; SPEC 1 steps 3-4) as plain functions.

Tensors: z (B, C, h, w) latents; masks (B or 1, 1, h, w) of 0/1 at latent resolution.
The scheduler is any first-order diffusers scheduler; only its public contract is used
(``set_timesteps``, ``timesteps``, ``order``, ``set_begin_index``, ``scale_model_input``, ``step``);
the background's noise levels come from ``schedule.py``. The loop knows no model family: the
backbone supplies ``model_fn`` (``latent/backbones``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t) -> model output
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, Any], None]  # (i, t, z, step output)


def classifier_free_guidance(denoise: ModelFn, scale: float) -> ModelFn:
    """Guided eps/v/velocity (Ho & Salimans 2022): ``denoise(z (2B, C, h, w), t)`` runs the model
    on the [unconditional; conditional] halves in one call (the backbone binds the conditioning);
    returns model_fn(z (B, C, h, w), t)."""

    def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_uncond, out_cond = denoise(torch.cat([z, z]), t).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return model_fn


def blend(z_fg: torch.Tensor, z_bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, line 7: z = z_fg * m + z_bg * (1 - m)."""
    return z_fg * mask + z_bg * (1 - mask)


def first_step(scheduler: Any, num_inference_steps: int, blend_start: float) -> int:
    """Position of the first kept step in the full table: floor(steps * blend_start) * order."""
    return int(num_inference_steps * blend_start) * scheduler.order


def blend_timesteps(
    scheduler: Any, num_inference_steps: int, blend_start: float, **set_timesteps_kwargs: Any
) -> torch.Tensor:
    """SPEC 1 step 3: set the full schedule and skip its first floor(steps * blend_start) steps
    (official scripts: 12 of 50, leaving 38). Returns the timesteps still to run, on the host.
    (``set_begin_index`` lets multistep solvers start mid-schedule; the blend's noise levels do
    not depend on it, see ``schedule.py``.)"""
    scheduler.set_timesteps(num_inference_steps, device="cpu", **set_timesteps_kwargs)
    skip = first_step(scheduler, num_inference_steps, blend_start)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(skip)
    return scheduler.timesteps[skip:]


def step_kwargs(
    scheduler: Any, generators: Sequence[torch.Generator], eta: float
) -> dict[str, Any]:
    """The optional ``step`` arguments this scheduler accepts: eta (DDIM), per-image generators."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = list(generators)
    return kwargs


def blended_latent_diffusion(
    model_fn: ModelFn,
    scheduler: Any,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    step_masks: Sequence[torch.Tensor],
    background: Callable[[int], torch.Tensor],
    extra_step_kwargs: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise inside the mask, keep the noised source outside, at every step.

    z: (B, C, h, w) the source noised to the first kept level (``schedule.start_latent``);
    timesteps: what ``blend_timesteps`` returned; step_masks[i]: (B or 1, 1, h, w) for step i;
    background(i): the source latent at the level the blend rule gives after step i
    (``schedule.blend_rule``: t' and clean after the last step, by default).
    """
    kwargs = extra_step_kwargs or {}
    # Host timesteps index the scheduler's tables; one device copy, made here, feeds the model.
    # With DDIM no step then waits for the GPU (no host-device sync inside the loop).
    t_dev = timesteps.to(z.device)
    scale_in = getattr(scheduler, "scale_model_input", lambda z, t: z)  # none in flow matching
    for i, t in enumerate(timesteps):
        out = scheduler.step(model_fn(scale_in(z, t), t_dev[i]), t, z, **kwargs)
        z = blend(out.prev_sample, background(i), step_masks[i])
        if callback is not None:
            callback(i, t, z, out)
    return z
