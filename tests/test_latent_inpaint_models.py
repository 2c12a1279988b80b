"""Models trained for inpainting (issue 19): the 9-channel SD UNet under the BLD loop, with the blend
(``--blend on``) or alone (``--blend off``), against diffusers' own StableDiffusionInpaintPipeline;
its single-file form; the end-to-end edit through the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from blendedit import BlendedLatentDiffusion, InputError
from blendedit.latent.backbones import StableDiffusion, detect_family, family_defaults
from blendedit.latent.backbones import common as C
from blendedit.models import make_scheduler
from test_latent_pipeline import PointMassVAE, _block_mask, _photo
from tiny_models import tiny_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

FAST = {"num_inference_steps": 4, "num_images": 2, "size": 128}


def tiny_inpaint_unet(seed: int = 1) -> UNet2DConditionModel:
    """:func:`tiny_unet` with 9 input channels (noisy latent, mask, masked image's latent); the 5
    new channels get random weights too, so a wrong mask or masked image changes the output."""
    return tiny_unet(seed, in_channels=9)


@pytest.fixture(scope="module")
def tiny_sd_inpaint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 9-channel SD inpainting model saved as a StableDiffusionInpaintPipeline folder."""
    root = tmp_path_factory.mktemp("models-inpaint")
    pipe = StableDiffusionInpaintPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(root / "vocab"),
        unet=tiny_inpaint_unet(), scheduler=tiny_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(root / "tiny-sd-inpaint")
    return root / "tiny-sd-inpaint"


def _components(folder: Path):
    vae = PointMassVAE.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    return vae, unet, text_encoder, tokenizer


def _ours(editor, image, mask, seeds, blend_start, **kw):
    settings = {"num_inference_steps": 4, "guidance_scale": 7.5, "negative_prompt": "blurry"}
    return editor(
        image, mask, "a red flower", seeds=seeds, scheduler="ddim", blend_start=blend_start,
        mask_shrink="off", rank=False, background="decoded", size=96, batch_size=2,
        region="full", **{**settings, **kw},
    )  # fmt: skip


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_parity_with_diffusers_9_channel_inpaint_pipeline(
    tiny_sd_inpaint_dir, shared_images, strength, monkeypatch
):
    """A 9-channel UNet with ``--blend off`` reproduces diffusers' StableDiffusionInpaintPipeline
    (which never blends a 9-channel UNet) at float tolerance, on a partial mask, at full strength
    (pure noise start) and at 0.75. Checked to fail: the same run with the masked image left
    unmasked (the conditioning wrong) is far outside the tolerance, and so is ``--blend on``."""
    vae, unet, text_encoder, tokenizer = _components(tiny_sd_inpaint_dir)
    base = make_scheduler("ddim", dict(tiny_scheduler().config))
    image, mask, seeds = _photo(shared_images), _block_mask(), [3, 11]
    editor = BlendedLatentDiffusion(StableDiffusion(vae, unet, text_encoder, tokenizer, base))
    assert editor.backbone.inpainting
    blend_start = 1 - strength
    ours = _ours(editor, image, mask, seeds, blend_start, blend="off")

    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=make_scheduler("ddim", base.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    ref = pipe(
        prompt="a red flower", negative_prompt="blurry", image=image, mask_image=mask,
        height=64, width=96, strength=strength, num_inference_steps=4, guidance_scale=7.5,
        num_images_per_prompt=2, generator=gens, output_type="latent",
    ).images  # fmt: skip

    latents = torch.stack([c.latent for c in ours.candidates])
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)

    blended = torch.stack(
        [c.latent for c in _ours(editor, image, mask, seeds, blend_start).candidates]
    )
    assert (blended - ref).abs().max() > 1e-2  # the blend changes the result

    original = C.masked_image_condition

    def unmasked(backbone, x, m, z_init):  # the conditioning wrong: the object left visible
        return original(backbone, x, torch.zeros_like(m), z_init)

    monkeypatch.setattr(C, "masked_image_condition", unmasked)
    wrong = _ours(editor, image, mask, seeds, blend_start, blend="off")
    wrong_latents = torch.stack([c.latent for c in wrong.candidates])
    assert (wrong_latents - ref).abs().max() > 1e-2


def test_blend_on_keeps_the_source_latent_outside_the_mask(tiny_sd_inpaint_dir, shared_images):
    """``--blend on``: the paper's blend runs on top of the 9-channel model, so the final latent
    outside the mask is the source's E(x) exactly (diffusers' rule: clean after the last step);
    ``--blend off`` leaves it to the model."""
    vae, unet, text_encoder, tokenizer = _components(tiny_sd_inpaint_dir)
    editor = BlendedLatentDiffusion(
        StableDiffusion(vae, unet, text_encoder, tokenizer, tiny_scheduler())
    )
    image, mask = _photo(shared_images), _block_mask()
    on = _ours(editor, image, mask, [5], 0.0, num_images=1, blend="on")
    off = _ours(editor, image, mask, [5], 0.0, num_images=1, blend="off")
    m = torch.zeros(1, 1, 8, 12)
    m[..., 2:5, 3:8] = 1  # the block mask at latent resolution (16:40, 24:64 over 8 px cells)
    z_init = editor.encode_image(
        torch.from_numpy(np.asarray(image) / 127.5 - 1).permute(2, 0, 1)[None].float()
    )
    outside_on = (on.candidates[0].latent[None] - z_init) * (1 - m)
    outside_off = (off.candidates[0].latent[None] - z_init) * (1 - m)
    assert outside_on.abs().max() < 1e-5
    assert outside_off.abs().max() > 1e-2


def test_detected_loaded_and_edited_end_to_end(tiny_sd_inpaint_dir, tiny_clip_dir, shared_images):
    """A 9-channel model is no longer refused: detected as SD, loaded through the real path with
    its pipeline's defaults (full strength), and ``edit`` gives ranked results, with the empty
    prompt too (removal)."""
    assert detect_family(tiny_sd_inpaint_dir) == "sd"
    assert family_defaults(tiny_sd_inpaint_dir) == {"blend_start": 0.0, "blend": C.INPAINT_BLEND}
    editor = BlendedLatentDiffusion.from_pretrained(
        tiny_sd_inpaint_dir, clip_model=str(tiny_clip_dir)
    )
    assert editor.default_config().blend_start == 0.0
    image, mask = _photo(shared_images, (128, 128)), _block_mask((128, 128))
    for prompt in ("a red flower", ""):
        result = editor(image, mask, prompt, seed=0, **FAST)
        assert len(result.candidates) == 2 and result.input_size == (128, 128)
        scores = [c.score for c in result.candidates]
        if prompt:  # ranked by CLIP; the empty prompt has nothing to rank against
            assert None not in scores and scores == sorted(scores, reverse=True)


def test_blend_off_on_a_plain_model_is_one_line(editor, shared_images):
    with pytest.raises(InputError, match=r"^blend: 'off' applies to models trained for inpainting"):
        editor(_photo(shared_images), _block_mask(), "x", blend="off", **FAST)


def test_soft_mask_grey_levels_reach_the_model(tiny_sd_inpaint_dir):
    """The model's mask input keeps a soft mask's grey levels (each cell's highest strength); the
    masked image hides what the pipelines hide (strength >= 0.5)."""
    vae, unet, text_encoder, tokenizer = _components(tiny_sd_inpaint_dir)
    bb = StableDiffusion(vae, unet, text_encoder, tokenizer, tiny_scheduler())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 32:] = 0.3
    mask[..., 16:32, 40:48] = 1.0
    got = C.masked_image_condition(bb, x, mask, torch.zeros(1, 4, 8, 8))
    assert got["mask"].shape == (1, 1, 8, 8) and got["masked"].shape == (1, 4, 8, 8)
    assert torch.allclose(got["mask"][0, 0, 0, 4:], torch.full((4,), 0.3))
    assert got["mask"][0, 0, 2, 5] == 1.0 and got["mask"][0, 0, 0, 0] == 0.0
    hidden = x * (mask < 0.5)
    assert torch.allclose(got["masked"], bb.encode_image(hidden))


