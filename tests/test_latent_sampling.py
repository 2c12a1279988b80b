"""Tests for blendedit.latent.sampling: the blend, the skipped schedule, step arguments, the
blended loop's background/foreground invariants and classifier-free guidance."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import EulerDiscreteScheduler, PNDMScheduler

from blendedit.latent.sampling import (
    blend,
    blend_timesteps,
    blended_latent_diffusion,
    classifier_free_guidance,
    first_step,
    step_kwargs,
)
from blendedit.latent.schedule import blend_rule, start_latent
from tiny_models import tiny_scheduler, tiny_unet

CPU = torch.device("cpu")


def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Deterministic stand-in for the guided UNet."""
    return 0.1 * z + 0.01 * t.float() / 1000


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_init = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 1:5] = 1.0
    return z_init, noise, m


# ------------------------------------------------------------------ blend


def test_blend_formula() -> None:
    g = torch.Generator().manual_seed(1)
    fg, bg = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    m = torch.rand(1, 1, 4, 4, generator=g)
    assert torch.allclose(blend(fg, bg, m), fg * m + bg * (1 - m))
    assert torch.equal(blend(fg, bg, torch.ones(1, 1, 4, 4)), fg)
    assert torch.equal(blend(fg, bg, torch.zeros(1, 1, 4, 4)), bg)


# ------------------------------------------------------------------ blend_timesteps


def test_blend_timesteps_skips_floor_of_fraction() -> None:
    ref = tiny_scheduler()
    ref.set_timesteps(50)
    sched = tiny_scheduler()
    ts = blend_timesteps(sched, 50, 0.25)
    assert len(ts) == 38  # floor(50 * 0.25) = 12 skipped
    assert ts[0] == ref.timesteps[12]
    assert torch.equal(ts, ref.timesteps[12:])


def test_blend_timesteps_zero_keeps_all() -> None:
    ref = tiny_scheduler()
    ref.set_timesteps(50)
    ts = blend_timesteps(tiny_scheduler(), 50, 0.0)
    assert len(ts) == 50 and torch.equal(ts, ref.timesteps)


def test_blend_timesteps_sets_begin_index_where_supported() -> None:
    sched = EulerDiscreteScheduler.from_config(tiny_scheduler().config)
    ts = blend_timesteps(sched, 20, 0.5)
    assert len(ts) == 10
    assert sched.begin_index == 10


# ------------------------------------------------------------------ step_kwargs


def test_step_kwargs_ddim_has_eta_and_generators() -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    kw = step_kwargs(tiny_scheduler(), gens, 0.3)
    assert kw["eta"] == 0.3
    assert kw["generator"] == gens and isinstance(kw["generator"], list)


def test_step_kwargs_euler_has_generator_but_no_eta() -> None:
    gens = (torch.Generator().manual_seed(0),)
    kw = step_kwargs(EulerDiscreteScheduler.from_config(tiny_scheduler().config), gens, 0.3)
    assert "eta" not in kw
    assert kw["generator"] == list(gens)


def test_step_kwargs_pndm_takes_neither() -> None:
    sched = PNDMScheduler.from_config(tiny_scheduler().config, skip_prk_steps=True)
    assert step_kwargs(sched, [torch.Generator()], 0.0) == {}


# ------------------------------------------------------------------ blended_latent_diffusion


def _run(
    sched: Any, steps: int, masks: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]]:
    z_init, noise, m = _inputs()
    ts = blend_timesteps(sched, steps, 0.25)
    step_masks = masks if masks is not None else [m] * len(ts)
    seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def cb(i: int, t: torch.Tensor, z: torch.Tensor, out: Any) -> None:
        seen.append((i, t.clone(), z.clone(), out.prev_sample.clone()))

    begin = first_step(sched, steps, 0.25)
    background = blend_rule("diffusers", sched, z_init, noise, begin, len(ts))
    z0 = start_latent(sched, z_init, noise, begin)
    z = blended_latent_diffusion(
        model_fn, sched, z0, ts, step_masks, background, step_kwargs(sched, [], 0.0), cb
    )
    return z, ts, seen


def test_final_background_is_the_source_exactly() -> None:
    z_init, _, m = _inputs()
    z, ts, seen = _run(tiny_scheduler(), 10)
    assert len(seen) == len(ts) == 8
    assert torch.equal(z * (1 - m), z_init * (1 - m))
    assert torch.equal(seen[-1][2], z)
    assert not torch.allclose(z * m, z_init * m)  # the inside was denoised


