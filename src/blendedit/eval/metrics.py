"""The evaluation's metrics, each a small function (BLD paper 5 and C.1; SPEC 3).

* precision: the masked prediction into an ImageNet classifier; correct when the prompt's class is
  in the top 5 (:func:`precision_top_k`, :class:`ImageNetClassifier`); in the toy world, its own
  classifier on the square around the rectangle, shape and colour right (:func:`load_classifier`);
* diversity: mean pairwise LPIPS between the masked correct predictions of one input
  (:func:`diversity`);
* background fidelity outside the mask: PSNR, MSE, SSIM, LPIPS (:func:`background_scores`, from
  :func:`blendedit.frame.metrics.background_metrics`);
* CLIP score: ``max(100 * cos(CLIP(image), CLIP(prompt)), 0)`` (:func:`clip_scores`), on the masked
  result (the region the prompt is about) and on the whole image (BrushBench's way).

Images are float tensors (B, 3, H, W) in [0, 1]; masks bool/float (H, W) or (B or 1, 1, H, W) with
1 = the edited region. "Masked" means the pixels outside the mask set to 0 (black), as the paper
masks predictions before classifying them and before LPIPS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from blendedit.errors import InputError
from blendedit.eval.toyworld import ToyClassifier, is_toy_classifier
from blendedit.frame.metrics import LPIPS, background_metrics
from blendedit.frame.ranking import ClipScorer

DEFAULT_CLASSIFIER = "google/efficientnet-b7"  # the paper used EfficientNet (variant not stated)
DEFAULT_SCORE_CLIP_MODEL = "openai/clip-vit-large-patch14"  # BrushBench's CLIP score model
TOP_K = 5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def images_to_tensor(images: Sequence[Image.Image]) -> Tensor:
    """RGB PIL images of one size -> float (B, 3, H, W) in [0, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def mask_to_tensor(mask: np.ndarray | Tensor) -> Tensor:
    """(H, W) bool/float -> float (1, 1, H, W); a 4-D tensor is returned as float."""
    t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).float()
    if t.ndim == 2:
        t = t[None, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise InputError(f"mask: expected (H, W) or (B, 1, H, W), got {tuple(t.shape)}")
    return t


def apply_mask(images: Tensor, mask: np.ndarray | Tensor) -> Tensor:
    """``images * mask``: black outside the edited region."""
    return images * mask_to_tensor(mask).to(images)


def pad_resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad (B, 3, H, W) to a square (black, like the masked-out area), then resize to
    ``size`` = (h, w), bicubic with antialiasing: the whole image is seen, nothing is cropped."""
    h, w = images.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = F.pad(images, (left, side - w - left, top, side - h - top))
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def precision_top_k(logits: Tensor, class_index: int | Tensor, k: int = TOP_K) -> Tensor:
    """Whether ``class_index`` is among the ``k`` highest logits of each row -> bool ``(B,)``.

    The paper counts a prediction correct when the prompt's class is in the classifier's top 5
    (ImageNet has many near-synonymous classes). ``class_index``: one int for the whole batch or
    a ``(B,)`` tensor.
    """
    if logits.ndim != 2:
        raise InputError(f"logits: expected (B, classes), got {tuple(logits.shape)}")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k)
    target = torch.as_tensor(class_index, device=logits.device).reshape(-1, 1)
    return (top == target).any(dim=1)


def _size_from(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    return None


@dataclass(frozen=True)
class Preprocessing:
    """How the classifier wants its pixels, read from its ``preprocessor_config.json``."""

    size: tuple[int, int] = (224, 224)  # (h, w) of the network input
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0  # input in [0, 1] times scale (255 * rescale_factor) ...
    offset: float = 0.0  # ... plus offset (-1 with EfficientNet's rescale_offset)
    normalize: bool = True
    include_top: bool = False  # EfficientNet: divide by std a second time (as its processor does)

    @classmethod
    def from_config(cls, proc: Mapping[str, Any] | None, image_size: Any = None) -> Preprocessing:
        """The processor's own values; ImageNet defaults for anything it does not state. The
        network input is ``crop_size`` when the processor centre-crops, else ``size``."""
        proc = dict(proc or {})
        size = None
        if proc.get("do_center_crop"):
            size = _size_from(proc.get("crop_size"))
        size = size or _size_from(proc.get("size")) or _size_from(image_size) or (224, 224)
        do_rescale = proc.get("do_rescale", True)
        factor = float(proc.get("rescale_factor", 1 / 255))
        mean = proc.get("image_mean", IMAGENET_MEAN)
        std = proc.get("image_std", IMAGENET_STD)
        mean = tuple(float(v) for v in (mean if isinstance(mean, list | tuple) else [mean] * 3))
        std = tuple(float(v) for v in (std if isinstance(std, list | tuple) else [std] * 3))
        return cls(
            size=size,
            mean=mean,
            std=std,
            scale=255.0 * factor if do_rescale else 255.0,
            offset=-1.0 if do_rescale and proc.get("rescale_offset") else 0.0,
            normalize=bool(proc.get("do_normalize", True)),
            include_top=bool(proc.get("include_top", False)),
        )

    def __call__(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> the network's normalised (B, 3, h, w) input."""
        x = pad_resize(images.float(), self.size) * self.scale + self.offset
        if self.normalize:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
            if self.include_top:
                x = x / std
        return x


class ImageNetClassifier:
    """An image classifier from transformers (any ``AutoModelForImageClassification``) with the
    preprocessing its own processor config states. Images are zero-padded to a square and resized
    (never centre-cropped, so the edited rectangle is always seen whole)."""

    top_k = TOP_K
    rule = (
        "masked (black outside the rectangle), zero-padded to a square, resized, classified; "
        f"correct when the prompt's class is in the top {TOP_K}"
    )

    def __init__(self, model: Any, preprocessing: Preprocessing | None = None, name: str = ""):
        self.model = model.eval().requires_grad_(False) if hasattr(model, "eval") else model
        self.preprocessing = preprocessing or Preprocessing()
        self.name = name

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike[str]) -> ImageNetClassifier:
        """A hub id or a local folder (config.json with ``id2label``, weights, and optionally
        ``preprocessor_config.json``); cache first, one-line error when it cannot be found."""
        from transformers import AutoModelForImageClassification
        from transformers.utils import cached_file

        from blendedit.models import load_cached_first

        name = str(model_id)

        def load(local: bool) -> ImageNetClassifier:
            model = AutoModelForImageClassification.from_pretrained(name, local_files_only=local)
            proc = None
            path = cached_file(
                name,
                "preprocessor_config.json",
                local_files_only=local,
                _raise_exceptions_for_missing_entries=False,
            )
            if path:
                with open(path, encoding="utf-8") as f:
                    proc = json.load(f)
            pre = Preprocessing.from_config(proc, getattr(model.config, "image_size", None))
            return cls(model.float(), pre, name)

        return load_cached_first("classifier", name, load, None)

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    @property
    def device(self) -> torch.device:
        params = self.model.parameters() if hasattr(self.model, "parameters") else iter(())
        return next(iter(params), torch.empty(0)).device

    def to(self, device: torch.device | str) -> ImageNetClassifier:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: Tensor, chunk: int = 8) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, classes) float32 logits on the CPU."""
        out = []
        for part in images.split(chunk):
            x = self.preprocessing(part.to(self.device))
            res = self.model(pixel_values=x)
            out.append((res.logits if hasattr(res, "logits") else res).float().cpu())
        return torch.cat(out)

    def correct(
        self, images: Tensor, mask: np.ndarray | Tensor, class_index: int, k: int = TOP_K
    ) -> Tensor:
        """The paper's precision test per image: mask it, classify it, is ``class_index`` in the
        top ``k``? -> bool ``(B,)``."""
        return precision_top_k(self.logits(apply_mask(images, mask)), class_index, k)


Classifier = ImageNetClassifier | ToyClassifier


def load_classifier(name: str | os.PathLike[str]) -> Classifier:
    """``--classifier``: a transformers image classifier (hub id or folder; ImageNet labels), or a
    toy-world ``classifier.safetensors`` beside its ``classifier.py`` (the 30 captions as classes;
    :mod:`blendedit.eval.toyworld`)."""
    if is_toy_classifier(name):
        return ToyClassifier.from_file(name)
    return ImageNetClassifier.from_pretrained(name)


def classifier_top_k(name: str | os.PathLike[str]) -> int:
    """How many of the classifier's best classes count as correct: 5 of ImageNet's 1000 (the
    paper's rule), 1 of the toy world's 30."""
    return ToyClassifier.top_k if is_toy_classifier(name) else ImageNetClassifier.top_k


def precision_rule(name: str | os.PathLike[str]) -> str:
    """The precision test of ``name``'s kind, in words (for the report)."""
    return ToyClassifier.rule if is_toy_classifier(name) else ImageNetClassifier.rule


# --------------------------------------------------------------------------------------------
# Diversity (LPIPS)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def pairwise_lpips(model: LPIPS, images: Tensor) -> list[float]:
    """LPIPS between every pair (i < j) of ``images`` (N, 3, H, W) in [0, 1], in the order of
    :func:`itertools.combinations`. Each image goes through the network once (equal to calling
    ``model(images[i], images[j])`` per pair)."""
    n = images.shape[0]
    if n < 2:
        return []
    dev, dtype = model.shift.device, model.shift.dtype
    if min(images.shape[-2:]) < model.min_size:
        raise InputError(
            f"images: LPIPS-{model.net} needs H, W >= {model.min_size}, got {tuple(images.shape[-2:])}"
        )
    feats = [model._feats(img[None].to(dev, dtype)) for img in images]  # n x 5 x (1, C, h, w)
    out = []
    for i, j in combinations(range(n), 2):
        total = torch.zeros((), device=dev, dtype=dtype)
        for fi, fj, lin in zip(feats[i], feats[j], model.lins, strict=True):
            total = total + F.conv2d((fi - fj) ** 2, lin.weight.clamp_min(0)).mean()
        out.append(float(total))
    return out


def diversity(model: LPIPS, images: Tensor, mask: np.ndarray | Tensor) -> float | None:
    """The paper's diversity of one input: mean pairwise LPIPS of the masked ``images`` (pass the
    correct predictions only). None with fewer than two images."""
    if images.shape[0] < 2:
        return None
    return float(np.mean(pairwise_lpips(model, apply_mask(images, mask))))


# --------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------


def clip_score_from_embeddings(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """``max(100 * cos(image, text), 0)`` per image: (B, D) and (D,) or (1, D) -> ``(B,)``."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float().reshape(1, -1), dim=-1)
    return (100.0 * (img @ txt.T).squeeze(-1)).clamp_min(0.0)


@torch.no_grad()
def clip_scores(
    scorer: ClipScorer,
    images: Tensor,
    prompt: str,
    mask: np.ndarray | Tensor | None = None,
    chunk: int = 16,
) -> Tensor:
    """CLIP score of each image (masked first when ``mask`` is given) -> ``(B,)`` on the CPU."""
    text = scorer.embed_text([prompt])
    out = []
    for part in images.split(chunk):
        x = apply_mask(part, mask) if mask is not None else part
        out.append(clip_score_from_embeddings(scorer.embed_images(x), text).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Background fidelity
# --------------------------------------------------------------------------------------------


def background_scores(
    images: Tensor,
    source: Tensor,
    mask: np.ndarray | Tensor,
    lpips: LPIPS | None = None,
    chunk: int = 8,
) -> dict[str, list[float]]:
    """PSNR (dB, ``inf`` when untouched), MSE, SSIM and (with a model) LPIPS of each image's
    background (outside ``mask``) against ``source`` (3, H, W) or (1, 3, H, W) -> lists of floats.
    MSE is the mean over the 3 channels (BrushNet's script reports 3x this value). SSIM averages
    the 11x11 windows wholly outside the mask (those centred outside it when a photo is too small
    to have any)."""
    out: dict[str, list[float]] = {}
    m = mask_to_tensor(mask)
    src = source if source.ndim == 4 else source[None]
    for part in images.split(chunk):
        ref = src.expand(part.shape[0], -1, -1, -1)
        try:
            res = background_metrics(part, ref, m, lpips=lpips)
        except InputError:  # no 11x11 SSIM window wholly outside the mask (a tiny photo):
            res = background_metrics(part, ref, m, lpips=lpips, ssim_erode=False)
        for key, val in res.items():
            out.setdefault(key, []).extend(float(v) for v in val)
    return out


# --------------------------------------------------------------------------------------------
# One input, all metrics
# --------------------------------------------------------------------------------------------


@dataclass
class MetricModels:
    """The models the metrics need; ``score_clip`` and ``lpips`` are optional."""

    classifier: Classifier
    score_clip: ClipScorer | None = None
    lpips: LPIPS | None = None
    top_k: int = TOP_K


def evaluate_case(
    predictions: Sequence[Image.Image],
    source: Image.Image,
    mask: np.ndarray,
    class_index: int,
    prompt: str,
    models: MetricModels,
) -> dict[str, Any]:
    """Every metric of one input's predictions (best first; index 0 is the top-ranked).

    Returns per-prediction lists (``correct``, ``psnr``, ``mse``, ``ssim``, ``lpips``,
    ``clip_masked``, ``clip_full``) and the per-input values ``precision`` (batch average),
    ``top1_correct``, ``diversity`` (None below two correct predictions or without LPIPS) and
    ``n_correct``.
    """
    device = models.classifier.device
    x = images_to_tensor(predictions).to(device)
    src = images_to_tensor([source]).to(device)
    correct = models.classifier.correct(x, mask, class_index, models.top_k)
    out: dict[str, Any] = {"correct": [bool(c) for c in correct]}
    out["n_correct"] = int(correct.sum())
    out["precision"] = float(correct.float().mean())
    out["top1_correct"] = bool(correct[0])
    out["diversity"] = None
    if models.lpips is not None and out["n_correct"] >= 2:
        out["diversity"] = diversity(models.lpips, x[correct.to(device)], mask)
    out.update(background_scores(x, src, mask, models.lpips))
    if models.score_clip is not None:
        out["clip_masked"] = [float(v) for v in clip_scores(models.score_clip, x, prompt, mask)]
        out["clip_full"] = [float(v) for v in clip_scores(models.score_clip, x, prompt)]
    return out
