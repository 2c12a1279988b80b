"""Image-fidelity metrics for background reconstruction and evaluation.

Conventions
-----------
* Images: float tensors ``(B,3,H,W)`` or ``(3,H,W)`` with values in ``[0, 1]``; PIL images and
  ``uint8`` numpy arrays are accepted too (see :func:`to_tensor01`).
* Masks / regions: ``(B,1,H,W)``, ``(B,H,W)``, ``(1,H,W)`` or ``(H,W)`` with values in
  ``[0, 1]``; ``1`` marks the edited region, the *background* is where the mask is ``0``.
  A mask with batch size 1 is shared by every image of the batch.
* ``region`` arguments are per-pixel weights: a binary region gives exactly "the pixels where
  region == 1"; a soft (feathered) region weights each pixel by its value.
  :func:`seam_score` alone binarises its mask (``mask >= 0.5``).
* **Return convention**: every metric accepts batches and returns a ``(B,)`` tensor (one value
  per image; a single ``(3,H,W)`` image gives shape ``(1,)``, use ``.item()`` for a float).
  MSE / PSNR / SSIM / seam are computed and returned in float64; :class:`LPIPS` returns its
  parameters' dtype. Nothing is wrapped in ``no_grad``: the metrics stay differentiable, so
  they can serve as losses (PSNR aside, which is ``+inf`` at zero error).
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from blendedit.errors import InputError, first_line

__all__ = [
    "LPIPS",
    "background_metrics",
    "background_report",
    "masked_lpips",
    "masked_mse",
    "masked_psnr",
    "masked_ssim",
    "mse",
    "psnr",
    "seam_score",
    "ssim",
    "to_tensor01",
]

ImageLike: TypeAlias = Tensor | np.ndarray | Image.Image
NetName: TypeAlias = Literal["alex", "vgg"]

# SSIM constants (Wang et al. 2004, Sec. III-C): 11x11 Gaussian window, sigma 1.5, data range 1.
_SSIM_WIN, _SSIM_SIGMA = 11, 1.5
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def to_tensor01(x: ImageLike) -> Tensor:
    """Convert an image or mask to a float tensor in ``[0, 1]``.

    * PIL: ``L`` / ``1`` -> ``(1,H,W)``; every other mode is converted to RGB -> ``(3,H,W)``.
    * numpy ``(H,W)``, ``(H,W,1)``, ``(H,W,3)`` or ``(H,W,4)`` (alpha dropped) -> ``(C,H,W)``;
      ``uint8`` is divided by 255, ``bool`` becomes 0/1, floating arrays are taken as ``[0, 1]``.
    * torch tensors keep their layout (already channel-first); ``uint8`` is divided by 255,
      ``bool`` becomes 0/1, floating tensors are returned unchanged.
    """
    if isinstance(x, Image.Image):
        x = np.asarray(x.convert("L") if x.mode in ("L", "1") else x.convert("RGB"))
    if isinstance(x, np.ndarray):
        if x.dtype not in (np.uint8, np.bool_) and not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"image: unsupported numpy dtype {x.dtype}; use uint8, bool or float")
        if x.ndim == 3 and x.shape[2] == 4:
            x = x[..., :3]
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3 or x.shape[2] not in (1, 3):
            raise InputError(f"image: numpy array shape {x.shape} is not (H,W), (H,W,1) or (H,W,3)")
        x = np.ascontiguousarray(x) if x.flags.writeable else x.copy()
        x = torch.from_numpy(x).permute(2, 0, 1)  # (C,H,W)
    if not isinstance(x, Tensor):
        raise InputError(f"image: unsupported type {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.bool or not x.is_floating_point():
        return x.float()
    return x


def _image(x: ImageLike, name: str, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """-> (B,3,H,W) in ``dtype`` (None keeps the float dtype)."""
    t = to_tensor01(x)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[1] != 3:
        raise InputError(f"{name}: expected shape (B,3,H,W) or (3,H,W), got {tuple(t.shape)}")
    return t if dtype is None else t.to(dtype)


def _pair(
    a: ImageLike, b: ImageLike, names: tuple[str, str], dtype: torch.dtype | None = torch.float64
) -> tuple[Tensor, Tensor]:
    """-> two (B,3,H,W) tensors of identical shape, on ``a``'s device."""
    x, y = _image(a, names[0], dtype), _image(b, names[1], dtype)
    if x.shape != y.shape:
        raise InputError(
            f"{names[1]}: shape {tuple(y.shape)} does not match {names[0]}: shape {tuple(x.shape)}"
        )
    return x, y.to(device=x.device, dtype=x.dtype)


