"""SDXL under the BLD loop (latent/backbones/sdxl.py): parity with diffusers' SDXL inpaint pipeline
on a 4-channel UNet with a partial mask, micro-conditioning, the empty negative prompt, family
detection and the end-to-end CLI on a tiny SDXL folder and single file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.latent.backbones import StableDiffusionXL, detect_family
from blendedit.models import make_scheduler
from test_latent_pipeline import PointMassVAE

SIZE = (128, 96)  # (W, H): 16x12 latents at the tiny VAE's factor 8


def _photo(shared_images) -> Image.Image:
    return Image.open(shared_images / "chelsea.png").convert("RGB").resize(SIZE, Image.LANCZOS)


def _mask() -> Image.Image:
    m = np.zeros(SIZE[::-1], np.uint8)
    m[24:64, 32:88] = 255  # aligned to the 8 px latent grid: nearest and max-pool agree
    return Image.fromarray(m)


def _backbone(folder, scheduler_name="euler"):
    vae = PointMassVAE.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    base = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return StableDiffusionXL(vae, unet, te, te2, tok, tok2, make_scheduler(scheduler_name, base))


@pytest.mark.parametrize(("scheduler", "negative"), [("euler", ""), ("ddim", "blurry")])
def test_parity_with_diffusers_sdxl_inpaint(tiny_sdxl_dir, shared_images, scheduler, negative):
    """diffusers' StableDiffusionXLInpaintPipeline with a 4-channel UNet blends the source at t'
    after every step; with shrinking and ranking off BLD reproduces its latents. An empty negative
    prompt is zeros (force_zeros_for_empty_prompt), which diffusers does for negative_prompt=None."""
    bb = _backbone(tiny_sdxl_dir, scheduler)
    editor = BlendedLatentDiffusion(bb)
    seeds = [3, 11]
    settings = {"num_inference_steps": 4, "guidance_scale": 6.0}
    ours = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, scheduler=scheduler,
        negative_prompt=negative, blend_start=0.25, mask_shrink="off", rank=False,
        background="decoded", region="full", batch_size=2, **settings,
    )  # fmt: skip
    pipe = bb.inpaint_reference(make_scheduler(scheduler, bb.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt="a red flower",
        negative_prompt=negative or None,
        image=_photo(shared_images),
        mask_image=_mask(),
        height=SIZE[1],
        width=SIZE[0],
        strength=0.75,  # int(4 * 0.75) = 3 steps = 4 - floor(4 * 0.25)
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
        **settings,
    ).images
    latents = torch.stack([c.latent for c in ours.candidates])
    assert latents.shape == ref.shape == (2, 4, 12, 16)
    # Float rounding only (the VAE sees a differently strided image); a wrong level is O(0.1).
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)


def test_micro_conditioning_uses_the_regions_real_size(tiny_sdxl_dir):
    bb = _backbone(tiny_sdxl_dir)
    ids = bb.time_ids((1024, 768), (500, 400), 6.0)
    assert ids.tolist() == [[400.0, 500.0, 0.0, 0.0, 768.0, 1024.0]]  # (H, W) order, crop (0, 0)
    c = bb.encode_text("a cat", "", (128, 96), (64, 48))
    assert torch.equal(c.uncond, torch.zeros_like(c.cond))  # force_zeros_for_empty_prompt
    assert torch.equal(c.added_uncond["text_embeds"], torch.zeros_like(c.added["text_embeds"]))
    assert c.cond.shape == (1, 77, 96) and c.added["text_embeds"].shape == (1, 32)
    assert c.added["time_ids"].tolist() == [[48.0, 64.0, 0.0, 0.0, 96.0, 128.0]]
    bb.force_zeros_for_empty_prompt = False
    c2 = bb.encode_text("a cat", "", (128, 96), (64, 48))
    assert not torch.equal(c2.uncond, torch.zeros_like(c2.cond))


def test_family_detection(tiny_sdxl_dir, tiny_sd_dir, tmp_path):
    assert detect_family(tiny_sdxl_dir) == "sdxl"
    assert detect_family(tiny_sd_dir) == "sd"
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxFillPipeline"}))
    assert detect_family(flux) == "flux"  # FLUX.1 Fill: a model trained for inpainting (issue 19)
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(InputError, match="KandinskyPipeline"):
        detect_family(flux)


def test_sdxl_defaults_and_fp16_vae_rule(tiny_sdxl_dir):
    editor = BlendedLatentDiffusion.from_pretrained(tiny_sdxl_dir, clip_model=None)
    assert editor.family == "sdxl" and editor.native_size == 128
    assert editor.default_config().guidance_scale == 5.0  # the official SDXL script's
    # fp16: the UNet and text encoders halve, the VAE (force_upcast) stays float32.
    editor.to(dtype=torch.float16)
    assert editor.unet.dtype == torch.float16 and editor.vae.dtype == torch.float32
    assert editor.backbone.text_encoder_2.dtype == torch.float16
    editor.backbone.vae.register_to_config(force_upcast=False)  # e.g. the fp16-fix VAE
    editor.to(dtype=torch.float16)
    assert editor.vae.dtype == torch.float16


def test_cli_edits_with_a_tiny_sdxl_folder(tiny_sdxl_dir, shared_images, tmp_path):
    photo = tmp_path / "photo.png"
    Image.open(shared_images / "chelsea.png").convert("RGB").resize((150, 100)).save(photo)
    mask = tmp_path / "mask.png"
    m = np.zeros((100, 150), np.uint8)
    m[30:70, 40:100] = 255
    Image.fromarray(m).save(mask)
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower",
            "--model", str(tiny_sdxl_dir), "--no-rank", "--steps", "4", "--num-images", "2",
            "--out", str(out), "--device", "cpu",
        ]  # fmt: skip
        assert main(argv) == 0
        outs.append(out)
    result = json.loads((outs[0] / "result.json").read_text())
    assert result["settings"]["family"] == "sdxl"
    assert result["settings"]["guidance_scale"] == 5.0
    for name in ("01-seed0.png", "02-seed1.png"):
        a, b = (np.asarray(Image.open(o / name)) for o in outs)
        assert a.shape == (100, 150, 3)  # the photo's size
        assert np.array_equal(a, b)  # deterministic


def _sdxl_lora(folder, out):
    """A random diffusers-format SDXL LoRA on the UNet's attention (non-zero B) and text encoder 2."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    te2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
    layers = {}
    for key, model, targets in (("unet", unet, ["to_q", "to_v"]), ("te2", te2, ["q_proj"])):
        torch.manual_seed(7)
        cfg = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
        inject_adapter_in_model(cfg, model)
        layers[key] = get_peft_model_state_dict(model)
    StableDiffusionXLPipeline.save_lora_weights(
        out, unet_lora_layers=layers["unet"], text_encoder_2_lora_layers=layers["te2"]
    )
    return out / "pytorch_lora_weights.safetensors"


