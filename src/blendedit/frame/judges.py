"""The judges that rank an edit's candidates (``--rank``), each a :class:`Judge` with one score.

* ``clip``: CLIP similarity of the masked result to the prompt (BLD paper 4.4; Blended Diffusion
  section 4), :class:`~blendedit.frame.ranking.ClipScorer`. The papers' ranking; it sees the
  masked region alone, the limitation BLD names in section 6.
* ``pickscore``: PickScore (Kirstain et al. 2023, Pick-a-Pic, section 4): a CLIP ViT-H/14 fine-tuned
  on human preferences, published as a transformers ``CLIPModel``; score
  ``logit_scale.exp() * <text, image>`` of the unit embeddings.
* ``hps``: HPS v2.1 (Wu et al. 2023, Human Preference Score v2, section 5): an open_clip ViT-H-14
  checkpoint, read key for key onto a transformers ``CLIPModel`` (:mod:`.openclip`); score
  ``<text, image>`` of the unit embeddings.
* ``aesthetic``: the LAION improved aesthetic predictor: an MLP (five linear layers, no activation)
  on the unit CLIP ViT-L/14 image embedding, trained on SAC + LOGOS + AVA ratings.

The preference and realism judges see the whole working region as the user gets it (the
candidate inside the mask, the photo outside it), prepared as their reference code prepares a PIL
image (resize of the short side, centre crop, CLIP's normalisation); CLIP sees the masked region.
``ensemble`` (Follow-Your-Preference's finding that an ensemble of reward models is a robust
judge): each judge's scores normalised over the batch (zero mean, unit deviation), weighted,
summed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from blendedit.config import JUDGES, parse_weights
from blendedit.errors import InputError, ModelNotFoundError
from blendedit.frame.imagereward import aesthetic_head
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL, ClipScorer

logger = logging.getLogger(__name__)

VIT_H_14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PickScore's and HPS v2's processor, tokenizer
DEFAULT_JUDGE_MODELS = {
    "clip": DEFAULT_CLIP_MODEL,
    "pickscore": "yuvalkirstain/PickScore_v1",
    "hps": "xswu/HPSv2/HPS_v2.1_compressed.pt",  # hub repo xswu/HPSv2, file HPS_v2.1_compressed.pt
    "hps-tokenizer": VIT_H_14,
    "imagereward": "THUDM/ImageReward/ImageReward.pt",  # with med_config.json beside it
    "imagereward-tokenizer": "google-bert/bert-base-uncased",
    "aesthetic": "",  # the predictor's .pth has no hub home: --judge-model aesthetic=FILE
    "aesthetic-clip": "openai/clip-vit-large-patch14",
}
AESTHETIC_SOURCE = "sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor"
NEEDS_PROMPT = {
    "clip": True,
    "pickscore": True,
    "hps": True,
    "imagereward": True,
    "aesthetic": False,
}
SEES = {"clip": "masked", "pickscore": "whole", "hps": "whole", "imagereward": "whole",
        "aesthetic": "whole"}  # fmt: skip


class Judge:
    """One judge: ``score(images, masks, prompt)`` -> (B,) float32 on the CPU, higher is better.
    ``images`` (B, 3, H, W) in [0, 1] are what the judge sees (the masked region for ``clip``, the
    whole working region for the others); ``masks`` (B or 1, 1, H, W)."""

    name = ""
    needs_prompt = True

    def score(self, images: torch.Tensor, masks: torch.Tensor, prompt: str) -> torch.Tensor:
        raise NotImplementedError


class ClipJudge(Judge):
    """BLD paper 4.4: cosine similarity of CLIP(x_hat * m) and CLIP(prompt)."""

    name = "clip"

    def __init__(self, scorer: ClipScorer) -> None:
        self.scorer = scorer

    def score(self, images: torch.Tensor, masks: torch.Tensor, prompt: str) -> torch.Tensor:
        return self.scorer.score(images, masks, prompt)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> RGB images, rounded as a saved PNG would be."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


class ClipModelJudge(Judge):
    """A transformers ``CLIPModel`` judging whole images with its processor (PIL path).

    ``scale``: PickScore multiplies the cosine by ``logit_scale.exp()`` (Pick-a-Pic section 4);
    HPS v2 does not (HPS v2 section 5). ``mlp``: the aesthetic predictor's head on the unit image
    embedding instead of a text similarity."""

    def __init__(
        self,
        name: str,
        model: Any,
        processor: Any,
        tokenizer: Any = None,
        *,
        scale: bool = False,
        head: torch.nn.Module | None = None,
    ) -> None:
        self.name, self.model, self.processor, self.tokenizer = name, model, processor, tokenizer
        self.model.eval().requires_grad_(False)
        self.scale, self.head = scale, head
        self.needs_prompt = head is None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ClipModelJudge:
        self.model.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> unit (B, D), prepared as the reference prepares PIL images."""
        pixels = self.processor(images=to_pil(images), return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, prompt: str) -> torch.Tensor:
        """Prompt -> unit (1, D); padded to the context length (the causal text tower pools at
        the end token, so padding does not change it)."""
        length = int(self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(
            [prompt], padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device))
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, masks: torch.Tensor, prompt: str) -> torch.Tensor:
        scores = []
        text = None if self.head is not None else self.embed_text(prompt)  # (1, D)
        for i in range(0, images.shape[0], 8):
            emb = self.embed_images(images[i : i + 8])  # (b, D)
            if self.head is not None:
                scores.append(self.head(emb).squeeze(-1).float().cpu())
                continue
            s = (emb @ text.T).squeeze(-1)  # (b,)
            if self.scale:
                s = self.model.logit_scale.exp().float() * s
            scores.append(s.cpu())
        return torch.cat(scores)


