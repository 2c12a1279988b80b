"""Round trip of tests/original_checkpoint.py through diffusers' own single-file loader.

A tiny diffusers folder is written as an original-layout (A1111/ComfyUI) checkpoint; diffusers'
``from_single_file`` must load every UNet, VAE and text encoder tensor back bit for bit, from a
config-only copy of the folder (so no weight can come from the folder itself), and its model-type
detection must name the family.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file
from transformers import CLIPTextModel

from original_checkpoint import unet_to_original, write_original_checkpoint
from tiny_models import tiny_scheduler, tiny_text_config, tiny_tokenizer, tiny_vae

SD2_TEXT_HIDDEN = 1024  # diffusers calls a checkpoint "v2" only for a 1024-wide cross-attention


@pytest.fixture(scope="module")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SD 2.x-shaped tiny model: OpenCLIP-like text encoder (GELU, width 1024), linear
    projections in the transformers, cross-attention in the first level, v-prediction."""
    root = tmp_path_factory.mktemp("sd2")
    torch.manual_seed(0)
    cfg = tiny_text_config()
    cfg.hidden_size = SD2_TEXT_HIDDEN
    cfg.intermediate_size = 64
    cfg.num_attention_heads = 16
    cfg.hidden_act = "gelu"
    unet = UNet2DConditionModel(
        sample_size=16,
        layers_per_block=2,  # the "v2" probe key lives in input_blocks.2.1 (level 0, layer 1)
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=SD2_TEXT_HIDDEN,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(cfg).eval(),
        tokenizer=tiny_tokenizer(root / "vocab"),
        unet=unet.eval(),
        scheduler=tiny_scheduler("v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "tiny-sd2")
    return root / "tiny-sd2"


def _config_only(folder: Path, dest: Path) -> Path:
    """A copy of a diffusers folder without its weight files."""
    return Path(
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    )


def _assert_same_weights(name: str, loaded: torch.nn.Module, saved: torch.nn.Module) -> None:
    got, want = loaded.state_dict(), saved.state_dict()
    assert sorted(got) == sorted(want), f"{name}: different parameter names"
    for key, value in want.items():
        assert got[key].device.type != "meta", f"{name}.{key} was never loaded"
        assert torch.equal(got[key], value), f"{name}.{key} differs"


FAMILIES = {
    # family: (pipeline class, folder fixture, diffusers' model type, components)
    "sd1": (StableDiffusionPipeline, "tiny_sd_dir", "v1", ("unet", "vae", "text_encoder")),
    "sd2": (StableDiffusionPipeline, "tiny_sd2_dir", "v2", ("unet", "vae", "text_encoder")),
    "sdxl": (
        StableDiffusionXLPipeline,
        "tiny_sdxl_dir",
        "xl_base",
        ("unet", "vae", "text_encoder", "text_encoder_2"),
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_through_from_single_file(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pipeline_cls, fixture, model_type, components = FAMILIES[family]
    folder: Path = request.getfixturevalue(fixture)
    out = write_original_checkpoint(folder, tmp_path / "model.safetensors", family)

    state = load_file(str(out))
    assert infer_diffusers_model_type(state) == model_type

    kw = {"safety_checker": None, "requires_safety_checker": False} if family != "sdxl" else {}
    loaded = pipeline_cls.from_single_file(
        str(out), config=str(_config_only(folder, tmp_path / "config")), local_files_only=True, **kw
    )
    saved = pipeline_cls.from_pretrained(folder, local_files_only=True, **kw)
    for name in components:
        _assert_same_weights(name, getattr(loaded, name), getattr(saved, name))


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_blendedit_loads_original_checkpoint(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """blendedit's own single-file path (``--model file.safetensors --model-config folder``)."""
    from blendedit.models import load_sd_components

    _, fixture, _, _ = FAMILIES[family]
    folder: Path = request.getfixturevalue(fixture)
    out = write_original_checkpoint(folder, tmp_path / "model.safetensors", family)
    parts = load_sd_components(out, config=str(_config_only(folder, tmp_path / "config")))
    saved = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(name, getattr(parts, name), getattr(saved, name))


def test_layout_details(tiny_sd2_dir: Path, tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    """The parts diffusers reshapes or fuses, checked against the folder directly."""
    sd2 = load_file(str(write_original_checkpoint(tiny_sd2_dir, tmp_path / "a.safetensors", "sd2")))
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd2_dir, safety_checker=None, requires_safety_checker=False
    )
    attn = pipe.vae.decoder.mid_block.attentions[0]
    q = sd2["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert q.shape == (*attn.to_q.weight.shape, 1, 1)  # 1x1 conv [out, in, 1, 1]
    assert torch.equal(q[:, :, 0, 0], attn.to_q.weight)
    layer = pipe.text_encoder.state_dict()
    prefix = "encoder.layers.1.self_attn."
    if f"text_model.{prefix}q_proj.weight" in layer:
        prefix = "text_model." + prefix
    fused = sd2["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert fused.shape == (3 * SD2_TEXT_HIDDEN, SD2_TEXT_HIDDEN)
    assert torch.equal(fused, torch.cat([layer[f"{prefix}{p}_proj.weight"] for p in "qkv"], dim=0))
    # SD 2 up level 0 has no attention: its upsampler follows the last ResBlock directly
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in sd2

    xl = load_file(
        str(write_original_checkpoint(tiny_sdxl_dir, tmp_path / "b.safetensors", "sdxl"))
    )
    xl_pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    add = xl_pipe.unet.add_embedding
    assert torch.equal(xl["model.diffusion_model.label_emb.0.0.weight"], add.linear_1.weight)
    assert torch.equal(xl["model.diffusion_model.label_emb.0.2.bias"], add.linear_2.bias)
    proj = xl["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(proj, xl_pipe.text_encoder_2.text_projection.weight.T)  # [width, embed]
    # SDXL up level 0 has attention: its upsampler comes after the transformer
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in xl


def test_sd1_block_arrangement_unet_round_trip() -> None:
    """SD 1.x's real arrangement (4 levels, attention in the first three, 2 layers per level)
    carries diffusers' "v1" probe key output_blocks.11.0.skip_connection, and diffusers' UNet
    converter inverts the mapping exactly; the tiny SD folder is too shallow for either."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=2,
    )
    state = unet.state_dict()
    ckpt = {
        f"model.diffusion_model.{k}": v for k, v in unet_to_original(state, unet.config).items()
    }
    assert len(ckpt) == len(state)
    assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in ckpt
    assert infer_diffusers_model_type(ckpt) == "v1"
    back = convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_refuses_unknown_family_and_existing_file(tiny_sd_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family: unknown 'sd3'"):
        write_original_checkpoint(tiny_sd_dir, tmp_path / "x.safetensors", "sd3")
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not overwriting"):
        write_original_checkpoint(tiny_sd_dir, out, "sd1")
    assert out.read_bytes() == b"user data"
