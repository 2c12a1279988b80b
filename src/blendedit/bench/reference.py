"""The same work through diffusers' inpaint pipeline of the model's family (SPEC 5): the family's
reference call (``Backbone.inpaint_reference``, ``reference_prompt``, ``reference_inpaint``) on
the editor's own components, dtype, scheduler, steps and batch; no ranking, no stitching.

Its steps are timed interleaved with blendedit's (``measure._time_steps``: one of ours, one of
diffusers', ``repeats`` times), so a change of the machine's load between the two does not
enter the per-step ratio."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.bench.timing import best_time, timed_steps

PROMPT = "a vase of red roses"  # every timed edit's, blendedit's and diffusers'


class DiffusersRun:
    """diffusers' pipeline on ``editor``'s components, a 4-channel model so it blends like BLD;
    the prompt as the family gives it (the LDM's, SD3's, FLUX's and the 2026 families' own
    embeddings, encoded inside the timed call, as blendedit encodes its prompt in its own)."""

    def __init__(
        self, editor: Any, photo: Image.Image, mask: np.ndarray, cfg: Any, dev: torch.device
    ):
        self.pipe, self.strength = editor.diffusers_inpaint(cfg)  # runs BLD's number of steps
        self.backbone, self.cfg, self.dev, self.photo = editor.backbone, cfg, dev, photo
        self.mask_image = Image.fromarray(mask.astype(np.uint8) * 255)

    def edit(self, seed: int, **kw: Any) -> Any:
        """One call of the pipeline: ``cfg.num_images`` images, seeds ``seed``, ``seed + 1``..."""
        cfg, backbone = self.cfg, self.backbone
        prompt = backbone.reference_prompt(PROMPT, "", cfg.num_images, embeddings=True)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(cfg.num_images)]
        with backbone.keeping_vae_dtype():
            return backbone.reference_inpaint(
                self.pipe, prompt, self.photo, self.mask_image, self.photo.size,
                strength=self.strength, num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale, output_type="pil", generator=gens, **kw,
            )  # fmt: skip

    def total_s(self, repeats: int) -> float:
        """The best end-to-end seconds of ``repeats`` calls, after one warm-up call."""
        self.edit(0)
        return best_time(self.dev, self.edit, repeats)[0]

    def step_ms(self) -> float:
        """The mean ms per denoising step of one call (``timing.timed_steps``)."""
        return timed_steps(
            self.dev,
            lambda mark: self.edit(7, callback_on_step_end=lambda p, i, t, kw: (mark(), kw)[1]),
        )


class LoopRun(DiffusersRun):
    """The family's text-to-image pipeline (``Backbone.timing_pipeline``) on ``editor``'s
    components, its own loop run as an img2img with diffusers' blend added by a callback, the
    reference issue 20 allows where the inpaint pipeline does other work or there is none (Krea
    2, FLUX.2 [dev]; the pipeline is built from the backbone's components,
    ``Backbone.diffusers_pipeline``): the schedule's tail
    after the skipped steps (``sigmas``), started at ``scale_noise(z0, t_k, noise)``, and after
    each step ``(1 - m) scale_noise(z0, t_{i+1}, noise) + m z`` (the clean z0 after the last), m
    the mask on the latent cells (whole tokens). Timing only: the parity reference stays the
    inpaint pipeline where there is one (tests/test_latent_2026.py checks this loop against
    blendedit's latents)."""

    def __init__(
        self, editor: Any, photo: Image.Image, mask: np.ndarray, cfg: Any, dev: torch.device
    ):
        # built from the components (the family may have no inpaint pipeline at all)
        self.pipe = editor.diffusers_timing(cfg)
        self.backbone, self.cfg, self.dev, self.photo = editor.backbone, cfg, dev, photo
        self.mask_image = Image.fromarray(mask.astype(np.uint8) * 255)
        bb, p = self.backbone, self.backbone.patch_size
        m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]  # (1, 1, H, W)
        # whole tokens, as blendedit masks them: (1, 1, h / p, w / p) -> (1, 1, h, w)
        cells = torch.nn.functional.max_pool2d(m, bb.latent_factor * p)
        cells = cells.repeat_interleave(p, -2).repeat_interleave(p, -1)
        cells = cells.expand(-1, bb.latent_channels, -1, -1)  # (1, C, h, w)
        self.cells = bb.reference_tokens(cells.to(dev, editor.dtype))  # the pipeline's layout

    def edit(self, seed: int, **kw: Any) -> Any:
        """One call: ``cfg.num_images`` images, seeds ``seed``, ``seed + 1``... (the source
        encoded inside the call, as the inpaint pipeline encodes it)."""
        from diffusers.utils.torch_utils import randn_tensor

        cfg, bb, sched = self.cfg, self.backbone, self.pipe.scheduler
        n, k, b = (
            cfg.num_inference_steps,
            int(cfg.num_inference_steps * cfg.blend_start),
            cfg.num_images,
        )
        w, h = self.photo.size
        gens = [torch.Generator().manual_seed(seed + i) for i in range(b)]
        image = self.pipe.image_processor.preprocess(self.photo, h, w)
        z0 = bb.encode_image(image).expand(b, -1, -1, -1)  # (B, C, h, w) the loop's latents
        noise = torch.cat([randn_tensor((1, *z0.shape[1:]), generator=g) for g in gens])
        noise = noise.to(z0)
        full = bb.timestep_kwargs(n, tuple(z0.shape[-2:]))
        sched.set_timesteps(**full)
        tail = sched.timesteps[k:]
        start = sched.scale_noise(z0, tail[:1], noise)
        z0p, noisep, m = bb.reference_tokens(z0), bb.reference_tokens(noise), self.cells
        after = kw.pop("callback_on_step_end", None)

        def blend(pipe: Any, i: int, t: Any, out: dict[str, Any]) -> dict[str, Any]:
            last = i == len(tail) - 1
            bg = z0p if last else pipe.scheduler.scale_noise(z0p, tail[i + 1 : i + 2], noisep)
            blended = {"latents": (1 - m) * bg + m * out["latents"]}
            return after(pipe, i, t, blended) if after else blended

        prompt = bb.reference_prompt(PROMPT, "", b, embeddings=True)
        with bb.keeping_vae_dtype():
            return self.pipe(
                **prompt, height=h, width=w, num_inference_steps=n, sigmas=full["sigmas"][k:],
                guidance_scale=bb.reference_guidance(cfg.guidance_scale),
                latents=bb.reference_latents(start), generator=gens,
                callback_on_step_end=blend, **{"output_type": "pil", **kw},
            )  # fmt: skip


def reference_run(
    editor: Any, photo: Image.Image, mask: np.ndarray, cfg: Any, dev: torch.device
) -> DiffusersRun:
    """The timing reference of ``editor``'s family: :class:`LoopRun` where the family names a
    ``timing_pipeline``, else its inpaint pipeline (:class:`DiffusersRun`)."""
    run = LoopRun if editor.backbone.timing_pipeline else DiffusersRun
    return run(editor, photo, mask, cfg, dev)