def test_other_channel_counts_are_one_line(tmp_path):
    """A UNet of another width (e.g. an 8-channel InstructPix2Pix one) is still one line."""
    keys = {"model.diffusion_model.input_blocks.0.0.weight": (32, 8, 3, 3)}
    with pytest.raises(InputError, match="8-channel UNet"):
        C.refuse_inpainting_unet(keys, "x.safetensors")
    keys9 = {"model.diffusion_model.input_blocks.0.0.weight": (32, 9, 3, 3)}
    C.refuse_inpainting_unet(keys9, "x.safetensors")
    assert C.unet_inpaint_channels(keys9)


def test_single_file_edits_exactly_like_its_folder(tiny_sd_inpaint_dir, shared_images, tmp_path):
    """An SD 1.5 inpainting checkpoint in the original (A1111) key layout: detected by its
    9-channel ``input_blocks.0.0``, given the inpainting defaults, loaded through
    ``--model-config``, and editing pixel for pixel like the folder it was written from."""
    from original_checkpoint import write_original_checkpoint
    from test_original_checkpoint import _config_only

    out = write_original_checkpoint(tiny_sd_inpaint_dir, tmp_path / "inpaint.safetensors", "sd1")
    assert detect_family(out) == "sd"
    assert family_defaults(out)["blend_start"] == 0.0
    config = str(_config_only(tiny_sd_inpaint_dir, tmp_path / "config"))
    from_file = BlendedLatentDiffusion.from_pretrained(out, clip_model=None, model_config=config)
    from_folder = BlendedLatentDiffusion.from_pretrained(tiny_sd_inpaint_dir, clip_model=None)
    assert from_file.backbone.inpainting
    image, mask = _photo(shared_images, (128, 128)), _block_mask((128, 128))
    a = from_file(image, mask, "a red flower", seed=1, blend="off", **FAST)
    b = from_folder(image, mask, "a red flower", seed=1, blend="off", **FAST)
    for ca, cb in zip(a.candidates, b.candidates, strict=True):
        assert np.array_equal(np.asarray(ca.image), np.asarray(cb.image))


