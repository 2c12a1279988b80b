"""Gaussian diffusion for ADM: respaced schedules, posterior, DDPM and DDIM steps.

Our own implementation of the sampling side of OpenAI's guided-diffusion, written from the
conventions recorded in ``shared/reference/adm/README.md``:

* forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0): Ho et al. 2020 (DDPM),
  eq. 4 and eqs. 6-7;
* learned-range variance log σ² = f·log β_t + (1 − f)·log β̃_t and timestep respacing: Nichol &
  Dhariwal 2021 (Improved DDPM), sections 3.1 and 4; used by ADM (Dhariwal & Nichol 2021, section 2);
* DDIM update: Song et al. 2021, eq. 12, with σ_t(η) of eq. 16;
* guidance by shifting the mean with Σ·∇ log p: ADM paper section 4.1, algorithm 1.

Every diffusion function takes ``t`` as a *respaced* index (0..K−1). Schedules are float64; a
coefficient is gathered at ``t`` in float64, cast to float32, and only then multiplied with the
float32 tensors. The UNet never sees ``t`` itself; it gets :meth:`GaussianDiffusion.model_timesteps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from blendedit.errors import InputError
from blendedit.pixel.schedule import F64, beta_schedule, space_timesteps

if TYPE_CHECKING:
    from blendedit.pixel.adm import ADMConfig


@dataclass(frozen=True)
class MeanVariance:
    """Output of :meth:`GaussianDiffusion.p_mean_variance`; every tensor has the shape of x."""

    mean: Tensor  # posterior mean μ̃(x_t, x̂_0)
    variance: Tensor  # σ²_t
    log_variance: Tensor  # log σ²_t
    pred_xstart: Tensor  # x̂_0


def condition_mean(mean: Tensor, variance: Tensor, grad: Tensor) -> Tensor:
    """Guided mean μ + Σ·∇_x log p(y | x_t) (ADM paper, section 4.1, algorithm 1)."""
    return mean.float() + variance * grad.float()


@dataclass
class GaussianDiffusion:
    """A (respaced) diffusion: K float64 betas plus everything derived from them.

    Build it with :meth:`create` or :meth:`from_config`. All arrays are float64 of shape (K,) on
    the CPU, except ``timestep_map`` (int64): respaced index -> original timestep.
    """

    betas: Tensor
    timestep_map: Tensor
    original_num_steps: int
    rescale_timesteps: bool = True
    learn_sigma: bool = True
    sigma_small: bool = False
    predict_xstart: bool = False
    alphas_cumprod: Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: Tensor = field(init=False, repr=False)
    sqrt_alphas_cumprod: Tensor = field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: Tensor = field(init=False, repr=False)
    sqrt_recip_alphas_cumprod: Tensor = field(init=False, repr=False)
    sqrt_recipm1_alphas_cumprod: Tensor = field(init=False, repr=False)
    posterior_variance: Tensor = field(init=False, repr=False)
    posterior_log_variance_clipped: Tensor = field(init=False, repr=False)
    posterior_mean_coef1: Tensor = field(init=False, repr=False)
    posterior_mean_coef2: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b = self.betas = self.betas.to(F64).cpu()
        self.timestep_map = self.timestep_map.to(torch.int64).cpu()
        if b.ndim != 1 or len(b) < 2 or len(self.timestep_map) != len(b):
            raise InputError(
                f"a diffusion needs at least 2 steps and one timestep each, got {len(b)}"
            )
        ac = self.alphas_cumprod = torch.cumprod(1.0 - b, dim=0)
        acp = self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=F64), ac[:-1]])
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1).sqrt()
        pv = self.posterior_variance = b * (1.0 - acp) / (1.0 - ac)  # β̃_t; β̃_0 = 0
        self.posterior_log_variance_clipped = torch.cat([pv[1:2], pv[1:]]).log()
        self.posterior_mean_coef1 = b * acp.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * (1.0 - b).sqrt() / (1.0 - ac)

    @classmethod
    def create(
        cls,
        steps: int = 1000,
        noise_schedule: str = "linear",
        timestep_respacing: str = "",
        *,
        rescale_timesteps: bool = True,
        learn_sigma: bool = True,
        sigma_small: bool = False,
        predict_xstart: bool = False,
    ) -> GaussianDiffusion:
        """Respaced betas β'_i = 1 − ᾱ[map[i]] / ᾱ[map[i−1]] (ᾱ[map[−1]] = 1), so ᾱ' = ᾱ[map]."""
        ac = torch.cumprod(1.0 - beta_schedule(noise_schedule, steps), dim=0)
        kept = torch.tensor(space_timesteps(steps, timestep_respacing), dtype=torch.int64)
        ac_kept = ac[kept]
        betas = 1 - ac_kept / torch.cat([torch.ones(1, dtype=F64), ac_kept[:-1]])
        return cls(betas, kept, steps, rescale_timesteps, learn_sigma, sigma_small, predict_xstart)

    @classmethod
    def from_config(
        cls, config: ADMConfig, timestep_respacing: str | None = None
    ) -> GaussianDiffusion:
        """The diffusion of an :class:`~blendedit.pixel.adm.ADMConfig` (its diffusion settings;
        use_kl and rescale_learned_sigmas only change the training loss and are ignored), with
        ``timestep_respacing`` instead of the config's when given."""
        return cls.create(
            config.diffusion_steps,
            config.noise_schedule,
            config.timestep_respacing if timestep_respacing is None else timestep_respacing,
            rescale_timesteps=config.rescale_timesteps,
            learn_sigma=config.learn_sigma,
            sigma_small=config.sigma_small,
            predict_xstart=config.predict_xstart,
        )

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    # -- helpers ----------------------------------------------------------------------------------

    def _index(self, t: Tensor | int | list[int]) -> Tensor:
        """Respaced indices as an int64 CPU tensor, checked to lie in 0..K−1."""
        t = torch.as_tensor(t).to("cpu", torch.int64)
        if bool(((t < 0) | (t >= self.num_steps)).any()):
            raise ValueError(f"t must hold indices in 0..{self.num_steps - 1}, got {t.tolist()}")
        return t

    def _t(self, t: Tensor | int | list[int], batch: int) -> Tensor:
        """Respaced indices of shape (B,); a scalar is broadcast to the batch."""
        t = self._index(t)
        t = t.expand(batch) if t.ndim == 0 else t
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return t

    def _at(self, arr: Tensor, t: Tensor | int, x: Tensor) -> Tensor:
        """arr[t] gathered in float64, cast to float32, shaped (B, 1, 1, 1) on x's device."""
        t = self._t(t, x.shape[0])
        return arr[t].to(torch.float32).to(x.device).view(-1, *([1] * (x.ndim - 1)))

    # -- model input / forward process ------------------------------------------------------------

    def model_timesteps(self, t: Tensor | int | list[int]) -> Tensor:
        """Float32 timesteps fed to the UNet: map[t], times 1000/T if rescale_timesteps.

        >>> GaussianDiffusion.create(timestep_respacing="10").model_timesteps([3, 7])
        tensor([333., 777.])
        """
        t_in = torch.as_tensor(t)
        ts = self.timestep_map[self._index(t_in)].to(torch.float32)
        if self.rescale_timesteps:
            ts = ts * (1000.0 / self.original_num_steps)
        return ts.to(t_in.device)

    def q_sample(
        self,
        x0: Tensor,
        t: Tensor | int,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_t = √ᾱ'_t·x_0 + √(1 − ᾱ'_t)·ε  (DDPM eq. 4); noise drawn from ``generator`` if None."""
        if noise is None:
            noise = _randn_like(x0, generator)
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + (
            self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    # -- reverse process --------------------------------------------------------------------------

    def p_mean_variance(
        self, model_output: Tensor, x: Tensor, t: Tensor | int, clip_denoised: bool = False
    ) -> MeanVariance:
        """Mean, variance and x̂_0 of p(x_{t−1} | x_t) from the raw UNet output.

        model_output: (B, 2C, H, W) = [ε | v] with a learned sigma, else (B, C, H, W) = ε
        (or x̂_0 itself when predict_xstart). LEARNED_RANGE (Improved DDPM eq. 15): with
        f = (v + 1)/2, log σ² = f·log β'_t + (1 − f)·log β̃_t(clipped); v is not clamped.
        Fixed variances: β̃_t (sigma_small) or [β̃_1, β'_1, ..., β'_{K−1}] (large).
        x̂_0 = √(1/ᾱ'_t)·x − √(1/ᾱ'_t − 1)·ε; mean = c1_t·x̂_0 + c2_t·x (DDPM eqs. 7, 15).
        """
        c = x.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * c:
                raise ValueError(f"expected {2 * c} output channels, got {model_output.shape[1]}")
            out, v = model_output[:, :c], model_output[:, c:]
            min_log = self._at(self.posterior_log_variance_clipped, t, x)
            max_log = self._at(self.betas.log(), t, x)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            out = model_output
            if self.sigma_small:
                var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
            else:
                var = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
                log_var = var.log()
            variance = self._at(var, t, x).expand_as(x)
            log_variance = self._at(log_var, t, x).expand_as(x)
        if self.predict_xstart:
            pred_xstart = out
        else:
            pred_xstart = self._at(self.sqrt_recip_alphas_cumprod, t, x) * x - (
                self._at(self.sqrt_recipm1_alphas_cumprod, t, x) * out
            )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean = self._at(self.posterior_mean_coef1, t, x) * pred_xstart + (
            self._at(self.posterior_mean_coef2, t, x) * x
        )
        return MeanVariance(mean, variance, log_variance, pred_xstart)

    def ddpm_step(self, out: MeanVariance, t: Tensor | int, generator: torch.Generator) -> Tensor:
        """Ancestral sample x_{t−1} = mean + σ_t·z, z ~ N(0, I) from ``generator``; no noise where
        t = 0. Pass ``out`` with a guided mean (:func:`condition_mean`) for CLIP guidance."""
        mean = out.mean
        nonzero = (self._t(t, mean.shape[0]) != 0).to(mean.device, torch.float32)
        noise = _randn_like(mean, generator)
        return mean + nonzero.view(-1, *([1] * (mean.ndim - 1))) * (
            torch.exp(0.5 * out.log_variance) * noise
        )

    def ddim_step(
        self,
        out: MeanVariance,
        x: Tensor,
        t: Tensor | int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """DDIM update (Song et al. 2021, eq. 12) from ``out`` = p_mean_variance at (x, t).

        ε is re-derived from x̂_0 as (√(1/ᾱ'_t)·x − x̂_0)/√(1/ᾱ'_t − 1); then
        x_{t−1} = x̂_0·√ᾱ'_{t−1} + √(1 − ᾱ'_{t−1} − σ²)·ε + σ·z with
        σ = η·√((1 − ᾱ'_{t−1})/(1 − ᾱ'_t))·√(1 − ᾱ'_t/ᾱ'_{t−1}). η = 0 is deterministic;
        η > 0 needs an explicit ``generator``. No noise where t = 0.
        """
        x0 = out.pred_xstart
        eps = (self._at(self.sqrt_recip_alphas_cumprod, t, x) * x - x0) / self._at(
            self.sqrt_recipm1_alphas_cumprod, t, x
        )
        ab, ab_prev = self._at(self.alphas_cumprod, t, x), self._at(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
        sample = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma**2) * eps
        if eta == 0:
            return sample
        if generator is None:
            raise ValueError("ddim_step with eta > 0 needs an explicit torch.Generator")
        nonzero = (self._t(t, x.shape[0]) != 0).to(x.device, torch.float32)
        return sample + nonzero.view_as(sigma) * sigma * _randn_like(x, generator)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (so a CPU generator
    gives the same noise whatever device x is on), then moved to x's device and dtype."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(x.device, x.dtype)
