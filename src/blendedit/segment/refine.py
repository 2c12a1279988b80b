"""Plain functions on a selection's mask levels (uint8 (H, W), 255 = select): fill its holes,
keep its largest part, and join it to a painted mask (union, subtract). Grow and blur are the
mask path's own (``blendedit.frame.masks.refine``), applied to every mask after these."""

from __future__ import annotations

import numpy as np

from blendedit.config import SELECT_COMBINE
from blendedit.frame.masks import MASK_THRESHOLD


def to_levels(mask: np.ndarray) -> np.ndarray:
    """Probabilities (H, W) in [0, 1] -> uint8 levels (H, W)."""
    return np.rint(np.clip(mask, 0, 1) * 255).astype(np.uint8)


def fill_holes(levels: np.ndarray) -> np.ndarray:
    """Every unselected region that does not reach the photo's border becomes selected (255)."""
    import cv2

    outside = (levels < MASK_THRESHOLD).astype(np.uint8)  # (H, W) 1 = not selected
    _, labels = cv2.connectedComponents(outside, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = outside.astype(bool) & ~np.isin(labels, border)
    out = levels.copy()
    out[holes] = 255
    return out


def keep_largest(levels: np.ndarray) -> np.ndarray:
    """Only the largest connected selected part (8-connected, at the 50% level) stays."""
    import cv2

    inside = (levels >= MASK_THRESHOLD).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if n <= 2:  # background and at most one part
        return levels
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == largest, levels, 0).astype(np.uint8)


def combine(selected: np.ndarray, painted: np.ndarray | None, mode: str = "union") -> np.ndarray:
    """A selection joined to a painted mask (both uint8 levels (H, W)): ``union`` the higher
    level of the two, ``subtract`` the painted mask where the selection is not."""
    if painted is None:
        return selected
    if painted.shape != selected.shape:
        raise ValueError(f"mask shapes differ: {painted.shape} and {selected.shape}")
    if mode == "union":
        return np.maximum(selected, painted)
    if mode == "subtract":
        return np.minimum(painted, 255 - selected).astype(np.uint8)
    raise ValueError(f"unknown combine mode {mode!r}; choose one of {', '.join(SELECT_COMBINE)}")
