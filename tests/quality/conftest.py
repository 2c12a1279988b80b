"""Fixtures of the quality tests: the trained toy world (``$BLENDEDIT_SHARED/toyworld``, default
``../shared/toyworld`` beside the repository). Without it every test here is skipped, saying why.

The models are small (a 4.2M-parameter UNet at 64 px) and run on the CPU in seconds; each test
measures a claim of the papers against its control on scenes made by the world's generator from
fixed seeds, so the numbers are the same on every run of the same versions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))  # toy_cases


def shared_root() -> Path:
    return Path(os.environ.get("BLENDEDIT_SHARED") or REPO.parent / "shared")


@pytest.fixture(scope="session")
def toyworld():
    """The toy world (:class:`blendedit.eval.toyworld.World`), or a skip naming what is missing."""
    from blendedit.eval.toyworld import World, missing

    root = shared_root() / "toyworld"
    why = missing(root)
    if why:
        pytest.skip(f"{why}; set BLENDEDIT_SHARED to the folder holding toyworld/")
    return World(root)


@pytest.fixture(scope="session")
def toy_editor(toyworld):
    """BlendedLatentDiffusion on the toy world's SD folder and CLIP, through the normal loader."""
    from blendedit import BlendedLatentDiffusion

    return BlendedLatentDiffusion.from_pretrained(toyworld.sd, clip_model=str(toyworld.clip))


@pytest.fixture(scope="session")
def toy_judge(toyworld):
    return toyworld.classifier()