def _weights(m: ImageLike, name: str, like: Tensor) -> Tensor:
    """Mask/region -> (B,1,H,W) weights in [0,1], in ``like``'s dtype, device and batch size."""
    t = to_tensor01(m)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t.unsqueeze(1)
    B, _, H, W = like.shape
    if t.ndim != 4 or t.shape[1] != 1 or t.shape[0] not in (1, B) or t.shape[2:] != (H, W):
        raise InputError(
            f"{name}: shape {tuple(t.shape)} does not fit images of shape {tuple(like.shape)}"
            " (expected (B,1,H,W), (B,H,W), (1,H,W) or (H,W) with B = 1 or the image batch)"
        )
    t = t.to(device=like.device, dtype=like.dtype)
    lo, hi = t.min().item(), t.max().item()
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{name}: values must lie in [0, 1], got range [{lo:g}, {hi:g}]")
    return t.expand(B, 1, H, W)


def _nonempty(total: Tensor, name: str, what: str) -> Tensor:
    """Raise when a per-image (B,) normaliser is zero."""
    empty = (total <= 0).nonzero().flatten()
    if empty.numel():
        raise InputError(f"{name}: {what} in batch item {int(empty[0])}")
    return total


# --------------------------------------------------------------------------------------------
# MSE / PSNR
# --------------------------------------------------------------------------------------------


def _mse(x: Tensor, y: Tensor, w: Tensor, name: str) -> Tensor:
    # x, y: (B,3,H,W); w: (B,1,H,W) -> (B,)
    count = _nonempty(w.sum(dim=(1, 2, 3)), name, "empty region (no pixel > 0)")
    return ((x - y) ** 2 * w).sum(dim=(1, 2, 3)) / (3.0 * count)


def masked_mse(a: ImageLike, b: ImageLike, region: ImageLike) -> Tensor:
    """Mean squared error over the pixels of ``region``, all three channels -> ``(B,)``.

    ``MSE = sum_{p in R} sum_c (a_c(p) - b_c(p))^2 / (3 |R|)``: the mean over the 3*|R| values,
    so a constant offset ``delta`` on every channel gives exactly ``delta**2``. A soft region
    weights each pixel (``|R| = sum(region)``).

    Note: BrushNet's BrushBench evaluation (Ju et al. 2024, ``evaluate_brushnet.py``) divides the
    sum over the 3 channels by the *pixel* count ``|R|``, i.e. ``mse_brushnet = 3 * masked_mse``
    and ``psnr_brushnet = masked_psnr - 10*log10(3)`` (about 4.77 dB lower). Convert before
    comparing with numbers reported in that convention.
    """
    x, y = _pair(a, b, ("a", "b"))
    return _mse(x, y, _weights(region, "region", x), "region")


def mse(a: ImageLike, b: ImageLike) -> Tensor:
    """Mean squared error over the whole image (all pixels and channels) -> ``(B,)``."""
    x, y = _pair(a, b, ("a", "b"))
    return _mse(x, y, torch.ones_like(x[:, :1]), "region")


def _psnr(m: Tensor, max_val: float) -> Tensor:
    if not max_val > 0:
        raise InputError(f"max_val: must be > 0, got {max_val!r}")
    return 10.0 * torch.log10(max_val**2 / m)  # m == 0 -> +inf


def masked_psnr(a: ImageLike, b: ImageLike, region: ImageLike, max_val: float = 1.0) -> Tensor:
    """PSNR over ``region``: ``10*log10(max_val**2 / masked_mse)`` in dB -> ``(B,)``.

    Identical images inside the region give ``+inf`` (not a clipped sentinel such as 100 or
    1000); filter with ``torch.isfinite`` before averaging over a data set.
    """
    return _psnr(masked_mse(a, b, region), max_val)


