"""The methods an evaluation compares, by name, and the models they (and the metrics) load.

Every method gets the same inputs (photo, rectangle, prompt, seeds) and returns its predictions
best first. Ranking uses one shared CLIP model (``clip_model``, ViT-B/16 as in both papers) for
every method, so "top-1" means the same thing everywhere.

=====================  =========================================================================
``latent``             Blended Latent Diffusion, the product's default: ranked batch, the photo's
                       own pixels stitched back outside the mask (feathered).
``latent-decoded``     The same without any background reconstruction: the raw decoder output
                       (the paper's "without background optimisation").
``latent-decoder``     The paper's choice: the batch as decoded, then the top-ranked result's
                       background reconstructed by per-image decoder fine-tuning (paper 4.2).
                       The reconstructed top result is regenerated alone from its seed (it
                       differs from the batch's copy by float rounding at most); the batch time
                       adds only the reconstruction stage of that run.
``pixel``              Blended Diffusion (ADM + CLIP guidance), ranked batch.
``local-clip``         The local CLIP-guided diffusion baseline: no blending, a background loss;
                       its raw output, as the paper evaluates it (it changes the whole image).
``diffusers-inpaint``  diffusers' inpaint pipeline of the model's family on the same components,
                       scheduler, steps and guidance; ``strength`` chosen so it runs the same
                       number of steps as BLD; its output as diffusers returns it (no paste-back),
                       resized to the photo's size; ranked with the same CLIP.
``inpaint-model``      A model trained for inpainting (``--inpaint-model``: a 9-channel SD/SDXL
                       UNet, FLUX.1 Fill) in the same frame as ``latent``: ranked batch, stitched
                       background, at its family's blend start and ``--blend`` default (issue 19).
=====================  =========================================================================
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from blendedit.config import EditConfig
from blendedit.errors import InputError
from blendedit.eval.metrics import (
    DEFAULT_CLASSIFIER,
    DEFAULT_SCORE_CLIP_MODEL,
    Classifier,
    MetricModels,
    load_classifier,
)
from blendedit.eval.toyworld import is_toy_classifier
from blendedit.frame import masks as M
from blendedit.frame.metrics import LPIPS
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL, ClipScorer, rank_order
from blendedit.io import tensor_to_pil, working_size
from blendedit.models import DEFAULT_MODEL, parse_device, parse_dtype
from blendedit.pixel.pipeline import PixelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # "latent" (Stable Diffusion) or "pixel" (ADM)
    recommended_batch: int  # paper 5: BLD and GLIDE 24, Blended Diffusion 64
    title: str  # how the report names it


METHODS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec("latent", "latent", 24, "Blended Latent Diffusion (stitched background)"),
        MethodSpec("latent-decoded", "latent", 24, "Blended Latent Diffusion (decoded, no recon.)"),
        MethodSpec(
            "latent-decoder", "latent", 24, "Blended Latent Diffusion (decoder fine-tuning)"
        ),
        MethodSpec("pixel", "pixel", 64, "Blended Diffusion"),
        MethodSpec("local-clip", "pixel", 64, "Local CLIP-guided diffusion"),
        MethodSpec("diffusers-inpaint", "latent", 24, "diffusers inpaint pipeline"),
        MethodSpec("inpaint-model", "latent", 24, "Inpainting model (stitched background)"),
    )
}
# Every method but inpaint-model, which needs a second model (--inpaint-model) and is named.
DEFAULT_METHODS = tuple(m for m in METHODS if m != "inpaint-model")


def recommended_batch(name: str) -> int:
    return METHODS[name].recommended_batch


# --------------------------------------------------------------------------------------------
# What to load
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalModels:
    """Model ids or local paths. ``pixel_model=None``: the pixel methods are skipped;
    ``score_clip_model=None``: no CLIP score; ``lpips_weights=None``: no diversity / LPIPS."""

    sd_model: str = DEFAULT_MODEL
    sd_model_config: str | None = None
    pixel_model: str | None = None  # ADM checkpoint (256x256_diffusion_uncond.pt)
    pixel_model_config: str | None = None  # guided-diffusion JSON; None: the official 256 model
    clip_model: str | None = DEFAULT_CLIP_MODEL  # ranking (and pixel guidance); None: unranked
    score_clip_model: str | None = DEFAULT_SCORE_CLIP_MODEL
    classifier: str = DEFAULT_CLASSIFIER
    lpips_weights: tuple[str, str] | None = None  # (trunk, lin) files for the metrics
    lpips_net: str = "alex"
    local_lpips_weights: tuple[str, str] | None = None  # VGG (trunk, lin) for local-clip's loss
    device: str = "auto"
    dtype: str = "auto"  # fp16 on CUDA, fp32 elsewhere
    inpaint_model: str | None = None  # a model trained for inpainting, for ``inpaint-model``

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("lpips_weights", "local_lpips_weights"):
            d[k] = list(d[k]) if d[k] else None
        return d


class Resources:
    """Loads each model once, on first use, on the chosen device."""

    def __init__(self, models: EvalModels) -> None:
        self.models = models

    @cached_property
    def device(self) -> torch.device:
        return parse_device(self.models.device)

    @cached_property
    def dtype(self) -> torch.dtype:
        return parse_dtype(self.models.dtype, self.device) or torch.float32

    @cached_property
    def ranking_clip(self) -> ClipScorer | None:
        if not self.models.clip_model:
            return None
        return ClipScorer.from_pretrained(self.models.clip_model, self.dtype).to(self.device)

    @cached_property
    def latent_editor(self) -> Any:
        from blendedit.latent.pipeline import BlendedLatentDiffusion

        editor = BlendedLatentDiffusion.from_pretrained(
            self.models.sd_model,
            clip_model=None,
            torch_dtype=self.dtype,
            model_config=self.models.sd_model_config,
        ).to(self.device)
        editor.clip = self.ranking_clip
        return editor

    @cached_property
    def inpaint_editor(self) -> Any:
        """The ``inpaint-model`` method's editor (a model trained for inpainting)."""
        from blendedit.latent.pipeline import BlendedLatentDiffusion

        assert self.models.inpaint_model is not None
        editor = BlendedLatentDiffusion.from_pretrained(
            self.models.inpaint_model, clip_model=None, torch_dtype=self.dtype
        ).to(self.device)
        editor.clip = self.ranking_clip
        return editor

    @cached_property
    def local_lpips(self) -> LPIPS | None:
        w = self.models.local_lpips_weights
        return LPIPS.from_pretrained(w[0], w[1], "vgg").to(self.device) if w else None

    @cached_property
    def pixel_editor(self) -> Any:
        from blendedit.pixel.pipeline import BlendedDiffusion

        assert self.models.pixel_model is not None
        editor = BlendedDiffusion.from_pretrained(
            self.models.pixel_model,
            model_config=self.models.pixel_model_config,
            clip_model=None,
            torch_dtype=self.dtype,
        )
        editor.clip = self.ranking_clip
        editor.lpips = self.local_lpips
        return editor.to(self.device)

    @cached_property
    def labels(self) -> dict[int, str]:
        """The classifier's ``id2label``, from its config alone (no weights loaded)."""
        if "classifier" in self.__dict__ or is_toy_classifier(self.models.classifier):
            return self.classifier.id2label
        from transformers import AutoConfig

        from blendedit.models import load_cached_first

        name = self.models.classifier
        cfg = load_cached_first(
            "classifier",
            name,
            lambda local: AutoConfig.from_pretrained(name, local_files_only=local),
            None,
        )
        return {int(k): v for k, v in (getattr(cfg, "id2label", None) or {}).items()}

    @cached_property
    def classifier(self) -> Classifier:
        return load_classifier(self.models.classifier).to(self.device)

    @cached_property
    def score_clip(self) -> ClipScorer | None:
        if not self.models.score_clip_model:
            return None
        return ClipScorer.from_pretrained(self.models.score_clip_model).to(self.device)

    @cached_property
    def lpips(self) -> LPIPS | None:
        w = self.models.lpips_weights
        if not w:
            return None
        return LPIPS.from_pretrained(w[0], w[1], self.models.lpips_net).to(self.device)  # type: ignore[arg-type]

    def metric_models(self) -> MetricModels:
        return MetricModels(self.classifier, self.score_clip, self.lpips, self.classifier.top_k)


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    image: Image.Image  # at the photo's size
    rank: int  # 1 = best
    seed: int
    score: float | None = None  # ranking CLIP similarity


