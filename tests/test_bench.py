"""``blendedit bench``: full-size presets match the published models; the tiny CPU runs measure
every stage next to diffusers' inpaint pipeline of each family; the report is appended, never
overwritten."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from blendedit.bench import (
    ARCHITECTURES,
    append_report,
    build_backbone,
    run_bench,
    unet_flops,
)
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.latent.backbones import FAMILIES
from blendedit.latent.backbones.common import special_tokens as _special_tokens

# Parameter counts of the published checkpoints, per part (the diffusers / transformers folders:
# sum of the tensors in each part's weights file; SDXL: Podell et al. 2023 give "2.6B" for the UNet).
SD_VAE = 83_653_863  # the KL-f8 autoencoder: SD 1.x/2.x, SDXL (same shape), the CompVis LDM
CLIP_L = 123_060_480  # openai/clip-vit-large-patch14 text model (SD 1.x, SDXL text_encoder)
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": SD_VAE, "text_encoder": CLIP_L},
    "sd2-base": {"unet": 865_910_724, "vae": SD_VAE, "text_encoder": 340_387_840},
    "sd2": {"unet": 865_910_724, "vae": SD_VAE, "text_encoder": 340_387_840},
    # stabilityai/stable-diffusion-xl-base-1.0: unet/, text_encoder/ (CLIP-L), text_encoder_2/
    # (OpenCLIP bigG with projection), vae/
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": SD_VAE,
        "text_encoder": CLIP_L,
        "text_encoder_2": 694_659_840,
    },
}
# CompVis/ldm-text2im-large-256 (Rombach et al. 2022, "LDM-KL-8-G", the BLD paper's model): the
# published 1.45B is the UNet plus the LDMBert text encoder (its to_logits head included, as in
# the original x-transformers checkpoint); the KL-f8 autoencoder comes on top.
LDM_UNET, LDM_BERT = 872_300_484, 581_994_042
LDM_PUBLISHED = 1.45e9
CLIP_B16_PARAMS = 149_620_737
# Rectified-flow models (diffusers folders stabilityai/stable-diffusion-3.5-medium / -large,
# black-forest-labs/FLUX.1-dev / -schnell): the 16-channel VAE, CLIP-L with projection (SD3) or
# without (FLUX), CLIP-G with projection (= SDXL's text_encoder_2), T5-XXL's encoder
# (google/t5-v1_1-xxl, "4.7B"), and the transformers as built here.
FLOW_VAE = 83_819_683
CLIP_L_PROJ, CLIP_G = 123_650_304, 694_659_840
T5_XXL = 4_762_310_656
SD3 = {"vae": FLOW_VAE, "text_encoder": CLIP_L_PROJ, "text_encoder_2": CLIP_G}
FLOW_PUBLISHED = {
    "sd35-medium": {**SD3, "unet": 2_243_171_520, "text_encoder_3": T5_XXL},
    "sd35-large": {**SD3, "unet": 8_056_627_520, "text_encoder_3": T5_XXL},
    "flux-dev": {"vae": FLOW_VAE, "unet": 11_901_408_320, "text_encoder": CLIP_L,
                 "text_encoder_2": T5_XXL},
    "flux-schnell": {"vae": FLOW_VAE, "unet": 11_891_178_560, "text_encoder": CLIP_L,
                     "text_encoder_2": T5_XXL},
}  # fmt: skip
# The published sizes: SD3.5 Medium "2.5B" and Large "8.1B" (Stability AI's model cards) count
# the MMDiT's learned position table, a buffer in diffusers (384^2 x 1536, 192^2 x 2432);
# FLUX.1 "12B" (Black Forest Labs; 11.9B). T5-XXL's encoder: 4,762,310,656 ("4.76B").
MMDIT_PUBLISHED = {"sd35-medium": 2.5e9, "sd35-large": 8.1e9}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def meta_backbones(tmp_path_factory):
    """Every full-size preset built on the meta device: shapes only, nothing is allocated."""
    tmp = tmp_path_factory.mktemp("tok")
    names = ["sd15", "sd2-base", "sd2", "sdxl", "ldm-1.45b", "sdxl-turbo", *FLOW_PUBLISHED]
    return {n: build_backbone(ARCHITECTURES[n], "meta", tmp) for n in names}


@pytest.mark.parametrize("name", ["sd15", "sd2-base", "sd2", "sdxl"])
def test_presets_are_the_published_architectures(name, meta_backbones):
    backbone = meta_backbones[name]
    assert backbone.family == ARCHITECTURES[name].family
    counts = {k: _count(m) for k, m in backbone.modules().items()}
    assert counts == PUBLISHED[name]
    v = "v_prediction" if name == "sd2" else "epsilon"  # SD 2.1 (768) predicts v
    assert backbone.scheduler.config.prediction_type == v


@pytest.mark.parametrize("name", list(FLOW_PUBLISHED))
def test_flow_presets_are_the_published_architectures(name, meta_backbones):
    backbone = meta_backbones[name]
    arch = ARCHITECTURES[name]
    assert backbone.family == arch.family == name.split("-")[0].replace("sd35", "sd3")
    counts = {k: _count(m) for k, m in backbone.modules().items()}
    assert counts == FLOW_PUBLISHED[name]
    assert backbone.native_size == arch.resolution == 1024
    assert type(backbone.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert backbone.vae.config.latent_channels == 16
    if arch.family == "sd3":
        pos = backbone.unet.pos_embed.pos_embed.numel()  # the learned position table
        assert round((counts["unet"] + pos) / 1e9, 1) == MMDIT_PUBLISHED[name] / 1e9
        assert backbone.scheduler.config.shift == 3.0
        assert (backbone.vae.config.scaling_factor, backbone.vae.config.shift_factor) == (
            1.5305,
            0.0609,
        )
    else:
        assert round(counts["unet"] / 1e9, 1) == 11.9 and backbone.is_dev == (name == "flux-dev")
        dynamic = backbone.scheduler.config.use_dynamic_shifting
        assert dynamic == backbone.is_dev and arch.realtime == (
            None if dynamic else "realtime-schnell"
        )
        assert (backbone.vae.config.scaling_factor, backbone.vae.config.shift_factor) == (
            0.3611,
            0.1159,
        )


def test_sdxl_turbo_is_sdxl_at_512_with_trailing_euler_a(meta_backbones):
    turbo, arch = meta_backbones["sdxl-turbo"], ARCHITECTURES["sdxl-turbo"]
    counts = {k: _count(m) for k, m in turbo.modules().items()}
    assert counts == PUBLISHED["sdxl"]  # the same networks as SDXL base
    assert turbo.native_size == arch.resolution == 512
    assert type(turbo.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert turbo.scheduler.config.timestep_spacing == "trailing"
    assert arch.realtime == "realtime-sdxl-turbo" and arch.batch == 8


@pytest.mark.parametrize(("preset", "parts"), [("tiny-sd3", "tiny_sd3_parts"),
                                               ("tiny-flux", "tiny_flux_parts")])  # fmt: skip
def test_tiny_flow_presets_are_the_test_suites_models(preset, parts, tmp_path):
    """bench cannot import tests/: its tiny flow presets copy tests/tiny_models.py's configs."""
    import tiny_models

    kw = {"dev": False} if preset == "tiny-flux" else {}
    ours = build_backbone(ARCHITECTURES[preset], "cpu", tmp_path / "a").modules()
    theirs = getattr(tiny_models, parts)(tmp_path / "b", **kw)
    for name, module in ours.items():
        ref = theirs["transformer" if name == "unet" else name]
        assert _count(module) == _count(ref), name
        keys = ("patch_size", "num_layers", "attention_head_dim", "latent_channels", "d_model")
        for k in keys:
            assert getattr(module.config, k, None) == getattr(ref.config, k, None), (name, k)


