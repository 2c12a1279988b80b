"""ADM UNet: config, key layout and numerical parity with guided-diffusion's reference outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from blendedit.errors import InputError
from blendedit.pixel.adm import (
    ADM256_UNCOND,
    ADM512_COND,
    ADMConfig,
    ADMUNet,
    AttentionBlock,
    load_adm,
)

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
pytestmark = pytest.mark.skipif(not REF.is_dir(), reason=f"ADM reference data not found at {REF}")


@pytest.fixture(scope="module")
def tiny_json() -> dict:
    return json.loads((REF / "tiny_adm_config.json").read_text())


@pytest.fixture(scope="module")
def tiny_cfg() -> ADMConfig:
    return ADMConfig.from_json(REF / "tiny_adm_config.json")


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg: ADMConfig) -> ADMUNet:
    return load_adm(REF / "tiny_adm.safetensors", tiny_cfg)


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny_adm_io.safetensors"))


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# -- config ----------------------------------------------------------------------------------------


def test_config_from_json_matches_kwargs(tiny_cfg: ADMConfig, tiny_json: dict) -> None:
    kwargs = tiny_json["create_model_and_diffusion_kwargs"]
    assert tiny_cfg.to_dict() == {k: kwargs[k] for k in tiny_cfg.to_dict()}
    assert tiny_cfg == ADMConfig.from_dict(kwargs)  # flat dict too
    resolved = tiny_json["resolved"]
    assert list(tiny_cfg.channel_mults) == resolved["channel_mult"]
    assert sorted(tiny_cfg.attention_ds) == resolved["attention_downsample_factors"]
    assert tiny_cfg.out_channels == resolved["out_channels"]


def test_preset_equals_reference_config() -> None:
    ref = json.loads((REF / "adm256_uncond_state_dict_shapes.json").read_text())
    assert ADMConfig.from_dict(ref["config"]) == ADM256_UNCOND
    assert list(ADM256_UNCOND.channel_mults) == ref["resolved"]["channel_mult"]
    assert sorted(ADM256_UNCOND.attention_ds) == ref["resolved"]["attention_downsample_factors"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"class_cond": True, "num_classes": 10}, "num_classes"),
        ({"use_new_attention_order": True}, "use_new_attention_order"),
        ({"num_channels": "wide"}, "num_channels"),
        ({"learn_sigma": "maybe"}, "learn_sigma"),
        ({"image_size": 32, "channel_mult": ""}, "channel_mult"),
        ({"attention_resolutions": "16,x"}, "attention_resolutions"),
        ({"timestep_respacing": "ddim7x"}, "timestep_respacing"),
        ({"noise_schedule": "quadratic"}, "noise_schedule"),
        ({"num_channls": 64}, "num_channls"),
    ],
)
def test_config_bad_values_raise_one_line(changes: dict, words: str) -> None:
    data = {**ADM256_UNCOND.to_dict(), **changes}
    with pytest.raises(InputError) as err:
        ADMConfig.from_dict(data)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_config_coercion_and_ignored_keys() -> None:
    data = {**ADM256_UNCOND.to_dict(), "attention_resolutions": "32, 16, 8", "use_fp16": "True"}
    cfg = ADMConfig.from_dict({**data, "timestep_respacing": 100, "clip_denoised": False})
    assert cfg.use_fp16 is True and cfg.timestep_respacing == "100"
    assert cfg.attention_ds == ADM256_UNCOND.attention_ds


# -- key layout -------------------------------------------------------------------------------------


def test_tiny_keys_shapes_and_heads(tiny_cfg: ADMConfig, tiny_json: dict) -> None:
    with torch.device("meta"):
        model = ADMUNet(tiny_cfg)
    sd = model.state_dict()
    assert list(sd) == tiny_json["state_dict_keys_in_order"]
    assert {k: list(v.shape) for k, v in sd.items()} == tiny_json["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == tiny_json["total_params"]
    heads = {n: m.num_heads for n, m in model.named_modules() if isinstance(m, AttentionBlock)}
    assert heads == {
        k: v["num_heads"] for k, v in tiny_json["resolved"]["attention_blocks"].items()
    }


def test_adm256_keys_shapes_on_meta_device() -> None:
    ref = json.loads((REF / "adm256_uncond_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        model = ADMUNet(ADM256_UNCOND)
    assert all(p.is_meta for p in model.parameters()) and not list(model.buffers())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == ref["num_keys"] == 566
    assert list(shapes) == list(ref["state_dict_shapes"])
    assert shapes == ref["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == ref["total_params"] == 552_814_086
    heads = {n: m.num_heads for n, m in model.named_modules() if isinstance(m, AttentionBlock)}
    assert heads == {k: v["num_heads"] for k, v in ref["resolved"]["attention_blocks"].items()}


def test_adm512_classcond_keys_shapes_on_meta_device() -> None:
    """512x512_diffusion.pt's state dict, key for key, from guided-diffusion's own model built with
    the README's 512 flags (``adm512_cond_state_dict_shapes.json``): the 256 layout plus one more
    level (channel_mult 0.5,1,1,2,2,4,4: 128 channels at 512 px), attention at 32, 16 and 8 px
    (downsampling 16, 32, 64) and ``label_emb.weight`` (1000, 1024) after ``time_embed``."""
    ref = json.loads((REF / "adm512_cond_state_dict_shapes.json").read_text())
    published = ADMConfig.from_dict(ref["config"])  # the README flags, guided-diffusion defaults
    blended = dataclasses.replace(published, timestep_respacing="100", rescale_timesteps=True)
    assert blended == ADM512_COND  # plus Blended Diffusion's respacing
    assert list(ADM512_COND.channel_mults) == ref["resolved"]["channel_mult"] == [
        0.5, 1, 1, 2, 2, 4, 4,
    ]  # fmt: skip
    assert sorted(ADM512_COND.attention_ds) == ref["resolved"]["attention_downsample_factors"]
    assert ADM512_COND.num_classes == ref["resolved"]["num_classes"] == 1000
    with torch.device("meta"):
        model = ADMUNet(ADM512_COND)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == ref["num_keys"] == 645
    assert list(shapes) == list(ref["state_dict_shapes"])  # the order too
    assert shapes == ref["state_dict_shapes"]
    assert list(shapes)[4] == "label_emb.weight" and shapes["label_emb.weight"] == [1000, 1024]
    assert shapes["input_blocks.0.0.weight"] == [128, 3, 3, 3]
    assert sum(p.numel() for p in model.parameters()) == ref["total_params"] == 558_997_638
    heads = {n: m.num_heads for n, m in model.named_modules() if isinstance(m, AttentionBlock)}
    assert heads == {k: v["num_heads"] for k, v in ref["resolved"]["attention_blocks"].items()}
    # A state dict of exactly those names and shapes (no data: meta tensors) loads strictly.
    state = {k: torch.empty(s, device="meta") for k, s in ref["state_dict_shapes"].items()}
    model.load_state_dict(state, strict=True, assign=True)
    with torch.device("meta"):
        uncond = ADMUNet(ADM256_UNCOND)
    with pytest.raises(RuntimeError, match="label_emb"):  # the 256 model has no class embedding
        uncond.load_state_dict(state, strict=True, assign=True)


# -- parity ---------------------------------------------------------------------------------------


def test_unet_output_matches_reference(tiny_model: ADMUNet, io: dict) -> None:
    with torch.no_grad():
        out = tiny_model(io["x"], io["unet_timesteps"])
    assert out.shape == (2, 6, 32, 32) and out.dtype == torch.float32
    assert _max_err(out, io["model_output"]) <= 1e-5


def test_unet_passes_gradients_to_input(tiny_model: ADMUNet, io: dict) -> None:
    x = io["x"][:1].clone().requires_grad_()
    tiny_model(x, io["unet_timesteps"][:1]).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in tiny_model.parameters())


def test_conv_resampling_and_fixed_sigma_variant_runs() -> None:
    cfg = ADMConfig(
        image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
        attention_resolutions="16", resblock_updown=False, use_scale_shift_norm=False,
    )  # fmt: skip
    model = ADMUNet(cfg)
    keys = model.state_dict().keys()
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.2.conv.weight" in keys
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32), torch.tensor([5.0])).shape == (1, 3, 32, 32)


# -- loading --------------------------------------------------------------------------------------


def test_load_through_pt_file(tmp_path: Path, tiny_cfg: ADMConfig, io: dict) -> None:
    path = tmp_path / "tiny_adm.pt"
    torch.save(load_file(str(REF / "tiny_adm.safetensors")), path)
    model = load_adm(path, tiny_cfg)
    assert not any(p.is_meta for p in model.parameters()) and not model.training
    with torch.no_grad():
        assert _max_err(model(io["x"], io["unet_timesteps"]), io["model_output"]) <= 1e-5


def test_bad_checkpoints_raise_one_line(tmp_path: Path, tiny_cfg: ADMConfig) -> None:
    state = load_file(str(REF / "tiny_adm.safetensors"))
    missing = dict(state)
    del missing["out.2.bias"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    shaped = {**state, "out.2.bias": torch.zeros(5)}
    save_file(shaped, str(tmp_path / "shaped.safetensors"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    cases = {
        "missing.safetensors": "out.2.bias",
        "shaped.safetensors": "out.2.bias",
        "garbage.pt": "garbage.pt",
        "absent.pt": "absent.pt",
    }
    for name, words in cases.items():
        with pytest.raises(InputError) as err:
            load_adm(tmp_path / name, tiny_cfg)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(InputError, match="does not fit the config: missing input_blocks"):
        load_adm(REF / "tiny_adm.safetensors", dataclasses.replace(tiny_cfg, num_res_blocks=2))


@pytest.mark.slow
def test_full_size_checkpoint_loads_key_for_key_with_one_copy(tmp_path: Path) -> None:
    """A .pt file with exactly the official 256x256 model's 566 keys and shapes (2.2 GB of float32)
    loads strictly, and the process's peak memory stays below 1.5 copies of the weights: the
    module is built on the meta device and takes the loaded tensors over, no second allocation."""
    import subprocess
    import sys

    ref = json.loads((REF / "adm256_uncond_state_dict_shapes.json").read_text())
    path = tmp_path / "adm256.pt"
    state = {k: torch.zeros(shape) for k, shape in ref["state_dict_shapes"].items()}
    torch.save(state, path)
    del state
    code = (
        "import resource, sys, torch\n"
        "from blendedit.pixel.adm import ADM256_UNCOND, load_adm\n"
        "m = load_adm(sys.argv[1], ADM256_UNCOND)\n"
        "sum_ = sum(float(p.sum()) for p in m.parameters())  # touch every weight\n"
        "print(sum(p.numel() for p in m.parameters()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    numel, maxrss_kb = map(int, proc.stdout.split()[-2:])
    assert numel == ref["total_params"] == 552_814_086
    weights = numel * 4
    assert maxrss_kb * 1024 < 1.5 * weights
