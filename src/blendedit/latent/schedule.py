"""Noise levels of the blend, computed from the schedule itself (SPEC 1 step 4).

The background of BLD's blend is the source latent noised to a level of the sampler's schedule:
``z_bg = alpha * z0 + sigma * noise``. diffusers' sigma schedulers (Euler, Euler-a, DPM-Solver,
UniPC, FlowMatch) ignore the timestep given to ``add_noise`` once ``set_begin_index`` was called and
use their internal step index instead (``../shared/notes/backbones.md`` section 7.1), so a loop that
relies on ``add_noise(t')`` is right only because that index happens to point at t'. Here the level
is explicit: :func:`level` reads (alpha, sigma) of position ``index`` of the schedule's full table
(after ``set_timesteps``), and a blend rule chooses which position it wants.

Blend rules (``BlendRule``: step i -> the background after step i):

- ``diffusers`` (default; diffusers' inpaint pipelines, PR #3749): the level the step has just
  reached, t' = position i + 1, with one fixed noise per candidate; the clean source after the last.
- ``official`` (the official BLD scripts and the paper's Algorithm 1): the level of the step's own
  t (position i, one step noisier than the foreground), with fresh noise every step; after the last
  step the background keeps the level of the last t (about sigma 0.04 with SD's schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from blendedit.config import BLEND_RULES

__all__ = ["BLEND_RULES", "BlendRule", "blend_rule", "level", "noised", "start_latent"]
BlendRule = Callable[[int], torch.Tensor]  # step index i -> background latent after step i

# How each scheduler parameterises its state x_t (explicit, by class: a new scheduler must be
# added here on purpose, never guessed):
#   "vp"    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, indexed by the timestep (DDPM family)
#   "ve"    x_t = x0 + sigma eps (k-diffusion style; the model input is scaled by the scheduler)
#   "vp-sigma"  the "vp" state stored as sigma = sqrt((1 - abar) / abar) (DPM-Solver, UniPC)
#   "flow"  x_t = (1 - sigma) x0 + sigma eps (rectified flow: SD3, FLUX)
PARAMETERISATION: dict[str, str] = {
    "DDIMScheduler": "vp",
    "DDPMScheduler": "vp",
    "PNDMScheduler": "vp",
    "LCMScheduler": "vp",
    "TCDScheduler": "vp",
    "EulerDiscreteScheduler": "ve",
    "EulerAncestralDiscreteScheduler": "ve",
    "DPMSolverMultistepScheduler": "vp-sigma",
    "UniPCMultistepScheduler": "vp-sigma",
    "FlowMatchEulerDiscreteScheduler": "flow",
}


def parameterisation(scheduler: object) -> str:
    name = type(scheduler).__name__
    if name not in PARAMETERISATION:
        raise ValueError(f"scheduler {name} has no known noise parameterisation for blending")
    kind = PARAMETERISATION[name]
    if kind == "vp-sigma" and getattr(scheduler.config, "use_flow_sigmas", False):  # type: ignore[attr-defined]
        return "flow"
    return kind


def level(scheduler: object, index: int) -> tuple[float, float]:
    """(alpha, sigma) at position ``index`` of the schedule's full table (0 = the first step of
    the whole schedule, ``len(timesteps)`` = past the last), so that z = alpha z0 + sigma eps.

    Computed in float32 from the scheduler's own tables, as its ``add_noise`` would."""
    kind = parameterisation(scheduler)
    s: object = scheduler
    if kind == "vp":
        ts = s.timesteps  # type: ignore[attr-defined]
        if index >= len(ts):
            return 1.0, 0.0
        abar = s.alphas_cumprod[int(ts[index])].float()  # type: ignore[attr-defined]
        return float(abar.sqrt()), float((1 - abar).sqrt())
    sig = s.sigmas[index].float()  # type: ignore[attr-defined]  # table ends with its final sigma
    if kind == "ve":
        return 1.0, float(sig)
    if kind == "flow":
        return float(1 - sig), float(sig)
    alpha = 1 / (sig**2 + 1).sqrt()  # vp-sigma
    return float(alpha), float(sig * alpha)


def noised(z0: torch.Tensor, noise: torch.Tensor, alpha_sigma: tuple[float, float]) -> torch.Tensor:
    """z0 at a noise level: alpha * z0 + sigma * noise. z0, noise: (B, C, h, w)."""
    alpha, sigma = alpha_sigma
    return z0 * alpha + noise * sigma


def start_latent(
    scheduler: object, z0: torch.Tensor, noise: torch.Tensor, begin: int
) -> torch.Tensor:
    """SPEC 1 step 3: the source noised to the first kept step's level (position ``begin``)."""
    return noised(z0, noise, level(scheduler, begin))


def blend_rule(
    name: str,
    scheduler: object,
    z0: torch.Tensor,
    noise: torch.Tensor,
    begin: int,
    num_steps: int,
    generators: Sequence[torch.Generator] = (),
) -> BlendRule:
    """The background after step i (0-based, of ``num_steps`` kept steps starting at ``begin``).

    z0, noise: (B, C, h, w). ``official`` draws fresh noise per step from each candidate's
    generator (on the CPU, float32, like the initial noise), so it stays reproducible per seed."""
    if name == "diffusers":
        levels = [level(scheduler, begin + i + 1) for i in range(num_steps)]

        def diffusers_rule(i: int) -> torch.Tensor:
            return z0 if i + 1 == num_steps else noised(z0, noise, levels[i])

        return diffusers_rule
    if name == "official":
        levels = [level(scheduler, begin + i) for i in range(num_steps)]
        shape = (1, *z0.shape[1:])

        def official_rule(i: int) -> torch.Tensor:
            fresh = torch.cat([torch.randn(shape, generator=g) for g in generators])
            return noised(z0, fresh.to(z0), levels[i])

        return official_rule
    raise ValueError(f"blend rule {name!r} is not one of {', '.join(BLEND_RULES)}")
