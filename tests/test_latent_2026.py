"""The model families of 2025-2026 under the BLD loop (issue 20: latent/backbones/chroma.py,
zimage.py): parity with diffusers' own inpaint pipelines of each family on tiny random components
with a PARTIAL mask, each shown to fail when the blend's noise level is off by one step; a thin
stroke on packed tokens; detection; the bench presets' published sizes; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLFlux2, AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.bench import ARCHITECTURES
from blendedit.bench.build import build_backbone
from blendedit.cli import main
from blendedit.frame import Work
from blendedit.latent.backbones import (
    FAMILIES,
    Chroma,
    Flux2Dev,
    Flux2Klein,
    Krea2,
    QwenImage,
    ZImage,
    detect_family,
    family_defaults,
)
from blendedit.latent.backbones.flux import unpack
from test_latent_pipeline import PointMassVAE, _PointMass
from tiny_models import (
    tiny_chroma_parts,
    tiny_flux2_dev_parts,
    tiny_flux2_klein_parts,
    tiny_krea2_parts,
    tiny_qwenimage_parts,
    tiny_zimage_parts,
)

SIZE = (64, 48)  # (W, H) px: 32x24 latents at factor 2, 16x12 tokens of 2x2
PARTS = {"chroma": tiny_chroma_parts, "zimage": tiny_zimage_parts, "qwen": tiny_qwenimage_parts}
PARTS |= {"klein": tiny_flux2_klein_parts, "krea": tiny_krea2_parts}
CLASSES = {"chroma": Chroma, "zimage": ZImage, "qwen": QwenImage, "klein": Flux2Klein}
CLASSES |= {"krea": Krea2, "dev": Flux2Dev}
PARTS["dev"] = tiny_flux2_dev_parts
FAMILY_NAMES = {"chroma": "chroma", "zimage": "zimage", "qwen": "qwen-image"}
FAMILY_NAMES |= {"klein": "flux2-klein", "krea": "krea2", "dev": "flux2-dev"}
ALL = list(CLASSES)


class NoiseLevelOff(FlowMatchEulerDiscreteScheduler):
    """A wrong blend: after a step, the background re-noised to the level of the step just taken
    (sigma_i) instead of the next one (sigma_{i+1}); what the parity tests must catch."""

    def scale_noise(self, sample, timestep, noise=None):  # type: ignore[override]
        if self.step_index is None:  # the initial latents: unchanged
            return super().scale_noise(sample, timestep, noise)
        sigma = self.sigmas[self.step_index - 1].to(sample.dtype)
        return sigma * noise + (1.0 - sigma) * sample


class PointMassQwenVAE(AutoencoderKLQwenImage):
    """Qwen-Image's VAE with a deterministic encoder (as ``PointMassVAE``)."""

    def encode(self, x, return_dict=True):  # type: ignore[override]
        return AutoencoderKLOutput(latent_dist=_PointMass(super().encode(x).latent_dist.mode()))


def _point_mass(vae):
    if isinstance(vae, AutoencoderKLFlux2):  # its pipelines take the posterior's mode already
        return vae
    cls = PointMassQwenVAE if isinstance(vae, AutoencoderKLQwenImage) else PointMassVAE
    pm = cls.from_config(vae.config)
    pm.load_state_dict(vae.state_dict())
    return pm.eval()


def _backbone(family, tmp_path, point_mass=True):
    p = PARTS[family](tmp_path / "vocab")
    vae = _point_mass(p["vae"]) if point_mass else p["vae"]
    extra = {"layers": p["text_encoder_select_layers"]} if family == "krea" else {}
    parts = (p["transformer"], p["text_encoder"], p["tokenizer"], p["scheduler"])
    return CLASSES[family](vae, *parts, **extra)


def _photo(shared_images) -> Image.Image:
    return Image.open(shared_images / "chelsea.png").convert("RGB").resize(SIZE, Image.LANCZOS)


def _mask() -> Image.Image:
    m = np.zeros(SIZE[::-1], np.uint8)
    m[12:36, 16:44] = 255  # partial, aligned to the 4 px token grid: every rule agrees on it
    return Image.fromarray(m)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["chroma", "zimage", "qwen"])
