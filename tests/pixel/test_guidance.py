"""CLIP guidance for Blended Diffusion: losses, augmentations, the guidance gradient, conditioning."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from blendedit.errors import InputError
from blendedit.frame.ranking import ClipScorer
from blendedit.pixel.adm import ADMConfig, load_adm
from blendedit.pixel.gaussian import GaussianDiffusion, condition_mean
from blendedit.pixel.guidance import (
    background_loss,
    clip_guidance_grad,
    condition_score,
    guided_mean_variance,
    make_augmenter,
    range_loss,
    spherical_distance,
)

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason=f"ADM reference data not found at {REF}")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipScorer:
    return ClipScorer.from_pretrained(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion.create(1000, "linear", "10")


def _pointwise_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in UNet with no spatial mixing: ε = 0.1·x, v = 0 (learned sigma layout)."""
    return torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)


def _box_mask(size: int = 32) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size)
    m[..., 8:20, 10:24] = 1
    return m


# -- losses ---------------------------------------------------------------------------------------


def test_spherical_distance_known_values() -> None:
    e = torch.eye(4)
    assert spherical_distance(e[:1], e[:1]).item() == pytest.approx(0.0, abs=1e-6)
    # orthogonal: ‖a − b‖ = √2, 2·arcsin(√2/2)² = 2·(π/4)²
    assert spherical_distance(e[:1], e[1:2]).item() == pytest.approx(2 * (math.pi / 4) ** 2)
    assert spherical_distance(e[:1], -e[:1]).item() == pytest.approx(math.pi**2 / 2)
    # inputs are normalised first; b broadcasts over rows
    d = spherical_distance(torch.tensor([[3.0, 0, 0, 0], [0, 5.0, 0, 0]]), e[:1])
    torch.testing.assert_close(d, torch.tensor([0.0, 2 * (math.pi / 4) ** 2]))


def test_range_loss_zero_inside_and_squared_excess_outside() -> None:
    inside = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(range_loss(inside), torch.zeros(2))
    x = torch.zeros(2, 3, 4, 4)
    x[0] = 1.5  # excess 0.5 everywhere -> 0.25
    x[1, 0, 0, 0] = -3.0  # excess 2 on one of 48 values -> 4/48
    torch.testing.assert_close(range_loss(x), torch.tensor([0.25, 4 / 48]))


def test_background_loss_only_sees_the_unmasked_region() -> None:
    src = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    x = torch.zeros(2, 3, 8, 8)
    x[0, :, :4] = 1.0  # differs inside the mask only
    x[1, :, 4:] = 1.0  # differs in the background (half the pixels)
    loss = background_loss(x, src, mask, l2_weight=10.0, lpips=None)
    torch.testing.assert_close(loss, torch.tensor([0.0, 10.0 * 0.5]))


# -- augmentations --------------------------------------------------------------------------------