@dataclass
class MethodRun:
    """One input's predictions, best first, and the wall-clock times that made them."""

    predictions: list[Prediction]
    time_batch: float  # seconds for the full ranked batch (models loaded, inputs in memory)
    time_single: float | None  # seconds for one prediction alone
    details: dict[str, Any] = field(default_factory=dict)


class Unavailable(Exception):
    """The method cannot run with the models given; the report says why."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


class Runner:
    """Base: ``generate`` makes ranked predictions for explicit seeds; ``run`` times it."""

    spec: MethodSpec

    def __init__(self, spec: MethodSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def generate(
        self, image: Image.Image, mask: np.ndarray, prompt: str, seeds: Sequence[int]
    ) -> tuple[list[Prediction], dict[str, Any]]:
        raise NotImplementedError

    def run(
        self,
        image: Image.Image,
        mask: np.ndarray,
        prompt: str,
        seeds: Sequence[int],
        time_single: bool = True,
    ) -> MethodRun:
        single = None
        if time_single:
            _, single = _timed(self.device, lambda: self.generate(image, mask, prompt, seeds[:1]))
        (preds, details), t = _timed(self.device, lambda: self.generate(image, mask, prompt, seeds))
        return MethodRun(preds, t, single, details)

    def warmup(self, image: Image.Image, mask: np.ndarray, prompt: str, seed: int) -> None:
        """One untimed prediction: kernels compile and caches fill before anything is timed."""
        self.generate(image, mask, prompt, [seed])


def _predictions(result: Any) -> list[Prediction]:
    return [Prediction(c.image, c.rank, c.seed, c.score) for c in result.candidates]


class EditorRunner(Runner):
    """A blendedit editor (latent or pixel) with a fixed config. The editor is loaded on first
    use, so a run whose predictions are all cached loads no generative model."""

    def __init__(
        self,
        spec: MethodSpec,
        load_editor: Callable[[], Any],
        device: torch.device,
        config: EditConfig | PixelConfig,
        ident: dict,
    ) -> None:
        super().__init__(spec, device)
        self._load_editor, self.config, self.ident = load_editor, config.validate(), ident

    @cached_property
    def editor(self) -> Any:
        return self._load_editor()

    def settings(self) -> dict[str, Any]:
        return {"method": self.spec.name, **self.ident, "config": self.config.to_dict()}

    def generate(self, image, mask, prompt, seeds):  # type: ignore[override]
        result = self.editor(image, mask, prompt, config=self.config, seeds=list(seeds))
        return _predictions(result), {"timings": result.timings.to_dict()}


class DecoderRunner(EditorRunner):
    """``latent-decoder``: the batch as decoded, then the top result regenerated alone with
    decoder fine-tuning; batch time = batch + that run's reconstruction stage."""

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "top_result_background": "decoder"}

    def run(self, image, mask, prompt, seeds, time_single=True):  # type: ignore[override]
        (preds, details), t_batch = _timed(
            self.device, lambda: self.generate(image, mask, prompt, seeds)
        )
        cfg = self.config.replace(num_images=1, background="decoder")
        top, t_single = _timed(
            self.device,
            lambda: self.editor(image, mask, prompt, config=cfg, seeds=[preds[0].seed]),
        )
        best = top.best
        preds[0] = Prediction(best.image, 1, best.seed, preds[0].score)
        recon = top.timings.background
        details = {**details, "reconstruction_s": round(recon, 4)}
        return MethodRun(preds, t_batch + recon, t_single if time_single else None, details)


