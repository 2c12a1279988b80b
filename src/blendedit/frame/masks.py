"""Masks: from any user image to the binary pixel mask, the latent mask and the shrinking schedule.

Conventions: masks are float tensors of 0/1 with shape (B, 1, H, W); 1 = the region to edit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from blendedit.errors import InputError
from blendedit.io import open_image


@dataclass(frozen=True)
class MaskLevels:
    """A user's mask already read onto the photo as shown (oriented like it, at its size):
    uint8 levels (H, W), before inversion, grow and blur. Reading a mask file once and handing
    this on lets a command check the mask before loading a model without reading it again."""

    levels: np.ndarray


MaskInput = str | os.PathLike[str] | Image.Image | np.ndarray | MaskLevels

MASK_THRESHOLD = 128  # 8-bit grey level at and above which a mask pixel counts as "edit"
ASPECT_TOLERANCE = 0.02  # relative aspect-ratio difference allowed between mask and image


def mask_levels(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> np.ndarray:
    """A user's mask image (modes L, 1, P, RGB, or RGBA/LA whose alpha is the mask) as uint8 grey
    levels (H, W) at the image's ``size`` = (W, H): 255 = edit fully, 0 = keep."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        # A fully opaque alpha carries no mask: use the colours instead.
        grey = mask.convert("L") if alpha.getextrema() == (255, 255) else alpha
    elif mask.mode in ("L", "1", "P", "RGB", "I;16", "I", "F"):
        grey = mask.convert("L") if mask.mode not in ("I;16", "I", "F") else _wide_to_l(mask)
    else:
        raise InputError(f"mask: unsupported image mode {mask.mode!r} (use a black/white image)")
    if grey.size != size:
        w, h = size
        mw, mh = grey.size
        if abs(mw / mh - w / h) > ASPECT_TOLERANCE * (w / h):
            raise InputError(
                f"mask: size {mw}x{mh} does not match the image's {w}x{h} (different aspect ratio)"
            )
        downscale = mw > w
        grey = grey.resize(size, Image.Resampling.BOX if downscale else Image.Resampling.NEAREST)
    levels = np.asarray(grey, dtype=np.uint8)
    return 255 - levels if invert else levels


def mask_from_image(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> np.ndarray:
    """:func:`mask_levels` binarised at ``MASK_THRESHOLD``: a bool (H, W) array, True = edit."""
    return mask_levels(mask, size, invert) >= MASK_THRESHOLD


def _wide_to_l(mask: Image.Image) -> Image.Image:
    a = np.asarray(mask, dtype=np.float64)
    top = a.max() if a.max() > 0 else 1.0
    return Image.fromarray((a / top * 255).round().astype(np.uint8))


def check_mask(mask: np.ndarray, name: str = "mask") -> None:
    """An empty or full mask leaves nothing to edit or nothing to keep: reject it."""
    frac = float(mask.mean())
    if frac == 0.0:
        raise InputError(f"{name}: the mask is empty (no white pixels); paint the region to edit")
    if frac == 1.0:
        raise InputError(
            f"{name}: the mask covers the whole image; nothing would be kept (use text-to-image)"
        )


def load_mask(mask: MaskInput, size: tuple[int, int], invert: bool) -> np.ndarray:
    """A mask file, PIL image or array as a checked bool (H, W) array at the image's ``size``."""
    if isinstance(mask, np.ndarray):
        if mask.shape != (size[1], size[0]):
            raise InputError(
                f"mask: array shape {mask.shape} does not match the image's {(size[1], size[0])}"
            )
        m = mask.astype(bool) ^ invert
    else:
        m = mask_from_image(open_image(mask, "mask"), size, invert)
    check_mask(m)
    return m


def to_tensor(mask: np.ndarray) -> torch.Tensor:
    """Boolean (H, W) -> float (1, 1, H, W); uint8 levels (H, W) -> strength in [0, 1]."""
    m = mask.astype(np.float32) / 255 if mask.dtype == np.uint8 else mask.astype(np.float32)
    return torch.from_numpy(m)[None, None]


def array_levels(mask: np.ndarray, size: tuple[int, int], invert: bool) -> np.ndarray:
    """A mask array at the image's ``size`` as uint8 levels (H, W): bool or 0/1 -> 0/255, uint8 as
    is, float in [0, 1] scaled to 255."""
    if mask.shape != (size[1], size[0]):
        raise InputError(
            f"mask: array shape {mask.shape} does not match the image's {(size[1], size[0])}"
        )
    if mask.dtype == np.uint8 and mask.max() > 1:
        levels = mask
    elif np.issubdtype(mask.dtype, np.floating):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise InputError("mask: a float mask array must lie in [0, 1]")
        levels = np.rint(mask * 255).astype(np.uint8)
    else:
        levels = mask.astype(bool).astype(np.uint8) * 255
    return 255 - levels if invert else levels


def refine(levels: np.ndarray, grow: int = 0, blur: float = 0.0) -> np.ndarray:
    """--mask-grow / --mask-blur on uint8 levels (H, W): grey dilation by a disc of ``grow`` px
    (negative: erosion), then a Gaussian blur of sigma ``blur`` px (A1111's mask blur). Worked on
    the mask's bounding box with room for both, so a 48 MP mask costs a small crop."""
    import cv2

    if grow == 0 and blur <= 0:
        return levels
    rows, cols = np.flatnonzero(levels.any(axis=1)), np.flatnonzero(levels.any(axis=0))
    if rows.size == 0:
        return levels
    pad = abs(grow) + int(np.ceil(4 * blur)) + 2
    h, w = levels.shape
    y0, y1 = max(0, rows[0] - pad), min(h, rows[-1] + 1 + pad)
    x0, x1 = max(0, cols[0] - pad), min(w, cols[-1] + 1 + pad)
    part = levels[y0:y1, x0:x1]
    if grow:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(grow) + 1,) * 2)
        op = cv2.dilate if grow > 0 else cv2.erode
        part = op(part, disc, borderType=cv2.BORDER_REPLICATE)
    if blur > 0:
        part = cv2.GaussianBlur(part, (0, 0), sigmaX=blur, borderType=cv2.BORDER_REPLICATE)
    out = levels.copy()
    out[y0:y1, x0:x1] = part
    return out


