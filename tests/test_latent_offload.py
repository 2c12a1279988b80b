"""Memory on smaller GPUs: ``--offload model|sequential`` (accelerate hooks move each component or
layer to the execution device only while it runs), and a model too large for the device is one
line. Run here with the CPU as the execution device: the hooks and device handling are the same
code path; what changes on a GPU is only where the weights wait."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.methods import place


def _inputs(shared_images):
    photo = Image.open(shared_images / "chelsea.png").convert("RGB").resize((96, 64))
    m = np.zeros((64, 96), np.uint8)
    m[16:48, 24:72] = 255
    return photo, Image.fromarray(m)


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_edit_equals_the_plain_one(tiny_sd_dir, shared_images, mode):
    photo, mask = _inputs(shared_images)
    call = {"seeds": [3], "num_inference_steps": 3, "rank": False, "region": "full"}
    plain = BlendedLatentDiffusion.from_pretrained(tiny_sd_dir, clip_model=None)
    ref = plain(photo, mask, "a red flower", **call).candidates[0]
    off = BlendedLatentDiffusion.from_pretrained(tiny_sd_dir, clip_model=None)
    off.enable_offload(mode, "cpu")
    assert hasattr(off.unet, "_hf_hook") and off.backbone.offload == mode
    got = off(photo, mask, "a red flower", **call).candidates[0]
    assert torch.equal(got.latent, ref.latent)
    assert np.array_equal(np.asarray(got.image), np.asarray(ref.image))


def test_a_model_too_large_is_one_line(tiny_sd_dir, monkeypatch):
    editor = BlendedLatentDiffusion.from_pretrained(tiny_sd_dir, clip_model=None)

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(editor, "to", no_room)
    with pytest.raises(InputError) as err:
        place(editor, "cuda", torch.float32, None)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("device: the model's weights (")
    assert "--offload model" in msg and "--dtype fp16" in msg


def test_offload_and_no_t5_are_latent_flags(tiny_sd_dir, shared_images, tmp_path, capsys):
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    for img, path in zip(_inputs(shared_images), (photo, mask), strict=True):
        img.save(path)
    argv = ["edit", str(photo), "--mask", str(mask), "--prompt", "x", "--model", str(tiny_sd_dir)]
    assert main([*argv, "--no-t5", "--device", "cpu"]) == 2
    assert "t5: --no-t5 applies to SD3 models, not sd" in capsys.readouterr().err
    assert main([*argv, "--method", "pixel", "--offload", "model"]) == 2
    assert "offload: applies to --method latent only" in capsys.readouterr().err