def _features(out: Any) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 an output whose pooler is them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_aesthetic_head(path: str | Path) -> torch.nn.Module:
    """The LAION predictor's head: the improved predictor's MLP ``.pth`` (``layers.0.weight``
    ...), or the first predictor's single linear layer (``weight`` (1, D), ``bias``;
    ``sa_0_4_vit_l_14_linear.pth``, the one BrushBench's aesthetic score uses); or safetensors."""
    state = read_state(path, "aesthetic")
    if set(state) == {"weight", "bias"}:  # the first LAION predictor: Linear(D, 1)
        head: torch.nn.Module = torch.nn.Linear(int(state["weight"].shape[1]), 1).eval()
        head.load_state_dict(state)
        return head
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    if "0.weight" not in state:
        raise ModelNotFoundError(
            f"judge-model: aesthetic={str(path)!r} is not the LAION aesthetic predictor (no "
            f"layers.0.weight; expected {AESTHETIC_SOURCE})"
        )
    head = aesthetic_head(int(state["0.weight"].shape[1]))
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelNotFoundError(f"judge-model: aesthetic={str(path)!r}: {first}") from None
    return head


def read_state(path: str | Path, judge: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, else ``torch.load(weights_only=True)``; a
    ``{"state_dict": ...}`` wrapper and DataParallel's ``module.`` prefixes removed."""
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"judge-model: {judge}={str(path)!r} is not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # a broken or foreign file: one line
        raise ModelNotFoundError(f"judge-model: {judge}={str(path)!r} unreadable: {e}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelNotFoundError(f"judge-model: {judge}={str(path)!r} holds no state dict")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def z_scores(scores: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B,) zero mean, unit deviation over the batch (all equal: zeros)."""
    centred = scores.float() - scores.float().mean()
    std = centred.pow(2).mean().sqrt()
    return centred / std if float(std) > 1e-12 else torch.zeros_like(centred)


def ensemble(scores: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Follow-Your-Preference's ensemble: sum over judges of weight * z-scored scores (B,)."""
    total = sum(weights[k] for k in scores)
    return sum(weights[k] / total * z_scores(s) for k, s in scores.items())  # type: ignore[return-value]


@dataclass
class Ranking:
    """What the judges said about a batch: ``score`` the ranking score (B,), ``judges`` each
    judge's own scores (B,)."""

    score: torch.Tensor
    judges: dict[str, torch.Tensor] = field(default_factory=dict)


def members(ranker: str, rank_weights: str) -> dict[str, float]:
    """The judges ``ranker`` consults, with weights (one judge: weight 1)."""
    if ranker == "ensemble":
        return {k: w for k, w in parse_weights(rank_weights).items() if w > 0}
    if ranker not in JUDGES:
        raise InputError(f"ranker: {ranker!r} must be one of {', '.join((*JUDGES, 'ensemble'))}")
    return {ranker: 1.0}


def _processor(model_id: str | None, image_size: int, local: bool) -> Any:
    """The model's own PIL image processor where its folder has one, else CLIP's (resize of the
    short side to ``image_size``, centre crop, OpenAI's mean and deviation)."""
    from transformers import CLIPImageProcessorPil

    if model_id is not None:
        try:
            return CLIPImageProcessorPil.from_pretrained(model_id, local_files_only=local)
        except (OSError, ValueError):
            pass
    side = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=side)


def _tokenizer(model_id: str, fallback: str, local: bool) -> Any:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(model_id, local_files_only=local)
    except (OSError, ValueError):
        return CLIPTokenizer.from_pretrained(fallback, local_files_only=local)


def resolve_file(spec: str, judge: str) -> Path:
    """A judge's weight file: a local path, or ``owner/repo/file`` on the hub (cache first)."""
    from blendedit.models import load_cached_first

    if not spec:
        raise ModelNotFoundError(
            f"judge-model: {judge} needs its weight file: --judge-model {judge}=FILE"
            + (f" ({AESTHETIC_SOURCE})" if judge == "aesthetic" else "")
        )
    if Path(spec).exists() or spec.startswith((".", "/", "~")) or spec.count("/") < 2:
        if not Path(spec).is_file():
            raise ModelNotFoundError(f"judge-model: {judge}={spec!r} is not a file")
        return Path(spec)
    repo, filename = "/".join(spec.split("/")[:2]), "/".join(spec.split("/")[2:])

    def fetch(local: bool) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename, local_files_only=local))

    return load_cached_first("judge-model", spec, fetch, None)


