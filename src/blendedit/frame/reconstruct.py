"""Background reconstruction (BLD paper 4.2, appendix B.4; SPEC 1): bring the input back outside
the mask after decoding, without a seam at its border.

Pixel methods work at the input's own size on uint8 (H, W, 3) arrays and a bool (H, W) mask.
Optimisation methods work at the model's working size on float tensors in [-1, 1]:
x_hat (1, 3, H, W) the decoded edit, x (1, 3, H, W) the input, m (1, 1, H, W) the mask.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from blendedit.frame.masks import feather
from blendedit.frame.stop import checkpoint

RECON_DEFAULTS = {"latent": {"lr": 0.1}, "decoder": {"lr": 1e-4}}  # official code, SPEC 1
POISSON_PAD = 2  # px of reflected border: OpenCV's cloning needs the region off the image edge


def stitch(result: np.ndarray, source: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """Pixel compositing with a feathered mask: x_hat * a + x * (1 - a), a = 1 on the mask falling
    to 0 at ``width`` px outside it. Beyond that band the source pixels are returned bit for bit.

    result, source: (H, W, 3) uint8; mask: (H, W) bool -> (H, W, 3) uint8.
    """
    return composite(result, source, feather(mask, width))


def composite(result: np.ndarray, source: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """result * alpha + source * (1 - alpha), rounded; the source bit for bit where alpha is 0.
    alpha: (H, W) float in [0, 1], e.g. ``masks.feather`` (computed once for a whole batch)."""
    a = alpha[..., None]  # (H, W, 1)
    mixed = np.rint(a * result.astype(np.float32) + (1 - a) * source.astype(np.float32))
    return np.where(a > 0, mixed.clip(0, 255).astype(np.uint8), source)


def poisson(result: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Poisson image editing (Perez et al. 2003) of the masked region of ``result`` into ``source``
    with OpenCV's ``seamlessClone`` (NORMAL_CLONE). Pixels outside the mask's bounding box (grown by
    OpenCV's one-pixel solver border) stay the source's.

    result, source: (H, W, 3) uint8 RGB; mask: (H, W) bool -> (H, W, 3) uint8.
    """
    import cv2

    p = POISSON_PAD
    pad = ((p, p), (p, p), (0, 0))
    src = np.pad(result, pad, mode="reflect")[..., ::-1].copy()  # BGR for OpenCV
    dst = np.pad(source, pad, mode="reflect")[..., ::-1].copy()
    m = np.pad(mask, p).astype(np.uint8) * 255
    x, y, w, h = cv2.boundingRect(m)
    out = cv2.seamlessClone(src, dst, m, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    return out[p:-p, p:-p, ::-1].copy()


def reconstruction_loss(
    out: torch.Tensor, x_hat: torch.Tensor, x: torch.Tensor, m: torch.Tensor, lam: float
) -> torch.Tensor:
    """Paper eq. (2)/(3): ||D * m - x_hat * m||^2 + lambda ||D * (1 - m) - x * (1 - m)||^2 (MSE)."""
    return F.mse_loss(out * m, x_hat * m) + lam * F.mse_loss(out * (1 - m), x * (1 - m))


def optimise_latent(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    x_hat: torch.Tensor,
    x: torch.Tensor,
    m: torch.Tensor,
    steps: int = 75,
    lr: float = 0.1,
    lam: float = 100.0,
) -> torch.Tensor:
    """Latent optimisation (paper 4.2): z* = argmin_z loss(D(z)), from z0, Adam. Returns z*.
    ``decode``: (1, C, h, w) latent -> (1, 3, H, W) image in [-1, 1], differentiable."""
    z = z0.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        checkpoint("background reconstruction")
        opt.zero_grad(set_to_none=True)
        reconstruction_loss(decode(z).float(), x_hat, x, m, lam).backward()
        opt.step()
    return z.detach()


def finetune_decoder(
    vae: torch.nn.Module,
    decode: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    x_hat: torch.Tensor,
    x: torch.Tensor,
    m: torch.Tensor,
    steps: int = 75,
    lr: float = 1e-4,
    lam: float = 100.0,
) -> torch.Tensor:
    """Per-image decoder fine-tuning (paper 4.2, its choice): theta* = argmin loss(D_theta(z0)),
    Adam; returns x* = D_theta*(z0), (1, 3, H, W) in [-1, 1].

    A float32 copy of ``vae`` is tuned and dropped: the model's own weights never change.
    ``decode(vae, z)`` decodes latents with the given VAE.
    """
    tuned = copy.deepcopy(vae).float().train(False).requires_grad_(True)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    z = z0.detach().float()
    for _ in range(steps):
        checkpoint("background reconstruction")
        opt.zero_grad(set_to_none=True)
        reconstruction_loss(decode(tuned, z).float(), x_hat, x, m, lam).backward()
        opt.step()
    with torch.no_grad():
        return decode(tuned, z).float()