def paste_alpha(levels: np.ndarray, width: int, soft: bool) -> np.ndarray:
    """The alpha (H, W) float32 of the final composite: the feathered binary mask (``feather``),
    raised to the grey level where the mask is soft or blurred. 0/255 levels give ``feather`` of
    the binary mask exactly."""
    binary = levels >= MASK_THRESHOLD
    alpha = feather(binary, width)
    if soft or np.any((levels > 0) & (levels < 255)):
        alpha = np.maximum(alpha, levels.astype(np.float32) / 255)
    return alpha


def step_masks(stages: torch.Tensor, stage_per_step: list[int], soft: bool) -> list[torch.Tensor]:
    """The blend mask of each denoising step, (B or 1, 1, h, w) each. Binary: the step's shrinking
    stage. Soft (Differential Diffusion, Levin & Fried 2024, folded into BLD's blend): at step i
    of n a cell follows the model once its strength reaches the threshold 1 - i/n, else it stays
    the noised source; strength 1 is free from the first step, 0 never, so 0/1 masks give the
    binary masks exactly. stages: (S, B or 1, 1, h, w) strengths in [0, 1]."""
    n = len(stage_per_step)
    if not soft:
        return [stages[s] for s in stage_per_step]
    return [(stages[s] >= 1 - i / n).to(stages.dtype) for i, s in enumerate(stage_per_step)]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resample a (B, 1, H, W) mask to ``size`` = (H', W'): fractional coverage in [0, 1]."""
    return F.interpolate(mask, size=size, mode="area") if mask.shape[-2:] != size else mask


def latent_mask(
    mask: torch.Tensor, latent_size: tuple[int, int], soft: bool = False
) -> torch.Tensor:
    """SPEC 1 step 2: the pixel mask at latent resolution, keeping every latent cell that the mask
    touches (max-pool), so a stroke thinner than the VAE's 8 px cell never vanishes.

    mask: (B, 1, H, W) in [0, 1] -> (B, 1, h, w) of 0/1; ``soft``: each cell's highest strength.
    """
    pooled = F.adaptive_max_pool2d(mask, latent_size)
    return pooled if soft else (pooled > 0).to(mask.dtype)


def dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary dilation with an all-ones ``kernel`` x ``kernel`` square (odd size)."""
    if kernel <= 1:
        return mask
    return F.max_pool2d(mask, kernel, stride=1, padding=kernel // 2)


def erode(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary erosion; outside the image counts as inside the mask (no border erosion)."""
    return 1 - dilate(1 - mask, kernel)


THIN_FRACTION = 0.25  # share of a latent mask in thin parts above which it counts as thin


def thin_fraction(mask: torch.Tensor, kernel: int = 3) -> float:
    """Share of the latent mask's cells that a morphological opening with ``kernel`` removes: the
    parts narrower than ``kernel`` cells (plus the corners of diagonal edges)."""
    opened = dilate(erode(mask, kernel), kernel)
    return float((mask - opened).clamp(min=0).sum() / mask.sum().clamp(min=1))


def has_thin_parts(mask: torch.Tensor, kernel: int = 3) -> bool:
    """The "thin masks" of paper 4.3 that progressive shrinking is for: more than ``THIN_FRACTION``
    of the latent mask lies in parts narrower than ``kernel`` cells (24 px for SD and kernel 3)."""
    return thin_fraction(mask, kernel) > THIN_FRACTION


def shrink_stages(mask: torch.Tensor, kernels: tuple[int, ...] = (7, 5, 3)) -> torch.Tensor:
    """Progressive mask shrinking (paper 4.3, appendix C): the latent mask dilated by each kernel,
    most dilated first, then the mask itself.

    mask: (B, 1, h, w) -> (len(kernels) + 1, B, 1, h, w).
    """
    ordered = sorted(kernels, reverse=True)
    return torch.stack([dilate(mask, k) for k in ordered] + [mask])


def stage_of_step(num_steps: int, num_stages: int) -> list[int]:
    """Split ``num_steps`` denoising steps into ``num_stages`` (near-)equal consecutive parts.
    The last step always uses the last stage (the mask itself), even with fewer steps than stages."""
    stages = [i * num_stages // num_steps for i in range(num_steps)]
    stages[-1] = num_stages - 1
    return stages


def feather(mask: np.ndarray, width: int) -> np.ndarray:
    """An alpha (H, W) float32 that is 1 on the mask and falls linearly to 0 at ``width`` px
    outside it; exactly 0 beyond that band, so the input's pixels there are kept bit for bit."""
    import cv2

    m = mask.astype(bool)
    if width <= 0:
        return m.astype(np.float32)
    # Distance (px) from each background pixel to the nearest mask pixel.
    dist = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(1.0 - dist / float(width), 0.0, 1.0).astype(np.float32)