@pytest.mark.slow
@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_parity_with_diffusers_sdxl_9_channel_inpaint_pipeline(
    tiny_sdxl_dir, shared_images, strength
):
    """A 9-channel SDXL UNet with ``--blend off`` reproduces StableDiffusionXLInpaintPipeline
    (Euler, partial mask, from pure noise and at 0.75) at float tolerance. Checked to fail: with
    the mask input inverted the latents differ far beyond the tolerance."""
    from test_latent_sdxl import _backbone, _mask
    from test_latent_sdxl import _photo as _sdxl_photo

    bb = _backbone(tiny_sdxl_dir)
    torch.manual_seed(2)
    bb.unet = UNet2DConditionModel.from_config({**bb.unet.config, "in_channels": 9}).eval()
    assert bb.inpainting and BlendedLatentDiffusion(bb).default_config().guidance_scale == 7.5
    editor = BlendedLatentDiffusion(bb)
    image, mask, seeds = _sdxl_photo(shared_images), _mask(), [3, 11]
    settings = {"num_inference_steps": 4, "guidance_scale": 6.0}
    kw = {"seeds": seeds, "scheduler": "euler", "mask_shrink": "off", "rank": False}
    kw |= {"background": "decoded", "region": "full", "batch_size": 2, "blend": "off"}
    ours = editor(image, mask, "a red flower", blend_start=1 - strength, **kw, **settings)
    pipe = bb.inpaint_reference(make_scheduler("euler", bb.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompt="a red flower", image=image, mask_image=mask, height=96, width=128,
        strength=strength, num_images_per_prompt=2, output_type="latent",
        generator=[torch.Generator().manual_seed(s) for s in seeds], **settings,
    ).images  # fmt: skip
    latents = torch.stack([c.latent for c in ours.candidates])
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)
    inverted = Image.fromarray(255 - np.asarray(mask))
    pipe.scheduler = make_scheduler("euler", bb.scheduler.config)
    wrong = pipe(
        prompt="a red flower", image=image, mask_image=inverted, height=96, width=128,
        strength=strength, num_images_per_prompt=2, output_type="latent",
        generator=[torch.Generator().manual_seed(s) for s in seeds], **settings,
    ).images  # fmt: skip
    assert (latents - wrong).abs().max() > 1e-2


