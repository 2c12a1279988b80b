"""Qwen-Image-Edit restricted by the mask (latent/backbones/qwen_edit.py, issue 19): parity with
diffusers' QwenImageEditInpaintPipeline on tiny random components with a PARTIAL mask, each half
checked to matter (the source tokens, the image read by Qwen2.5-VL, the blend), the text
encoder's states against the pipeline's own encoding, defaults, detection, the bench preset's
published sizes and an edit through the frame.

What cannot run here: the model's ``Qwen2VLProcessor`` itself (its image processor needs
torchvision in transformers 5). Without torchvision blendedit prepares the same inputs with
``QwenVLInputs`` (transformers' PIL backend of the Qwen2-VL image processor, the prompt's image
placeholder expanded as the processor does); the diffusers pipeline is handed that same object, so
everything after the processor is compared: the VL encoder, the MMDiT with the source tokens, the
true CFG, the blend, the frame. Not compared: the torchvision backend's resized pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.latent.backbones import QwenImageEdit, detect_family, family_defaults
from blendedit.latent.backbones.flux import unpack
from blendedit.latent.backbones.qwen_edit import to_pil
from test_latent_flow import SIZE, _photo
from test_latent_pipeline import _PointMass
from tiny_models import tiny_qwen_edit_parts

PROMPT = "replace the cat by a dog"
NEGATIVE = "blurry"


class PointMassQwenVAE(AutoencoderKLQwenImage):
    """The Qwen-Image VAE with a deterministic encoder: the pipeline samples the posterior with
    the seed's generator, BLD takes its mode; with no spread both see one z_init."""

    def encode(self, x, return_dict=True):  # type: ignore[override]
        return AutoencoderKLOutput(latent_dist=_PointMass(super().encode(x).latent_dist.mode()))


def _parts(tmp_path, point_mass=True) -> dict:
    p = tiny_qwen_edit_parts(tmp_path)
    if point_mass:
        vae = PointMassQwenVAE.from_config(p["vae"].config)
        vae.load_state_dict(p["vae"].state_dict())
        p["vae"] = vae.eval()
    return p


def _qwen(tmp_path, point_mass=True) -> QwenImageEdit:
    p = _parts(tmp_path, point_mass)
    return QwenImageEdit(
        p["vae"], p["transformer"], p["text_encoder"], p["tokenizer"], p["processor"],
        p["scheduler"],
    )  # fmt: skip


def _ours(bb, shared_images, seeds, **settings):
    editor = BlendedLatentDiffusion(bb)
    result = editor(
        _photo(shared_images), _mask(), PROMPT, seeds=seeds, mask_shrink="off", rank=False,
        background="decoded", region="full", size=SIZE[0], batch_size=len(seeds), **settings,
    )  # fmt: skip
    return editor, torch.stack([c.latent for c in result.candidates])