def psnr(a: ImageLike, b: ImageLike, max_val: float = 1.0) -> Tensor:
    """PSNR over the whole image in dB -> ``(B,)``; identical images give ``+inf``."""
    return _psnr(mse(a, b), max_val)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def _gauss_blur_valid(x: Tensor) -> Tensor:
    """Separable 11x11 Gaussian (sigma 1.5), 'valid' extent: (N,C,H,W) -> (N,C,H-10,W-10)."""
    r = _SSIM_WIN // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * _SSIM_SIGMA**2))
    g = g / g.sum()  # (11,)
    C = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(C, 1, 1, _SSIM_WIN), groups=C)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(C, 1, _SSIM_WIN, 1), groups=C)


def _ssim(x: Tensor, y: Tensor, w: Tensor, erode: bool, name: str) -> Tensor:
    # x, y: (B,3,H,W); w: (B,1,H,W) -> (B,)
    total, positions = _ssim_sums(x, y, w, erode)
    return total / _nonempty(positions, name, "no SSIM window position inside the region")


def _ssim_sums(x: Tensor, y: Tensor, w: Tensor, erode: bool) -> tuple[Tensor, Tensor]:
    """(sum of weighted SSIM over window positions, sum of the weights), each (B,)."""
    H, W = x.shape[-2:]
    if min(H, W) < _SSIM_WIN:
        raise InputError(f"image: SSIM needs H, W >= {_SSIM_WIN}, got {H}x{W}")
    stats = _gauss_blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1))  # (B,15,H-10,W-10)
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y  # (B,3,H-10,W-10)
    smap = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    smap = smap.mean(dim=1, keepdim=True)  # (B,1,H-10,W-10), channel average
    r = _SSIM_WIN // 2
    # Weight of each window position: region value at its centre, or (erode) the minimum of the
    # region over the whole window, i.e. the region eroded by the window radius.
    wpos = -F.max_pool2d(-w, _SSIM_WIN, stride=1) if erode else w[..., r:-r, r:-r]
    return (smap * wpos).sum(dim=(1, 2, 3)), wpos.sum(dim=(1, 2, 3))


def masked_ssim(a: ImageLike, b: ImageLike, region: ImageLike, *, erode: bool = False) -> Tensor:
    """SSIM (Wang et al. 2004, Eq. 13) averaged over the window positions in ``region`` -> ``(B,)``.

    The SSIM map is computed per channel on the full image with the standard parameters: an
    11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, data range 1 (images in
    ``[0, 1]``), 'valid' extent (no padding, so the map is ``(H-10) x (W-10)`` and each value sits at
    its window's centre pixel). The three channel maps are averaged, then the map is averaged
    over the positions whose centre lies in ``region`` (weighted by the region value).

    With ``erode=False`` (default) windows centred near the region's border also see pixels
    outside it, so an edit outside ``region`` can lower the score slightly. With ``erode=True``
    only windows lying entirely inside the region count (region eroded by the window radius 5;
    soft regions use the window minimum), so the score depends on region pixels only; small or
    thin regions may then have no position left, which raises :class:`InputError`.
    """
    x, y = _pair(a, b, ("a", "b"))
    return _ssim(x, y, _weights(region, "region", x), erode, "region")


def ssim(a: ImageLike, b: ImageLike) -> Tensor:
    """Mean SSIM over the whole image (standard 'valid' Gaussian SSIM) -> ``(B,)``."""
    x, y = _pair(a, b, ("a", "b"))
    return _ssim(x, y, torch.ones_like(x[:, :1]), False, "region")


# --------------------------------------------------------------------------------------------
# Seam score
# --------------------------------------------------------------------------------------------


