"""Edits on tiny random models whose exact outputs are recorded in ``data/reference/house``.

Shared by ``data/reference/house/record.py`` (which wrote the fixture from the code as it was before
a restructuring) and ``test_house_identical.py`` (which checks the code still gives the same bits).
Only blendedit's public API is used here (``BlendedLatentDiffusion``, ``BlendedDiffusion``, results'
``candidates``, ``image``, ``score``, ``seed``), so blendedit's internal modules can move freely.
Torch must run on one thread with subnormals flushed (as ``conftest.py`` sets), like the recording.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit import BlendedDiffusion, BlendedLatentDiffusion, EditConfig, PixelConfig
from tiny_models import (
    tiny_clip,
    tiny_flux_parts,
    tiny_scheduler,
    tiny_sd3_parts,
    tiny_sdxl_pipeline,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

TESTS = Path(__file__).resolve().parent
HOUSE = TESTS / "data" / "reference" / "house"  # written by HOUSE / "record.py"
IMAGES_FILE = "house.npz"  # every candidate's final image, uint8, under array_key(case, i)
RESULTS_FILE = "house.json"  # per case: seeds, scores, shapes, latent digests; meta: versions
PHOTO = TESTS / "data" / "images" / "chelsea.png"
ADM = TESTS / "data" / "reference" / "adm"
PROMPT = "a red flower"
SCORE_TOL = 1e-6


def setup_torch() -> None:
    """What the recording ran under (and conftest.py sets): one thread, subnormals flushed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)


# -- inputs ----------------------------------------------------------------------------------------


def photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """The test photo at a small (W, H)."""
    return Image.open(PHOTO).convert("RGB").resize(size, Image.LANCZOS)


def box_mask(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A partial box mask (about a quarter of the photo), off the 8 px grid on purpose."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h * 5 // 8 + 1, w * 5 // 16 : w * 3 // 4 + 3] = 255
    return Image.fromarray(m)


def soft_mask(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Grey levels: a box whose strength ramps from 0 (left) to 255 (right)."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = h // 4, h * 3 // 4, w // 4, w * 7 // 8
    m[y0:y1, x0:x1] = np.linspace(40, 255, x1 - x0).round().astype(np.uint8)[None, :]
    return Image.fromarray(m)


def thin_mask(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A 3 px stroke: what mask_shrink="auto" treats as thin."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    m[h // 2 : h // 2 + 3, w // 8 : w * 7 // 8] = 255
    return Image.fromarray(m)


MASKS: dict[str, Callable[[tuple[int, int]], Image.Image]] = {
    "box": box_mask,
    "soft": soft_mask,
    "thin": thin_mask,
}


# -- tiny models, saved as folders and loaded through the public from_pretrained -----------------


def _save_sd(root: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=tiny_tokenizer(root / "vocab-sd"),
        unet=tiny_unet(),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "tiny-sd")
    return root / "tiny-sd"


def _save_sdxl(root: Path) -> Path:
    tiny_sdxl_pipeline(root / "vocab-sdxl").save_pretrained(root / "tiny-sdxl")
    return root / "tiny-sdxl"


def _save_sd3(root: Path) -> Path:
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**tiny_sd3_parts(root / "vocab-sd3")).save_pretrained(root / "sd3")
    return root / "sd3"


def _save_flux(root: Path, dev: bool) -> Path:
    from diffusers import FluxPipeline

    name = "flux-dev" if dev else "flux-schnell"
    FluxPipeline(**tiny_flux_parts(root / f"vocab-{name}", dev=dev)).save_pretrained(root / name)
    return root / name


LDM_WORDS = ["a", "red", "blue", "flower", "cat", "hat", "sunglasses", "dog", "blurry"]
# The original LDM DDIM sampler (as test_latent_ldm.py's tiny LDM has it).
LDM_SAMPLER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
    "clip_sample": False,
}


def _save_ldm(root: Path) -> Path:
    """test_latent_ldm.py's tiny LDM (LDMBert, BERT tokenizer, 8x VAE, 8x8 native latents),
    rebuilt here so that this module imports no test module that imports blendedit internals."""
    from diffusers import DDIMScheduler, LDMTextToImagePipeline
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )
    from transformers import BertTokenizer

    folder = root / "vocab-ldm"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LDM_WORDS]) + "\n")
    torch.manual_seed(0)
    bert = LDMBertModel(
        LDMBertConfig(
            vocab_size=len(LDM_WORDS) + 5,
            max_position_embeddings=77,
            encoder_layers=2,
            encoder_ffn_dim=37,
            encoder_attention_heads=2,
            head_dim=16,
            d_model=32,
            pad_token_id=0,
        )
    ).eval()
    pipe = LDMTextToImagePipeline(
        vqvae=tiny_vae(),
        bert=bert,
        tokenizer=BertTokenizer(str(vocab), model_max_length=77),
        unet=tiny_unet(sample_size=8),
        scheduler=DDIMScheduler(**LDM_SAMPLER),
    )
    pipe.save_pretrained(root / "tiny-ldm")
    return root / "tiny-ldm"


