"""FLUX.1 Kontext restricted by the mask (latent/backbones/kontext.py, issue 19): parity with
diffusers' FluxKontextInpaintPipeline on tiny random components with a PARTIAL mask, each half of
the method checked to matter (the context tokens, the blend), detection (folder, single file by
name), defaults, and ``blendedit edit`` end to end on a tiny folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.latent.backbones import FluxKontext, detect_family, family_defaults
from blendedit.latent.backbones.files import single_file_keys
from blendedit.latent.backbones.flux import unpack
from test_latent_flow import SIZE, _mask, _photo, _point_mass
from tiny_models import tiny_kontext_parts

PROMPT = "make the cat red"


def _kontext(tmp_path, point_mass=True) -> FluxKontext:
    p = tiny_kontext_parts(tmp_path / "vocab")
    vae = _point_mass(p["vae"]) if point_mass else p["vae"]
    return FluxKontext(
        vae, p["transformer"], p["text_encoder"], p["text_encoder_2"], p["tokenizer"],
        p["tokenizer_2"], p["scheduler"],
    )  # fmt: skip


def _ours(bb, shared_images, seeds, **settings):
    editor = BlendedLatentDiffusion(bb)
    result = editor(
        _photo(shared_images), _mask(), PROMPT, seeds=seeds, mask_shrink="off", rank=False,
        background="decoded", region="full", size=SIZE[0], batch_size=len(seeds), **settings,
    )  # fmt: skip
    return editor, torch.stack([c.latent for c in result.candidates])


def _reference(editor, shared_images, seeds, settings):
    pipe, strength = editor.diffusers_inpaint(editor.default_config().replace(**settings))
    ref = editor.backbone.reference_inpaint(
        pipe, {"prompt": PROMPT, "num_images_per_prompt": len(seeds)}, _photo(shared_images),
        _mask(), SIZE, strength=strength, num_inference_steps=settings["num_inference_steps"],
        guidance_scale=settings["guidance_scale"],
        generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
        max_sequence_length=editor.backbone.max_sequence_length,
    ).images  # fmt: skip
    return unpack(ref, SIZE[1] // 2, SIZE[0] // 2)  # packed tokens -> (n, 16, 24, 32)


@pytest.mark.parametrize("blend_start", [0.0, 0.5], ids=["strength1", "strength0.5"])
def test_kontext_parity_with_diffusers_inpaint(tmp_path, shared_images, blend_start):
    """FluxKontextInpaintPipeline appends the source's packed latents as context tokens (ids
    (1, row, col)) and blends the noised source outside the mask after every step: with a partial
    mask, the guidance embedding and the shifted schedule, BLD on the Kontext backbone reproduces
    its latents (full strength, the default, and half). Checked to fail: without the context
    tokens (``test_kontext_parity_needs_the_context_and_the_blend``)."""
    bb, seeds = _kontext(tmp_path), [1, 2]
    settings = {"num_inference_steps": 4, "guidance_scale": 3.5, "blend_start": blend_start}
    editor, ours = _ours(bb, shared_images, seeds, **settings)
    ref = _reference(editor, shared_images, seeds, settings)
    assert ours.shape == ref.shape == (2, 16, 24, 32)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_kontext_parity_needs_the_context_and_the_blend(tmp_path, shared_images, monkeypatch):
    """The parity above is not vacuous: dropping the context tokens (the image conditioning) or
    the blend (a mask of ones at every step) moves the latents far beyond its tolerance."""
    import blendedit.latent.pipeline as pipeline_module

    settings = {"num_inference_steps": 4, "guidance_scale": 3.5, "blend_start": 0.0}
    seeds = [1]
    editor, ref_ours = _ours(_kontext(tmp_path), shared_images, seeds, **settings)
    ref = _reference(editor, shared_images, seeds, settings)
    torch.testing.assert_close(ref_ours, ref, atol=2e-4, rtol=1e-4)

    def blank(self, c, x, mask, z_init):  # the context: a black image's latents instead
        c.image["latents"] = self.encode_image(torch.zeros_like(x) - 1)
        return c

    with monkeypatch.context() as m:
        m.setattr(FluxKontext, "condition_on_image", blank)
        _, no_context = _ours(_kontext(tmp_path), shared_images, seeds, **settings)
    assert (no_context - ref).abs().max() > 5e-3  # measured 0.025 (tolerance 2e-4)

    real = pipeline_module.blended_latent_diffusion

    def unblended(model_fn, scheduler, z, timesteps, masks, *args, **kw):
        return real(model_fn, scheduler, z, timesteps, [torch.ones_like(m) for m in masks], *args,
                    **kw)  # fmt: skip

    with monkeypatch.context() as m:
        m.setattr(pipeline_module, "blended_latent_diffusion", unblended)
        _, no_blend = _ours(_kontext(tmp_path), shared_images, seeds, **settings)
    outside = torch.from_numpy(np.asarray(_mask().resize((32, 24), Image.NEAREST)) == 0)
    assert (no_blend - ref)[..., outside].abs().max() > 1e-2


def test_kontext_defaults_are_its_pipelines(tmp_path) -> None:
    """FluxKontextInpaintPipeline: 28 steps, guidance 3.5 (embedded), strength 1."""
    bb = _kontext(tmp_path, point_mass=False)
    cfg = BlendedLatentDiffusion(bb).default_config()
    assert (cfg.num_inference_steps, cfg.guidance_scale, cfg.blend_start) == (28, 3.5, 0.0)
    assert cfg.scheduler == "flow-euler" and bb.guidance_embedded and bb.flow
    # the dev schedule's shift grows with the token count (FLUX.1's rule)
    mus = [bb.timestep_kwargs(4, (s, s))["mu"] for s in (32, 128)]
    assert mus[0] < mus[1] == pytest.approx(1.15)


def _save_folder(tmp_path):
    from diffusers import FluxKontextPipeline

    folder = tmp_path / "kontext"
    FluxKontextPipeline(**tiny_kontext_parts(tmp_path / "vocab")).save_pretrained(folder)
    return folder


def test_kontext_is_detected_from_folder_and_single_file(tmp_path) -> None:
    """A folder by its ``FluxKontextPipeline`` index; a BFL file (FLUX.1-dev's keys) by its name;
    a plain FLUX.1 file stays FLUX."""
    from safetensors.torch import save_file

    folder = _save_folder(tmp_path)
    assert detect_family(folder) == "flux-kontext"
    assert family_defaults(folder)["num_inference_steps"] == 28
    keys = {
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(2),
        "img_in.weight": torch.zeros(8, 64),
    }
    keys["guidance_in.in_layer.weight"] = torch.zeros(2)
    keys["vector_in.in_layer.weight"] = torch.zeros(2)  # FLUX.1's pooled CLIP-L input
    for name, family in [
        ("flux1-kontext-dev.safetensors", "flux-kontext"),
        ("f.safetensors", "flux"),
    ]:
        save_file(keys, str(tmp_path / name))
        assert detect_family(tmp_path / name) == family
        assert single_file_keys(tmp_path / name)
    assert family_defaults(tmp_path / "flux1-kontext-dev.safetensors")["blend_start"] == 0.0


def test_cli_edits_with_a_tiny_kontext_folder(tmp_path, shared_images, tiny_clip_dir) -> None:
    """``blendedit edit`` on a Kontext folder: ranked results, the photo's size, the same pixels on
    a second run, the background exact outside the mask's band."""
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
    assert result["settings"]["family"] == "flux-kontext"
    assert result["settings"]["guidance_scale"] == 3.5 and result["settings"]["blend_start"] == 0
    files = sorted(p.name for p in outs[0].glob("0*-seed*.png"))
    assert len(files) == 2 and [r["rank"] for r in result["results"]] == [1, 2]
    assert all(r["clip_score"] is not None for r in result["results"])
    src = np.asarray(Image.open(photo).convert("RGB"))
    far = np.ones((60, 90), bool)
    far[10:50, 20:70] = False  # the mask grown by a band
    for f in files:
        a, b = (np.asarray(Image.open(o / f)) for o in outs)
        assert a.shape == (60, 90, 3) and np.array_equal(a, b)
        assert np.array_equal(a[far], src[far])


def test_kontext_file_loads_through_the_kontext_pipeline(tmp_path, monkeypatch) -> None:
    """A Kontext single file goes to diffusers' ``FluxKontextPipeline`` single-file loader, with
    the parts a BFL file lacks (VAE, CLIP-L, T5) from ``--model-config``. (A tiny FLUX.1 cannot
    round-trip through diffusers 0.42's BFL converter, which hard-codes FLUX.1's width: see
    tests/test_original_checkpoint.py; the load itself is diffusers'.)"""
    from safetensors.torch import save_file

    import blendedit.latent.backbones.kontext as K

    folder = _save_folder(tmp_path)
    path = tmp_path / "flux1-kontext-dev.safetensors"
    keys = {"double_blocks.0.img_attn.qkv.weight": torch.zeros(2)}
    save_file(keys | {"vector_in.in_layer.weight": torch.zeros(2)}, str(path))  # FLUX.1's keys
    seen = {}

    def fake(cls_name, file_parts, name, opts):
        from diffusers import FluxKontextPipeline

        seen.update(cls=cls_name, parts=set(file_parts), name=name, config=opts.config)
        return FluxKontextPipeline.from_pretrained(folder)

    monkeypatch.setattr(K, "load_pipeline", fake)
    editor = BlendedLatentDiffusion.from_pretrained(path, clip_model=None, model_config=str(folder))
    assert editor.family == "flux-kontext"
    assert seen == {
        "cls": "FluxKontextPipeline",
        "parts": {"vae", "text_encoder", "text_encoder_2"},
        "name": path,
        "config": str(folder),
    }


def test_kontext_bench_presets(tmp_path) -> None:
    """``flux-kontext-dev``: FLUX.1 Kontext [dev]'s published "12B" transformer (11.9B, the same
    networks as FLUX.1-dev), CLIP-L and T5-XXL's encoder; the tiny preset runs against
    FluxKontextInpaintPipeline on a CPU."""
    from blendedit.bench import ARCHITECTURES, build_backbone, run_bench

    arch = ARCHITECTURES["flux-kontext-dev"]
    assert arch.family == "flux-kontext" and arch.source == "black-forest-labs/FLUX.1-Kontext-dev"
    bb = build_backbone(arch, "meta", tmp_path)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in bb.modules().items()}
    assert counts == {
        "vae": 83_819_683, "unet": 11_901_408_320, "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
    }  # fmt: skip
    assert bb.is_dev and bb.scheduler.config.use_dynamic_shifting and bb.native_size == 1024
    res = run_bench("tiny-flux-kontext", "cpu", torch.float32, batch=2, steps=4, repeats=1)
    assert res.total_s > 0 and res.diffusers_total_s > 0 and res.unet_tflop_per_step > 0


def test_web_editor_says_what_an_editing_model_is_for(tmp_path) -> None:
    """The web editor's page names what an editing model is for; a plain model's page does not
    change."""
    from blendedit.web.app import EditorApp
    from blendedit.web.layout import intro

    editor = BlendedLatentDiffusion(_kontext(tmp_path, point_mass=False), name="kontext")
    app = EditorApp(editor, workdir=tmp_path / "web")
    assert app.model_info["purpose"] == FluxKontext.purpose
    page = intro(app.model_info, app.options)
    assert "This model is an editing model" in page and "instruction" in page
    plain = {k: v for k, v in app.model_info.items() if k != "purpose"}
    assert "This model is" not in intro(plain, app.options)
