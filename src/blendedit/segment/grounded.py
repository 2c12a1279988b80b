"""Text -> boxes -> masks: GroundingDINO (Liu et al. 2023, "Grounding DINO", sec. 3) finds the
boxes a phrase names, SAM (Kirillov et al. 2023) turns each box into a mask ("Grounded SAM", Ren
et al. 2024, sec. 2); the selection is their union. Detection follows transformers'
``zero-shot-object-detection`` pipeline: the phrase tokenized as given, a box's score the
highest sigmoid over the phrase's tokens."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.segment.base import Box, Segmentation, Segmenter, Selection, load_part
from blendedit.segment.sam import SamSegmenter

BOX_THRESHOLD = 0.3  # GroundingDINO's box threshold in its demos (and Fooocus')


def phrase(text: str) -> str:
    """GroundingDINO's prompt form: lower case, ending with a full stop."""
    text = text.strip().lower()
    return text if text.endswith(".") else text + "."


class GroundedSamSegmenter(Segmenter):
    """Text (and optional clicks, given to SAM with every box) -> union of SAM's box masks.

    Named ``DETECTOR+SAM`` (two ids or folders joined by ``+``)."""

    model_types: ClassVar[tuple[str, ...]] = ("grounding-dino", "mm-grounding-dino")
    takes_text: ClassVar[bool] = True
    takes_clicks: ClassVar[bool] = True

    def __init__(
        self, model: Any, processor: Any, sam: SamSegmenter, name: str = "grounded-sam",
        threshold: float = BOX_THRESHOLD, max_boxes: int = 16,
    ) -> None:  # fmt: skip
        self.model, self.processor, self.sam, self.name = model.eval(), processor, sam, name
        self.threshold, self.max_boxes = threshold, max_boxes
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls, name: str, device: torch.device, dtype: torch.dtype, local: bool | None
    ) -> GroundedSamSegmenter:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        detector, _, sam_name = name.partition("+")
        if not sam_name:
            raise InputError(
                f"segmenter: {name!r} is a detector; name a SAM after it: {name}+facebook/sam-vit-base"
            )
        model = load_part(
            "segmenter", detector,
            lambda lo: AutoModelForZeroShotObjectDetection.from_pretrained(detector, local_files_only=lo),
            local,
        )  # fmt: skip
        processor = load_part(
            "segmenter", detector,
            lambda lo: AutoProcessor.from_pretrained(detector, local_files_only=lo), local,
        )  # fmt: skip
        sam = SamSegmenter.load(sam_name, device, dtype, local)
        return cls(model.to(device, dtype), processor, sam, name)

    @torch.no_grad()
    def detect(self, image: Image.Image, text: str) -> tuple[list[Box], list[float]]:
        """The boxes (pixels, clipped to the photo) ``text`` names with a score of at least
        ``threshold``, best first (at most ``max_boxes``)."""
        inputs = dict(self.processor.tokenizer(phrase(text), return_tensors="pt"))
        inputs.update(self.processor.image_processor(image, return_tensors="pt"))
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: v.to(self.device, dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }
        out = self.model(**inputs)
        found = self.processor.image_processor.post_process_object_detection(
            out, threshold=self.threshold, target_sizes=[(image.height, image.width)]
        )[0]
        order = found["scores"].float().argsort(descending=True)[: self.max_boxes]
        w, h = image.size
        boxes = found["boxes"].float()[order].cpu()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        return [tuple(b) for b in boxes.tolist()], found["scores"].float()[order].tolist()

    def segment(self, image: Image.Image, selection: Selection) -> Segmentation:
        self.check(selection)
        boxes: list[Box] = [selection.box] if selection.box is not None else []
        scores: list[float] = []
        if selection.text:
            found, scores = self.detect(image, selection.text)
            if not found:
                raise InputError(
                    f"mask-from: nothing in the photo matches {selection.text!r} (no box scored "
                    f"{self.threshold:g} or more); name it differently or click on it"
                )
            boxes += found
        seg = self.sam.segment_prompts(image, selection.points, boxes)
        return Segmentation(seg.mask, boxes, scores or seg.scores)