def test_intermediate_background_is_at_the_level_just_reached() -> None:
    z_init, noise, m = _inputs()
    sched = tiny_scheduler()
    _, ts, seen = _run(sched, 10)
    ref = tiny_scheduler()  # DDIM add_noise is stateless: a fresh one gives the same levels
    for i, t, z, _ in seen[:-1]:
        assert t == ts[i]
        at_next = ref.add_noise(z_init, noise, ts[i + 1 : i + 2])
        at_t = ref.add_noise(z_init, noise, ts[i : i + 1])
        assert torch.equal(z * (1 - m), at_next * (1 - m)), i
        assert not torch.allclose(z * (1 - m), at_t * (1 - m)), i


def test_inside_the_mask_is_the_scheduler_step() -> None:
    z_init, noise, m = _inputs()
    _, ts, seen = _run(tiny_scheduler(), 10)
    for _, _, z, prev in seen:
        assert torch.equal(z * m, prev * m)
    # The first step by hand, on a fresh scheduler.
    sched = tiny_scheduler()
    ts2 = blend_timesteps(sched, 10, 0.25)
    assert torch.equal(ts2, ts)
    z0 = sched.add_noise(z_init, noise, ts2[:1])
    manual = sched.step(model_fn(sched.scale_model_input(z0, ts2[0]), ts2[0]), ts2[0], z0, eta=0.0)
    assert torch.equal(seen[0][3], manual.prev_sample)
    assert torch.equal(seen[0][2] * m, manual.prev_sample * m)


def test_each_step_uses_its_own_mask() -> None:
    z_init, noise, _ = _inputs()
    sched = tiny_scheduler()
    n = 8  # 10 steps, 2 skipped
    masks = []
    for i in range(n):
        mi = torch.zeros(1, 1, 8, 8)
        mi[..., : i + 1, :] = 1.0  # grows by one row per step
        masks.append(mi)
    z, ts, seen = _run(sched, 10, masks)
    ref = tiny_scheduler()
    for i, _, zi, prev in seen:
        bg = ref.add_noise(z_init, noise, ts[i + 1 : i + 2]) if i + 1 < n else z_init
        assert torch.equal(zi * (1 - masks[i]), bg * (1 - masks[i]))
        assert torch.equal(zi * masks[i], prev * masks[i])
    assert torch.equal(z * (1 - masks[-1]), z_init * (1 - masks[-1]))


def test_euler_background_levels() -> None:
    """A sigma-based scheduler whose add_noise depends on its step index lands on t' too."""
    z_init, noise, m = _inputs()
    cfg = tiny_scheduler().config
    z, ts, seen = _run(EulerDiscreteScheduler.from_config(cfg), 10)
    assert torch.equal(z * (1 - m), z_init * (1 - m))
    ref = EulerDiscreteScheduler.from_config(cfg)
    ref.set_timesteps(10)  # no begin index: add_noise looks each timestep up
    for i, _, zi, _ in seen[:-1]:
        at_next = ref.add_noise(z_init, noise, ts[i + 1 : i + 2])
        assert torch.allclose(zi * (1 - m), at_next * (1 - m), atol=1e-6), i


def test_loop_is_deterministic() -> None:
    a, _, _ = _run(tiny_scheduler(), 10)
    b, _, _ = _run(tiny_scheduler(), 10)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ classifier_free_guidance


@pytest.fixture(scope="module")
def unet() -> Any:
    return tiny_unet()


def _cfg_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, 32, generator=g)
    uncond = torch.randn(1, 77, 32, generator=g)
    return z, torch.tensor(500), cond, uncond


def guided(unet: Any, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> Any:
    context = torch.cat([uncond, cond])

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(z, t, encoder_hidden_states=context, return_dict=False)[0]

    return classifier_free_guidance(denoise, scale)


@torch.no_grad()
def test_cfg_scale_one_is_conditional(unet: Any) -> None:
    z, t, cond, uncond = _cfg_inputs()
    out = guided(unet, cond, uncond, 1.0)(z, t)
    ref = unet(z, t, encoder_hidden_states=cond, return_dict=False)[0]
    other = unet(z, t, encoder_hidden_states=uncond, return_dict=False)[0]
    assert out.shape == z.shape
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(ref, other, atol=1e-5)


@torch.no_grad()
def test_cfg_scale_zero_is_unconditional(unet: Any) -> None:
    z, t, cond, uncond = _cfg_inputs()
    out = guided(unet, cond, uncond, 0.0)(z, t)
    ref = unet(z, t, encoder_hidden_states=uncond, return_dict=False)[0]
    assert torch.allclose(out, ref, atol=1e-5)


@torch.no_grad()
def test_cfg_scale_extrapolates(unet: Any) -> None:
    z, t, cond, uncond = _cfg_inputs()
    c = guided(unet, cond, uncond, 1.0)(z, t)
    u = guided(unet, cond, uncond, 0.0)(z, t)
    out = guided(unet, cond, uncond, 7.5)(z, t)
    assert torch.allclose(out, u + 7.5 * (c - u), atol=1e-4)
