"""SAM (Kirillov et al. 2023, "Segment Anything", sec. 3): an image encoder run once per photo,
then a light prompt encoder and mask decoder per click or box; three candidate masks per prompt
ranked by their predicted IoU. The embedding is cached per photo, so each further click costs the
decoder only."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from blendedit.segment.base import (
    Box,
    PhotoCache,
    Point,
    Segmentation,
    Segmenter,
    Selection,
    load_part,
)


class SamSegmenter(Segmenter):
    """Points and boxes -> soft mask, with ``SamModel`` and ``SamProcessor``."""

    model_types: ClassVar[tuple[str, ...]] = ("sam",)
    takes_clicks: ClassVar[bool] = True
    model_class: ClassVar[str] = "SamModel"  # the transformers classes (SAM-HQ: its own)
    processor_class: ClassVar[str] = "SamProcessor"

    def __init__(self, model: Any, processor: Any, name: str = "sam") -> None:
        self.model, self.processor, self.name = model.eval(), processor, name
        self.device = next(model.parameters()).device
        self.cache = PhotoCache()

    @classmethod
    def load(
        cls, name: str, device: torch.device, dtype: torch.dtype, local: bool | None
    ) -> SamSegmenter:
        import transformers

        model_cls = getattr(transformers, cls.model_class)
        processor_cls = getattr(transformers, cls.processor_class)
        model = load_part(
            "segmenter", name,
            lambda lo: model_cls.from_pretrained(name, local_files_only=lo), local,
        )  # fmt: skip
        processor = load_part(
            "segmenter", name,
            lambda lo: processor_cls.from_pretrained(name, local_files_only=lo), local,
        )  # fmt: skip
        return cls(model.to(device, dtype), processor, name)

    @torch.no_grad()
    def embed(self, image: Image.Image) -> dict[str, Any]:
        """The image embedding (1, C, h, w) and the processor's sizes, computed once per image."""
        return self.cache.get(image, self._embed)

    def _embed(self, image: Image.Image) -> dict[str, Any]:
        inputs = self.processor(images=image, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        pixels = inputs["pixel_values"].to(self.device, dtype)
        return {
            **self.encode(pixels),
            "original_sizes": inputs["original_sizes"],
            "reshaped_input_sizes": inputs["reshaped_input_sizes"],
        }

    def encode(self, pixels: torch.Tensor) -> dict[str, Any]:
        """The encoder's outputs the decoder takes back: SAM's image embedding (1, C, h, w)."""
        return {"image_embeddings": self.model.get_image_embeddings(pixels)}

    def decoder_inputs(self, emb: dict[str, Any]) -> dict[str, Any]:
        """The cached entry's part the model's call takes (the sizes stay for post-processing)."""
        return {k: v for k, v in emb.items() if k not in ("original_sizes", "reshaped_input_sizes")}

    def _scale(self, original: torch.Tensor) -> tuple[float, float]:
        """x and y factors from the photo's pixels to the encoder's input, as the processor
        normalises prompts (the longest side to the encoder's, the aspect kept, rounded)."""
        h, w = (int(v) for v in original[0])
        side = self.processor.image_processor.size["longest_edge"]
        s = side / max(h, w)
        return int(w * s + 0.5) / w, int(h * s + 0.5) / h

    @torch.no_grad()
    def decode(
        self, image: Image.Image, points: tuple[Point, ...], boxes: list[Box]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Prompt -> low-resolution mask logits (P, 3, h, w) and predicted IoUs (P, 3); one
        prompt per box (each with every point), or one prompt of the points alone."""
        emb = self.embed(image)
        sx, sy = self._scale(emb["original_sizes"])
        n = max(1, len(boxes))
        kw: dict[str, torch.Tensor] = {}
        if points:
            xy = torch.tensor([[p.x * sx, p.y * sy] for p in points], dtype=torch.float32)
            kw["input_points"] = xy.expand(1, n, -1, -1).contiguous()  # (1, P, k, 2)
            labels = torch.tensor([int(p.positive) for p in points])
            kw["input_labels"] = labels.expand(1, n, -1).contiguous()  # (1, P, k)
        if boxes:
            scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
            kw["input_boxes"] = (torch.tensor(boxes, dtype=torch.float32) * scale)[None]  # (1,P,4)
        dtype = next(self.model.parameters()).dtype
        kw = {
            k: v.to(self.device, dtype if v.is_floating_point() else v.dtype) for k, v in kw.items()
        }
        out = self.model(**self.decoder_inputs(emb), multimask_output=True, **kw)
        return out.pred_masks[0].float(), out.iou_scores[0].float(), emb

    def masks(
        self, image: Image.Image, points: tuple[Point, ...], boxes: list[Box]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt's best candidate (by predicted IoU) as logits at the photo's size
        (P, H, W), with its IoU (P,): the processor's ``post_process_masks`` unthresholded."""
        logits, iou, emb = self.decode(image, points, boxes)  # (P, 3, h, w), (P, 3)
        best = iou.argmax(dim=1)  # (P,)
        chosen = logits[torch.arange(len(best)), best][None, :, None]  # (1, P, 1, h, w)
        full = self.processor.post_process_masks(
            chosen.cpu(), emb["original_sizes"], emb["reshaped_input_sizes"], binarize=False
        )[0]  # (P, 1, H, W) logits
        return full[:, 0], iou[torch.arange(len(best)), best]

    def segment(self, image: Image.Image, selection: Selection) -> Segmentation:
        self.check(selection)
        boxes = [selection.box] if selection.box is not None else []
        return self.segment_prompts(image, selection.points, boxes)

    def segment_prompts(
        self, image: Image.Image, points: tuple[Point, ...], boxes: list[Box]
    ) -> Segmentation:
        """The union (pixel-wise maximum) of every prompt's best mask, as probabilities."""
        logits, iou = self.masks(image, points, boxes)
        probs = torch.sigmoid(logits).amax(dim=0)  # (H, W)
        return Segmentation(
            np.ascontiguousarray(probs.numpy(), dtype=np.float32), list(boxes), iou.tolist()
        )


class SamHQSegmenter(SamSegmenter):
    """SAM-HQ (Ke et al. 2023, "Segment Anything in High Quality", sec. 3): SAM with a learned
    high-quality output token whose mask, fused with the encoder's early ViT features, is added
    to SAM's (``hq_token_only=False``, the paper's default). Same prompts and post-processing as
    SAM; the encoder's intermediate embeddings are cached with the image embedding."""

    model_types: ClassVar[tuple[str, ...]] = ("sam_hq",)
    model_class: ClassVar[str] = "SamHQModel"
    processor_class: ClassVar[str] = "SamHQProcessor"

    def encode(self, pixels: torch.Tensor) -> dict[str, Any]:
        """The image embedding (1, C, h, w) and the ViT's intermediate embeddings ((1, h, w, D)
        each), which the HQ decoder fuses."""
        image_embeddings, intermediate = self.model.get_image_embeddings(pixels)
        return {"image_embeddings": image_embeddings, "intermediate_embeddings": intermediate}
