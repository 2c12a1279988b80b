"""Rectified-flow backbones under the BLD loop (latent/backbones/sd3.py, flux.py): parity with
diffusers' SD3 and FLUX inpaint pipelines on tiny random components with a PARTIAL mask (their own
tests use an all-ones mask), token packing, thin strokes, and the CLI on tiny folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.frame.masks import latent_mask
from blendedit.latent.backbones import Flux, StableDiffusion3, detect_family
from blendedit.latent.backbones.flux import image_ids, pack, unpack
from test_latent_pipeline import PointMassVAE
from tiny_models import tiny_flux_parts, tiny_sd3_parts

SIZE = (64, 48)  # (W, H) px: 32x24 latents at factor 2, 16x12 tokens of 2x2


def _point_mass(vae):
    pm = PointMassVAE.from_config(vae.config)
    pm.load_state_dict(vae.state_dict())
    return pm.eval()


def _photo(shared_images) -> Image.Image:
    return Image.open(shared_images / "chelsea.png").convert("RGB").resize(SIZE, Image.LANCZOS)


def _mask() -> Image.Image:
    m = np.zeros(SIZE[::-1], np.uint8)
    m[12:36, 16:44] = 255  # aligned to the 4 px token grid: every rule agrees on it
    return Image.fromarray(m)


def _sd3(tmp_path, point_mass=True) -> StableDiffusion3:
    p = tiny_sd3_parts(tmp_path / "vocab")
    vae = _point_mass(p["vae"]) if point_mass else p["vae"]
    return StableDiffusion3(
        vae, p["transformer"], p["text_encoder"], p["text_encoder_2"], p["text_encoder_3"],
        p["tokenizer"], p["tokenizer_2"], p["tokenizer_3"], p["scheduler"],
    )  # fmt: skip


def _flux(tmp_path, dev=True, point_mass=True) -> Flux:
    p = tiny_flux_parts(tmp_path / "vocab", dev=dev)
    vae = _point_mass(p["vae"]) if point_mass else p["vae"]
    return Flux(
        vae, p["transformer"], p["text_encoder"], p["text_encoder_2"], p["tokenizer"],
        p["tokenizer_2"], p["scheduler"],
    )  # fmt: skip


def _ours(bb, shared_images, seeds, **settings):
    editor = BlendedLatentDiffusion(bb)
    result = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, blend_start=0.25,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        batch_size=len(seeds), **settings,
    )  # fmt: skip
    return editor, torch.stack([c.latent for c in result.candidates])


def test_sd3_parity_with_diffusers_inpaint(tmp_path, shared_images):
    """StableDiffusion3InpaintPipeline blends scale_noise(z0, t') after every step: with a partial
    mask, CFG and the shifted flow schedule, BLD reproduces its latents."""
    bb, seeds = _sd3(tmp_path), [4, 5]
    settings = {"num_inference_steps": 4, "guidance_scale": 5.0, "negative_prompt": "blurry"}
    editor, ours = _ours(bb, shared_images, seeds, **settings)
    pipe, strength = editor.diffusers_inpaint(editor.default_config().replace(**settings))
    ref = pipe(
        prompt="a red flower", image=_photo(shared_images), mask_image=_mask(),
        height=SIZE[1], width=SIZE[0], strength=strength, num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
        **settings,
    ).images  # fmt: skip
    assert ours.shape == ref.shape == (2, 16, 24, 32)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
def test_flux_parity_with_diffusers_inpaint(tmp_path, shared_images, dev):
    """FluxInpaintPipeline blends packed tokens after every step; blending unpacked latents on
    whole tokens is the same. dev: guidance embedding and resolution-dependent shift."""
    bb, seeds = _flux(tmp_path, dev), [1, 2]
    settings = {"num_inference_steps": 4, "guidance_scale": 3.5 if dev else 1.0}
    editor, ours = _ours(bb, shared_images, seeds, **settings)
    pipe, strength = editor.diffusers_inpaint(editor.default_config().replace(**settings))
    ref = pipe(
        prompt="a red flower", image=_photo(shared_images), mask_image=_mask(),
        height=SIZE[1], width=SIZE[0], strength=strength, num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
        max_sequence_length=bb.max_sequence_length, **settings,
    ).images  # fmt: skip
    ref = unpack(ref, 24, 32)  # FLUX's latent output is packed tokens
    assert ours.shape == ref.shape == (2, 16, 24, 32)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_pack_is_a_permutation_and_ids_follow_the_grid() -> None:
    z = torch.randn(2, 16, 6, 8)
    tokens = pack(z)
    assert tokens.shape == (2, 12, 64)
    assert torch.equal(unpack(tokens, 6, 8), z)
    assert torch.equal(tokens[0, 5], z[0, :, 2:4, 2:4].reshape(-1))  # row 1, column 1
    ids = image_ids(6, 8)
    assert ids.shape == (12, 3) and ids[5].tolist() == [0.0, 1.0, 1.0]


def test_flux_t5_length_is_capped_by_the_t5_positions(tmp_path) -> None:
    """schnell 256 and dev 512 T5 tokens, at most the T5's ``n_positions`` (the toy world's FLUX,
    examples/toy-flux, was trained on 16): the prompt's states are that long."""
    assert _flux(tmp_path, dev=False).max_sequence_length == 256
    bb = _flux(tmp_path, dev=True)
    assert bb.max_sequence_length == 512
    bb.text_encoder_2.config.n_positions = 16
    bb = Flux(
        bb.vae, bb.unet, bb.text_encoder, bb.text_encoder_2, bb.tokenizer, bb.tokenizer_2,
        bb.scheduler,
    )  # fmt: skip
    assert bb.max_sequence_length == 16 and bb.encode_prompt("a red flower")[0].shape[1] == 16