def _tiny_fill(tmp_path):
    """A tiny FLUX.1 Fill: ``tiny_flux_parts``' dev with a transformer taking 144 channels per
    token (16 x 4 latent + 16 x 4 masked image's latent + 2 x 2 mask cells x 4) and giving 64."""
    from diffusers import FluxTransformer2DModel

    from blendedit.latent.backbones import Flux
    from test_latent_flow import _point_mass
    from tiny_models import tiny_flux_parts

    p = tiny_flux_parts(tmp_path / "vocab", dev=True)
    torch.manual_seed(3)
    config = {k: v for k, v in p["transformer"].config.items() if not k.startswith("_")}
    config |= {"in_channels": 144, "out_channels": 64}
    p["transformer"] = FluxTransformer2DModel(**config).eval()
    bb = Flux(
        _point_mass(p["vae"]), p["transformer"], p["text_encoder"], p["text_encoder_2"],
        p["tokenizer"], p["tokenizer_2"], p["scheduler"],
    )  # fmt: skip
    return bb, p


@pytest.mark.parametrize("blend_start", [0.0, 0.25])
def test_flux_fill_parity_with_diffusers_fill_pipeline(tmp_path, shared_images, blend_start):
    """FLUX.1 Fill with ``--blend off`` reproduces FluxFillPipeline (guidance embedding, partial
    mask, shifted schedule; full strength and 0.75) at float tolerance. Checked to fail: the same
    run with the mask tokens zeroed (the conditioning wrong) is far outside the tolerance."""
    from blendedit.latent.backbones.flux import unpack
    from test_latent_flow import SIZE, _mask
    from test_latent_flow import _photo as _flow_photo

    bb, _ = _tiny_fill(tmp_path)
    assert bb.inpainting and bb.defaults["guidance_scale"] == 30.0
    assert bb.reference_pipeline == "FluxFillPipeline"
    editor, seeds = BlendedLatentDiffusion(bb), [1, 2]
    settings = {"num_inference_steps": 4, "guidance_scale": 30.0}
    kw = {"seeds": seeds, "mask_shrink": "off", "rank": False, "background": "decoded"}
    kw |= {"region": "full", "size": SIZE[0], "batch_size": 2, "blend": "off"}
    ours = editor(
        _flow_photo(shared_images),
        _mask(),
        "a red flower",
        blend_start=blend_start,
        **kw,
        **settings,
    )
    latents = torch.stack([c.latent for c in ours.candidates])
    cfg = editor.default_config().replace(blend_start=blend_start, **settings)
    pipe, strength = editor.diffusers_inpaint(cfg)
    assert type(pipe).__name__ == "FluxFillPipeline"
    call = {"prompt": "a red flower", "image": _flow_photo(shared_images), "height": SIZE[1]}
    call |= {"width": SIZE[0], "strength": strength, "num_images_per_prompt": 2}
    call |= {"output_type": "latent", "max_sequence_length": bb.max_sequence_length, **settings}
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    ref = unpack(pipe(**call, mask_image=_mask(), generator=gens).images, 24, 32)
    assert latents.shape == ref.shape == (2, 16, 24, 32)
    torch.testing.assert_close(latents, ref, atol=2e-4, rtol=1e-4)
    blended = editor(
        _flow_photo(shared_images),
        _mask(),
        "a red flower",
        blend_start=blend_start,
        **{**kw, "blend": "on"},
        **settings,
    )
    assert (torch.stack([c.latent for c in blended.candidates]) - ref).abs().max() > 1e-2
    original = bb.condition_on_image

    def no_mask(c, x, m, z_init):  # the conditioning wrong: the mask tokens say "keep" everywhere
        c = original(c, x, m, z_init)
        c.image["tokens"][..., 64:] = 0
        return c

    bb.condition_on_image = no_mask
    wrong = editor(
        _flow_photo(shared_images),
        _mask(),
        "a red flower",
        blend_start=blend_start,
        **kw,
        **settings,
    )
    assert (torch.stack([c.latent for c in wrong.candidates]) - ref).abs().max() > 1e-2


