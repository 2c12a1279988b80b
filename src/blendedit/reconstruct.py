"""Background reconstruction (BLD paper 4.2, appendix B.4): bring the input's pixels back outside the
mask after decoding. Inputs are at the input's own size: uint8 (H, W, 3) arrays and a bool mask."""

from __future__ import annotations

import numpy as np

from blendedit.masks import feather


def stitch(result: np.ndarray, source: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """Pixel compositing with a feathered mask: x_hat * a + x * (1 - a), a = 1 on the mask falling
    to 0 at ``width`` px outside it. Beyond that band the source pixels are returned bit for bit.

    result, source: (H, W, 3) uint8; mask: (H, W) bool -> (H, W, 3) uint8.
    """
    alpha = feather(mask, width)[..., None]  # (H, W, 1) float32
    mixed = np.rint(alpha * result.astype(np.float32) + (1 - alpha) * source.astype(np.float32))
    return np.where(alpha > 0, mixed.clip(0, 255).astype(np.uint8), source)
