"""CLIP guidance for Blended Diffusion (Avrahami et al. 2022, section 3; SPEC 2), as plain functions.

The pieces compose by wrapping: :func:`guided_mean_variance` runs the ADM UNet once with gradients
enabled for the sample only (the weights stay frozen), hands ``(x_t, t, out)`` to a guidance
function, and shifts the mean by ``variance * grad`` (:func:`~blendedit.pixel.gaussian.condition_mean`,
DDPM) or the noise estimate by ``-sqrt(1 - alpha_bar) * grad`` (:func:`condition_score`, DDIM).
The guidance function is :func:`clip_guidance_grad` with its settings bound (``functools.partial``):

* the clean estimate mixed with the sample, ``x_in = x̂_0·fac + x_t·(1 − fac)``,
  ``fac = sqrt(1 − ᾱ_t)`` (official code);
* the CLIP loss: ``x_in`` masked, resized to CLIP's size plus N augmented copies
  (:class:`Augmenter`), spherical distance to the prompt's embedding averaged over the copies;
* a range loss on x̂_0 (penalises values outside [−1, 1]);
* for the local CLIP-guided baseline, a background loss on the unmasked region
  (L2 and optionally LPIPS against the source).

Every loss is per sample and summed over the batch, so each candidate's gradient depends on that
candidate alone (the official code's ``mse_loss`` averages over the batch instead).

Images here are float tensors in [−1, 1] of shape (B, 3, H, W); masks are (1 or B, 1, H, W) in
[0, 1], 1 = the region to edit. All randomness comes from explicit ``torch.Generator`` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from kornia.geometry.transform import (
    get_affine_matrix2d,
    get_perspective_transform,
    warp_affine,
    warp_perspective,
)
from torch import Tensor

from blendedit.errors import InputError
from blendedit.pixel.gaussian import GaussianDiffusion, MeanVariance, condition_mean

if TYPE_CHECKING:
    from blendedit.frame.metrics import LPIPS
    from blendedit.frame.ranking import ClipScorer

GeneratorArg = torch.Generator | Sequence[torch.Generator]
# (x_t with requires_grad, respaced t, p_mean_variance output built from x_t) -> guidance direction
GuidanceFn = Callable[[Tensor, int, MeanVariance], Tensor]

__all__ = [
    "Augmenter",
    "GuidanceFn",
    "background_loss",
    "clip_guidance_grad",
    "clip_loss",
    "condition_score",
    "embed_clip_images",
    "guided_mean_variance",
    "make_augmenter",
    "range_loss",
    "spherical_distance",
]


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """Squared great-circle distance ``2·arcsin(‖â − b̂‖ / 2)²`` between the L2-normalised rows of
    a (N, D) and b (N or 1, D) -> (N,). 0 for equal directions, (π/2)²/2 = 2·(π/4)² for orthogonal
    ones, π²/2 for opposite ones (Crowson's CLIP-guided diffusion loss, used by Blended Diffusion).
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    # clamp: rounding can push ‖â − b̂‖/2 a hair above 1 for opposite vectors (arcsin -> nan)
    return (a - b).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def range_loss(x: Tensor) -> Tensor:
    """Mean squared excess of x (B, C, H, W) outside [−1, 1], per sample -> (B,); 0 inside."""
    return (x - x.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))


def embed_clip_images(clip: ClipScorer, images: Tensor) -> Tensor:
    """(N, 3, S, S) in [0, 1] at CLIP's input size -> (N, D) float32 image features, with
    gradients (no resizing or padding here; the :class:`Augmenter` has already resized)."""
    mean, std = clip.mean.to(images), clip.std.to(images)
    pixels = ((images - mean) / std).to(clip.device, clip.dtype)
    out = clip.model.get_image_features(pixel_values=pixels)
    return (out if isinstance(out, Tensor) else out.pooler_output).float()