def test_flux_fill_folder_is_detected_and_edits(tmp_path, shared_images):
    """A FluxFillPipeline folder is no longer refused: FLUX's family, Fill's defaults (guidance 30,
    50 steps, full strength), and ``edit`` gives results."""
    from diffusers import FluxFillPipeline

    from test_latent_flow import _mask
    from test_latent_flow import _photo as _flow_photo

    _, p = _tiny_fill(tmp_path)
    folder = tmp_path / "fill"
    FluxFillPipeline(**p).save_pretrained(folder)
    assert detect_family(folder) == "flux"
    defaults = family_defaults(folder)
    assert defaults["guidance_scale"] == 30.0 and defaults["blend_start"] == 0.0
    editor = BlendedLatentDiffusion.from_pretrained(folder, clip_model=None)
    assert editor.backbone.inpainting and editor.default_config().num_inference_steps == 50
    result = editor(
        _flow_photo(shared_images),
        _mask(),
        "",
        seed=0,
        num_inference_steps=3,
        num_images=2,
        size=64,
    )
    assert len(result.candidates) == 2


@pytest.mark.slow
def test_eval_inpaint_model_method(
    tiny_sd_dir, tiny_sd_inpaint_dir, tiny_clip_dir, tmp_path, shared_images
):
    """``blendedit eval --methods latent,inpaint-model --inpaint-model FOLDER``: the inpainting
    model in the same frame beside BLD, at its family's blend start; skipped without the flag,
    and not among the default methods."""
    import json

    from blendedit.cli import main
    from tiny_eval_models import tiny_resnet_classifier

    out = tmp_path / "eval"
    common = [
        "--n-images", "1", "--batch", "2", "--steps", "3", "--size", "64", "--max-side", "128",
        "--no-single-timing", "--quiet", "--clip-model", str(tiny_clip_dir), "--score-clip-model",
        str(tiny_clip_dir), "--classifier", str(tiny_resnet_classifier(tmp_path / "classifier")),
        "--device", "cpu", "--model", str(tiny_sd_dir), "--images", str(shared_images),
    ]  # fmt: skip
    argv = ["eval", "--out", str(out), "--methods", "latent,inpaint-model", *common]
    assert main([*argv, "--inpaint-model", str(tiny_sd_inpaint_dir)]) == 0
    report = json.loads((out / "report.json").read_text())
    ran = report["methods"]["inpaint-model"]
    assert ran["status"] == "ok" and ran["settings"]["model"] == str(tiny_sd_inpaint_dir)
    assert ran["settings"]["config"]["blend_start"] == 0.0
    assert report["methods"]["latent"]["settings"]["config"]["blend_start"] == 0.25
    assert len(list((out / "predictions" / "inpaint-model").rglob("*.png"))) == 2
    skipped = tmp_path / "eval2"
    assert main(["eval", "--out", str(skipped), "--methods", "inpaint-model", *common]) == 0
    report = json.loads((skipped / "report.json").read_text())
    assert "--inpaint-model" in json.dumps(report["methods"]["inpaint-model"])
    from blendedit.eval.methods import DEFAULT_METHODS, METHODS

    assert "inpaint-model" in METHODS and "inpaint-model" not in DEFAULT_METHODS


