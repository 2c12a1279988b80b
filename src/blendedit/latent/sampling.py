"""Blended Latent Diffusion, the loop (paper Algorithm 1; SPEC 1 steps 3-4) as plain functions.

Tensors: z (B, C, h, w) latents; masks (B or 1, 1, h, w) of 0/1 at latent resolution.
The scheduler is any first-order diffusers scheduler; only its public contract is used
(``set_timesteps``, ``timesteps``, ``order``, ``set_begin_index``, ``scale_model_input``, ``step``,
``add_noise``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t) -> model output
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, Any], None]  # (i, t, z, step output)


def classifier_free_guidance(
    unet: Any, cond: torch.Tensor, uncond: torch.Tensor, scale: float
) -> ModelFn:
    """Wrap the text-conditioned UNet into guided eps/v (Ho & Salimans 2022): both halves in one
    call. cond, uncond: (B, L, D) text embeddings; returns model_fn(z (B, C, h, w), t)."""
    context = torch.cat([uncond, cond])  # (2B, L, D)

    def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(torch.cat([z, z]), t, encoder_hidden_states=context, return_dict=False)[0]
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return model_fn


def blend(z_fg: torch.Tensor, z_bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, line 7: z = z_fg * m + z_bg * (1 - m)."""
    return z_fg * mask + z_bg * (1 - mask)


def blend_timesteps(scheduler: Any, num_inference_steps: int, blend_start: float) -> torch.Tensor:
    """SPEC 1 step 3: set the full schedule and skip its first floor(steps * blend_start) steps
    (official scripts: 12 of 50, leaving 38). Returns the timesteps still to run, on the host."""
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    skip = int(num_inference_steps * blend_start) * scheduler.order
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
    z_init: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    step_masks: Sequence[torch.Tensor],
    extra_step_kwargs: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise inside the mask, keep the noised source outside, at every step.

    z_init: (B, C, h, w) clean source latent E(x); noise: (B, C, h, w), reused for every re-noising;
    timesteps: what ``blend_timesteps`` returned; step_masks[i]: (B or 1, 1, h, w) for step i.
    """
    kwargs = extra_step_kwargs or {}
    # Host timesteps index the scheduler's tables; one device copy, made here, feeds the UNet and
    # add_noise. With DDIM no step then waits for the GPU (no host-device sync inside the loop).
    t_dev = timesteps.to(z_init.device)
    z = scheduler.add_noise(z_init, noise, t_dev[:1])  # noise E(x) to the first kept level
    for i, t in enumerate(timesteps):
        out = scheduler.step(model_fn(scheduler.scale_model_input(z, t), t_dev[i]), t, z, **kwargs)
        # Background at the level z_fg has just reached (t'), and clean after the last step.
        last = i + 1 == len(timesteps)
        z_bg = z_init if last else scheduler.add_noise(z_init, noise, t_dev[i + 1 : i + 2])
        z = blend(out.prev_sample, z_bg, step_masks[i])
        if callback is not None:
            callback(i, t, z, out)
    return z
