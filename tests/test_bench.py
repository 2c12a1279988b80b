"""``blendedit bench``: full-size presets match the published models; the tiny CPU run measures
every stage next to diffusers; the report is appended, never overwritten."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from blendedit.bench import ARCHITECTURES, _special_tokens, append_report, run_bench, unet_flops

# Parameter counts of the published checkpoints (diffusers / transformers folders).
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480},
    "sd2-base": {"unet": 865_910_724, "vae": 83_653_863, "text": 340_387_840},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text": 340_387_840},
}
CLIP_B16_PARAMS = 149_620_737


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["sd15", "sd2-base", "sd2"])
def test_presets_are_the_published_architectures(name):
    arch = ARCHITECTURES[name]
    with torch.device("meta"):  # shapes only: nothing is allocated
        unet = UNet2DConditionModel(**arch.unet)
        vae = AutoencoderKL(**arch.vae)
        text = CLIPTextModel(CLIPTextConfig(**_special_tokens(arch.text)))
        clip = CLIPModel(
            CLIPConfig(
                text_config=_special_tokens(arch.clip["text"]),
                vision_config=arch.clip["vision"],
                projection_dim=512,
            )
        )
    assert {"unet": _count(unet), "vae": _count(vae), "text": _count(text)} == PUBLISHED[name]
    assert _count(clip) == CLIP_B16_PARAMS


def test_unet_flops_match_the_spec():
    """SPEC 4: one SD 1.x/2.x UNet forward at a 64x64 latent is about 0.80 TFLOP; guidance doubles it."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ARCHITECTURES["sd2-base"].unet)

    class Meta:
        device, dtype = torch.device("meta"), torch.float32

    editor = Meta()
    editor.unet = unet
    flops = unet_flops(editor, batch=1, latent_hw=(64, 64))
    assert flops == pytest.approx(2 * 0.804e12, rel=0.01)


def test_tiny_cpu_bench_measures_every_stage_and_diffusers(tmp_path):
    res = run_bench("tiny", "cpu", torch.float32, batch=2, steps=4, repeats=1)
    assert res.steps_run == 3 and res.batch == 2 and res.resolution == 128
    assert set(res.stages_s) >= {"encode", "denoise", "decode", "rank", "background"}
    assert res.total_s > 0 and res.per_step_ms > 0 and res.images_per_s > 0
    assert res.unet_tflop_per_step > 0 and res.unet_tflops > 0
    assert res.peak_fraction is None and res.peak_memory_gb is None  # CPU: no peak, no CUDA memory
    assert res.diffusers_total_s > 0 and res.diffusers_per_step_ms > 0
    assert res.speedup_vs_diffusers == pytest.approx(res.diffusers_total_s / res.total_s)
    report = tmp_path / "benchmarks.md"
    append_report([res], report, "blendedit bench --preset tiny")
    append_report([res], report, "blendedit bench --preset tiny")
    text = report.read_text()
    assert text.count("## ") == 2 and text.count("| tiny |") == 4  # two sections, nothing lost
    assert len(json.loads(report.with_suffix(".json").read_text())) == 2


def test_out_of_memory_halves_the_batch(editor, shared_images, monkeypatch):
    """A chunk that does not fit is retried in halves, never a crash; results are the same seeds."""
    real = type(editor).generate
    sizes = []

    def flaky(self, state, chunk, *args, **kwargs):
        sizes.append(len(chunk))
        if len(chunk) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, state, chunk, *args, **kwargs)

    monkeypatch.setattr(type(editor), "generate", flaky)
    r = editor(
        shared_images / "chelsea.png",
        shared_images / "chelsea.mask-eyes.png",
        "x",
        num_images=4,
        batch_size=4,
        num_inference_steps=2,
        size=64,
        rank=False,
    )
    assert r.seeds == [0, 1, 2, 3]
    assert sizes == [4, 2, 1, 1, 1, 1]


@pytest.mark.gpu
def test_denoising_loop_has_no_host_sync_on_the_gpu(tiny_sd_dir, shared_images):
    """With DDIM every per-step operation stays on the device: CUDA's sync debug mode raises on
    any synchronising call inside the loop."""
    from blendedit import BlendedLatentDiffusion
    from blendedit.latent import sampling

    editor = BlendedLatentDiffusion.from_pretrained(tiny_sd_dir, clip_model=None).to("cuda")
    real = sampling.blended_latent_diffusion

    def strict(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    import blendedit.latent.pipeline as pipeline

    pipeline.blended_latent_diffusion = strict
    try:
        editor(
            shared_images / "chelsea.png",
            shared_images / "chelsea.mask-eyes.png",
            "x",
            num_images=2,
            num_inference_steps=10,
            size=128,
            rank=False,
        )
    finally:
        pipeline.blended_latent_diffusion = real