def load_pickscore(model_id: str) -> ClipModelJudge:
    """PickScore_v1: a ``CLIPModel``; processor and tokenizer from its folder, else ViT-H/14's."""
    from transformers import CLIPModel

    from blendedit.models import load_cached_first

    def load(local: bool) -> ClipModelJudge:
        model = CLIPModel.from_pretrained(model_id, local_files_only=local)
        size = int(model.config.vision_config.image_size)
        proc = _processor(model_id, size, local)
        return ClipModelJudge("pickscore", model, proc, _tokenizer(model_id, VIT_H_14, local),
                              scale=True)  # fmt: skip

    return load_cached_first("judge-model", model_id, load, None)


def load_hps(spec: str, tokenizer_id: str) -> ClipModelJudge:
    """HPS v2.1: its open_clip ViT-H-14 checkpoint onto a ``CLIPModel`` (:mod:`.openclip`); the
    tokenizer from a folder beside the checkpoint with a ``vocab.json``, else ``tokenizer_id``."""
    from blendedit.frame.openclip import clip_model_from_open_clip
    from blendedit.models import load_cached_first

    path = resolve_file(spec, "hps")
    model = clip_model_from_open_clip(
        read_state(path, "hps"), path.parent / "open_clip_config.json"
    )
    size = int(model.config.vision_config.image_size)
    beside = path.parent if (path.parent / "vocab.json").is_file() else None

    def load(local: bool) -> ClipModelJudge:
        tok = _tokenizer(str(beside) if beside else tokenizer_id, tokenizer_id, local)
        return ClipModelJudge("hps", model, _processor(None, size, local), tok)

    return load_cached_first("judge-model", str(beside or tokenizer_id), load, None)


def load_aesthetic(spec: str, clip_id: str) -> ClipModelJudge:
    """The LAION aesthetic predictor's MLP (``spec``, a file) on ``clip_id``'s image embedding."""
    from transformers import CLIPModel

    from blendedit.models import load_cached_first

    head = load_aesthetic_head(resolve_file(spec, "aesthetic"))

    def load(local: bool) -> ClipModelJudge:
        model = CLIPModel.from_pretrained(clip_id, local_files_only=local)
        size = int(model.config.vision_config.image_size)
        return ClipModelJudge("aesthetic", model, _processor(clip_id, size, local), head=head)

    judge = load_cached_first("judge-model", clip_id, load, None)
    first = head if isinstance(head, torch.nn.Linear) else head[0]
    width, dim = int(first.weight.shape[1]), int(judge.model.config.projection_dim)
    if width != dim:
        raise ModelNotFoundError(
            f"judge-model: aesthetic={spec!r} takes {width}-wide embeddings but aesthetic-clip="
            f"{clip_id!r} gives {dim}"
        )
    return judge


class ImageRewardJudge(Judge):
    """ImageReward (:mod:`.imagereward`): the prompt padded to 35 BERT tokens cross-attending to
    the BLIP ViT's tokens of the whole image, prepared as CLIP prepares it (ImageReward's own
    transform: resize, centre crop 224, OpenAI's mean and deviation)."""

    name = "imagereward"

    def __init__(self, model: Any, processor: Any, tokenizer: Any) -> None:
        self.model, self.processor, self.tokenizer = model, processor, tokenizer

    def to(self, device: torch.device | str) -> ImageRewardJudge:
        self.model.to(device)
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor, masks: torch.Tensor, prompt: str) -> torch.Tensor:
        from blendedit.frame.imagereward import TEXT_LENGTH

        device = next(self.model.parameters()).device
        tok = self.tokenizer(prompt, padding="max_length", truncation=True,
                             max_length=TEXT_LENGTH, return_tensors="pt")  # fmt: skip
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)  # (1, 35)
        scores = []
        for i in range(0, images.shape[0], 8):
            pil = to_pil(images[i : i + 8])
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
            scores.append(self.model(pixels.to(device), ids, mask).float().cpu())
        return torch.cat(scores)


