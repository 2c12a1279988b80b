"""Prediction ranking (BLD paper 4.4; Blended Diffusion 4): CLIP similarity of the masked result
to the prompt. Shared by the latent and the pixel methods."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from blendedit.errors import ModelNotFoundError

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"  # ViT-B/16, as in both papers
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out: Any) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 returns an output whose pooler is them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """CLIP image/text embeddings with differentiable, aspect-preserving preprocessing.

    Images are (B, 3, H, W) floats in [0, 1]; they are zero-padded to a square (the padding is
    black, like the masked-out area) and resized to CLIP's input size, never cropped, so the whole
    masked region is always seen.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
        std: tuple[float, ...] = OPENAI_CLIP_STD,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(
        cls, model_id: str = DEFAULT_CLIP_MODEL, torch_dtype: torch.dtype | None = None
    ) -> ClipScorer:
        from transformers import CLIPModel, CLIPTokenizer

        from blendedit.models import load_cached_first

        def load(local: bool) -> ClipScorer:
            model = CLIPModel.from_pretrained(
                model_id, torch_dtype=torch_dtype, local_files_only=local
            )
            tokenizer = CLIPTokenizer.from_pretrained(model_id, local_files_only=local)
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
            try:  # the processor config, where present, states the normalisation
                from transformers import CLIPImageProcessor

                proc = CLIPImageProcessor.from_pretrained(model_id, local_files_only=local)
                mean, std = tuple(proc.image_mean), tuple(proc.image_std)
            except (OSError, ValueError, ImportError):
                pass
            return cls(model, tokenizer, mean, std)

        try:
            return load_cached_first("clip-model", model_id, load, None)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"{e}; or turn ranking off with --no-rank") from None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str) -> ClipScorer:
        self.model.to(device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised CLIP input; differentiable."""
        h, w = images.shape[-2:]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        x = F.pad(images, (left, side - w - left, top, side - h - top))
        x = F.interpolate(
            x, size=(self.image_size,) * 2, mode="bicubic", antialias=True, align_corners=False
        )
        mean, std = self.mean.to(x), self.std.to(x)
        return ((x - mean) / std).to(self.dtype)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> unit-norm (B, D)."""
        pixels = self.preprocess(images.to(self.device))
        return F.normalize(
            _features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1
        )

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> unit-norm (N, D)."""
        max_len = min(
            self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings
        )
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=tok.input_ids.to(self.device),
            attention_mask=tok.attention_mask.to(self.device),
        )
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def score(
        self, images: torch.Tensor, masks: torch.Tensor, prompt: str, chunk: int = 16
    ) -> torch.Tensor:
        """SPEC 1 "Prediction ranking": cosine similarity between CLIP(x_hat * m) and CLIP(d).

        images (B, 3, H, W) in [0, 1]; masks (B or 1, 1, H, W) -> scores (B,) float32 on the CPU.
        """
        text = self.embed_text([prompt])  # (1, D)
        scores = []
        for i in range(0, images.shape[0], chunk):
            img = images[i : i + chunk].to(self.device)
            m = masks if masks.shape[0] == 1 else masks[i : i + chunk]
            emb = self.embed_images(img * m.to(img))  # (b, D)
            scores.append((emb @ text.T).squeeze(-1).cpu())
        return torch.cat(scores)


def rank_order(scores: torch.Tensor | None, n: int) -> list[int]:
    """Indices best first (higher score first; ties keep generation order). No scores: as made."""
    if scores is None:
        return list(range(n))
    return sorted(range(n), key=lambda i: (-float(scores[i]), i))
