"""CLIPSeg (Lüddecke & Ecker 2022, "Image Segmentation Using Text and Image Prompts", sec. 3):
CLIP's activations and the text's embedding through a small decoder -> per-pixel logits on the
processor's square; here the sigmoid, stretched back to the photo's size."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image

from blendedit.segment.base import Segmentation, Segmenter, Selection, load_part, resize_probs


class ClipSegSegmenter(Segmenter):
    """Text -> soft mask, with ``CLIPSegForImageSegmentation`` and its processor."""

    model_types: ClassVar[tuple[str, ...]] = ("clipseg",)
    takes_text: ClassVar[bool] = True

    def __init__(self, model: Any, processor: Any, name: str = "clipseg") -> None:
        self.model, self.processor, self.name = model.eval(), processor, name
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls, name: str, device: torch.device, dtype: torch.dtype, local: bool | None
    ) -> ClipSegSegmenter:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        # AutoModel gives CLIPSegModel, without the decoder: name the class.
        model = load_part(
            "segmenter", name,
            lambda lo: CLIPSegForImageSegmentation.from_pretrained(name, local_files_only=lo),
            local,
        )  # fmt: skip
        processor = load_part(
            "segmenter", name,
            lambda lo: CLIPSegProcessor.from_pretrained(name, local_files_only=lo), local,
        )  # fmt: skip
        return cls(model.to(device, dtype), processor, name)

    @torch.no_grad()
    def probabilities(self, image: Image.Image, texts: list[str]) -> torch.Tensor:
        """(len(texts), h, w) probabilities on the processor's square (one image per text: the
        processor pairs them one to one)."""
        inputs = self.processor(
            text=texts, images=[image] * len(texts), padding=True, return_tensors="pt"
        )
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: v.to(self.device, dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }
        logits = self.model(**inputs).logits  # (B, h, w); (h, w) in older versions for B = 1
        return torch.sigmoid(logits.reshape(len(texts), *logits.shape[-2:]).float())

    def segment(self, image: Image.Image, selection: Selection) -> Segmentation:
        self.check(selection)
        probs = self.probabilities(image, [str(selection.text)])[0]  # (h, w)
        return Segmentation(resize_probs(probs, image.size), scores=[float(probs.max())])