def test_sdxl_preset_is_sdxl_base(meta_backbones):
    sdxl = meta_backbones["sdxl"]
    assert sdxl.native_size == 1024 and ARCHITECTURES["sdxl"].resolution == 1024
    assert sdxl.vae.config.scaling_factor == 0.13025 and sdxl.vae.config.force_upcast
    assert not sdxl.requires_aesthetics_score  # base: 6 time ids, not the refiner's 5
    assert type(sdxl.scheduler).__name__ == "EulerDiscreteScheduler"
    # Podell et al. 2023, Table 1: a 2.6B UNet, 817M parameters in the two text encoders.
    text = _count(sdxl.text_encoder) + _count(sdxl.text_encoder_2)
    assert round(_count(sdxl.unet) / 1e9, 1) == 2.6 and text // 10**6 == 817


def test_ldm_preset_is_the_papers_1_45b_model(meta_backbones):
    ldm = meta_backbones["ldm-1.45b"]
    arch = ARCHITECTURES["ldm-1.45b"]
    unet, bert, vae = (_count(ldm.modules()[k]) for k in ("unet", "text_encoder", "vae"))
    assert (unet, bert, vae) == (LDM_UNET, LDM_BERT, SD_VAE)
    assert unet + bert == 1_454_294_526
    assert round((unet + bert) / 1e9, 2) == LDM_PUBLISHED / 1e9  # "1.45B"
    assert type(ldm.text_encoder).__name__ == "LDMBertModel"
    assert ldm.native_size == arch.resolution == 256 and arch.batch == 24  # paper, Table 2
    assert ldm.tokenizer("a vase of red roses").input_ids[-1] < ldm.text_encoder.config.vocab_size


