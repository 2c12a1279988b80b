"""Gaussian diffusion: schedules, respacing, p_mean_variance, q_sample and DDIM vs guided-diffusion."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from blendedit.errors import InputError
from blendedit.pixel.adm import ADM256_UNCOND, ADMConfig, load_adm
from blendedit.pixel.gaussian import GaussianDiffusion, condition_mean
from blendedit.pixel.schedule import space_timesteps

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
pytestmark = pytest.mark.skipif(not REF.is_dir(), reason=f"ADM reference data not found at {REF}")

SCHEDULE_KEYS = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def cfg() -> ADMConfig:
    return ADMConfig.from_json(REF / "tiny_adm_config.json")


@pytest.fixture(scope="module")
def diffusion(cfg: ADMConfig) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(cfg)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny_adm_io.safetensors"))


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    assert ours.shape == ref.shape
    err = (ours.double() - ref.double()).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol:g}"


# -- schedules --------------------------------------------------------------------------------------


def test_space_timesteps_rule() -> None:
    assert space_timesteps(1000, "10") == list(range(0, 1000, 111))
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(5, "") == [0, 1, 2, 3, 4]
    assert space_timesteps(300, "10,15,20") == sorted(
        set(space_timesteps(100, "10"))
        | {100 + s for s in space_timesteps(100, "15")}
        | {200 + s for s in space_timesteps(100, "20")}
    )
    for bad in ("1001", "abc", "ddim7x", "0"):
        with pytest.raises(InputError):
            space_timesteps(1000, bad)


def test_tiny_schedule_matches_reference(diffusion: GaussianDiffusion, io: dict) -> None:
    assert diffusion.num_steps == 10
    assert diffusion.timestep_map.tolist() == io["timestep_map"].tolist()
    for key in SCHEDULE_KEYS:
        ours = getattr(diffusion, key)
        assert ours.dtype == torch.float64, key
        torch.testing.assert_close(ours, io[key], rtol=1e-12, atol=0, equal_nan=True, msg=key)


def test_adm256_schedule_matches_reference() -> None:
    ref = json.loads((REF / "adm256_respace100_schedule.json").read_text())
    ours = GaussianDiffusion.from_config(ADM256_UNCOND)
    assert ours.num_steps == ref["num_respaced_steps"] == 100
    assert ours.original_num_steps == ref["original_num_steps"]
    assert ours.timestep_map.tolist() == ref["timestep_map"]
    for key in ("betas", "alphas_cumprod"):
        want = torch.tensor(ref[key], dtype=torch.float64)
        torch.testing.assert_close(getattr(ours, key), want, rtol=1e-12, atol=0, msg=key)


def test_model_timesteps(diffusion: GaussianDiffusion, io: dict) -> None:
    ts = diffusion.model_timesteps(io["t"])
    assert ts.dtype == torch.float32 and ts.tolist() == [333.0, 777.0]
    assert torch.equal(ts, io["unet_timesteps"])
    big = GaussianDiffusion.from_config(ADM256_UNCOND)
    assert big.model_timesteps(torch.tensor([6, 99])).tolist() == [61.0, 999.0]
    with pytest.raises(ValueError):
        diffusion.model_timesteps([10])


# -- posterior and forward process ------------------------------------------------------------------


def test_p_mean_variance_matches_reference(diffusion: GaussianDiffusion, io: dict) -> None:
    out = diffusion.p_mean_variance(io["model_output"], io["x"], io["t"])
    _assert_close(out.mean, io["mean"], 1e-5)
    _assert_close(out.variance, io["variance"], 1e-5)
    _assert_close(out.log_variance, io["log_variance"], 1e-5)
    _assert_close(out.pred_xstart, io["pred_xstart"], 1e-4)


def test_fixed_variances(diffusion: GaussianDiffusion, io: dict) -> None:
    x, t, eps = io["x"], io["t"], io["model_output"][:, :3]
    large = dataclasses.replace(diffusion, learn_sigma=False)
    small = dataclasses.replace(diffusion, learn_sigma=False, sigma_small=True)
    big_var = torch.cat([diffusion.posterior_variance[1:2], diffusion.betas[1:]])[t].float()
    out = large.p_mean_variance(eps, x, t)
    assert out.variance.shape == x.shape
    torch.testing.assert_close(out.variance[:, 0, 0, 0], big_var)
    out = small.p_mean_variance(eps, x, t)
    torch.testing.assert_close(out.variance[:, 0, 0, 0], diffusion.posterior_variance[t].float())
    torch.testing.assert_close(out.mean, io["mean"], atol=1e-5, rtol=0)  # mean ignores sigma


def test_q_sample_matches_reference(diffusion: GaussianDiffusion, io: dict) -> None:
    out = diffusion.q_sample(io["q_sample_x0"], io["t"], io["q_sample_noise"])
    _assert_close(out, io["q_sample_out"], 1e-5)


# -- samplers ---------------------------------------------------------------------------------------


def test_ddim_loop_matches_reference(
    cfg: ADMConfig, diffusion: GaussianDiffusion, io: dict
) -> None:
    model = load_adm(REF / "tiny_adm.safetensors", cfg)
    x = io["ddim_noise"]
    with torch.no_grad():
        for k, i in enumerate(reversed(range(diffusion.num_steps))):
            t = torch.tensor([i])
            out = diffusion.p_mean_variance(model(x, diffusion.model_timesteps(t)), x, t)
            x = diffusion.ddim_step(out, x, t, eta=0.0)
            _assert_close(out.pred_xstart, io["ddim_step_pred_xstart"][k : k + 1], 2e-3)
            _assert_close(x, io["ddim_step_samples"][k : k + 1], 2e-3)
    _assert_close(x, io["ddim_out"], 2e-3)


def test_stochastic_steps_use_the_generator(diffusion: GaussianDiffusion, io: dict) -> None:
    out = diffusion.p_mean_variance(io["model_output"], io["x"], io["t"])

    def draw(fn, seed: int) -> torch.Tensor:
        return fn(torch.Generator().manual_seed(seed))

    ddpm = lambda g: diffusion.ddpm_step(out, io["t"], g)  # noqa: E731
    ddim = lambda g: diffusion.ddim_step(out, io["x"], io["t"], eta=1.0, generator=g)  # noqa: E731
    for fn in (ddpm, ddim):
        assert torch.equal(draw(fn, 0), draw(fn, 0))
        assert not torch.equal(draw(fn, 0), draw(fn, 1))
    deterministic = diffusion.ddim_step(out, io["x"], io["t"])
    assert not torch.equal(draw(ddim, 0), deterministic)
    with pytest.raises(ValueError):
        diffusion.ddim_step(out, io["x"], io["t"], eta=0.5)
    # no noise at t = 0
    out0 = diffusion.p_mean_variance(io["model_output"], io["x"], 0)
    assert torch.equal(diffusion.ddpm_step(out0, 0, torch.Generator().manual_seed(0)), out0.mean)
    ddim0 = diffusion.ddim_step(out0, io["x"], 0, eta=1.0, generator=torch.Generator())
    torch.testing.assert_close(ddim0, out0.pred_xstart)


def test_condition_mean() -> None:
    mean, var, grad = torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5), torch.arange(12.0)
    torch.testing.assert_close(
        condition_mean(mean, var, grad.view(1, 3, 2, 2)), 1 + 0.5 * grad.view(1, 3, 2, 2)
    )
