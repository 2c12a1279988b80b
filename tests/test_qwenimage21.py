"""Qwen-Image 2.1 (issue 20: latent/backbones/qwenimage21.py) on tiny random parts. Its
pipeline's Qwen3-VL processor needs torchvision, which this environment cannot have: blendedit
never builds it (the parts load one by one, the tokenizer from the processor folder), and the
reference pipeline here gets a stand-in processor (the byte-level Qwen tokenizer with the
processor's two methods the text-to-image path calls). What is not run: the real processor, image
conditioning (blendedit does not use it), a real checkpoint."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.bench import ARCHITECTURES
from blendedit.bench.build import build_backbone
from blendedit.latent.backbones import QwenImage21, detect_family, load_backbone
from blendedit.latent.backbones.qwenimage21 import SYSTEM
from test_latent_2026 import NoiseLevelOff

SIZE = (64, 48)  # (W, H) px: 16x12 latents at the tiny VAE's factor 4, one token each


class StandInProcessor:
    """What ``QwenImage21Pipeline`` calls of its ``Qwen3VLProcessor`` for text only: the
    tokenizer, the system message's tokens (``apply_chat_template``) and ``__call__``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, tokenize=True, return_dict=False):
        return [self.tokenizer(SYSTEM).input_ids]

    def __call__(self, text, padding=True, padding_side="left", return_tensors="pt"):
        return self.tokenizer(
            text, padding=padding, padding_side=padding_side, return_tensors=return_tensors
        )


def _backbone(tmp_path) -> QwenImage21:
    return build_backbone(ARCHITECTURES["tiny-qwen-image-2.1"], "cpu", tmp_path)


def _photo(shared_images) -> Image.Image:
    return Image.open(shared_images / "chelsea.png").convert("RGB").resize(SIZE, Image.LANCZOS)


def _mask() -> Image.Image:
    m = np.zeros(SIZE[::-1], np.uint8)
    m[12:36, 16:44] = 255  # partial, on the 4 px latent grid
    return Image.fromarray(m)


