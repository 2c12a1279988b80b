"""Tiny random-weight segmenters saved as folders (``tests/tiny_segmenters.py``), once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_segmenters import build_clipseg, build_grounding_dino, build_sam


@pytest.fixture(scope="session")
def clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clipseg(tmp_path_factory.mktemp("clipseg"))


@pytest.fixture(scope="session")
def sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sam(tmp_path_factory.mktemp("sam"))


@pytest.fixture(scope="session")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_grounding_dino(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="session")
def scene() -> Image.Image:
    """A 96x60 photo: grey ground, a red disc and a blue square (not square: aspects matter)."""
    rng = np.random.default_rng(0)
    a = np.full((60, 96, 3), 128, np.uint8) + rng.integers(0, 20, (60, 96, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:60, :96]
    a[(yy - 30) ** 2 + (xx - 25) ** 2 < 144] = (220, 30, 30)
    a[10:30, 60:85] = (30, 30, 220)
    return Image.fromarray(a)