def test_ranking_model_is_clip_b16():
    clip = ARCHITECTURES["sd2-base"].clip
    with torch.device("meta"):
        model = CLIPModel(
            CLIPConfig(
                text_config=_special_tokens(clip["text"]),
                vision_config=clip["vision"],
                projection_dim=clip["projection_dim"],
            )
        )
    assert _count(model) == CLIP_B16_PARAMS


def test_every_preset_has_a_family_builder():
    assert {a.family for a in ARCHITECTURES.values()} <= set(FAMILIES)
    for name in ("sdxl", "ldm-1.45b", "sd35-medium", "flux-schnell"):  # each runs tiny on a CPU
        assert f"tiny-{ARCHITECTURES[name].family}" in ARCHITECTURES


def test_unet_flops_match_the_spec(meta_backbones, monkeypatch):
    """SPEC 4: one SD 1.x/2.x UNet forward at a 64x64 latent is about 0.80 TFLOP; guidance doubles
    it."""
    equal = torch.equal  # meta tensors hold no values: prompt and negative count as different
    monkeypatch.setattr(torch, "equal", lambda a, b: False if a.is_meta else equal(a, b))
    flops = unet_flops(meta_backbones["sd2-base"], 1, (64, 64))
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


@pytest.mark.parametrize(
    ("preset", "dtype", "reference"),
    [
        # the path of `--preset sdxl --dtype bf16` on a GPU: bf16 editor, diffusers' SDXL pipeline
        ("tiny-sdxl", torch.bfloat16, "StableDiffusionXLInpaintPipeline"),
        # LDMBert embeddings into diffusers' SD inpaint pipeline (it cannot tokenize for LDMBert)
        ("tiny-ldm", torch.float32, "StableDiffusionInpaintPipeline"),
        # blendedit's own SD3 / FLUX embeddings into diffusers' pipelines of the families
        ("tiny-sd3", torch.float32, "StableDiffusion3InpaintPipeline"),
        ("tiny-flux", torch.float32, "FluxInpaintPipeline"),
    ],
)
def test_tiny_family_bench_runs_against_its_reference(preset, dtype, reference, monkeypatch):
    import blendedit.bench.reference as bench

    seen = []
    real = bench.DiffusersRun.__init__

    def spy(self, editor, *args, **kwargs):
        real(self, editor, *args, **kwargs)
        seen.append((type(self.pipe).__name__, editor.dtype))

    monkeypatch.setattr(bench.DiffusersRun, "__init__", spy)
    res = run_bench(preset, "cpu", dtype, batch=2, steps=4, repeats=1)
    assert seen == [(reference, dtype)]
    assert res.family == ARCHITECTURES[preset].family and res.dtype == str(dtype)[6:]
    assert res.steps_run == 3 and res.unet_tflop_per_step > 0
    assert res.diffusers_per_step_ms > 0 and res.per_step_ratio_vs_diffusers > 0