def test_thin_stroke_survives_token_packing(tmp_path) -> None:
    """A 1 px line: max-pooled to latent cells, then any cell masks its whole 2x2 token."""
    mask = torch.zeros(1, 1, 48, 64)
    mask[..., 20, 5:60] = 1.0
    m = latent_mask(mask, (24, 32), False)
    assert m.sum() > 0
    tok = torch.nn.functional.max_pool2d(m, 2)  # (1, 1, 12, 16) tokens
    packed = pack(tok.repeat_interleave(2, -2).repeat_interleave(2, -1).expand(1, 16, 24, 32))
    assert packed.amax(-1).sum() == tok.sum() > 0  # whole tokens
    editor = BlendedLatentDiffusion(_flux(tmp_path, point_mass=False))
    from blendedit.frame import Work

    work = Work(x=torch.zeros(1, 3, 48, 64), mask=mask, soft=False, prompt="a cat")
    state = editor.prepare(work, editor.default_config().replace(num_inference_steps=4))
    stage = state.stages[-1, 0, 0]  # (24, 32)
    assert stage.sum() == 4 * tok.sum()  # every 2x2 token the stroke touches, whole
    assert torch.equal(stage.view(12, 2, 16, 2).amin((1, 3)), stage.view(12, 2, 16, 2).amax((1, 3)))


def test_flow_models_refuse_diffusion_schedulers(tmp_path, shared_images) -> None:
    editor = BlendedLatentDiffusion(_sd3(tmp_path, point_mass=False))
    with pytest.raises(InputError, match="scheduler: 'ddim' does not fit a sd3 model"):
        editor(_photo(shared_images), _mask(), "x", scheduler="ddim", num_images=1)
    assert editor.default_config().scheduler == "flow-euler"


def test_sd3_without_t5_uses_zeros(tmp_path) -> None:
    bb = _sd3(tmp_path, point_mass=False)
    with_t5, _ = bb.encode_prompt("a cat")
    bb.drop_t5()
    without, pooled = bb.encode_prompt("a cat")
    assert with_t5.shape == without.shape == (1, 77 + 256, 64)
    assert torch.equal(without[:, 77:], torch.zeros_like(without[:, 77:]))
    assert torch.equal(with_t5[:, :77], without[:, :77]) and pooled.shape == (1, 64)


@pytest.mark.parametrize(("family", "extra"), [("sd3", []), ("sd3", ["--no-t5"]), ("flux", [])])
def test_cli_edits_with_tiny_flow_folders(tmp_path, shared_images, family, extra) -> None:
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    parts = (tiny_sd3_parts if family == "sd3" else tiny_flux_parts)(tmp_path / "vocab")
    cls = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    folder = tmp_path / family
    cls(**parts).save_pretrained(folder)
    assert detect_family(folder) == family
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    _photo(shared_images).resize((90, 60)).save(photo)
    m = np.zeros((60, 90), np.uint8)
    m[20:22, 10:80] = 255  # a thin stroke
    Image.fromarray(m).save(mask)
    outs = []
    for run in ("a", "b"):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower", "--model",
            str(folder), "--no-rank", "--steps", "4", "--num-images", "2", "--size", "64",
            "--out", str(tmp_path / run), "--device", "cpu", *extra,
        ]  # fmt: skip
        assert main(argv) == 0
        outs.append(tmp_path / run)
    result = json.loads((outs[0] / "result.json").read_text())
    assert result["settings"]["family"] == family
    assert result["settings"]["scheduler"] == "flow-euler"
    for f in ("01-seed0.png", "02-seed1.png"):
        a, b = (np.asarray(Image.open(o / f)) for o in outs)
        assert a.shape == (60, 90, 3) and np.array_equal(a, b)