def test_parity_with_diffusers_inpaint(tmp_path, shared_images, family):
    """ChromaInpaintPipeline / ZImageInpaintPipeline blend ``scale_noise(z0, t_{i+1})`` after
    every step: with a partial mask, CFG with a negative prompt and each family's schedule, BLD
    reproduces their latents (Chroma's output is packed tokens: unpacked to compare). The
    reference is the pipeline called by the text (its own encoding) at the strength that runs the
    same steps. Control: the same pipeline with the blend's noise level one step off
    (:class:`NoiseLevelOff`) differs by far more than the tolerance."""
    bb, seeds = _backbone(family, tmp_path), [4, 5]
    settings = {"num_inference_steps": 4, "guidance_scale": 3.0, "negative_prompt": "blurry"}
    editor = BlendedLatentDiffusion(bb)
    result = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, blend_start=0.25,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        batch_size=2, **settings,
    )  # fmt: skip
    ours = torch.stack([c.latent for c in result.candidates])
    cfg = editor.default_config().replace(**settings)
    pipe, strength = editor.diffusers_inpaint(cfg)

    def reference():
        ref = bb.reference_inpaint(
            pipe, bb.reference_prompt("a red flower", "blurry", 2), _photo(shared_images),
            _mask(), SIZE, strength=strength, num_inference_steps=4, guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
        ).images  # fmt: skip
        return unpack(ref, 24, 32) if ref.dim() == 3 else ref

    ref = reference()
    assert ours.shape == ref.shape == (2, 16, 24, 32)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    pipe.scheduler = NoiseLevelOff.from_config(pipe.scheduler.config)
    with pytest.raises(AssertionError):  # the same check fails with a wrong noise level
        torch.testing.assert_close(ours, reference(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ALL)
def test_thin_stroke_survives_on_tokens(tmp_path, family):
    """A 1 px line: max-pooled to latent cells, then any cell masks its whole 2x2 token."""
    mask = torch.zeros(1, 1, 48, 64)
    mask[..., 20, 5:60] = 1.0
    editor = BlendedLatentDiffusion(_backbone(family, tmp_path, point_mass=False))
    work = Work(x=torch.zeros(1, 3, 48, 64), mask=mask, soft=False, prompt="a cat")
    state = editor.prepare(work, editor.default_config().replace(num_inference_steps=4))
    stage = state.stages[-1, 0, 0]  # latent cells: (24, 32), klein (12, 16)
    p = editor.backbone.patch_size  # cells per token side: 2, klein 1 (its cells are tokens)
    tokens = stage.view(stage.shape[0] // p, p, stage.shape[1] // p, p)
    assert stage.sum() > 0 and torch.equal(tokens.amin((1, 3)), tokens.amax((1, 3)))
    assert editor.backbone.size_multiple == 4  # 4 px per token in every tiny model


def test_guidance_scales_and_text(tmp_path):
    """Z-Image's scale s is blendedit's s + 1 (1: one conditional pass); its captions keep their
    own lengths (padding dropped). Chroma attends the tokens and one padding token."""
    zi = _backbone("zimage", tmp_path, point_mass=False)
    c = zi.encode_text("a red flower", "", SIZE, SIZE)
    assert c.cond.shape[1] > c.uncond.shape[1] and c.cond.shape[-1] == 32
    z, t = torch.randn(1, 16, 24, 32), torch.tensor(700.0)
    cond = zi.model_fn(c, 1, 1.0)(z, t)
    both = zi.denoiser(c, 1, ("uncond", "cond"), 3.0)(torch.cat([z, z]), t)
    torch.testing.assert_close(both[1:], cond)
    torch.testing.assert_close(zi.model_fn(c, 1, 3.0)(z, t), both[0:1] + 3.0 * (cond - both[0:1]))
    assert ZImage.model_defaults("Tongyi-MAI/Z-Image-Turbo")["guidance_scale"] == 1.0
    assert ZImage.model_defaults("Tongyi-MAI/Z-Image")["guidance_scale"] == 6.0  # its 5.0
    ch = _backbone("chroma", tmp_path, point_mass=False)
    states, keep = ch.encode_prompt("a cat")
    n = len(ch.tokenizer("a cat").input_ids)
    assert states.shape == (1, 512, 64) and keep.sum() == n + 1


# Published sizes (model cards, in billions, to the digits they give): Chroma1-HD "8.9B"; Z-Image
# "6B" (6.15B in its report); Qwen-Image "20B"; the text encoders T5-XXL's encoder (4.76B),
# Qwen3-4B (4.02B without its tied head), Qwen2.5-VL-7B (8.29B with its vision tower); the VAEs
# FLUX.1's (83.8M) and Qwen-Image's (Wan 2.1's, 127M).
FLUX_VAE = 83_819_683
PUBLISHED = {
    "chroma": {"unet": "8.9", "text_encoder": "4.76", "vae": FLUX_VAE},
    "zimage-turbo": {"unet": "6.15", "text_encoder": "4.02", "vae": FLUX_VAE},
    "qwen-image": {"unet": "20", "text_encoder": "8.29", "vae": 126_892_531},
    # FLUX.2 [klein] "4B" (3.88B) and "9B" (9.08B); Qwen3-4B with its tied head, Qwen3-8B "8.2B";
    # the FLUX.2 VAE (84.0M)
    "flux2-klein-4b": {"unet": "3.9", "text_encoder": "4.02", "vae": 84_046_115},
    "flux2-klein-9b": {"unet": "9.1", "text_encoder": "8.2", "vae": 84_046_115},
    # Krea 2: Krea2Transformer2DModel's default config (12.8B; no published figure checked here),
    # Qwen3-VL-4B "4.44B", Qwen-Image's VAE
    "krea2": {"unet": "12.8", "text_encoder": "4.44", "vae": 126_892_531},
    # FLUX.2 [dev] "32B" (32.2B), Mistral Small 3.1 "24B" (24.0B)
    "flux2-dev": {"unet": "32", "text_encoder": "24", "vae": 84_046_115},
    # Qwen-Image 2.1 "7B" (7.12B), Qwen3-VL-8B-Instruct "8.8B" (vision tower and untied head); its
    # VAE is AutoencoderKLQwenImage21's default config (no published figure checked here)
    "qwen-image-2.1": {"unet": "7", "text_encoder": "8.8", "vae": 337_740_404},
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_bench_presets_are_the_published_sizes(name, tmp_path):
    """Built on the meta device (shapes only): each part's parameter count."""
    bb = build_backbone(ARCHITECTURES[name], "meta", tmp_path)
    count = {k: sum(p.numel() for p in m.parameters()) for k, m in bb.modules().items()}
    for part, published in PUBLISHED[name].items():
        if isinstance(published, str):  # billions, to the published digits
            digits = len(published.partition(".")[2])
            assert f"{count[part] / 1e9:.{digits}f}" == published, (part, count[part])
        else:
            assert count[part] == published
    assert bb.native_size == ARCHITECTURES[name].resolution == 1024
    multiple = 32 if name == "qwen-image-2.1" else 16  # its 16x VAE, an even latent grid
    assert ARCHITECTURES[name].family == bb.family and bb.size_multiple == multiple


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "pipeline"), [("klein", "Flux2KleinPipeline"), ("dev", "Flux2Pipeline")]
)
def test_flux2_parity_with_its_own_loop_and_diffusers_blend(
    tmp_path, shared_images, family, pipeline
):
    """FLUX.2 [klein]'s inpaint pipeline also feeds the source as reference tokens, which BLD does
    not; the reference is therefore ``Flux2KleinPipeline``'s own denoising loop run as an
    img2img: the schedule's tail after the skipped steps (``sigmas``, with the pipeline's mu of
    the full step count), started at ``scale_noise(z0, t_k, noise)`` (z0 by diffusers' own
    ``Flux2KleinInpaintPipeline._encode_vae_image``: fold and batch-norm), and diffusers' blend
    added by ``callback_on_step_end``: ``(1 - m) scale_noise(z0, t_{i+1}, noise) + m z`` (the
    clean z0 after the last step). With a partial mask and CFG (klein; FLUX.2 [dev]: its guidance
    embedding, ``Flux2Pipeline``, which has no inpaint pipeline at all), BLD reproduces its
    latents. Control: the same with the blend's noise level one step off."""
    import diffusers
    from diffusers import Flux2KleinInpaintPipeline
    from diffusers.utils.torch_utils import randn_tensor

    from blendedit.latent.backbones.flux2 import empirical_mu, unfold

    bb, seeds, n, k = _backbone(family, tmp_path), [4, 5], 4, 1
    editor = BlendedLatentDiffusion(bb)
    result = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, blend_start=0.25,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        batch_size=2, num_inference_steps=n, guidance_scale=3.0,
    )  # fmt: skip
    ours = torch.stack([c.latent for c in result.candidates])  # (2, 128, 12, 16)
    parts = {k_: getattr(bb, k_) for k_ in ("vae", "text_encoder", "tokenizer", "scheduler")}
    inpaint = Flux2KleinInpaintPipeline(transformer=bb.unet, **parts)
    image = inpaint.image_processor.preprocess(_photo(shared_images), SIZE[1], SIZE[0])
    z0 = inpaint._encode_vae_image(image, None).expand(2, -1, -1, -1)  # (2, 128, 12, 16)
    noise = torch.cat([randn_tensor((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(s))
                       for s in seeds])  # fmt: skip
    m = torch.nn.functional.max_pool2d(
        torch.from_numpy(np.asarray(_mask()) / 255.0)[None].float(), 4
    )
    m = m.flatten(1)[..., None]  # (1, 192, 1) tokens

    def reference(scheduler_cls):
        sched = scheduler_cls.from_config(bb.scheduler.config)
        pipe = getattr(diffusers, pipeline)(transformer=bb.unet, **{**parts, "scheduler": sched})
        pipe.set_progress_bar_config(disable=True)
        full = np.linspace(1.0, 1 / n, n)
        sched.set_timesteps(sigmas=full, mu=empirical_mu(12 * 16, n))
        tail = sched.timesteps[k:]
        start = sched.scale_noise(z0, tail[:1], noise)
        z0p, noisep = (x.flatten(2).transpose(1, 2) for x in (z0, noise))  # packed tokens

        def blend(pipe, i, t, kw):
            last = i == len(tail) - 1
            bg = z0p if last else pipe.scheduler.scale_noise(z0p, tail[i + 1 : i + 2], noisep)
            return {"latents": (1 - m) * bg + m * kw["latents"]}

        return pipe(
            prompt="a red flower", height=SIZE[1], width=SIZE[0], num_inference_steps=n,
            sigmas=full[k:], guidance_scale=3.0, latents=start, output_type="latent",
            callback_on_step_end=blend,
        ).images  # fmt: skip

    mean, std = Flux2Klein._stats(bb.vae, ours)
    ref = reference(FlowMatchEulerDiscreteScheduler)
    # Flux2Pipeline returns its normalised tokens (2, 192, 128); Flux2KleinPipeline unfolded
    # latents with the batch norm undone (2, 32, 24, 32)
    tokens = ref.dim() == 3
    ours = ours.flatten(2).transpose(1, 2) if tokens else unfold(ours * std + mean)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    with pytest.raises(AssertionError):  # the same check fails with a wrong noise level
        torch.testing.assert_close(ours, reference(NoiseLevelOff), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("family", "pipeline"), [("krea", "Krea2Pipeline"), ("dev", "Flux2Pipeline")]
)
def test_loop_timing_reference_is_the_same_work(tmp_path, shared_images, family, pipeline):
    """Krea 2 and FLUX.2 [dev] have no diffusers inpaint pipeline: ``blendedit bench`` times them
    against their text-to-image pipeline's own loop run as an img2img with diffusers' blend in a
    callback (``bench.reference.LoopRun``, the pipeline built from the backbone's components).
    That run reproduces blendedit's latents in the pipeline's own layout (packed tokens) with a
    partial mask and guidance on (Krea's scale s - 1, FLUX.2 [dev]'s embedded scale), so the
    per-step ratio compares equal work. Control: the same run with the blend's noise level one
    step off."""
    from blendedit.bench.reference import PROMPT, LoopRun, reference_run

    bb = _backbone(family, tmp_path)
    editor = BlendedLatentDiffusion(bb)
    settings = {"num_inference_steps": 4, "guidance_scale": 3.0, "blend_start": 0.25}
    result = editor(
        _photo(shared_images), _mask(), PROMPT, seeds=[4, 5], mask_shrink="off", rank=False,
        background="decoded", region="full", size=SIZE[0], batch_size=2, **settings,
    )  # fmt: skip
    ours = bb.reference_tokens(torch.stack([c.latent for c in result.candidates]))
    cfg = editor.default_config().replace(num_images=2, **settings)
    mask = np.asarray(_mask()) > 0
    run = reference_run(editor, _photo(shared_images), mask, cfg, torch.device("cpu"))
    assert isinstance(run, LoopRun) and type(run.pipe).__name__ == pipeline
    assert not bb.reference_pipeline
    ref = run.edit(4, output_type="latent").images  # packed tokens (2, 192, 64 or 128)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    run.pipe.scheduler = NoiseLevelOff.from_config(bb.scheduler.config)
    with pytest.raises(AssertionError):
        off = run.edit(4, output_type="latent").images
        torch.testing.assert_close(ours, off, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL)
def test_cli_edit_ranked_size_kept_deterministic(tmp_path, shared_images, tiny_clip_dir, family):
    """``blendedit edit`` on a saved tiny folder: detected from its model_index.json, ranked,
    the photo's size kept, the same bytes twice, the background exact outside the band."""
    import diffusers

    cls = getattr(diffusers, CLASSES[family].pipelines[0])
    folder = tmp_path / f"{family}-Turbo"
    cls(**PARTS[family](tmp_path / "vocab")).save_pretrained(folder)
    family = FAMILY_NAMES[family]
    assert detect_family(folder) == family and family in FAMILIES
    assert family_defaults(folder)["scheduler"] == "flow-euler"
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    _photo(shared_images).resize((90, 60)).save(photo)
    m = np.zeros((60, 90), np.uint8)
    m[20:22, 10:80] = 255  # a thin stroke
    Image.fromarray(m).save(mask)
    outs = []
    for run in ("a", "b"):
        argv = [
            "edit", str(photo), "--mask", str(mask), "--prompt", "a red flower", "--model",
            str(folder), "--clip-model", str(tiny_clip_dir), "--steps", "4", "--num-images", "2",
            "--size", "64", "--out", str(tmp_path / run), "--device", "cpu", "--quiet",
        ]  # fmt: skip
        assert main(argv) == 0
        outs.append(tmp_path / run)
    result = json.loads((outs[0] / "result.json").read_text())
    assert result["settings"]["family"] == family and len(result["results"]) == 2
    scores = [r["clip_score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True)  # ranked by CLIP, best first
    src = np.asarray(Image.open(photo).convert("RGB"))
    far = np.ones((60, 90), bool)
    far[10:32, 0:90] = False  # the stroke and a band around it
    files = sorted(p.name for p in outs[0].glob("0*.png"))
    assert len(files) == 2
    for f in files:
        a, b = (np.asarray(Image.open(o / f)) for o in outs)
        assert a.shape == (60, 90, 3) and np.array_equal(a, b)
        assert np.array_equal(a[far], src[far])


def test_prompt_encoded_once_across_batches_and_generations(tmp_path, shared_images):
    """The language-model encoder runs once per prompt: two edits of two candidates each with the
    same prompt (a ranked batch, then a second generation as the web editor makes) encode the
    prompt and the negative once; a new prompt once more; a moved encoder starts afresh."""
    bb = _backbone("zimage", tmp_path, point_mass=False)
    editor = BlendedLatentDiffusion(bb)
    calls = []
    bb.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    run = {"num_inference_steps": 2, "rank": False, "size": SIZE[0], "num_images": 2}
    for prompt in ("a red flower", "a red flower", "a blue flower"):
        editor(_photo(shared_images), _mask(), prompt, **run)
    assert len(calls) == bb.prompts.runs == 3  # "a red flower", "", "a blue flower"
    bb.to(dtype=torch.float64)
    bb.encode_prompt("a blue flower")
    assert len(calls) == 4
    bb.to(dtype=torch.float32)


@pytest.mark.slow
def test_krea2_parity_with_its_own_loop_and_diffusers_blend(tmp_path, shared_images):
    """diffusers has no Krea 2 inpaint pipeline: the reference is ``Krea2Pipeline``'s own loop run
    as an img2img, as for FLUX.2 [klein]: the schedule's tail (``sigmas``, mu of the token count),
    started at ``scale_noise(z0, t_k, noise)`` (z0 by diffusers' own Qwen-Image
    ``_encode_vae_image``: one frame, mean/std), diffusers' blend added by
    ``callback_on_step_end`` on packed tokens (the clean z0 after the last step). With a partial
    mask and CFG (Krea's scale 2.0 is blendedit's 3.0), BLD reproduces its latents. Control: the
    same with the blend's noise level one step off."""
    from types import SimpleNamespace

    from diffusers import Krea2Pipeline, QwenImageInpaintPipeline
    from diffusers.utils.torch_utils import randn_tensor

    from blendedit.latent.backbones.flux import pack

    bb, seeds, n, k = _backbone("krea", tmp_path), [4, 5], 4, 1
    editor = BlendedLatentDiffusion(bb)
    result = editor(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, blend_start=0.25,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        batch_size=2, num_inference_steps=n, guidance_scale=3.0,
    )  # fmt: skip
    ours = torch.stack([c.latent for c in result.candidates])  # (2, 16, 24, 32)
    from diffusers.image_processor import VaeImageProcessor

    x = VaeImageProcessor(vae_scale_factor=4).preprocess(_photo(shared_images), SIZE[1], SIZE[0])
    enc = QwenImageInpaintPipeline._encode_vae_image(
        SimpleNamespace(vae=bb.vae), x[:, :, None], None
    )
    z0 = enc[:, :, 0].expand(2, -1, -1, -1)  # (2, 16, 24, 32)
    noise = torch.cat([randn_tensor((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(s))
                       for s in seeds])  # fmt: skip
    m = torch.nn.functional.max_pool2d(
        torch.from_numpy(np.asarray(_mask()) / 255.0)[None].float(), 4
    )
    m = m.flatten(1)[..., None]  # (1, 192, 1) tokens
    parts = {k_: getattr(bb, k_) for k_ in ("vae", "text_encoder", "tokenizer")}

    def reference(scheduler_cls):
        sched = scheduler_cls.from_config(bb.scheduler.config)
        pipe = Krea2Pipeline(
            transformer=bb.unet, scheduler=sched, text_encoder_select_layers=bb.layers, **parts
        )
        pipe.set_progress_bar_config(disable=True)
        full = np.linspace(1.0, 1 / n, n)
        sched.set_timesteps(sigmas=full, **{"mu": bb.timestep_kwargs(n, (24, 32))["mu"]})
        tail = sched.timesteps[k:]
        z0p, noisep = pack(z0), pack(noise)
        start = sched.scale_noise(z0p, tail[:1], noisep)

        def blend(pipe, i, t, kw):
            last = i == len(tail) - 1
            bg = z0p if last else pipe.scheduler.scale_noise(z0p, tail[i + 1 : i + 2], noisep)
            return {"latents": (1 - m) * bg + m * kw["latents"]}

        out = pipe(
            prompt="a red flower", height=SIZE[1], width=SIZE[0], num_inference_steps=n,
            sigmas=full[k:], guidance_scale=2.0, latents=start, output_type="latent",
            num_images_per_prompt=2,
            callback_on_step_end=blend,
        ).images  # fmt: skip  # packed tokens (2, 192, 64)
        return unpack(out, 24, 32)

    ref = reference(FlowMatchEulerDiscreteScheduler)
    assert ours.shape == ref.shape == (2, 16, 24, 32)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    with pytest.raises(AssertionError):  # the same check fails with a wrong noise level
        torch.testing.assert_close(ours, reference(NoiseLevelOff), atol=2e-4, rtol=1e-4)


def test_offload_model_hooks_the_language_model_encoder(tmp_path, shared_images):
    """``--offload model`` (accelerate hooks; the CPU stands in as the execution device, as in
    tests/test_latent_offload.py): the language-model encoder carries its own hook, so it goes to
    the GPU only while it runs, and the edit is the plain one."""
    call = {"seeds": [3], "num_inference_steps": 3, "rank": False, "region": "full"}
    call |= {"size": SIZE[0]}
    plain = BlendedLatentDiffusion(_backbone("zimage", tmp_path / "a", point_mass=False))
    ref = plain(_photo(shared_images), _mask(), "a red flower", **call).candidates[0]
    off = BlendedLatentDiffusion(_backbone("zimage", tmp_path / "b", point_mass=False))
    off.enable_offload("model", "cpu")
    assert hasattr(off.backbone.text_encoder, "_hf_hook") and hasattr(off.unet, "_hf_hook")
    got = off(_photo(shared_images), _mask(), "a red flower", **call).candidates[0]
    assert torch.equal(got.latent, ref.latent)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["zimage", "klein", "krea"])
def test_eval_and_batch_run_the_family(tmp_path, shared_images, tiny_clip_dir, capsys, family):
    """``blendedit eval`` (BLD next to the family's diffusers inpaint pipeline where diffusers has
    one: Krea 2 has none, so its row is skipped with the reason) and ``blendedit batch`` (one
    manifest row) on a saved tiny folder of the family, with the family's own defaults."""
    import diffusers

    from tiny_eval_models import tiny_resnet_classifier

    cls = getattr(diffusers, CLASSES[family].pipelines[0])
    folder = tmp_path / f"{family}-Turbo"
    cls(**PARTS[family](tmp_path / "vocab")).save_pretrained(folder)
    out = tmp_path / "eval"
    common = ["--model", str(folder), "--clip-model", str(tiny_clip_dir), "--device", "cpu"]
    argv = [
        "eval", "--images", str(shared_images), "--out", str(out), *common,
        "--methods", "latent,diffusers-inpaint", "--n-images", "1", "--batch", "2",
        "--steps", "3", "--size", "64", "--max-side", "96", "--no-single-timing", "--quiet",
        "--score-clip-model", str(tiny_clip_dir),
        "--classifier", str(tiny_resnet_classifier(tmp_path / "classifier")),
    ]  # fmt: skip
    reference = CLASSES[family].reference_pipeline
    if not reference:  # one line naming the method, before any work
        assert main(argv) == 2
        assert "diffusers has no inpaint pipeline" in capsys.readouterr().err
        argv[argv.index("latent,diffusers-inpaint")] = "latent"
    assert main(argv) == 0
    methods = json.loads((out / "report.json").read_text())["methods"]
    assert methods["latent"]["status"] == "ok"
    assert methods["latent"]["settings"]["config"]["scheduler"] == "flow-euler"
    if reference:
        ref = methods["diffusers-inpaint"]
        assert ref["status"] == "ok" and ref["settings"]["pipeline"] == reference
        assert len(list((out / "predictions" / "diffusers-inpaint").rglob("*.png"))) == 2
    manifest = tmp_path / "edits.jsonl"
    row = {"image": str(shared_images / "chelsea.png"), "prompt": "a red hat", "seed": 3}
    row["mask"] = str(shared_images / "chelsea.mask-eyes.png")
    manifest.write_text(json.dumps(row) + "\n")
    argv = ["batch", str(manifest), "--out", str(tmp_path / "batch"), *common, "--steps", "3"]
    assert main([*argv, "--num-images", "2", "--size", "64", "--quiet"]) == 0, capsys.readouterr()
    (done,) = [p for p in (tmp_path / "batch").iterdir() if (p / "result.json").is_file()]
    result = json.loads((done / "result.json").read_text())
    assert result["settings"]["family"] == FAMILY_NAMES[family] and len(result["results"]) == 2


def test_chroma_calls_one_per_part_as_one_batched_call(tmp_path):
    """Chroma's guided denoiser calls the transformer once per part (the prompt's and the
    negative's T5 masks differ in length), each with its mask once, (1, T + N): the outputs are
    those of one call of 2B with a mask per row. Under a step cache's hooks it makes that one
    call: Pyramid Attention Broadcast keeps one state for every call, so with two calls the
    prompt's call of the first step would reuse the negative's attention and the comparison
    with the uncached output fails (measured: 0.24 off)."""
    from blendedit.latent.backbones import common as C
    from blendedit.latent.cache import step_cache

    ch = _backbone("chroma", tmp_path, point_mass=False)
    c = ch.encode_text("a red flower", "", SIZE, SIZE)
    parts = ("uncond", "cond")
    z, t = (
        torch.randn(4, 16, 24, 32, generator=torch.Generator().manual_seed(0)),
        torch.tensor(700.0),
    )
    calls = []
    hook = ch.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["attention_mask"].shape)), with_kwargs=True
    )
    out = ch.denoiser(c, 2, parts, 3.0)(z, t)
    assert calls == [(1, 512 + 12 * 16)] * 2
    ctx, added = ch.stack(c, 2, parts)  # (4, 512, 64), mask (4, 512)
    with torch.no_grad():
        ref = ch.unet(
            hidden_states=C.pack(z), timestep=t.expand(4) / 1000, encoder_hidden_states=ctx,
            txt_ids=torch.zeros(ctx.shape[1], 3), img_ids=C.image_ids(24, 32),
            attention_mask=torch.cat([added["mask"], torch.ones(4, 12 * 16)], 1),
            return_dict=False,
        )[0]  # fmt: skip
    torch.testing.assert_close(out, C.unpack(ref, 24, 32))
    calls.clear()
    with step_cache(ch.unet, "pab:2", torch.ones(1, 1, 24, 32), 2) as cache:
        torch.testing.assert_close(cache.wrap(ch.denoiser(c, 2, parts, 3.0))(z, t), out)
    assert calls == [(4, 512 + 12 * 16)]
    hook.remove()