def _save_clip(root: Path) -> Path:
    tiny_clip().save_pretrained(root / "tiny-clip")
    tiny_tokenizer(root / "tiny-clip")
    return root / "tiny-clip"


LATENT_MODELS: dict[str, Callable[[Path], Path]] = {
    "sd": _save_sd,
    "sdxl": _save_sdxl,
    "sd3": _save_sd3,
    "flux-dev": lambda root: _save_flux(root, dev=True),
    "flux-schnell": lambda root: _save_flux(root, dev=False),
    "ldm": _save_ldm,
}
PIXEL_MODELS: dict[str, tuple[str, str]] = {  # checkpoint, guided-diffusion config (in ADM)
    "adm": ("tiny_adm.safetensors", "tiny_adm_config.json"),
    "adm-classcond": ("tiny_adm_classcond.safetensors", "tiny_adm_classcond_config.json"),
}


class Models:
    """Tiny models saved under ``root`` on first use, each loaded once through the public API with
    the tiny CLIP (ranking; guidance too for the pixel method)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._editors: dict[str, Any] = {}
        self._clip: Path | None = None

    def clip_dir(self) -> Path:
        if self._clip is None:
            self._clip = _save_clip(self.root)
        return self._clip

    def editor(self, model: str) -> BlendedLatentDiffusion | BlendedDiffusion:
        if model not in self._editors:
            clip = str(self.clip_dir())
            if model in PIXEL_MODELS:
                ckpt, cfg = PIXEL_MODELS[model]
                self._editors[model] = BlendedDiffusion.from_pretrained(
                    ADM / ckpt, model_config=ADM / cfg, clip_model=clip
                )
            else:
                folder = LATENT_MODELS[model](self.root)
                self._editors[model] = BlendedLatentDiffusion.from_pretrained(
                    folder, clip_model=clip
                )
        return self._editors[model]


# -- cases -----------------------------------------------------------------------------------------

LATENT_FAST = {"num_images": 2, "num_inference_steps": 4}
# 10 respaced steps, skip 5: 5 steps; 2 augmented copies for the CLIP loss.
PIXEL_FAST = {"num_images": 2, "timestep_respacing": "10", "skip_timesteps": 5, "aug_num": 2}


@dataclass(frozen=True)
class Case:
    model: str  # a key of LATENT_MODELS or PIXEL_MODELS
    settings: dict[str, Any] = field(default_factory=dict)  # EditConfig / PixelConfig fields
    mask: str = "box"  # a key of MASKS
    size: tuple[int, int] = (64, 48)  # the photo's (W, H)
    seed: int = 0
    seeds: tuple[int, ...] | None = None  # explicit seeds instead of seed, seed + 1, ...
    prompt: str = PROMPT

    @property
    def pixel(self) -> bool:
        return self.model in PIXEL_MODELS

    def call_settings(self) -> dict[str, Any]:
        """Keyword settings of the edit call, on top of the model family's own defaults."""
        base = PIXEL_FAST if self.pixel else LATENT_FAST
        fields = PixelConfig if self.pixel else EditConfig
        settings = {**base, **self.settings}
        fields().replace(**settings).validate()  # a typo in a case fails here, loudly
        return settings