def _reference(editor, shared_images, seeds, settings, monkeypatch):
    """The pipeline at the working size: it otherwise resizes every image to about 1024 x 1024
    px (``calculate_dimensions``), too slow for a CPU test."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint as Q

    monkeypatch.setattr(Q, "calculate_dimensions", lambda area, ratio: (*SIZE, None))
    pipe, strength = editor.diffusers_inpaint(editor.default_config().replace(**settings))
    bb = editor.backbone
    ref = bb.reference_inpaint(
        pipe, bb.reference_prompt(PROMPT, settings["negative_prompt"], len(seeds)),
        _photo(shared_images), _mask(), SIZE, strength=strength,
        num_inference_steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"],
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
    ).images  # fmt: skip
    return unpack(ref, SIZE[1] // 4, SIZE[0] // 4)  # (n, 4, 12, 16) at the VAE's factor 4


def _mask() -> Image.Image:
    """Aligned to the 8 px token grid (VAE factor 4 x 2x2 patches): every mask rule agrees."""
    m = np.zeros(SIZE[::-1], np.uint8)
    m[8:32, 16:48] = 255
    return Image.fromarray(m)


SETTINGS = {"num_inference_steps": 4, "guidance_scale": 4.0, "negative_prompt": NEGATIVE}


@pytest.mark.parametrize("blend_start", [0.0, 0.5], ids=["strength1", "strength0.5"])
def test_qwen_edit_parity_with_diffusers_inpaint(tmp_path, shared_images, blend_start, monkeypatch):
    """QwenImageEditInpaintPipeline: Qwen2.5-VL reads the image with the instruction, the source's
    packed latents are appended as a second frame of image tokens, true CFG with the per-token
    norm rescale, the exponential shifted schedule, the blend after every step: with a partial
    mask BLD on the Qwen-Image-Edit backbone reproduces its latents. Checked to fail without the
    source tokens, the image in the text encoder or the blend (the test below)."""
    bb, seeds = _qwen(tmp_path), [3, 4]
    settings = {**SETTINGS, "blend_start": blend_start}
    editor, ours = _ours(bb, shared_images, seeds, **settings)
    ref = _reference(editor, shared_images, seeds, settings, monkeypatch)
    assert ours.shape == ref.shape == (2, 4, 12, 16)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_qwen_edit_parity_needs_each_conditioning_and_the_blend(
    tmp_path, shared_images, monkeypatch
):
    import blendedit.latent.pipeline as pipeline_module

    seeds, settings = [3], {**SETTINGS, "blend_start": 0.0}
    editor, ours = _ours(_qwen(tmp_path), shared_images, seeds, **settings)
    ref = _reference(editor, shared_images, seeds, settings, monkeypatch)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    real_condition = QwenImageEdit.condition_on_image

    def no_source_tokens(self, c, x, mask, z_init):  # the source tokens of a black image
        c = real_condition(self, c, x, mask, z_init)
        c.image["latents"] = self.encode_image(torch.zeros_like(x) - 1)
        return c

    def blind_encoder(self, c, x, mask, z_init):  # Qwen2.5-VL shown a black image
        return real_condition(self, c, torch.zeros_like(x) - 1, mask, z_init)

    real_loop = pipeline_module.blended_latent_diffusion

    def unblended(model_fn, scheduler, z, timesteps, masks, *args, **kw):
        ones = [torch.ones_like(m) for m in masks]
        return real_loop(model_fn, scheduler, z, timesteps, ones, *args, **kw)

    outside = torch.from_numpy(np.asarray(_mask().resize((16, 12), Image.NEAREST)) == 0)
    for obj, name, fake, where in [
        (QwenImageEdit, "condition_on_image", no_source_tokens, ...),
        (QwenImageEdit, "condition_on_image", blind_encoder, ...),
        (pipeline_module, "blended_latent_diffusion", unblended, (..., outside)),
    ]:
        with monkeypatch.context() as m:
            m.setattr(obj, name, fake)
            _, wrong = _ours(_qwen(tmp_path), shared_images, seeds, **settings)
        assert (wrong - ref)[where].abs().max() > 1e-3, fake.__name__


def test_the_vl_encoding_is_the_pipelines(tmp_path, shared_images) -> None:
    """blendedit's Qwen2.5-VL states (processor inputs -> last hidden states -> the 64 system
    tokens dropped) are the pipeline's ``encode_prompt`` on the same image, and they depend on
    the image."""
    from diffusers import QwenImageEditInpaintPipeline

    p = _parts(tmp_path, point_mass=False)
    bb = QwenImageEdit(
        p["vae"], p["transformer"], p["text_encoder"], p["tokenizer"], p["processor"],
        p["scheduler"],
    )  # fmt: skip
    pipe = QwenImageEditInpaintPipeline(**p)
    image = _photo(shared_images)
    ours = bb.encode_prompt(PROMPT, image)
    ref, mask = pipe.encode_prompt(PROMPT, image=image, device=torch.device("cpu"))
    assert mask is None and ours.shape == ref.shape and ours.shape[-1] == 16
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    inputs = bb.vl_inputs(PROMPT, image)
    n_image = int((inputs["input_ids"] == 262).sum())
    assert n_image == int(inputs["image_grid_thw"].prod()) // 4 > 0
    black = bb.encode_prompt(PROMPT, Image.new("RGB", image.size))
    assert (black - ours).abs().max() > 1e-4


def test_frame_image_round_trips_to_the_processor(shared_images) -> None:
    """The frame's crop in [-1, 1] is handed to the processor as the same 8-bit image."""
    photo = _photo(shared_images)
    x = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert np.array_equal(np.asarray(to_pil(x)), np.asarray(photo))


