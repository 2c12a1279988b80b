"""Family detection from a single checkpoint's key names (read from the header, nothing loaded)
and from ``model_index.json``: each family, and the models that cannot blend, in one line."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from blendedit.errors import InputError
from blendedit.latent.backbones import detect_family, family_of_index

T = torch.zeros(1)
V = {"vector_in.in_layer.weight": T}  # FLUX.1's pooled CLIP-L input


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": T}, "sd"),
        ({"cond_stage_model.model.token_embedding.weight": T}, "sd"),
        ({"conditioner.embedders.1.model.token_embedding.weight": T}, "sdxl"),
        ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": T}, "sd3"),
        (
            {"double_blocks.0.img_attn.qkv.weight": T, "img_in.weight": torch.zeros(8, 64)} | V,
            "flux",
        ),
        (
            {"double_blocks.0.img_attn.qkv.weight": T, "img_in.weight": torch.zeros(8, 384)} | V,
            "flux",
        ),
        # the 2026 families' transformer files (issue 20; tests/test_single_file_2026.py)
        (
            {
                "double_blocks.0.img_attn.qkv.weight": T,
                "distilled_guidance_layer.in_proj.weight": T,
            },
            "chroma",
        ),
        (
            {
                "double_blocks.0.img_attn.qkv.weight": T,
                "double_stream_modulation_img.lin.weight": T,
            },
            "flux2-klein",
        ),
        (
            {"double_stream_modulation_img.lin.weight": T, "guidance_in.in_layer.weight": T},
            "flux2-dev",
        ),
    ],
)
def test_single_file_families(tmp_path, keys, family):
    path = tmp_path / "model.safetensors"
    save_file({k: v.clone() for k, v in keys.items()}, str(path))
    assert detect_family(path) == family


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 8, 1, 1),
                "cond_stage_model.model.token_embedding.weight": T,
            },
            "8-channel UNet",  # 4 (text-to-image) and 9 (inpainting) load (issue 19)
        ),
        ({"double_blocks.0.x": T, "img_in.weight": torch.zeros(8, 100)} | V, "taking 100 channels"),
        ({"some.other.weight": T}, "not a checkpoint blendedit recognises"),
    ],
)
def test_single_files_that_cannot_blend(tmp_path, keys, message):
    path = tmp_path / "model.safetensors"
    save_file({k: v.clone() for k, v in keys.items()}, str(path))
    with pytest.raises(InputError, match=re.escape(message)) as err:
        detect_family(path)
    assert "\n" not in str(err.value) and str(err.value).startswith("model: ")


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="not a readable checkpoint"):
        detect_family(path)


@pytest.mark.parametrize(
    ("cls", "family"),
    [
        ("StableDiffusionPipeline", "sd"),
        ("StableDiffusionXLPipeline", "sdxl"),
        ("LDMTextToImagePipeline", "ldm"),
        ("StableDiffusion3Pipeline", "sd3"),
        ("FluxPipeline", "flux"),
        ("FluxKontextPipeline", "flux-kontext"),
        ("FluxKontextInpaintPipeline", "flux-kontext"),
        ("FluxFillPipeline", "flux"),  # models trained for inpainting load (issue 19)
    ],
)
def test_model_index_families(cls, family, tmp_path):
    assert family_of_index({"_class_name": cls}, "m") == family
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    assert detect_family(tmp_path) == family


@pytest.mark.parametrize(
    ("cls", "message"),
    [("Foo", "Foo")],
)
def test_model_index_refusals(cls, message):
    with pytest.raises(InputError, match=message):
        family_of_index({"_class_name": cls}, "m")