CASES: dict[str, Case] = {
    # Stable Diffusion 1.x/2.x shape, ranked with the tiny CLIP.
    "sd-default": Case("sd"),
    "sd-poisson": Case("sd", {"background": "poisson"}),
    "sd-soft-mask": Case("sd", {"soft_mask": True}, mask="soft"),
    "sd-mask-blur": Case("sd", {"mask_blur": 2.0, "mask_grow": 2}),
    "sd-thin-shrink": Case("sd", {"num_inference_steps": 8}, mask="thin", seed=5),
    "sd-official-full-decoded": Case(
        "sd",
        {"blend_rule": "official", "region": "full", "background": "decoded", "size": 64},
        seed=11,
    ),
    "sd-dpm-neg-crop": Case(
        "sd",
        {"scheduler": "dpm++", "negative_prompt": "blurry", "region": "crop", "feather": 4},
        seed=3,
    ),
    "sd-latent-recon": Case("sd", {"background": "latent", "recon_steps": 3, "rank": False}),
    "sd-invert-keep": Case("sd", {"invert_mask": True, "num_images": 3, "keep": 2}, seed=2),
    "sd-decoder-paste-back": Case(
        "sd", {"background": "decoder", "recon_steps": 2, "paste_back": True, "rank": False}
    ),
    "sd-euler-a-seeds": Case(
        "sd", {"scheduler": "euler-a", "batch_size": 1}, seeds=(7, 123456789), mask="soft"
    ),
    "sd-ddim-eta-shrink-on": Case("sd", {"eta": 0.5, "mask_shrink": "on", "decode_batch_size": 2}),
    "sd-lcm": Case("sd", {"scheduler": "lcm", "guidance_scale": 1.0}, seed=9),
    "sd-empty-prompt": Case("sd", {"negative_prompt": "a red flower"}, prompt=""),
    "sd-big-photo": Case("sd", {"num_inference_steps": 6}, size=(160, 120), seed=21),
    "sdxl": Case("sdxl", {"rank": False}),
    "sdxl-ranked-poisson": Case("sdxl", {"background": "poisson"}, seed=4),
    "sd3": Case("sd3", {"size": 64, "rank": False}),
    "sd3-ranked": Case("sd3", {"size": 64, "guidance_scale": 3.0}, seed=6),
    "flux-dev": Case("flux-dev", {"size": 64, "rank": False}),
    "flux-schnell": Case("flux-schnell", {"size": 64}, seed=1),
    "ldm": Case("ldm", {"rank": False}, size=(96, 64)),
    "ldm-paper": Case("ldm", {"blend_rule": "official", "guidance_scale": 5.0}, size=(96, 64)),
    # Blended Diffusion (pixel space) on the tiny ADM checkpoints, CLIP-guided and ranked.
    "pixel": Case("adm", size=(40, 32)),
    "pixel-ddim-poisson": Case("adm", {"sampler": "ddim", "background": "poisson"}, seed=2),
    "pixel-pad": Case("adm", {"fit": "pad", "feather": 0}, size=(48, 32), seed=8),
    "pixel-local": Case("adm", {"local": True}, size=(40, 32), seed=1),
    "pixel-classcond": Case("adm-classcond", {"batch_size": 1}, size=(40, 32), seed=3),
}


@dataclass
class Outcome:
    """One case's candidates, in the order the result gives them (ranked or generation order)."""

    images: list[np.ndarray]  # (H, W, 3) uint8 each
    scores: list[float | None]
    seeds: list[int]
    latents: list[np.ndarray | None]  # (C, h, w) float32 each; None for the pixel method


def array_key(case: str, i: int) -> str:
    """The name of candidate ``i``'s image of ``case`` in IMAGES_FILE."""
    return f"{case}.{i}"


def latent_digest(latent: np.ndarray | None) -> dict[str, Any] | None:
    """The final latent, bit for bit (sha256 of its float32 bytes), with its shape and sum for a
    readable failure. Stricter than the uint8 images: it sees changes below their resolution."""
    if latent is None:
        return None
    z = np.ascontiguousarray(latent, dtype=np.float32)
    digest = hashlib.sha256(z.tobytes()).hexdigest()
    return {"sha256": digest, "shape": list(z.shape), "sum": float(z.sum(dtype=np.float64))}


def run_case(name: str, models: Models) -> Outcome:
    case = CASES[name]
    editor = models.editor(case.model)
    image, mask = photo(case.size), MASKS[case.mask](case.size)
    seeds = {"seed": case.seed} if case.seeds is None else {"seeds": list(case.seeds)}
    result = editor(image, mask, case.prompt, **seeds, **case.call_settings())
    out = Outcome([], [], [], [])
    for c in result.candidates:
        out.images.append(np.ascontiguousarray(np.asarray(c.image.convert("RGB"), dtype=np.uint8)))
        out.scores.append(None if c.score is None else float(c.score))
        out.seeds.append(int(c.seed))
        latent = getattr(c, "latent", None)
        out.latents.append(None if latent is None else latent.detach().float().cpu().numpy())
    return out