def seam_score(result: ImageLike, source: ImageLike, mask: ImageLike, band: int = 3) -> Tensor:
    """Gradient energy of the edit residual in a band straddling the mask border -> ``(B,)``.

    Definition. Let ``m = [mask >= 0.5]`` and let ``D(m)`` / ``E(m)`` be its dilation / erosion by
    a ``(2*band+1)``-square (Chebyshev distance ``<= band``; pixels beyond the image edge are
    ignored, so the image edge is never a border). The band is ``S = D(m) minus E(m)``: the
    pixels within ``band`` px of the mask border on either side. With the residual
    ``d = result - source`` per channel and Sobel derivatives scaled by 1/8 (a ramp of slope
    ``k`` per px reads ``k``; replicate padding)::

        seam = sqrt( mean_{p in S} (1/3) sum_c [ (d/dx d_c(p))^2 + (d/dy d_c(p))^2 ] )

    in intensity units per pixel. Properties: ``result == source`` gives 0; pixels of the mask
    further than ``band + 1`` px from the border do not influence it at all (the Sobel stencil
    reaches one pixel beyond the band); gradients the source already has cancel out.

    Why this detects seams: a hard paste of content whose colour differs by ``c`` from the
    source puts a step of height ``c`` into the residual at the border, read as ``c/2`` by the
    two pixels beside it, so ``seam ~ c / (2*sqrt(band))`` on a straight border. Feathering
    spreads the same height over ``w`` px with slope ``c/w``. A *mean absolute* gradient would
    not tell the two apart (the total variation across a monotone ramp is ``c`` whatever its
    width); the squared energy, ``c**2/w`` across the ramp, decreases with the feather width. The
    band straddles the border because blending at reduced resolution (e.g. a latent mask at 1/8
    scale) may leave the step a few pixels inside or outside the pixel mask. New texture
    inside the band also counts, so compare methods on the same edit rather than across edits.
    """
    if isinstance(band, bool) or not isinstance(band, int) or band < 1:
        raise InputError(f"band: must be an integer >= 1, got {band!r}")
    x, y = _pair(result, source, ("result", "source"))
    m = (_weights(mask, "mask", x) >= 0.5).to(x.dtype)  # (B,1,H,W)
    k = 2 * band + 1
    dil = F.max_pool2d(m, k, stride=1, padding=band)  # -inf padding: outside image ignored
    ero = 1.0 - F.max_pool2d(1.0 - m, k, stride=1, padding=band)
    in_band = dil - ero  # (B,1,H,W), 1 within `band` px of the border
    count = _nonempty(in_band.sum(dim=(1, 2, 3)), "mask", "no border (mask empty or full)")

    d = F.pad(x - y, (1, 1, 1, 1), mode="replicate")  # (B,3,H+2,W+2)
    sobel_x = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device) / 8
    kern = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1).repeat(3, 1, 1, 1)  # (6,1,3,3)
    grad = F.conv2d(d, kern, groups=3)  # (B,6,H,W): (dx, dy) per channel
    energy = (grad**2).sum(dim=1, keepdim=True) / 3.0  # (B,1,H,W)
    return torch.sqrt((energy * in_band).sum(dim=(1, 2, 3)) / count)


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------


def _alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` layout (indices give the ``features.N.*`` keys)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),  # 0-2
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),  # 3-5
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),  # 6-7
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),  # 8-9
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),  # 10-11 (maxpool 12 unused)
    )  # fmt: skip


def _vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` layout up to relu5_3 (index 29)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers)


# net -> (trunk builder, indices of the tapped ReLUs, their channels, minimum input side)
_NETS = {
    "alex": (_alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), 31),
    "vgg": (_vgg16_features, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), 16),
}


