"""Few-step models under the BLD loop (docs/models.md, "Few-step models"): parity with diffusers' inpaint
pipelines on tiny random components with a partial mask for SDXL-Turbo / SD-Turbo (trailing
Euler-a / Euler, our guidance 1 = diffusers' 0) and LCM (an LCM-distilled UNet with a guidance
embedding, and a plain UNet as under an LCM-LoRA); step noise drawn from each candidate's own
generator; the one-step latent paste; the realtime presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.config import PRESET_HELP, PRESETS, EditConfig, preset_on
from blendedit.latent.backbones import StableDiffusion
from blendedit.latent.sampling import blend_timesteps
from blendedit.models import SCHEDULERS, make_scheduler
from test_latent_pipeline import PointMassVAE, _block_mask, _photo, unet_free_config
from test_latent_sdxl import SIZE as SDXL_SIZE
from test_latent_sdxl import _backbone as _sdxl_backbone
from test_latent_sdxl import _mask as _sdxl_mask
from test_latent_sdxl import _photo as _sdxl_photo
from tiny_models import tiny_lcm_unet, tiny_sdxl_scheduler

PROMPT = "a red flower"
# BLD runs 4 - floor(4 * 0.25) = 3 steps; diffusers int(4 * 0.75) = 3, from the same timestep.
STEPS, BLEND_START, STRENGTH = 4, 0.25, 0.75
UNRANKED = {"mask_shrink": "off", "rank": False, "background": "decoded", "region": "full"}


def _sd_backbone(folder, unet=None) -> StableDiffusion:
    """The tiny SD model with a deterministic VAE encoder (PointMassVAE, so diffusers' posterior
    sample is BLD's mean and draws nothing from the generators); ``unet`` replaces its UNet."""
    return StableDiffusion(
        PointMassVAE.from_pretrained(folder, subfolder="vae"),
        unet or UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        make_scheduler("ddim", unet_free_config(folder)),
    )


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize(
    ("scheduler", "lcm_unet", "ours", "theirs", "negative"),
    [
        ("euler-trailing", False, 1.0, 0.0, ""),  # SD-Turbo: conditional only, one pass
        ("lcm", True, 8.0, 8.0, ""),  # LCM-distilled: guidance as the UNet's w embedding
        ("lcm", False, 1.0, 1.0, ""),  # LCM-LoRA style: the LCM scheduler on a plain UNet
        ("lcm", False, 1.5, 1.5, "blurry"),  # LCM-LoRA with guidance in 1..2: two passes
    ],
    ids=["sd-turbo", "lcm-distilled", "lcm-lora", "lcm-lora-cfg"],
)
def test_parity_sd_few_step(
    tiny_sd_dir, shared_images, scheduler, lcm_unet, ours, theirs, negative
):
    """StableDiffusionInpaintPipeline (4-channel UNet) blends the source at t' after each step;
    LCM's and Euler-a's ``step`` draw fresh noise from the generators after the initial noise, so
    BLD's per-candidate generators must be used in the same order."""
    bb = _sd_backbone(tiny_sd_dir, tiny_lcm_unet() if lcm_unet else None)
    assert bb.guidance_embedded == lcm_unet
    seeds = [3, 11]
    got = BlendedLatentDiffusion(bb)(
        _photo(shared_images), _block_mask(), PROMPT, seeds=seeds, scheduler=scheduler,
        num_inference_steps=STEPS, blend_start=BLEND_START, guidance_scale=ours,
        negative_prompt=negative, size=96, batch_size=2, **UNRANKED,
    )  # fmt: skip
    pipe = bb.inpaint_reference(make_scheduler(scheduler, bb.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt=PROMPT, negative_prompt=negative or None, image=_photo(shared_images),
        mask_image=_block_mask(), height=64, width=96, strength=STRENGTH,
        num_inference_steps=STEPS, guidance_scale=theirs, num_images_per_prompt=2,
        generator=_gens(seeds), output_type="latent",
    ).images  # fmt: skip
    latents = torch.stack([c.latent for c in got.candidates])
    assert latents.shape == ref.shape == (2, 4, 8, 12)
    # Float rounding only (the VAE sees a differently strided image); a wrong level, a shared or
    # reordered generator is O(0.1).
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("scheduler", "ours", "theirs", "negative"),
    [
        ("euler-a-trailing", 1.0, 0.0, ""),  # SDXL-Turbo
        ("lcm", 1.5, 1.5, "blurry"),  # SDXL + LCM-LoRA style, with guidance
    ],
    ids=["sdxl-turbo", "sdxl-lcm-lora-cfg"],
)
def test_parity_sdxl_few_step(tiny_sdxl_dir, shared_images, scheduler, ours, theirs, negative):
    """StableDiffusionXLInpaintPipeline with a 4-channel UNet, SDXL-Turbo's scheduler (trailing
    Euler-a, step noise from the generators) and LCM's; partial mask, 3 of 4 steps."""
    bb = _sdxl_backbone(tiny_sdxl_dir, scheduler)
    seeds = [3, 11]
    got = BlendedLatentDiffusion(bb)(
        _sdxl_photo(shared_images), _sdxl_mask(), PROMPT, seeds=seeds, scheduler=scheduler,
        num_inference_steps=STEPS, blend_start=BLEND_START, guidance_scale=ours,
        negative_prompt=negative, batch_size=2, **UNRANKED,
    )  # fmt: skip
    pipe = bb.inpaint_reference(make_scheduler(scheduler, bb.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt=PROMPT, negative_prompt=negative or None, image=_sdxl_photo(shared_images),
        mask_image=_sdxl_mask(), height=SDXL_SIZE[1], width=SDXL_SIZE[0], strength=STRENGTH,
        num_inference_steps=STEPS, guidance_scale=theirs, num_images_per_prompt=2,
        generator=_gens(seeds), output_type="latent",
    ).images  # fmt: skip
    latents = torch.stack([c.latent for c in got.candidates])
    assert latents.shape == ref.shape == (2, 4, 12, 16)
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("scheduler", ["lcm", "euler-a-trailing"])
def test_step_noise_comes_from_each_candidates_seed(editor, shared_images, scheduler):
    """A candidate is its seed's, whatever the global RNG and whichever batch it ran in: the
    noise LCM and Euler-a draw inside ``step`` comes from the candidate's own generator."""
    args = (_photo(shared_images), _block_mask(), PROMPT)
    call = {"scheduler": scheduler, "num_inference_steps": STEPS, "guidance_scale": 1.0}
    torch.manual_seed(0)
    pair = editor(*args, seeds=[5, 6], batch_size=2, size=96, **call, **UNRANKED)
    torch.manual_seed(1)
    alone = editor(*args, seeds=[6], size=96, **call, **UNRANKED)
    torch.testing.assert_close(pair.candidates[1].latent, alone.candidates[0].latent)
    assert (pair.candidates[0].latent - pair.candidates[1].latent).abs().max() > 0.01


def _latent_block(shape) -> torch.Tensor:
    """``_block_mask`` (rows 16:40, columns 24:64 of 64x96 px) on the 8x12 latent grid."""
    m = torch.zeros(shape)
    m[..., 2:5, 3:8] = 1
    return m


@pytest.mark.parametrize(("steps", "paste"), [(1, True), (2, False)])
def test_one_step_is_a_latent_paste(editor, shared_images, steps, paste):
    """With one step the blend never runs before the model's only call: inside the mask the edit
    is exactly the unmasked generation's, outside the clean source (a latent paste). From two
    steps on, the second call sees the blended background and the inside changes with it."""
    call = {
        "seeds": [4], "scheduler": "euler-trailing", "num_inference_steps": steps,
        "blend_start": 0.0, "guidance_scale": 1.0, "size": 96, **UNRANKED,
    }  # fmt: skip
    photo = _photo(shared_images)
    part = editor(photo, _block_mask(), PROMPT, **call).candidates[0].latent  # (4, 8, 12)
    whole = np.full((64, 96), 255, np.uint8)
    whole[0, 0] = 0  # a whole-image mask is refused; max-pooled, this one is all ones
    full = editor(photo, Image.fromarray(whole), PROMPT, **call).candidates[0].latent
    inside = _latent_block(part.shape).bool()
    if paste:
        assert torch.equal(part[inside], full[inside])
    else:
        assert (part[inside] - full[inside]).abs().max() > 1e-3


REALTIME = [k for k in PRESETS if k.startswith("realtime-")]


def test_realtime_presets_run_the_distilled_timesteps():
    """Every realtime preset says what it is for; on a family's defaults (SDXL: guidance 5) it
    sets its own guidance, and its 4 steps minus blend_start's one land on the timesteps the
    model was distilled at (trailing spacing: 749, 499, 249; LCM: 759, 499, 259)."""
    assert set(REALTIME) == set(PRESET_HELP)
    sdxl = EditConfig(guidance_scale=5.0)
    expected = {
        "realtime-sd-turbo": ("euler-trailing", 1.0, [749, 499, 249]),
        "realtime-sdxl-turbo": ("euler-a-trailing", 1.0, [749, 499, 249]),
        "realtime-lcm": ("lcm", 1.0, [759, 499, 259]),
        "realtime-lcm-distilled": ("lcm", 8.0, [759, 499, 259]),
        "realtime-lightning": ("euler-trailing", 1.0, [749, 499, 249]),
    }
    for name, (scheduler, guidance, timesteps) in expected.items():
        cfg = preset_on(name, sdxl).validate()
        assert (cfg.scheduler, cfg.guidance_scale) == (scheduler, guidance), name
        assert cfg.scheduler in SCHEDULERS
        s = make_scheduler(cfg.scheduler, tiny_sdxl_scheduler().config)  # SDXL's "leading" config
        ts = blend_timesteps(s, cfg.num_inference_steps, cfg.blend_start)
        assert [int(t) for t in ts] == timesteps, name
    # FLUX.1-schnell: on FLUX.1-dev's defaults (28 steps, guidance 3.5) it runs 4 steps unguided.
    dev = EditConfig(scheduler="flow-euler", num_inference_steps=28, guidance_scale=3.5)
    schnell = preset_on("realtime-schnell", dev).validate()
    assert (schnell.scheduler, schnell.num_inference_steps, schnell.guidance_scale) == (
        "flow-euler", 4, 1.0,
    )  # fmt: skip


def test_cli_realtime_preset_on_a_tiny_sdxl_folder(tiny_sdxl_dir, shared_images, tmp_path):
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    Image.open(shared_images / "chelsea.png").convert("RGB").resize((150, 100)).save(photo)
    m = np.zeros((100, 150), np.uint8)
    m[30:70, 40:100] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "out"
    argv = [
        "edit", str(photo), "--mask", str(mask), "--prompt", PROMPT, "--model",
        str(tiny_sdxl_dir), "--preset", "realtime-sdxl-turbo", "--size", "128", "--no-rank",
        "--num-images", "2", "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    settings = result["settings"]
    assert (settings["scheduler"], settings["guidance_scale"]) == ("euler-a-trailing", 1.0)
    assert settings["num_inference_steps"] == 4 and settings["size"] == 128
    assert result["timesteps"] == [749, 499, 249]
    for name in ("01-seed0.png", "02-seed1.png"):
        assert Image.open(out / name).size == (150, 100)


@pytest.mark.parametrize("scheduler", ["euler-a-trailing", "lcm"])
def test_process_frames_with_few_step_schedulers(editor, shared_images, scheduler):
    """``return_process`` (``--save-process``, paper fig. 6) keeps one clean estimate per step."""
    got = editor(
        _photo(shared_images), _block_mask(), PROMPT, seeds=[0], scheduler=scheduler,
        num_inference_steps=STEPS, guidance_scale=1.0, size=96, return_process=True, **UNRANKED,
    )  # fmt: skip
    assert got.candidates[0].process is not None
    assert len(got.candidates[0].process) == STEPS - int(STEPS * BLEND_START)