def test_qwen_edit_defaults_detection_and_vae(tmp_path) -> None:
    """QwenImageEditInpaintPipeline's defaults; detected from a folder's index; the VAE's
    per-channel normalisation round-trips; guidance rescale keeps the conditional norm."""
    bb = _qwen(tmp_path, point_mass=False)
    cfg = BlendedLatentDiffusion(bb).default_config()
    assert (cfg.num_inference_steps, cfg.guidance_scale, cfg.blend_start) == (50, 4.0, 0.4)
    assert cfg.negative_prompt == " " and cfg.scheduler == "flow-euler" and bb.flow
    assert (bb.latent_factor, bb.patch_size, bb.size_multiple, bb.model_in_channels) == (
        4,
        2,
        8,
        16,
    )
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "model_index.json").write_text(
        json.dumps({"_class_name": "QwenImageEditPipeline"})
    )
    assert detect_family(tmp_path / "q") == "qwen-image-edit"
    assert family_defaults(tmp_path / "q")["guidance_scale"] == 4.0
    z = torch.randn(1, 4, 6, 8)
    x = bb.decode_with(bb.vae, z)
    assert x.shape == (1, 3, 24, 32)
    raw = bb.vae.encode(x[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(bb.vae.config.latents_mean).view(1, 4, 1, 1)
    std = torch.tensor(bb.vae.config.latents_std).view(1, 4, 1, 1)
    torch.testing.assert_close(bb.encode_image(x), (raw - mean) / std)


def test_qwen_edit_bench_preset_is_the_published_model(tmp_path) -> None:
    """``qwen-image-edit``: the 20B MMDiT (20.4B), Qwen2.5-VL-7B-Instruct (8.29B with its
    vision tower and LM head, "7B"), the Qwen-Image VAE; built on the meta device."""
    from blendedit.bench import ARCHITECTURES, build_backbone

    arch = ARCHITECTURES["qwen-image-edit"]
    assert arch.family == "qwen-image-edit" and arch.source == "Qwen/Qwen-Image-Edit"
    bb = build_backbone(arch, "meta", tmp_path)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in bb.modules().items()}
    assert round(counts["unet"] / 1e9, 1) == 20.4
    assert counts["text_encoder"] == 8_292_166_656
    assert round(counts["vae"] / 1e6) == 127
    assert bb.native_size == arch.resolution == 1024 and bb.model_in_channels == 64


def test_qwen_edit_edits_through_the_frame(tmp_path, shared_images, tiny_clip_dir) -> None:
    """An edit of a photo larger than the working size with ranking: ranked results at the
    photo's size, deterministic, the background exact outside the mask's band; the prompt is
    read with the image once per prompt (prompt and negative)."""
    from blendedit.frame.ranking import ClipScorer

    photo = _photo(shared_images).resize((90, 60))
    m = np.zeros((60, 90), np.uint8)
    m[20:40, 30:60] = 255
    mask = Image.fromarray(m)
    bb = _qwen(tmp_path, point_mass=False)
    editor = BlendedLatentDiffusion(bb, ClipScorer.from_pretrained(str(tiny_clip_dir)))
    runs = [
        editor(photo, mask, PROMPT, seeds=[0, 1], num_inference_steps=3, size=64) for _ in range(2)
    ]
    assert bb.processor.calls == 4  # prompt and negative, per run
    a, b = runs
    assert [c.rank for c in a.candidates] == [1, 2]
    assert all(c.score is not None for c in a.candidates)
    far = np.ones((60, 90), bool)
    far[10:50, 20:70] = False
    src = np.asarray(photo)
    for ca, cb in zip(a.candidates, b.candidates, strict=True):
        ia, ib = np.asarray(ca.image), np.asarray(cb.image)
        assert ia.shape == (60, 90, 3) and np.array_equal(ia, ib)
        assert np.array_equal(ia[far], src[far])


def _save_folder(tmp_path):
    """A Qwen-Image-Edit folder as the hub has it (``processor/`` with the image processor's
    settings and the tokenizer, ``model_index.json`` naming Qwen2VLProcessor)."""
    from diffusers import QwenImageEditPipeline

    p = tiny_qwen_edit_parts(tmp_path)
    proc = p.pop("processor")
    folder = tmp_path / "qwen-edit"
    QwenImageEditPipeline(**p, processor=None).save_pretrained(folder)
    proc.image_processor.save_pretrained(folder / "processor")
    proc.tokenizer.save_pretrained(folder / "processor")
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_cli_edits_with_a_tiny_qwen_edit_folder(tmp_path, shared_images, tiny_clip_dir) -> None:
    """``blendedit edit`` on a Qwen-Image-Edit folder without torchvision (the processor's inputs
    from ``QwenVLInputs`` on the folder's own settings): ranked results at the photo's size, the
    same pixels on a second run, the background exact outside the mask's band."""
    from blendedit.cli import main
    from blendedit.latent.backbones.qwen_edit import has_torchvision

    assert not has_torchvision()  # this machine: the PIL path is the one that runs
    folder = _save_folder(tmp_path)
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    _photo(shared_images).resize((90, 60)).save(photo)
    m = np.zeros((60, 90), np.uint8)
    m[20:40, 30:60] = 255
    Image.fromarray(m).save(mask)
    outs = []
    for run in ("a", "b"):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", PROMPT, "--model", str(folder),
            "--steps", "3", "--num-images", "2", "--size", "64", "--out", str(tmp_path / run),
            "--device", "cpu", "--clip-model", str(tiny_clip_dir),
        ]  # fmt: skip
        assert main(argv) == 0
        outs.append(tmp_path / run)
    result = json.loads((outs[0] / "result.json").read_text())
    assert result["settings"]["family"] == "qwen-image-edit"
    assert result["settings"]["guidance_scale"] == 4.0
    assert [r["rank"] for r in result["results"]] == [1, 2]
    src = np.asarray(Image.open(photo).convert("RGB"))
    far = np.ones((60, 90), bool)
    far[10:50, 20:70] = False
    for r in result["results"]:
        a, b = (np.asarray(Image.open(o / r["file"])) for o in outs)
        assert a.shape == (60, 90, 3) and np.array_equal(a, b)
        assert np.array_equal(a[far], src[far])


@pytest.mark.parametrize("background", ["latent", "decoder"])
def test_qwen_edit_background_reconstruction(tmp_path, shared_images, background) -> None:
    """Paper 4.2's background reconstructions go through the family's own decoder (the Qwen-Image
    VAE's one-frame, normalised latents)."""
    bb = _qwen(tmp_path, point_mass=False)
    result = BlendedLatentDiffusion(bb)(
        _photo(shared_images), _mask(), PROMPT, seeds=[0], num_inference_steps=2, size=SIZE[0],
        rank=False, background=background, recon_steps=2,
    )  # fmt: skip
    assert np.asarray(result.candidates[0].image).shape == (SIZE[1], SIZE[0], 3)