# Published inpainting models = their text-to-image networks with a wider first layer: the UNet's
# conv_in takes 5 more channels (5 x 320 x 3 x 3 = 14,400 weights), FLUX Fill's x_embedder 320
# more (320 x 3072 = 983,040); tests/test_bench.py has the text-to-image counts.
INPAINT_PUBLISHED = {
    "sd15-inpaint": ("sd15", 859_535_364),
    "sdxl-inpaint": ("sdxl", 2_567_478_084),
    "flux-fill": ("flux-dev", 11_902_391_360),
}


@pytest.mark.parametrize("name", list(INPAINT_PUBLISHED))
def test_bench_presets_of_inpainting_models(name, tmp_path):
    """``blendedit bench --preset sd15-inpaint|sdxl-inpaint|flux-fill``: built on the meta device,
    the denoiser has the published parameter count and the backbone is an inpainting one."""
    from blendedit.bench import ARCHITECTURES, build_backbone
    from test_bench import FLOW_PUBLISHED, PUBLISHED, _count

    base, denoiser = INPAINT_PUBLISHED[name]
    bb = build_backbone(ARCHITECTURES[name], "meta", tmp_path)
    counts = {k: _count(m) for k, m in bb.modules().items()}
    assert counts == {**{**PUBLISHED, **FLOW_PUBLISHED}[base], "unet": denoiser}
    assert bb.inpainting and ARCHITECTURES[name].source


@pytest.mark.slow
def test_web_editor_says_what_the_model_is_for(tiny_sd_inpaint_dir, editor, tmp_path):
    """The web editor's model line says a model trained for inpainting is one, and what for; its
    settings offer the Blend control."""
    from blendedit.web.app import EditorApp
    from blendedit.web.layout import intro

    inpaint = BlendedLatentDiffusion.from_pretrained(tiny_sd_inpaint_dir, clip_model=None)
    for ed, words in ((inpaint, "trained for inpainting"), (editor, "text-to-image model")):
        app = EditorApp(ed, model_info={"name": "m"}, workdir=tmp_path / words[:4])
        assert words in intro(app.model_info, app.options)
    from blendedit.config import EditConfig, settings_of

    assert settings_of(EditConfig)["blend"][0].web


@pytest.mark.slow
def test_batch_manifest_rows_choose_the_inpainting_model_and_blend(
    tiny_sd_dir, tiny_sd_inpaint_dir, tiny_clip_dir, tmp_path, shared_images
):
    """A batch manifest's rows: ``model`` picks the inpainting model, ``blend`` is a key like any
    setting; a plain model's row with ``blend: off`` fails alone, in one line."""
    import json
    import shutil

    from blendedit.batch import Shared, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("rocket.png", "rocket.mask-sky.png"):
        shutil.copy(shared_images / name, folder / name)
    row = {"image": "rocket.png", "mask": "rocket.mask-sky.png", "prompt": ""}
    rows = [
        {**row, "id": "inpaint-off", "model": str(tiny_sd_inpaint_dir), "blend": "off"},
        {**row, "id": "inpaint-on", "model": str(tiny_sd_inpaint_dir), "blend": "on"},
        {**row, "id": "plain-off", "blend": "off"},
    ]
    (folder / "edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    summary = run_batch(
        folder / "edits.jsonl", tmp_path / "out", shared=shared, device="cpu", progress=False
    )
    done = {e["key"] for e in summary["entries"] if e["status"] == "done"}
    assert done == {"inpaint-off", "inpaint-on"}
    errors = {e["row"]: e["error"] for e in summary["entries"] if e["status"] == "failed"}
    assert (
        list(errors) == [3] and "blend: 'off' applies to models trained for inpainting" in errors[3]
    )