def test_cli_single_file_with_a_lora(tiny_sdxl_dir, shared_images, tmp_path):
    """An A1111/ComfyUI-style SDXL single file (original key layout) plus a LoRA, end to end:
    sizes kept, deterministic, and the LoRA changes the edit."""
    from original_checkpoint import write_original_checkpoint

    ckpt = write_original_checkpoint(tiny_sdxl_dir, tmp_path / "tiny-sdxl.safetensors", "sdxl")
    assert detect_family(ckpt) == "sdxl"
    lora = _sdxl_lora(tiny_sdxl_dir, tmp_path / "lora")
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    Image.open(shared_images / "chelsea.png").convert("RGB").resize((150, 100)).save(photo)
    m = np.zeros((100, 150), np.uint8)
    m[30:70, 40:100] = 255
    Image.fromarray(m).save(mask)

    def run(name, *extra):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower",
            "--model", str(ckpt), "--model-config", str(tiny_sdxl_dir), "--no-rank",
            "--steps", "4", "--num-images", "1", "--out", str(tmp_path / name),
            "--device", "cpu", *extra,
        ]  # fmt: skip
        assert main(argv) == 0
        return np.asarray(Image.open(tmp_path / name / "01-seed0.png"))

    base = run("base")
    with_lora = [run(f"lora{i}", "--lora", f"{lora}:0.8") for i in range(2)]
    assert base.shape == with_lora[0].shape == (100, 150, 3)
    assert np.array_equal(with_lora[0], with_lora[1])
    assert np.abs(base.astype(int) - with_lora[0]).max() > 0
    # The single file's weights are the folder's: the same edit as from the folder.
    folder_run = tmp_path / "folder"
    argv = [
        "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower", "--model",
        str(tiny_sdxl_dir), "--no-rank", "--steps", "4", "--num-images", "1", "--out",
        str(folder_run), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    assert np.array_equal(base, np.asarray(Image.open(folder_run / "01-seed0.png")))
    result = json.loads((tmp_path / "lora0" / "result.json").read_text())
    assert result["settings"]["loras"] == [f"{lora}:0.8"]


def test_unloading_a_lora_restores_the_edit_bit_for_bit(tiny_sdxl_dir, shared_images, tmp_path):
    lora = _sdxl_lora(tiny_sdxl_dir, tmp_path / "lora")
    editor = BlendedLatentDiffusion.from_pretrained(tiny_sdxl_dir, clip_model=None)
    weights = {k: v.clone() for k, v in editor.unet.state_dict().items()}
    te2 = {k: v.clone() for k, v in editor.backbone.text_encoder_2.state_dict().items()}
    call = {"seeds": [1], "num_inference_steps": 3, "rank": False, "region": "full"}
    before = editor(_photo(shared_images), _mask(), "a cat", **call).candidates[0].latent
    editor.load_loras([str(lora)])
    during = editor(_photo(shared_images), _mask(), "a cat", **call).candidates[0].latent
    editor.unload_loras()
    after = editor(_photo(shared_images), _mask(), "a cat", **call).candidates[0].latent
    assert not torch.allclose(before, during)
    assert torch.equal(before, after)
    assert all(torch.equal(v, editor.unet.state_dict()[k]) for k, v in weights.items())
    assert all(
        torch.equal(v, editor.backbone.text_encoder_2.state_dict()[k]) for k, v in te2.items()
    )