def clip_loss(
    x_in: Tensor,
    mask: Tensor,
    text_embed: Tensor,
    clip: ClipScorer,
    augmenter: Augmenter,
    generators: GeneratorArg,
) -> Tensor:
    """SPEC 2 CLIP loss per sample -> (B,): ``x_in * mask`` (masked-out pixels become 0, mid grey,
    as in the official code), resized to CLIP's size plus ``augmenter.num`` augmented copies,
    spherical distance of each copy's embedding to ``text_embed`` (1, D), averaged over copies."""
    b = x_in.shape[0]
    copies = augmenter(x_in * mask.to(x_in), generators)  # ((num + 1)·B, 3, S, S), copy-major
    emb = embed_clip_images(clip, (copies + 1) / 2)
    dist = spherical_distance(emb, text_embed.to(emb.device))  # ((num + 1)·B,)
    return dist.view(augmenter.num + 1, b).mean(dim=0)


def background_loss(
    x_in: Tensor,
    source: Tensor,
    mask: Tensor,
    *,
    l2_weight: float = 10000.0,
    lpips_weight: float = 1000.0,
    lpips: LPIPS | None = None,
) -> Tensor:
    """The local baseline's background-preservation loss per sample -> (B,).

    ``l2_weight·MSE + lpips_weight·LPIPS`` between ``x_in·(1 − m)`` and ``source·(1 − m)``
    (official weights 10000 and 1000). Unlike the official code, which compares the masked sample
    with the *unmasked* source, both sides are masked: the same gradient for the L2 term, and LPIPS
    then compares like with like. The LPIPS term is skipped when ``lpips`` is None.
    """
    bg = 1.0 - mask.to(x_in)
    a, b = x_in * bg, source.to(x_in) * bg
    loss = l2_weight * (a - b).pow(2).mean(dim=(1, 2, 3))
    if lpips is not None and lpips_weight:
        dist = lpips((a + 1) / 2, (b.expand_as(a) + 1) / 2)  # LPIPS takes [0, 1]
        loss = loss + lpips_weight * dist.to(loss)
    return loss