def load_imagereward(spec: str, tokenizer_id: str) -> ImageRewardJudge:
    """``ImageReward.pt`` (a file, or ``owner/repo/file`` on the hub) with BLIP's
    ``med_config.json`` beside it where present; the BERT tokenizer from a folder beside the
    checkpoint with a ``vocab.txt``, else ``tokenizer_id``."""
    from transformers import BertTokenizer

    from blendedit.frame.imagereward import load_imagereward_model
    from blendedit.models import load_cached_first

    path = resolve_file(spec, "imagereward")
    model = load_imagereward_model(read_state(path, "imagereward"), path.parent / "med_config.json")
    size = int(model.vision.config.image_size)
    name = str(path.parent) if (path.parent / "vocab.txt").is_file() else tokenizer_id

    def load(local: bool) -> ImageRewardJudge:
        tok = BertTokenizer.from_pretrained(name, local_files_only=local)
        return ImageRewardJudge(model, _processor(None, size, local), tok)

    return load_cached_first("judge-model", name, load, None)


def parse_judge_models(items: Any) -> dict[str, str]:
    """``--judge-model NAME=MODEL`` values -> {name: model}; one line for an unknown name."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, model = str(item).partition("=")
        if not sep or name not in DEFAULT_JUDGE_MODELS or not model:
            raise InputError(
                f"judge-model: {item!r} must be NAME=MODEL with NAME one of "
                f"{', '.join(DEFAULT_JUDGE_MODELS)}"
            )
        out[name] = model
    return out


class Judges:
    """The judges an editor ranks with, each loaded when first asked for and kept.

    ``models``: a model per judge name (:data:`DEFAULT_JUDGE_MODELS`' keys), the defaults
    otherwise; ``clip``: the editor's own CLIP, which the ``clip`` judge uses when given."""

    def __init__(self, models: Mapping[str, str] | None = None) -> None:
        self.models = {**DEFAULT_JUDGE_MODELS, **(models or {})}
        self.loaded: dict[str, Judge] = {}

    def get(self, name: str, device: torch.device, clip: ClipScorer | None = None) -> Judge:
        if name == "clip" and clip is not None:
            return ClipJudge(clip)
        if name not in self.loaded:
            m = self.models
            loaders: dict[str, Callable[[], Any]] = {
                "clip": lambda: ClipJudge(ClipScorer.from_pretrained(m["clip"])),
                "pickscore": lambda: load_pickscore(m["pickscore"]),
                "hps": lambda: load_hps(m["hps"], m["hps-tokenizer"]),
                "imagereward": lambda: load_imagereward(
                    m["imagereward"], m["imagereward-tokenizer"]
                ),
                "aesthetic": lambda: load_aesthetic(m["aesthetic"], m["aesthetic-clip"]),
            }
            judge = loaders[name]()
            self.loaded[name] = judge.to(device) if hasattr(judge, "to") else judge
        return self.loaded[name]

    def rank(
        self, ranker: str, rank_weights: str, shown: RankInputs, clip: ClipScorer | None
    ) -> Ranking | None:
        """Score a batch with ``ranker`` (an ensemble: its weighted judges); judges that need a
        prompt sit out when there is none. None: nobody could judge."""
        weights = members(ranker, rank_weights)
        if not shown.prompt:
            weights = {k: w for k, w in weights.items() if not NEEDS_PROMPT[k]}
        if not weights:
            return None
        scores: dict[str, torch.Tensor] = {}
        for name in weights:
            judge = self.get(name, shown.device, clip)
            images = shown.whole if SEES[name] == "whole" else shown.decoded
            scores[name] = judge.score(images, shown.mask, shown.prompt).float().cpu()
        if ranker != "ensemble":
            return Ranking(score=scores[ranker], judges=scores)
        return Ranking(score=ensemble(scores, weights), judges=scores)


@dataclass
class RankInputs:
    """What the judges may see of a batch: ``decoded`` (B, 3, H, W) in [0, 1] the model's output
    at the working size, ``mask`` (1, 1, H, W) the binary mask, ``whole`` (B, 3, H, W) the
    candidates inside the mask and the photo outside it."""

    decoded: torch.Tensor
    mask: torch.Tensor
    whole: torch.Tensor
    prompt: str
    device: torch.device


def rank_inputs(
    decoded: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor, prompt: str, device: Any
) -> RankInputs:
    """``photo`` (1, 3, H, W) in [-1, 1] the working region; ``mask`` (1, 1, H, W) coverage."""
    binary = (mask > 0).to(decoded.dtype)  # (1, 1, H, W)
    soft = mask.to(decoded)  # the paste's own coverage at the edge
    original = ((photo.to(decoded) + 1) / 2).clamp(0, 1)  # (1, 3, H, W)
    whole = decoded * soft + original * (1 - soft)  # (B, 3, H, W)
    return RankInputs(decoded, binary, whole, prompt, torch.device(device))