def test_augmenter_shape_plain_copy_and_determinism() -> None:
    aug = make_augmenter(3, 16)
    x = torch.rand(2, 3, 32, 32)
    out = aug(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert out.shape == (8, 3, 16, 16)  # (num + 1)·B, copy-major
    torch.testing.assert_close(out[:2], torch.nn.functional.adaptive_avg_pool2d(x, 16))
    again = aug(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert torch.equal(out, again)
    other = aug(x, [torch.Generator().manual_seed(3), torch.Generator().manual_seed(2)])
    assert not torch.equal(out[2::2], other[2::2])  # image 0's copies changed
    assert torch.equal(out[3::2], other[3::2])  # image 1's copies did not
    alone = aug(x[1:], torch.Generator().manual_seed(2))  # batch-independent per generator
    assert torch.equal(alone, out[1::2])
    assert torch.isfinite(out).all() and not torch.equal(out[2], out[0])


def test_augmenter_matches_kornia_modules() -> None:
    """Our parameter mapping and warps reproduce kornia's RandomAffine(15, 0.1, border) then
    RandomPerspective(0.7) (the official augmentations) for the same parameters."""
    import kornia.augmentation as K

    s = 32
    with torch.random.fork_rng():
        torch.manual_seed(0)
        affine = K.RandomAffine(degrees=15, translate=0.1, p=1.0, padding_mode="border")
        persp = K.RandomPerspective(0.7, p=1.0)
        x = torch.rand(4, 3, s, s)
        ref = persp(affine(x))
    pa, pp = affine._params, persp._params
    u = torch.zeros(4, 13)
    u[:, 0] = (pa["angle"] / 15 + 1) / 2
    u[:, 1:3] = (pa["translations"] / (0.1 * s) + 1) / 2
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    u[:, 4:12] = ((pp["end_points"] - pp["start_points"]) / (0.7 * (s - 1) / 2) / inward).reshape(
        4, 8
    )
    aug = make_augmenter(4, s)
    a, p = aug.matrices(u, s, s)
    torch.testing.assert_close(a, affine.transform_matrix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p, persp.transform_matrix, atol=1e-4, rtol=1e-4)
    # float rounding only (the perspective solve amplifies it); a wrong convention is O(0.1)
    torch.testing.assert_close(aug.warp(x, a, p), ref, atol=2e-3, rtol=0)


def test_augmenter_probability_and_bad_settings() -> None:
    never = make_augmenter(2, 16, p=0.0)
    x = torch.rand(1, 3, 16, 16)
    out = never(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[1:], out[:1].expand(2, -1, -1, -1), atol=1e-5, rtol=0)
    with pytest.raises(InputError):
        make_augmenter(-1)
    with pytest.raises(InputError):
        make_augmenter(2, 16, p=1.5)


# -- guidance -------------------------------------------------------------------------------------


def _grad(diffusion, model, x, t, **kwargs):
    guidance = partial(clip_guidance_grad, diffusion=diffusion, **kwargs)
    captured = {}

    def spy(x_t, t, out):
        captured["g"] = g = guidance(x_t, t, out)
        return g

    guided_mean_variance(model, diffusion, x, t, spy)
    return captured["g"]


def test_clip_gradient_lives_in_the_mask_for_a_pointwise_model(clip, diffusion) -> None:
    """With no spatial mixing in the model, the CLIP term can only reach pixels inside the mask."""
    mask = _box_mask()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = _grad(
        diffusion,
        _pointwise_model,
        x,
        5,
        mask=mask,
        clip=clip,
        text_embed=clip.embed_text(["a red flower"]),
        augmenter=make_augmenter(2, clip.image_size),
        generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
        range_weight=0.0,
    )
    assert g.shape == x.shape
    inside, outside = g * mask, g * (1 - mask)
    assert inside.abs().amax(dim=(1, 2, 3)).min() > 0  # every sample is guided
    assert torch.equal(outside, torch.zeros_like(outside))


@needs_ref
def test_clip_gradient_with_the_tiny_adm(clip) -> None:
    cfg = ADMConfig.from_json(REF / "tiny_adm_config.json")
    model = load_adm(REF / "tiny_adm.safetensors", cfg)
    diff = GaussianDiffusion.from_config(cfg)
    mask = _box_mask()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = _grad(
        diff,
        model,
        x,
        7,
        mask=mask,
        clip=clip,
        text_embed=clip.embed_text(["a red flower"]),
        augmenter=make_augmenter(2, clip.image_size),
        generators=[torch.Generator().manual_seed(1)],
    )
    assert torch.isfinite(g).all() and (g * mask).abs().max() > 0
    assert all(p.grad is None for p in model.parameters())  # weights untouched


def test_background_and_range_terms_point_the_right_way(diffusion) -> None:
    """Moving x_t a little along the returned direction lowers the loss (it is −∇loss)."""
    mask = _box_mask()
    src = torch.rand(1, 3, 32, 32) * 2 - 1
    x = 2.5 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = 4

    def loss(x_t):
        with torch.no_grad():
            out = diffusion.p_mean_variance(_pointwise_model(x_t, None), x_t, t)
            fac = diffusion.sqrt_one_minus_alphas_cumprod[t].item()
            x_in = out.pred_xstart * fac + x_t * (1 - fac)
            bg = background_loss(x_in, src, mask, l2_weight=1.0, lpips=None)
            return bg + range_loss(out.pred_xstart)

    g = _grad(
        diffusion,
        _pointwise_model,
        x,
        t,
        mask=mask,
        clip_weight=0.0,
        range_weight=1.0,
        source=src,
        l2_weight=1.0,
    )
    assert (g * (1 - mask)).abs().max() > 0
    before, after = loss(x), loss(x + 1e-2 * g)
    assert (after < before).all()


def test_no_active_term_gives_zero_guidance(diffusion) -> None:
    x = torch.randn(1, 3, 8, 8)
    g = _grad(
        diffusion, _pointwise_model, x, 3, mask=torch.ones(1, 1, 8, 8), clip_weight=0.0,
        range_weight=0.0,
    )  # fmt: skip
    assert torch.equal(g, torch.zeros_like(x))


def test_guided_mean_variance_conditions_mean_or_score(diffusion) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = 6
    plain = guided_mean_variance(_pointwise_model, diffusion, x, t)
    ref = diffusion.p_mean_variance(_pointwise_model(x, None), x, t)
    torch.testing.assert_close(plain.mean, ref.mean)
    grad = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def constant(x_t, t, out):
        assert x_t.requires_grad and out.pred_xstart.requires_grad
        return grad

    ddpm = guided_mean_variance(_pointwise_model, diffusion, x, t, constant)
    torch.testing.assert_close(ddpm.mean, condition_mean(ref.mean, ref.variance, grad))
    torch.testing.assert_close(ddpm.pred_xstart, ref.pred_xstart)
    assert not ddpm.mean.requires_grad

    ddim = guided_mean_variance(_pointwise_model, diffusion, x, t, constant, score=True)
    ab = diffusion.alphas_cumprod[t].item()
    # ε' = ε − √(1 − ᾱ)·g  <=>  x̂_0' = x̂_0 + (1 − ᾱ)/√ᾱ·g
    torch.testing.assert_close(
        ddim.pred_xstart, ref.pred_xstart + (1 - ab) / math.sqrt(ab) * grad, atol=1e-5, rtol=1e-5
    )
    direct = condition_score(diffusion, ref, x, t, grad)
    torch.testing.assert_close(ddim.mean, direct.mean)
    c1, c2 = diffusion.posterior_mean_coef1[t].item(), diffusion.posterior_mean_coef2[t].item()
    torch.testing.assert_close(ddim.mean, c1 * ddim.pred_xstart + c2 * x, atol=1e-5, rtol=1e-5)