# ---------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmenter:
    """CLIP-side augmentations of Blended Diffusion (paper 3.1): a plain resize to ``size`` plus
    ``num`` copies through RandomAffine(degrees, translate, border padding) then
    RandomPerspective(distortion) — kornia's distributions and warps, but the parameters are drawn
    from the caller's ``torch.Generator`` (kornia's own modules draw from the global RNG), so the
    copies are reproducible per seed and independent of the device.

    ``p`` is the probability of each of the two transforms (SPEC: 1; the official code used 0.7);
    13 uniform numbers are drawn per copy whatever ``p``, so the generator advances the same way.
    """

    num: int = 8
    size: int = 224
    degrees: float = 15.0
    translate: float = 0.1
    distortion: float = 0.7
    p: float = 1.0
    padding_mode: str = "border"

    DRAWS_PER_COPY = 13  # angle, tx, ty, affine-on, 4 corners x 2, perspective-on

    def draw(self, generator: torch.Generator) -> Tensor:
        """(num, 13) uniforms in [0, 1) from ``generator`` (on the CPU, float32): per copy the
        angle, x and y shift, affine on/off, 4 corners x 2 offsets, perspective on/off."""
        return torch.rand((self.num, self.DRAWS_PER_COPY), generator=generator, device="cpu")

    def matrices(self, u: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Uniforms (num, 13) -> (num, 3, 3) affine and (num, 3, 3) perspective matrices in pixel
        coordinates, float32, with kornia's RandomAffine / RandomPerspective("basic") parameter
        distributions (identity where a transform is not applied, probability 1 − p)."""
        u = u.to(torch.float32)
        n = u.shape[0]
        # RandomAffine: angle ~ U(-deg, deg), shift ~ U(-t·W, t·W) x U(-t·H, t·H), about the centre.
        angle = (2 * u[:, 0] - 1) * self.degrees
        shift = (2 * u[:, 1:3] - 1) * self.translate * torch.tensor([width, height])
        center = torch.tensor([width / 2 - 0.5, height / 2 - 0.5]).expand(n, 2)
        affine = get_affine_matrix2d(shift, center, torch.ones(n, 2), angle)  # (n, 3, 3)
        # RandomPerspective: each corner moves inwards by up to distortion·(W − 1, H − 1)/2.
        start = torch.tensor(
            [[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]]
        ).expand(n, 4, 2)
        factor = self.distortion * torch.tensor([width - 1.0, height - 1.0]) / 2
        inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
        end = start + factor * u[:, 4:12].reshape(n, 4, 2) * inward
        persp = get_perspective_transform(start, end)  # (n, 3, 3)
        eye = torch.eye(3).expand(n, 3, 3)
        affine = torch.where((u[:, 3] < self.p).view(n, 1, 1), affine, eye)
        persp = torch.where((u[:, 12] < self.p).view(n, 1, 1), persp, eye)
        return affine, persp

    def warp(self, images: Tensor, affine: Tensor, persp: Tensor) -> Tensor:
        """Apply per-image (N, 3, 3) matrices to (N, C, H, W) as kornia's modules do: the affine
        warp (bilinear, ``padding_mode``) then the perspective warp (bilinear, zeros), both with
        align_corners=False. Differentiable with respect to ``images``."""
        size = tuple(images.shape[-2:])
        dev = {"device": images.device, "dtype": images.dtype}
        out = warp_affine(
            images,
            affine[:, :2].to(**dev),
            size,
            padding_mode=self.padding_mode,
            align_corners=False,
        )
        return warp_perspective(out, persp.to(**dev), size, align_corners=False)

    def __call__(self, images: Tensor, generators: GeneratorArg) -> Tensor:
        """(B, C, H, W) -> ((num + 1)·B, C, size, size), copy-major: [plain of all B, copy 1 of
        all B, ...]. Image j's copies use ``generators[j]``; a single generator is drawn from for
        each image in turn."""
        b = images.shape[0]
        gens = [generators] * b if isinstance(generators, torch.Generator) else list(generators)
        if len(gens) != b:
            raise ValueError(f"need one generator per image: {b} images, {len(gens)} generators")
        plain = F.adaptive_avg_pool2d(images, (self.size, self.size))  # the official resize
        if self.num == 0:
            return plain
        mats = [self.matrices(self.draw(g), self.size, self.size) for g in gens]
        # copy-major order: row k·B + j is copy k of image j
        affine = torch.stack([m[0] for m in mats], dim=1).reshape(-1, 3, 3)
        persp = torch.stack([m[1] for m in mats], dim=1).reshape(-1, 3, 3)
        return torch.cat([plain, self.warp(plain.repeat(self.num, 1, 1, 1), affine, persp)])


def make_augmenter(
    num: int,
    size: int = 224,
    *,
    degrees: float = 15.0,
    translate: float = 0.1,
    distortion: float = 0.7,
    p: float = 1.0,
    padding_mode: str = "border",
) -> Augmenter:
    """An :class:`Augmenter` with ``num`` augmented copies plus one plain resize to ``size``."""
    if num < 0:
        raise InputError(f"aug_num: {num!r} must be >= 0")
    if size < 2:
        raise InputError(f"size: {size!r} must be at least 2 px")
    if not 0.0 <= p <= 1.0 or not 0.0 <= distortion <= 1.0:
        raise InputError("augmentation: p and distortion must lie in [0, 1]")
    return Augmenter(num, size, degrees, translate, distortion, p, padding_mode)


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------


def _coef(arr: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
    """arr[t] (float64 schedule) as float32 (B, 1, 1, 1) on x's device; t a scalar or (B,)."""
    idx = torch.as_tensor(t, device="cpu").long().expand(x.shape[0])
    return arr[idx].to(torch.float32).to(x.device).view(-1, 1, 1, 1)


def clip_guidance_grad(
    x_t: Tensor,
    t: int | Tensor,
    out: MeanVariance,
    diffusion: GaussianDiffusion,
    *,
    mask: Tensor,
    clip: ClipScorer | None = None,
    text_embed: Tensor | None = None,
    augmenter: Augmenter | None = None,
    generators: GeneratorArg | None = None,
    clip_weight: float = 1000.0,
    range_weight: float = 50.0,
    source: Tensor | None = None,
    l2_weight: float = 0.0,
    lpips_weight: float = 0.0,
    lpips: LPIPS | None = None,
) -> Tensor:
    """The guidance direction ``−∇_{x_t} loss`` (SPEC 2), loss summed over the batch of

    ``clip_weight·clip_loss(x_in) + range_weight·range_loss(x̂_0)
    [+ background_loss(x_in, source; l2_weight, lpips_weight)]``,
    with ``x_in = x̂_0·fac + x_t·(1 − fac)``, ``fac = sqrt(1 − ᾱ_t)``.

    ``x_t`` must require grad and ``out`` must have been computed from it (see
    :func:`guided_mean_variance`). The CLIP term needs ``clip``, ``text_embed``, ``augmenter`` and
    ``generators``; the background term needs ``source`` (the clean input, (1, 3, H, W)) and runs
    when ``l2_weight`` or ``lpips_weight`` is nonzero. Returns zeros when no term is active.
    """
    fac = _coef(diffusion.sqrt_one_minus_alphas_cumprod, t, x_t)
    x_in = out.pred_xstart * fac + x_t * (1 - fac)
    terms: list[Tensor] = []
    if clip_weight:
        if clip is None or text_embed is None or augmenter is None or generators is None:
            raise ValueError("the CLIP term needs clip, text_embed, augmenter and generators")
        terms.append(clip_weight * clip_loss(x_in, mask, text_embed, clip, augmenter, generators))
    if range_weight:
        terms.append(range_weight * range_loss(out.pred_xstart))
    if source is not None and (l2_weight or (lpips_weight and lpips is not None)):
        terms.append(
            background_loss(
                x_in, source, mask, l2_weight=l2_weight, lpips_weight=lpips_weight, lpips=lpips
            )
        )
    if not terms:
        return torch.zeros_like(x_t)
    loss = torch.stack([term.float() for term in terms]).sum()
    return -torch.autograd.grad(loss, x_t)[0].detach()


def condition_score(
    diffusion: GaussianDiffusion, out: MeanVariance, x: Tensor, t: int | Tensor, grad: Tensor
) -> MeanVariance:
    """Guidance for DDIM (ADM paper, section 4.2, algorithm 2): ε' = ε − sqrt(1 − ᾱ_t)·grad,
    then x̂_0 and the posterior mean recomputed from ε' (DDIM steps use x̂_0, not the mean)."""
    rc, rcm1 = (
        _coef(diffusion.sqrt_recip_alphas_cumprod, t, x),
        _coef(diffusion.sqrt_recipm1_alphas_cumprod, t, x),
    )
    eps = (rc * x - out.pred_xstart) / rcm1
    eps = eps - _coef(diffusion.sqrt_one_minus_alphas_cumprod, t, x) * grad.float()
    pred_xstart = rc * x - rcm1 * eps
    mean = _coef(diffusion.posterior_mean_coef1, t, x) * pred_xstart + (
        _coef(diffusion.posterior_mean_coef2, t, x) * x
    )
    return MeanVariance(mean, out.variance, out.log_variance, pred_xstart)


def guided_mean_variance(
    model: Callable[[Tensor, Tensor], Tensor],
    diffusion: GaussianDiffusion,
    x: Tensor,
    t: int,
    guidance: GuidanceFn | None = None,
    *,
    score: bool = False,
) -> MeanVariance:
    """One UNet call at respaced step ``t`` -> p(x_{t−1} | x_t) with the guidance applied.

    Gradients are enabled for a detached copy of ``x`` only (the model's weights stay frozen), so
    the guidance can differentiate through x̂_0. The result is detached: the mean shifted by
    ``variance·grad`` (:func:`condition_mean`, for DDPM) or, with ``score=True``, ε shifted
    (:func:`condition_score`, for DDIM). Without ``guidance`` it is plain p_mean_variance.
    """
    ts = diffusion.model_timesteps(t).to(x.device)
    if guidance is None:
        with torch.no_grad():
            return diffusion.p_mean_variance(model(x, ts), x, t)
    with torch.enable_grad():
        x_t = x.detach().requires_grad_(True)
        out = diffusion.p_mean_variance(model(x_t, ts), x_t, t)
        grad = guidance(x_t, t, out)
    out = MeanVariance(
        *(v.detach() for v in (out.mean, out.variance, out.log_variance)), out.pred_xstart.detach()
    )
    x = x.detach()
    if score:
        return condition_score(diffusion, out, x, t, grad)
    return MeanVariance(
        condition_mean(out.mean, out.variance, grad),
        out.variance,
        out.log_variance,
        out.pred_xstart,
    )