class LPIPS(nn.Module):
    """LPIPS v0.1 perceptual distance (Zhang et al., CVPR 2018, Eq. 1) -> ``(B,)``.

    ``d(x, y) = sum_l mean_{h,w} || w_l * (f^l_x - f^l_y) ||^2`` where ``f^l`` are the trunk's
    activations at five ReLUs (AlexNet: relu1..relu5; VGG16: relu1_2, relu2_2, relu3_3,
    relu4_3, relu5_3), each unit-normalised along channels, and ``w_l >= 0`` are 1x1 linear
    weights (clamped at 0 in the forward pass). Inputs in ``[0, 1]`` are mapped to ``[-1, 1]`` and
    then through the scaling layer ``(x - shift) / scale``.

    A freshly constructed model has random trunk weights (PyTorch default init) and uniform
    lin weights ``1/C``: useful for tests only. Use :meth:`from_pretrained` for real scores.
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, net: NetName = "alex") -> None:
        super().__init__()
        if net not in _NETS:
            raise InputError(f"net: must be 'alex' or 'vgg', got {net!r}")
        build, self.taps, self.channels, self.min_size = _NETS[net]
        self.net = net
        self.features = build()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.channels)
        for lin, c in zip(self.lins, self.channels, strict=True):
            nn.init.constant_(lin.weight, 1.0 / c)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def _feats(self, x: Tensor) -> list[Tensor]:
        """(B,3,H,W) in [0,1] -> five unit-normalised (B,C_l,H_l,W_l) activations."""
        h = (2.0 * x - 1.0 - self.shift) / self.scale
        out: list[Tensor] = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, a: ImageLike, b: ImageLike) -> Tensor:
        """LPIPS distance between ``a`` and ``b`` (images in [0, 1]) -> ``(B,)``."""
        dtype = self.shift.dtype
        x, y = _pair(a, b, ("a", "b"), dtype)
        x, y = x.to(self.shift.device), y.to(self.shift.device)
        if min(x.shape[-2:]) < self.min_size:
            raise InputError(
                f"a: LPIPS-{self.net} needs H, W >= {self.min_size}, got {tuple(x.shape[-2:])}"
            )
        total = x.new_zeros(x.shape[0])
        for fx, fy, lin in zip(self._feats(x), self._feats(y), self.lins, strict=True):
            diff = (fx - fy) ** 2  # (B,C_l,H_l,W_l)
            total = total + F.conv2d(diff, lin.weight.clamp_min(0)).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_pretrained(
        cls,
        trunk_weights: str | PathLike[str],
        lin_weights: str | PathLike[str],
        net: NetName = "alex",
    ) -> LPIPS:
        """Load published weights from local files; returns an eval-mode, frozen model.

        ``trunk_weights``: torchvision's ``alexnet`` / ``vgg16`` ImageNet state dict
        (``features.0.weight``, ``features.0.bias``, ...; ``classifier.*`` keys are ignored).
        ``lin_weights``: the lpips package's v0.1 file (``lin0.model.1.weight`` ...
        ``lin4.model.1.weight``, each ``(1,C,1,1)``). Files ending in ``.safetensors`` are read
        with safetensors, anything else with ``torch.load(weights_only=True)``.
        """
        model = cls(net)
        trunk = _load_state_dict(trunk_weights, "trunk_weights")
        lins = _load_state_dict(lin_weights, "lin_weights")
        state: dict[str, Tensor] = {}
        for key, ref in model.state_dict().items():
            if key.startswith("features."):
                state[key] = _pick(trunk, key, ref, "trunk_weights")
            elif key.startswith("lins."):
                i = key.split(".")[1]
                state[key] = _pick(lins, f"lin{i}.model.1.weight", ref, "lin_weights")
            else:
                state[key] = ref  # scaling-layer buffers
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)


def _load_state_dict(path: str | PathLike[str], name: str) -> Mapping[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{name}: file not found: {str(p)!r}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: report as one line
        raise InputError(f"{name}: cannot read {str(p)!r}: {first_line(exc, None)}") from exc
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise InputError(f"{name}: {str(p)!r} does not hold a state dict")
    return sd


def _pick(sd: Mapping[str, Tensor], key: str, ref: Tensor, name: str) -> Tensor:
    t = sd.get(key)
    if not isinstance(t, Tensor):
        raise InputError(f"{name}: missing key {key!r}")
    if t.shape != ref.shape:
        raise InputError(f"{name}: {key!r} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
    return t.to(ref.dtype)


def masked_lpips(model: LPIPS, a: ImageLike, b: ImageLike, region: ImageLike) -> Tensor:
    """LPIPS between ``a * region`` and ``b * region`` -> ``(B,)``.

    Pixels outside ``region`` are set to 0 (black, in ``[0, 1]`` space) in both images before the
    network sees them, as the Blended Latent Diffusion paper (Avrahami et al. 2023) masks images
    for its LPIPS-based diversity measure and BrushBench masks them for background LPIPS. The
    score therefore ignores content outside the region, but the deep features near the region's
    border still see the black fill, so it is not comparable to unmasked LPIPS.
    """
    x, y = _pair(a, b, ("a", "b"), None)
    w = _weights(region, "region", x)  # (B,1,H,W)
    _nonempty(w.sum(dim=(1, 2, 3)), "region", "empty region (no pixel > 0)")
    return model(x * w, y * w)


# --------------------------------------------------------------------------------------------
# Background fidelity
# --------------------------------------------------------------------------------------------


def background_metrics(
    result: ImageLike,
    source: ImageLike,
    mask: ImageLike,
    *,
    lpips: LPIPS | None = None,
    ssim_erode: bool = True,
) -> dict[str, Tensor]:
    """Fidelity of the background (``1 - mask``) of ``result`` to ``source``.

    Returns ``{"mse", "psnr", "ssim"}`` (plus ``"lpips"`` when a model is given), each a
    float64 ``(B,)`` tensor: :func:`masked_mse`, :func:`masked_psnr` (``+inf`` for a perfect
    background), :func:`masked_ssim` and :func:`masked_lpips` over the region ``1 - mask``.
    SSIM uses ``erode=True`` by default, so all four depend on background pixels only and an
    edit confined to the mask leaves them at their identity values (0, inf, 1, 0).
    """
    x, y = _pair(result, source, ("result", "source"))
    bg = 1.0 - _weights(mask, "mask", x)  # (B,1,H,W)
    _nonempty(bg.sum(dim=(1, 2, 3)), "mask", "no background pixel (mask is 1 everywhere)")
    m = _mse(x, y, bg, "mask")
    out = {"mse": m, "psnr": _psnr(m, 1.0), "ssim": _ssim(x, y, bg, ssim_erode, "mask")}
    if lpips is not None:
        out["lpips"] = masked_lpips(lpips, x, y, bg).to(torch.float64)
    return out


def background_report(result: ImageLike, source: ImageLike, mask: ImageLike) -> dict[str, float]:
    """What ``result.json`` records per result: background PSNR (dB, ``inf`` if untouched), MSE and
    SSIM outside the mask, and the seam score at its border; plain floats."""
    bg = background_metrics(result, source, mask)
    seam = seam_score(result, source, mask)
    return {
        "background_psnr": round(float(bg["psnr"][0]), 4),
        "background_mse": float(bg["mse"][0]),
        "background_ssim": round(float(bg["ssim"][0]), 6),
        "seam": round(float(seam[0]), 6),
    }


def region_background_report(
    result: np.ndarray,
    source: np.ndarray,
    mask: np.ndarray,
    photo_size: tuple[int, int],
    mask_pixels: int,
) -> dict[str, float]:
    """:func:`background_report` of a whole photo from a window of it: result, source (h, w, 3)
    uint8 and mask (h, w) bool cover every changed pixel plus one SSIM window (11 px) beyond, and
    ``mask_pixels`` is the mask's size in the whole photo of ``photo_size`` = (W, H). Outside the
    window the result equals the source, so its pixels add zero error and SSIM windows of 1.
    Empty when the mask leaves no background."""
    h, w = mask.shape
    pw, ph = photo_size
    background = pw * ph - mask_pixels
    if background <= 0:
        return {}
    x, y = _pair(result, source, ("result", "source"))
    m = torch.from_numpy(mask)[None, None].to(x.dtype)
    sq = ((x - y) ** 2 * (1 - m)).sum() / 3.0
    mse_full = sq / background
    # SSIM (eroded background): the window's positions plus every position outside it, each 1.
    s_win, c_win = _ssim_sums(x, y, 1 - m, erode=True)
    positions_win = (h - 10) * (w - 10)
    touching = positions_win - float(c_win[0])  # positions whose window meets the mask
    total = (ph - 10) * (pw - 10) - touching
    ssim_full = (float(s_win[0]) + (total - float(c_win[0]))) / total if total > 0 else 1.0
    seam = seam_score(result, source, mask)
    return {
        "background_psnr": round(float(_psnr(mse_full, 1.0)), 4),
        "background_mse": float(mse_full),
        "background_ssim": round(ssim_full, 6),
        "seam": round(float(seam[0]), 6),
    }