class DiffusersInpaintRunner(EditorRunner):
    """diffusers' inpaint pipeline of the model's family (``StableDiffusionInpaintPipeline``,
    the SDXL, SD3 or FLUX one) on the BLD editor's own components."""

    @cached_property
    def _pipe_and_strength(self) -> tuple[Any, float]:
        return self.editor.diffusers_inpaint(self.config)

    @property
    def pipe(self) -> Any:
        return self._pipe_and_strength[0]

    @property
    def strength(self) -> float:
        """Set so diffusers runs the same number of steps as BLD (see ``diffusers_inpaint``)."""
        return self._pipe_and_strength[1]

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "method": self.spec.name,
            **self.ident,
            "pipeline": type(self.pipe).__name__,
            "num_images": c.num_images,
            "num_inference_steps": c.num_inference_steps,
            "strength": self.strength,
            "guidance_scale": c.guidance_scale,
            "negative_prompt": c.negative_prompt,
            "scheduler": c.scheduler,
            "eta": c.eta,
            "size": c.size,
            "batch_size": c.batch_size,
            "rank": c.rank,
        }

    @torch.no_grad()
    def generate(self, image, mask, prompt, seeds):  # type: ignore[override]
        c, ed = self.config, self.editor
        t0 = time.perf_counter()
        w, h = working_size(image.size, c.size or ed.native_size, ed.backbone.size_multiple)
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
        chunks = []
        with ed.backbone.keeping_vae_dtype():  # the editor shares the VAE (SDXL: float32)
            for i in range(0, len(seeds), c.batch_size):
                part = list(seeds[i : i + c.batch_size])
                out = ed.backbone.reference_inpaint(
                    self.pipe,
                    ed.backbone.reference_prompt(prompt, c.negative_prompt, len(part)),
                    image,
                    mask_img,
                    (w, h),
                    strength=self.strength,
                    num_inference_steps=c.num_inference_steps,
                    guidance_scale=c.guidance_scale,
                    eta=c.eta,  # where the family's pipeline takes one
                    generator=[torch.Generator("cpu").manual_seed(s) for s in part],
                    output_type="pt",
                )
                chunks.append(out.images.float().cpu())
        x = torch.cat(chunks)  # (N, 3, h, w) in [0, 1]
        t_gen = time.perf_counter() - t0
        scores = None
        if c.rank and ed.clip is not None:
            mask_work = M.resize_mask(M.to_tensor(mask), (h, w))
            scores = ed.clip.score(x, mask_work, prompt)
        order = rank_order(scores, len(seeds))
        if (w, h) != image.size:
            x = F.interpolate(
                x, size=(image.size[1], image.size[0]), mode="bicubic", antialias=True
            ).clamp(0, 1)
        preds = [
            Prediction(
                tensor_to_pil(x[idx]),
                rank,
                int(seeds[idx]),
                None if scores is None else float(scores[idx]),
            )
            for rank, idx in enumerate(order, start=1)
        ]
        return preds, {"timings": {"generate": round(t_gen, 4)}}