def _pipe(bb, scheduler_cls):
    sched = scheduler_cls.from_config(bb.scheduler.config)
    pipe = QwenImage21Pipeline(
        scheduler=sched, vae=bb.vae, text_encoder=bb.text_encoder,
        processor=StandInProcessor(bb.tokenizer), transformer=bb.unet,
    )  # fmt: skip
    pipe.vae_scale_factor = bb.latent_factor  # the pipeline hard-codes 16; the tiny VAE is 4x
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
def test_parity_with_its_own_loop_and_diffusers_blend(tmp_path, shared_images):
    """The reference is ``QwenImage21Pipeline``'s own denoising loop run as an img2img (diffusers
    has no Qwen-Image 2.1 inpaint pipeline): the schedule's tail after the skipped step
    (``sigmas``; the pipeline's mu depends on the token count only), started at
    ``scale_noise(z0, t_k, noise)`` (z0 by the pipeline's own ``_encode_vae_image`` of the RGBA
    photo), with diffusers' blend added by ``callback_on_step_end``: ``(1 - m)
    scale_noise(z0, t_{i+1}, noise) + m z`` (the clean z0 after the last step), true CFG 3 with an
    empty negative. BLD reproduces its latents; the control, the blend's noise level one step
    off, fails the same check. This also runs the text conditioning (Qwen3-VL's last layer before
    its norm, the system message dropped) and the VAE against the pipeline's own code."""
    from diffusers.utils.torch_utils import randn_tensor

    bb, seeds, n, k = _backbone(tmp_path), [4, 5], 4, 1
    result = BlendedLatentDiffusion(bb)(
        _photo(shared_images), _mask(), "a red flower", seeds=seeds, blend_start=0.25,
        mask_shrink="off", rank=False, background="decoded", region="full", size=SIZE[0],
        batch_size=2, num_inference_steps=n, guidance_scale=3.0,
    )  # fmt: skip
    ours = torch.stack([c.latent for c in result.candidates])  # (2, 8, 12, 16)
    ours = ours.flatten(2).transpose(1, 2)  # (2, 192, 8) tokens
    pipe = _pipe(bb, FlowMatchEulerDiscreteScheduler)
    image = pipe.image_processor.preprocess(_photo(shared_images).convert("RGBA"), *SIZE[::-1])
    z0 = pipe._encode_vae_image(image[:, :, None], None)[:, :, 0].expand(2, -1, -1, -1)
    noise = torch.cat([randn_tensor((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(s))
                       for s in seeds])  # fmt: skip
    z0p, noisep = (x.flatten(2).transpose(1, 2) for x in (z0, noise))  # (2, 192, 8)
    m = torch.nn.functional.max_pool2d(torch.from_numpy(np.asarray(_mask()) / 255.0)[None], 4)
    m = m.float().flatten(1)[..., None]  # (1, 192, 1)

    def reference(scheduler_cls):
        p = _pipe(bb, scheduler_cls)
        full = np.linspace(1.0, 1 / n, n)
        p.scheduler.set_timesteps(sigmas=full, mu=bb.timestep_kwargs(n, (12, 16))["mu"])
        tail = p.scheduler.timesteps[k:]
        start = p.scheduler.scale_noise(z0p, tail[:1], noisep)

        def blend(pipe, i, t, kw):
            last = i == len(tail) - 1
            bg = z0p if last else pipe.scheduler.scale_noise(z0p, tail[i + 1 : i + 2], noisep)
            return {"latents": (1 - m) * bg + m * kw["latents"]}

        return p(
            prompt=["a red flower"] * 2, negative_prompt=[""] * 2, true_cfg_scale=3.0, height=SIZE[1],
            width=SIZE[0], num_inference_steps=n, sigmas=list(full[k:]), latents=start,
            output_type="latent", callback_on_step_end=blend, use_kv_cache=False,
        ).images  # fmt: skip

    ref = reference(FlowMatchEulerDiscreteScheduler)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    with pytest.raises(AssertionError):  # the same check fails with a wrong noise level
        torch.testing.assert_close(ours, reference(NoiseLevelOff), atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_folder_detected_and_loaded_without_the_processor(tmp_path, shared_images):
    """A saved folder (the processor folder holding only the tokenizer, as no processor can be
    built here) is detected by its ``QwenImage21Pipeline`` and loads part by part; a thin stroke
    keeps whole tokens and the background outside the band is exact; ``--quantize int8`` loads
    its transformer quantized."""
    import json

    bb = _backbone(tmp_path / "w")
    folder = tmp_path / "Qwen-Image-2.1"
    for part, module in (
        ("vae", bb.vae),
        ("transformer", bb.unet),
        ("text_encoder", bb.text_encoder),
    ):
        module.save_pretrained(folder / part)
    bb.tokenizer.save_pretrained(folder / "processor")
    bb.scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "QwenImage21Pipeline", "_diffusers_version": "0.42.1"}
    (folder / "model_index.json").write_text(json.dumps(index))
    assert detect_family(folder) == "qwen-image-2.1"
    loaded = load_backbone(folder, torch.float32, True)
    assert isinstance(loaded, QwenImage21)
    m = np.zeros(SIZE[::-1], np.uint8)
    m[20:22, 8:56] = 255  # a 2 px stroke
    run = {"seeds": [1], "num_inference_steps": 2, "rank": False, "size": SIZE[0]}
    res = BlendedLatentDiffusion(loaded)(_photo(shared_images), Image.fromarray(m), "a rose", **run)
    out = np.asarray(res.images[0])
    far = np.ones(SIZE[::-1], bool)
    far[8:36, :] = False
    assert out.shape == (SIZE[1], SIZE[0], 3)
    assert np.array_equal(out[far], np.asarray(_photo(shared_images))[far])
    assert not np.array_equal(out[20:22, 8:56], np.asarray(_photo(shared_images))[20:22, 8:56])
    if importlib.util.find_spec("torchao") is None:
        return
    quantized = load_backbone(folder, torch.float32, True, quantize="int8")  # torchao, the CPU
    assert type(quantized.unet.img_in.weight).__name__ == "Int8Tensor"