@pytest.mark.parametrize(
    ("preset", "reference"), [("tiny-krea2", "Krea2Pipeline"), ("tiny-flux2-dev", "Flux2Pipeline")]
)
def test_family_without_inpaint_pipeline_bench_times_its_own_loop(preset, reference, monkeypatch):
    """Krea 2 and FLUX.2 [dev] have no diffusers inpaint pipeline: ``blendedit bench`` compares
    against their text-to-image pipeline's own loop with diffusers' blend (``LoopRun``, built
    from the backbone's components; tests/test_latent_2026.py shows it is the same work)."""
    import blendedit.bench.reference as bench

    seen = []
    real = bench.reference_run

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        seen.append((type(run).__name__, type(run.pipe).__name__))
        return run

    monkeypatch.setattr(bench, "reference_run", spy)
    res = run_bench(preset, "cpu", torch.float32, batch=2, steps=4, repeats=1)
    assert seen == [("LoopRun", reference)] and res.family == ARCHITECTURES[preset].family
    assert res.diffusers_per_step_ms > 0 and res.per_step_ratio_vs_diffusers > 0


def test_realtime_bench_times_a_ranked_batch_of_8(tmp_path, capsys, monkeypatch):
    """`--realtime`: the architecture's few-step preset (FLUX.1-schnell: realtime-schnell, flow
    Euler, 4 steps of which 3 run, no guidance), 8 candidates ranked, the warm time reported."""
    import blendedit.latent.pipeline as pipeline

    ranked = []
    real = pipeline.BlendedLatentDiffusion.__call__

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        scores = out.scores  # best first: ranked by CLIP
        ok = None not in scores and scores == sorted(scores, reverse=True)
        ranked.append((len(scores), ok, kwargs["config"].guidance_scale))
        return out

    monkeypatch.setattr(pipeline.BlendedLatentDiffusion, "__call__", spy)
    report = tmp_path / "b.md"
    args = ["bench", "--preset", "tiny-flux", "--realtime", "--device", "cpu", "--repeats", "1"]
    assert main([*args, "--no-diffusers", "--report", str(report)]) == 0
    assert ranked and all(r == (8, True, 1.0) for r in ranked)
    row = json.loads(report.with_suffix(".json").read_text())[0]
    assert row["realtime"] == "realtime-schnell" and row["batch"] == 8 and row["steps_run"] == 3
    assert row["scheduler"] == "flow-euler" and row["total_s"] > 0
    line = "Time to a ranked batch of 8 (tiny-flux, realtime-schnell: flow-euler"
    assert line in capsys.readouterr().out and line in report.read_text()
    with pytest.raises(InputError, match="'tiny-sd3' has no realtime preset"):
        run_bench("tiny-sd3", "cpu", torch.float32, realtime=True)


def test_cli_bench_runs_a_family_preset(tmp_path, capsys):
    report = tmp_path / "b.md"
    args = ["bench", "--preset", "tiny-sdxl", "--device", "cpu", "--steps", "2"]
    args += ["--repeats", "1", "--no-diffusers", "--batch", "1", "--report", str(report)]
    assert main(args) == 0
    assert "| tiny-sdxl | CPU" in capsys.readouterr().out
    assert json.loads(report.with_suffix(".json").read_text())[0]["family"] == "sdxl"
    assert ARCHITECTURES["sdxl"].batch == 4  # the official SDXL script's, unless --batch


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