def _inpaint_model_runner(
    spec: MethodSpec, resources: Resources, base: EditConfig, ident: dict
) -> Runner:
    """``inpaint-model``: the frame's edit with a model trained for inpainting, at its family's
    blend start and blend (e.g. SD-inpainting: from pure noise)."""
    from blendedit.latent.backbones import family_defaults

    if not resources.models.inpaint_model:
        raise Unavailable("no inpainting model given (--inpaint-model)")
    own = family_defaults(resources.models.inpaint_model)
    cfg = base.replace(
        background="stitch", **{k: own[k] for k in ("blend_start", "blend") if k in own}
    )
    return EditorRunner(spec, lambda: resources.inpaint_editor, resources.device, cfg, ident)


def build_runner(
    name: str,
    resources: Resources,
    batch: int,
    latent: EditConfig,
    pixel: PixelConfig,
) -> Runner:
    """The runner of method ``name`` with ``batch`` predictions per input, or :class:`Unavailable`
    with the reason when its model was not given."""
    if name not in METHODS:
        raise InputError(f"methods: unknown {name!r}; choose from {', '.join(METHODS)}")
    spec = METHODS[name]
    m = resources.models
    rank = m.clip_model is not None
    dtype = str(resources.dtype).removeprefix("torch.")
    if spec.family == "pixel":
        if not m.pixel_model:
            raise Unavailable("no pixel model given (--pixel-model, the ADM checkpoint)")
        ident = {
            "model": m.pixel_model,
            "model_config": m.pixel_model_config,
            "clip_model": m.clip_model,
            "dtype": dtype,
        }
        if name == "local-clip":
            cfg = pixel.replace(num_images=batch, local=True, background="decoded", rank=rank)
            ident["local_lpips_weights"] = list(m.local_lpips_weights or []) or None
        else:
            cfg = pixel.replace(num_images=batch, local=False, rank=rank)
        if cfg.clip_guidance_lambda and not m.clip_model:
            raise Unavailable("CLIP guidance needs a CLIP model (--clip-model)")
        return EditorRunner(spec, lambda: resources.pixel_editor, resources.device, cfg, ident)
    ident = {
        "model": m.sd_model,
        "model_config": m.sd_model_config,
        "clip_model": m.clip_model,
        "dtype": dtype,
    }
    # The evaluation measures the background itself: the editor's per-result report would only
    # add to the measured time.
    base = latent.replace(num_images=batch, rank=rank, keep=None, metrics=False)
    if name == "inpaint-model":
        return _inpaint_model_runner(spec, resources, base, {**ident, "model": m.inpaint_model})
    kind, background = {
        "diffusers-inpaint": (DiffusersInpaintRunner, base.background),
        "latent": (EditorRunner, "stitch"),
        "latent-decoded": (EditorRunner, "decoded"),
        "latent-decoder": (DecoderRunner, "decoded"),
    }[name]
    return kind(
        spec,
        lambda: resources.latent_editor,
        resources.device,
        base.replace(background=background),
        ident,
    )
