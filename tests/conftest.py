"""Shared fixtures: tiny random-weight Stable Diffusion and CLIP models, built in code, offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from a test
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import (
    tiny_clip,
    tiny_scheduler,
    tiny_sdxl_pipeline,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

# Tiny random models make subnormal floats, which are up to 30x slower on the CPU. Flushing them is
# per thread and OpenMP's workers do not inherit it, so tests run on one flushed thread.
torch.set_flush_denormal(True)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# The test photos, their masks and cases.json, kept in the repository (see LICENSES.md there).
SHARED_IMAGES = REPO / "tests" / "data" / "images"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_images() -> Path:
    return SHARED_IMAGES


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD model saved as a local diffusers folder (model_index.json, vae/, unet/, ...)."""
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("models")
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=tiny_tokenizer(root / "vocab"),
        unet=tiny_unet(),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "tiny-sd")
    return root / "tiny-sd"


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL base model saved as a local diffusers folder (see tiny_models.tiny_sdxl_pipeline:
    cross-attention 96 = 32 + 64, pooled text 32, 6 time ids x 8, 16x16 latents)."""
    root = tmp_path_factory.mktemp("models-sdxl")
    tiny_sdxl_pipeline(root / "vocab").save_pretrained(root / "tiny-sdxl")
    return root / "tiny-sdxl"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPModel and its tokenizer saved as a local folder."""
    root = tmp_path_factory.mktemp("clip")
    tiny_clip().save_pretrained(root / "tiny-clip")
    tiny_tokenizer(root / "tiny-clip")
    return root / "tiny-clip"


@pytest.fixture(scope="session")
def editor(tiny_sd_dir: Path, tiny_clip_dir: Path):
    """A BlendedLatentDiffusion editor loaded through the real loading path from local folders."""
    from blendedit import BlendedLatentDiffusion

    return BlendedLatentDiffusion.from_pretrained(tiny_sd_dir, clip_model=str(tiny_clip_dir))
