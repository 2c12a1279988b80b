"""SAM 2 (Ravi et al. 2024, "SAM 2: Segment Anything in Images and Videos", sec. 4) on single
images: a Hiera encoder run once per photo (cached), then the prompt encoder and mask decoder per
click or box, as SAM. ``Sam2Processor`` imports torchvision in transformers 5, so the inputs are
prepared here as it prepares them: the photo stretched to the encoder's square (not padded: x and
y scale apart), rescaled and normalised with ImageNet's mean and deviation; prompts one nesting
level deeper than SAM's; the logits bilinearly resized to the photo (its ``post_process_masks``)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
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

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # Sam2ImageProcessor's defaults
IMAGENET_STD = (0.229, 0.224, 0.225)


class Sam2Segmenter(Segmenter):
    """Points and boxes -> soft mask, with ``Sam2Model`` (inputs prepared as its processor does)."""

    model_types: ClassVar[tuple[str, ...]] = ("sam2",)
    takes_clicks: ClassVar[bool] = True

    def __init__(self, model: Any, name: str = "sam2") -> None:
        self.model, self.name = model.eval(), name
        self.device = next(model.parameters()).device
        self.side = int(model.config.prompt_encoder_config.image_size)
        self.cache = PhotoCache()

    @classmethod
    def load(
        cls, name: str, device: torch.device, dtype: torch.dtype, local: bool | None
    ) -> Sam2Segmenter:
        from transformers import Sam2Model

        model = load_part(
            "segmenter",
            name,
            lambda lo: Sam2Model.from_pretrained(name, local_files_only=lo),
            local,
        )
        return cls(model.to(device, dtype), name)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, S, S): the photo stretched to the square, in [0, 1], normalised."""
        square = image.convert("RGB").resize((self.side, self.side), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255).permute(2, 0, 1)
        mean, std = (
            torch.tensor(IMAGENET_MEAN)[:, None, None],
            torch.tensor(IMAGENET_STD)[:, None, None],
        )
        return ((x - mean) / std)[None]

    @torch.no_grad()
    def embed(self, image: Image.Image) -> Any:
        """The encoder's feature maps for ``image``, computed once per image."""
        dtype = next(self.model.parameters()).dtype
        return self.cache.get(
            image,
            lambda im: self.model.get_image_embeddings(self.pixels(im).to(self.device, dtype)),
        )

    def prompts(self, size: tuple[int, int], points: tuple[Point, ...], boxes: list[Box]) -> dict:
        """Prompt tensors at the encoder's square: points (1, P, k, 2), labels (1, P, k), boxes
        (1, P, 4); x and y scaled apart (the photo is stretched)."""
        sx, sy = self.side / size[0], self.side / size[1]
        n = max(1, len(boxes))
        kw: dict[str, torch.Tensor] = {}
        if points:
            xy = torch.tensor([[p.x * sx, p.y * sy] for p in points], dtype=torch.float32)
            kw["input_points"] = xy.expand(1, n, -1, -1).contiguous()
            labels = torch.tensor([int(p.positive) for p in points])
            kw["input_labels"] = labels.expand(1, n, -1).contiguous()
        if boxes:
            scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
            kw["input_boxes"] = (torch.tensor(boxes, dtype=torch.float32) * scale)[None]
        return kw

    @torch.no_grad()
    def masks(
        self, image: Image.Image, points: tuple[Point, ...], boxes: list[Box]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt's best candidate (by predicted IoU) as logits at the photo's size
        (P, H, W), with its IoU (P,)."""
        dtype = next(self.model.parameters()).dtype
        kw = {
            k: v.to(self.device, dtype if v.is_floating_point() else v.dtype)
            for k, v in self.prompts(image.size, points, boxes).items()
        }
        out = self.model(image_embeddings=self.embed(image), multimask_output=True, **kw)
        logits, iou = out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu()  # (P,3,h,w)
        best = iou.argmax(dim=1)
        chosen = logits[torch.arange(len(best)), best][:, None]  # (P, 1, h, w)
        full = F.interpolate(
            chosen, (image.height, image.width), mode="bilinear", align_corners=False
        )
        return full[:, 0], iou[torch.arange(len(best)), best]

    def segment(self, image: Image.Image, selection: Selection) -> Segmentation:
        self.check(selection)
        boxes = [selection.box] if selection.box is not None else []
        logits, iou = self.masks(image, selection.points, boxes)
        probs = torch.sigmoid(logits).amax(dim=0)
        return Segmentation(
            np.ascontiguousarray(probs.numpy(), dtype=np.float32), boxes, iou.tolist()
        )