def test_klein_timing_reference_is_the_same_work(tmp_path, shared_images):
    """``blendedit bench`` times FLUX.2 [klein] against ``Flux2KleinPipeline``'s own loop run as
    an img2img with diffusers' blend in a callback (``bench.reference.LoopRun``; the inpaint
    pipeline also attends to the source's tokens): that run reproduces blendedit's latents with a
    partial mask and CFG, so the per-step ratio compares equal work; the inpaint pipeline stays
    the parity reference. Control: the same run with the blend's noise level one step off."""
    from blendedit.bench.reference import PROMPT, LoopRun, reference_run
    from blendedit.latent.backbones.flux2 import unfold

    bb = _backbone("klein", tmp_path)
    editor = BlendedLatentDiffusion(bb)
    settings = {"num_inference_steps": 4, "guidance_scale": 3.0, "blend_start": 0.25}
    result = editor(
        _photo(shared_images), _mask(), PROMPT, seeds=[4, 5], mask_shrink="off", rank=False,
        background="decoded", region="full", size=SIZE[0], batch_size=2, **settings,
    )  # fmt: skip
    ours = torch.stack([c.latent for c in result.candidates])  # (2, 128, 12, 16)
    mean, std = Flux2Klein._stats(bb.vae, ours)
    cfg = editor.default_config().replace(num_images=2, **settings)
    mask = np.asarray(_mask()) > 0
    run = reference_run(editor, _photo(shared_images), mask, cfg, torch.device("cpu"))
    assert isinstance(run, LoopRun) and type(run.pipe).__name__ == "Flux2KleinPipeline"
    assert bb.reference_pipeline == "Flux2KleinInpaintPipeline"
    ref = run.edit(4, output_type="latent").images  # unfolded, the batch norm undone
    torch.testing.assert_close(unfold(ours * std + mean), ref, atol=2e-4, rtol=1e-4)
    run.pipe.scheduler = NoiseLevelOff.from_config(bb.scheduler.config)
    with pytest.raises(AssertionError):
        off = run.edit(4, output_type="latent").images
        torch.testing.assert_close(unfold(ours * std + mean), off, atol=2e-4, rtol=1e-4)
