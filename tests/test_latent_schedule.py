"""Tests for blendedit.latent.schedule: the blend's noise levels, read from the schedule itself.

Reference: what the scheduler's own ``add_noise`` gives at t' right after ``step`` in diffusers'
inpaint loop (``set_begin_index`` set: sigma schedulers then use their step index, which points at
t'). The explicit level must equal it for every scheduler blendedit offers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from blendedit.latent.sampling import blend_timesteps, first_step, step_kwargs
from blendedit.latent.schedule import blend_rule, level, parameterisation, start_latent
from blendedit.models import FLOW_SCHEDULERS, SCHEDULERS, make_scheduler
from tiny_models import tiny_scheduler


def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * z + 0.01 * t.float() / 1000


def _pair(name: str, steps: int = 10, blend_start: float = 0.25) -> tuple[Any, Any, int, Any]:
    """Two identically set-up schedulers: one runs the loop with its own add_noise, one with ours."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = (
        FlowMatchEulerDiscreteScheduler(shift=3.0).config
        if name in FLOW_SCHEDULERS
        else tiny_scheduler().config
    )
    out = []
    for _ in range(2):
        s = make_scheduler(name, base)
        ts = blend_timesteps(s, steps, blend_start)
        out.append((s, ts))
    (a, ts), (b, _) = out
    return a, b, first_step(a, steps, blend_start), ts


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_explicit_level_equals_the_schedulers_own_at_t_prime(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ref, ours, begin, ts = _pair(name)
    if name in FLOW_SCHEDULERS:  # diffusers' SD3/FLUX inpaint pipelines call it scale_noise
        ref.add_noise = lambda x, n, t: ref.scale_noise(x, t, n)
    rule = blend_rule("diffusers", ours, z0, noise, begin, len(ts))
    # The first kept level: add_noise at t_0 (begin index set: sigma schedulers use it).
    torch.testing.assert_close(
        start_latent(ours, z0, noise, begin), ref.add_noise(z0, noise, ts[:1]), atol=1e-6, rtol=0
    )
    z = ref.add_noise(z0, noise, ts[:1])
    for i, t in enumerate(ts):
        kw = step_kwargs(ref, [torch.Generator().manual_seed(1)], 0.0)
        z_in = ref.scale_model_input(z, t) if hasattr(ref, "scale_model_input") else z
        z = ref.step(model_fn(z_in, t), t, z, **kw).prev_sample
        if i + 1 < len(ts):  # diffusers' inpaint loop: add_noise(timesteps[i + 1]) after step
            theirs = ref.add_noise(z0, noise, ts[i + 1 : i + 2])
            torch.testing.assert_close(rule(i), theirs, atol=1e-6, rtol=0, msg=f"{name} step {i}")
        else:
            assert torch.equal(rule(i), z0)  # clean after the last step


def test_levels_read_the_tables() -> None:
    ddim = make_scheduler("ddim", tiny_scheduler().config)
    ddim.set_timesteps(10)
    abar = ddim.alphas_cumprod[int(ddim.timesteps[3])]
    assert level(ddim, 3) == pytest.approx((float(abar.sqrt()), float((1 - abar).sqrt())))
    assert level(ddim, 10) == (1.0, 0.0)  # past the last step: clean
    euler = make_scheduler("euler", tiny_scheduler().config)
    euler.set_timesteps(10)
    assert level(euler, 3) == pytest.approx((1.0, float(euler.sigmas[3])))
    assert level(euler, 10) == (1.0, 0.0)  # the table's final sigma
    dpm = make_scheduler("dpm++", tiny_scheduler().config)
    dpm.set_timesteps(10)
    s = float(dpm.sigmas[3])
    a = 1 / (s**2 + 1) ** 0.5
    assert level(dpm, 3) == pytest.approx((a, s * a))
    # Equivalent parameterisations of one noise level: DPM's (alpha, sigma) is DDIM's
    # (sqrt(abar), sqrt(1 - abar)) at the same timestep.
    t = int(dpm.timesteps[3])
    abar = dpm.alphas_cumprod[t]
    assert level(dpm, 3) == pytest.approx((float(abar.sqrt()), float((1 - abar).sqrt())), abs=1e-4)


def test_flow_matching_level() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(8)
    assert parameterisation(s) == "flow"
    sig = float(s.sigmas[2])
    assert level(s, 2) == pytest.approx((1 - sig, sig))
    z0, noise = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    ref = s.scale_noise(z0, s.timesteps[2:3], noise)  # no begin index: looked up by timestep
    torch.testing.assert_close(start_latent(s, z0, noise, 2), ref)


def test_unknown_scheduler_is_refused() -> None:
    class Mystery:
        pass

    with pytest.raises(ValueError, match="Mystery"):
        level(Mystery(), 0)


def test_official_rule_noises_to_t_with_fresh_noise() -> None:
    """The official scripts' variant: the background at the step's own t (one level noisier than
    the foreground), fresh noise each step, and not clean after the last step."""
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    sched = make_scheduler("ddim", tiny_scheduler().config)
    ts = blend_timesteps(sched, 10, 0.25)
    begin = first_step(sched, 10, 0.25)

    def official(seed: int) -> list[torch.Tensor]:
        rule = blend_rule(
            "official", sched, z0, noise, begin, len(ts), [torch.Generator().manual_seed(seed)]
        )
        return [rule(i) for i in range(len(ts))]

    a, b, c = official(5), official(5), official(6)
    diffusers = blend_rule("diffusers", sched, z0, noise, begin, len(ts))
    for i in range(len(ts)):
        assert torch.equal(a[i], b[i])  # reproducible per seed
        assert not torch.allclose(a[i], c[i])  # and drawn from it
        alpha, sigma = level(sched, begin + i)  # the level of t, not t'
        eps = (a[i] - alpha * z0) / sigma
        assert abs(float(eps.std()) - 1) < 0.25 and not torch.allclose(eps, noise, atol=1e-3)
        if i + 1 < len(ts):
            assert sigma > level(sched, begin + i + 1)[1]  # noisier than diffusers' t'
            assert not torch.allclose(a[i], diffusers(i))
    assert not torch.allclose(a[-1], z0, atol=1e-2)  # the last background keeps sigma(t_last)
    assert level(sched, begin + len(ts) - 1)[1] > 0.01
    fresh = [(a[i] - level(sched, begin + i)[0] * z0) / level(sched, begin + i)[1] for i in (0, 1)]
    assert not torch.allclose(fresh[0], fresh[1], atol=1e-3)  # new noise every step


def test_unknown_rule_is_refused() -> None:
    sched = tiny_scheduler()
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="blend rule"):
        blend_rule("mine", sched, torch.zeros(1), torch.zeros(1), 0, 4)