@pytest.mark.slow
def test_sdxl_and_flux_fill_single_files(tiny_sdxl_dir, tmp_path):
    """An SDXL inpainting checkpoint (9-channel ``input_blocks.0.0``, sgm layout): detected, given
    its inpainting defaults, loaded through ``--model-config`` with the folder's exact weights.
    A FLUX.1 Fill transformer file (BFL layout, ``img_in`` wider than 128): detected as FLUX with
    Fill's defaults from its header (diffusers' FLUX single-file converter assumes the published
    3072 width, so a tiny transformer file cannot be loaded here)."""
    from diffusers import FluxFillPipeline, StableDiffusionXLInpaintPipeline

    from original_checkpoint import write_original_checkpoint
    from test_original_checkpoint import _assert_same_weights, _config_only

    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_sdxl_dir)
    torch.manual_seed(4)
    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    pipe.unet = UNet2DConditionModel(**{**config, "in_channels": 9}).eval()
    folder = tmp_path / "sdxl-inpaint"
    pipe.save_pretrained(folder)
    out = write_original_checkpoint(folder, tmp_path / "sdxl.safetensors", "sdxl")
    assert detect_family(out) == "sdxl"
    assert family_defaults(out) == {
        "guidance_scale": 7.5,
        "blend_start": 0.0,
        "blend": C.INPAINT_BLEND,
    }
    cfg = str(_config_only(folder, tmp_path / "sdxl-cfg"))
    from_file = BlendedLatentDiffusion.from_pretrained(out, clip_model=None, model_config=cfg)
    from_folder = BlendedLatentDiffusion.from_pretrained(folder, clip_model=None)
    assert from_file.backbone.inpainting and from_folder.backbone.inpainting
    _assert_same_weights("unet", from_file.unet, from_folder.unet)

    _, p = _tiny_fill(tmp_path)
    FluxFillPipeline(**p).save_pretrained(tmp_path / "fill")
    fill = write_original_checkpoint(tmp_path / "fill", tmp_path / "fill.safetensors", "flux")
    assert detect_family(fill) == "flux"
    assert family_defaults(fill)["guidance_scale"] == 30.0


def test_lora_and_offload_on_an_inpainting_model(tiny_sd_inpaint_dir, shared_images, tmp_path):
    """Everything around the core works for a 9-channel model as for a plain one: a LoRA (made
    with PEFT on the 9-channel UNet, saved in diffusers' format) changes the edit and unloads back
    to the very same result; ``--offload model`` gives the plain run's latents exactly."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    image, mask = _photo(shared_images), _block_mask()
    call = {"seeds": [3], "scheduler": "ddim", "rank": False, "region": "full", "size": 96}
    call |= {"num_inference_steps": 3, "background": "decoded"}
    editor = BlendedLatentDiffusion.from_pretrained(tiny_sd_inpaint_dir, clip_model=None)
    assert editor.backbone.inpainting
    plain = editor(image, mask, "a red flower", **call).candidates[0].latent

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_inpaint_dir, subfolder="unet")
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    torch.manual_seed(1)
    inject_adapter_in_model(config, unet)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet)
    )
    editor.load_loras([str(tmp_path / "lora")])
    with_lora = editor(image, mask, "a red flower", **call).candidates[0].latent
    assert (with_lora - plain).abs().max() > 1e-3  # the adapter reaches the 9-channel UNet
    editor.unload_loras()
    assert torch.equal(editor(image, mask, "a red flower", **call).candidates[0].latent, plain)

    off = BlendedLatentDiffusion.from_pretrained(tiny_sd_inpaint_dir, clip_model=None)
    off.enable_offload("model", "cpu")
    assert torch.equal(off(image, mask, "a red flower", **call).candidates[0].latent, plain)
