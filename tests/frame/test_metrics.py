"""Tests for blendedit.frame.metrics: known answers, invariances and argument errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from blendedit.errors import InputError
from blendedit.frame.metrics import (
    LPIPS,
    background_metrics,
    masked_lpips,
    masked_mse,
    masked_psnr,
    masked_ssim,
    mse,
    psnr,
    seam_score,
    ssim,
    to_tensor01,
)

H = W = 64


def _smooth_image(seed: int = 0) -> torch.Tensor:
    """(3,H,W) smooth image with texture in [0.2, 0.8] (room for +/-0.1 shifts)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    base = torch.stack([xx / W, 0.5 + 0.5 * torch.sin(yy / 5.0), (xx + yy) / (H + W)])
    return (0.2 + 0.6 * (0.8 * base + 0.2 * torch.rand(3, H, W, generator=g))).float()


def _disc(r: float = 14.0) -> torch.Tensor:
    """(1,H,W) binary disc mask centred in the image."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return (((yy - H / 2) ** 2 + (xx - W / 2) ** 2) <= r * r).float()[None]


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS("alex").eval()


# ------------------------------------------------------------------ conversion & conventions


def test_to_tensor01_pil_and_numpy() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    t = to_tensor01(Image.fromarray(rgb))
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert t[0].eq(1).all() and t[1:].eq(0).all()
    m = to_tensor01(Image.fromarray(np.full((4, 5), 255, np.uint8), mode="L"))
    assert m.shape == (1, 4, 5) and m.eq(1).all()
    assert torch.equal(to_tensor01(rgb), t)
    assert to_tensor01(np.ones((4, 5), bool)).shape == (1, 4, 5)
    # PIL inputs work end to end: (3,H,W) images give a (1,) result.
    a = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    out = masked_mse(a, a, Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L"))
    assert out.shape == (1,) and out.item() == 0.0


def test_batch_returns_one_value_per_image_and_shares_mask() -> None:
    x = torch.stack([_smooth_image(0), _smooth_image(1)])  # (2,3,H,W)
    y = x.clone()
    y[1] += 0.1
    region = _disc()  # (1,H,W): one mask for both images
    for fn in (masked_mse, masked_psnr, masked_ssim):
        out = fn(x, y, region)
        assert out.shape == (2,) and out.dtype == torch.float64
    assert masked_mse(x, y, region)[0] == 0 and masked_mse(x, y, region)[1] > 0
    assert seam_score(x, y, region).shape == (2,)


# ------------------------------------------------------------------ MSE / PSNR known answers


def test_identical_images_give_identity_values(alex: LPIPS) -> None:
    x = _smooth_image()
    mask = _disc()
    out = background_metrics(x, x, mask, lpips=alex)
    assert out["mse"].item() == 0.0
    assert math.isinf(out["psnr"].item()) and out["psnr"].item() > 0
    assert out["ssim"].item() == 1.0
    assert out["lpips"].item() == 0.0
    assert psnr(x, x).item() == math.inf and ssim(x, x).item() == 1.0


def test_constant_background_shift_gives_known_mse_and_psnr() -> None:
    x = _smooth_image()
    mask = _disc()
    y = x + 0.1 * (1 - mask)  # shifted background
    y = y + 0.3 * mask  # anything inside the mask is ignored
    out = background_metrics(y, x, mask)
    assert out["mse"].item() == pytest.approx(0.01, abs=1e-7)
    assert out["psnr"].item() == pytest.approx(20.0, abs=1e-4)
    assert mse(x + 0.1, x).item() == pytest.approx(0.01, abs=1e-7)
    assert psnr(x + 0.1, x).item() == pytest.approx(20.0, abs=1e-4)
    assert masked_psnr(x + 0.1, x, mask, max_val=2.0).item() == pytest.approx(
        20.0 + 20 * math.log10(2.0), abs=1e-4
    )


def test_masked_mse_hand_computed_and_brushnet_convention() -> None:
    a = torch.zeros(3, 2, 2)
    b = torch.zeros(3, 2, 2)
    b[:, 0, 0] = torch.tensor([0.1, 0.2, 0.3])  # squared diffs 0.01, 0.04, 0.09
    b[:, 1, 1] = 0.5  # outside the region
    region = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # two pixels
    expected = (0.01 + 0.04 + 0.09) / (3 * 2)
    assert masked_mse(a, b, region).item() == pytest.approx(expected, rel=1e-6)
    # BrushBench divides the 3-channel sum by the pixel count: 3x ours.
    brushnet = (((a - b) * region) ** 2).sum() / region.sum()
    assert brushnet.item() == pytest.approx(3 * masked_mse(a, b, region).item(), rel=1e-6)


def test_shift_only_inside_mask_leaves_background_metrics_unchanged(alex: LPIPS) -> None:
    x = _smooth_image()
    mask = _disc()
    y = x + 0.2 * mask
    out = background_metrics(y, x, mask, lpips=alex)
    assert out["mse"].item() == 0.0 and out["psnr"].item() == math.inf
    assert out["ssim"].item() == pytest.approx(1.0, abs=1e-12)
    assert out["lpips"].item() == 0.0
    # Without erosion, windows centred just outside the mask see the edit.
    assert background_metrics(y, x, mask, ssim_erode=False)["ssim"].item() < 1.0


def test_soft_region_weights_pixels() -> None:
    a, b = torch.zeros(3, 1, 2), torch.zeros(3, 1, 2)
    b[:, 0, 0], b[:, 0, 1] = 0.1, 0.3
    region = torch.tensor([[1.0, 0.5]])
    expected = (0.01 + 0.5 * 0.09) / 1.5
    assert masked_mse(a, b, region).item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ SSIM


def test_ssim_constant_images_known_answer() -> None:
    a, b = 0.3, 0.7
    x, y = torch.full((3, 16, 16), a), torch.full((3, 16, 16), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances 0: structure term is 1
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_ssim_matches_kornia_valid_ssim() -> None:
    kornia = pytest.importorskip("kornia")
    x = torch.stack([_smooth_image(0), _smooth_image(1)])
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ref = kornia.metrics.ssim(x, y, 11, padding="valid").mean(dim=(1, 2, 3))
    torch.testing.assert_close(ssim(x, y).float(), ref, atol=1e-5, rtol=0)


def test_ssim_decreases_with_noise() -> None:
    x = _smooth_image()
    region = _disc(20)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    scores = [masked_ssim(x, (x + s * noise).clamp(0, 1), region).item() for s in (0, 0.02, 0.1)]
    assert scores[0] == 1.0
    assert scores[0] > scores[1] > scores[2]


def test_eroded_ssim_ignores_pixels_outside_region() -> None:
    x = _smooth_image()
    region = _disc(20)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    y2 = y * region + torch.rand(3, H, W) * (1 - region)  # change only outside the region
    assert masked_ssim(x, y, region, erode=True).item() == pytest.approx(
        masked_ssim(x, y2, region, erode=True).item(), abs=1e-12
    )
    assert masked_ssim(x, y, region).item() != masked_ssim(x, y2, region).item()


# ------------------------------------------------------------------ seam score


def _blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    out = F.conv2d(F.pad(m[None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[0]


def test_seam_zero_for_identical_images() -> None:
    x = _smooth_image()
    assert seam_score(x, x, _disc()).item() == 0.0


def test_seam_hard_paste_scores_higher_than_feathered() -> None:
    src = _smooth_image(0)
    mask = _disc()
    content = src + 0.15  # constant-shifted region, stays in [0, 1]
    hard = mask * content + (1 - mask) * src
    soft = _blur(mask, 2.5)
    feathered = soft * content + (1 - soft) * src
    for band in (1, 3, 6):
        s_hard = seam_score(hard, src, mask, band).item()
        s_soft = seam_score(feathered, src, mask, band).item()
        assert s_hard > 2 * s_soft > 0
    # Straight-border estimate c / (2 sqrt(band)) for a hard step of height c.
    assert seam_score(hard, src, mask, 3).item() == pytest.approx(0.15 / (2 * 3**0.5), rel=0.2)


def test_seam_insensitive_to_changes_deep_inside_mask() -> None:
    src = _smooth_image(0)
    mask = _disc(20)
    band = 3
    result = mask * (src + 0.1) + (1 - mask) * src
    # Pixels more than band+1 px (Chebyshev) from any background pixel.
    deep = 1 - F.max_pool2d(1 - mask[None], 2 * (band + 1) + 1, stride=1, padding=band + 1)[0]
    assert deep.sum() > 100
    changed = result * (1 - deep) + torch.rand(3, H, W) * deep
    assert seam_score(changed, src, mask, band).item() == seam_score(result, src, mask, band).item()


def test_seam_errors() -> None:
    x = _smooth_image()
    with pytest.raises(InputError, match="band"):
        seam_score(x, x, _disc(), band=0)
    with pytest.raises(InputError, match="no border"):
        seam_score(x, x + 0.1, torch.zeros(H, W))
    with pytest.raises(InputError, match="no border"):
        seam_score(x, x + 0.1, torch.ones(H, W))


# ------------------------------------------------------------------ LPIPS


def test_lpips_properties(alex: LPIPS) -> None:
    x = torch.stack([_smooth_image(0), _smooth_image(1)])
    y = torch.stack([_smooth_image(2), _smooth_image(3)])
    assert torch.equal(alex(x, x), torch.zeros(2))
    d = alex(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(d, alex(y, x), rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="needs H, W >= 31"):
        alex(torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24))


def test_lpips_vgg_trunk() -> None:
    torch.manual_seed(0)
    vgg = LPIPS("vgg").eval()
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert vgg(x, x).item() == 0.0 and vgg(x, y).item() > 0


def test_masked_lpips_ignores_outside_region(alex: LPIPS) -> None:
    x = _smooth_image(0)
    region = _disc(20)
    outside_changed = x * region + _smooth_image(5) * (1 - region)
    inside_changed = x * (1 - region) + _smooth_image(5) * region
    assert masked_lpips(alex, x, outside_changed, region).item() == 0.0
    assert masked_lpips(alex, x, inside_changed, region).item() > 0
    with pytest.raises(InputError, match="region: empty"):
        masked_lpips(alex, x, inside_changed, torch.zeros(H, W))


# torchvision alexnet `features.*` and lpips v0.1 `lin{i}.model.1.weight` layouts, spelled out
# independently of the implementation.
_ALEX_KEYS = {
    "features.0": (64, 3, 11, 11),
    "features.3": (192, 64, 5, 5),
    "features.6": (384, 192, 3, 3),
    "features.8": (256, 384, 3, 3),
    "features.10": (256, 256, 3, 3),
}
_ALEX_LIN = (64, 192, 384, 256, 256)


def _fake_alex_weights() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    trunk: dict[str, torch.Tensor] = {}
    for name, shape in _ALEX_KEYS.items():
        trunk[f"{name}.weight"] = 0.05 * torch.randn(shape, generator=g)
        trunk[f"{name}.bias"] = 0.01 * torch.randn(shape[0], generator=g)
    trunk["classifier.6.bias"] = torch.zeros(1000)  # non-trunk keys are ignored
    lins = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) / c
        for i, c in enumerate(_ALEX_LIN)
    }
    return trunk, lins


def test_lpips_from_pretrained_maps_published_key_layouts(tmp_path: Path) -> None:
    trunk, lins = _fake_alex_weights()
    torch.save(trunk, tmp_path / "alexnet.pth")
    torch.save(lins, tmp_path / "alex_lin.pth")
    save_file(trunk, str(tmp_path / "alexnet.safetensors"))
    save_file(lins, str(tmp_path / "alex_lin.safetensors"))

    m_pth = LPIPS.from_pretrained(tmp_path / "alexnet.pth", tmp_path / "alex_lin.pth")
    m_st = LPIPS.from_pretrained(
        str(tmp_path / "alexnet.safetensors"), str(tmp_path / "alex_lin.safetensors"), net="alex"
    )
    for name in _ALEX_KEYS:
        idx = int(name.split(".")[1])
        assert torch.equal(m_pth.features[idx].weight, trunk[f"{name}.weight"])
        assert torch.equal(m_st.features[idx].bias, trunk[f"{name}.bias"])
    for i in range(5):
        assert torch.equal(m_st.lins[i].weight, lins[f"lin{i}.model.1.weight"])
    assert not m_pth.training and not any(p.requires_grad for p in m_pth.parameters())

    x, y = _smooth_image(0), _smooth_image(1)
    assert torch.equal(m_pth(x, y), m_st(x, y)) and m_pth(x, y).item() > 0


def test_lpips_from_pretrained_errors(tmp_path: Path) -> None:
    trunk, lins = _fake_alex_weights()
    torch.save(trunk, tmp_path / "trunk.pth")
    lins["lin0.model.1.weight"] = torch.rand(1, 32, 1, 1)
    torch.save(lins, tmp_path / "lin.pth")
    with pytest.raises(InputError, match="trunk_weights: file not found"):
        LPIPS.from_pretrained(tmp_path / "missing.pth", tmp_path / "lin.pth")
    with pytest.raises(
        InputError, match=r"lin_weights: 'lin0\.model\.1\.weight' has shape \(1, 32"
    ):
        LPIPS.from_pretrained(tmp_path / "trunk.pth", tmp_path / "lin.pth")
    with pytest.raises(InputError, match=r"trunk_weights: 'features\.0\.weight' has shape"):
        LPIPS.from_pretrained(tmp_path / "trunk.pth", tmp_path / "lin.pth", net="vgg")
    del trunk["features.8.weight"]
    torch.save(trunk, tmp_path / "trunk.pth")
    with pytest.raises(InputError, match=r"missing key 'features\.8\.weight'"):
        LPIPS.from_pretrained(tmp_path / "trunk.pth", tmp_path / "lin.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="lin_weights: cannot read"):
        LPIPS.from_pretrained(tmp_path / "trunk.pth", tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="net"):
        LPIPS("resnet")  # type: ignore[arg-type]


# ------------------------------------------------------------------ argument errors


def test_mismatched_sizes_name_both_shapes() -> None:
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 40)
    with pytest.raises(InputError, match=r"\(1, 3, 32, 40\).*\(1, 3, 32, 32\)"):
        masked_mse(a, b, torch.ones(32, 32))
    with pytest.raises(InputError, match=r"source: shape .* result: shape"):
        background_metrics(a, b, torch.zeros(32, 32))


def test_region_and_value_errors() -> None:
    x = torch.rand(3, 32, 32)
    with pytest.raises(InputError, match="region: empty"):
        masked_mse(x, x, torch.zeros(32, 32))
    with pytest.raises(InputError, match="mask: no background pixel"):
        background_metrics(x, x, torch.ones(32, 32))
    with pytest.raises(InputError, match="region: no SSIM window"):
        masked_ssim(x, x, torch.zeros(32, 32).index_fill_(0, torch.tensor([3]), 1.0), erode=True)
    with pytest.raises(InputError, match=r"region: values must lie in \[0, 1\]"):
        masked_mse(x, x, torch.full((32, 32), 255.0))
    with pytest.raises(InputError, match="region: shape"):
        masked_mse(x, x, torch.ones(16, 16))
    with pytest.raises(InputError, match="a: expected shape"):
        masked_mse(torch.rand(4, 32, 32), torch.rand(4, 32, 32), torch.ones(32, 32))
    with pytest.raises(InputError, match="max_val"):
        masked_psnr(x, x, torch.ones(32, 32), max_val=0)
