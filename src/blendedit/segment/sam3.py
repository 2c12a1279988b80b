"""SAM 3 (Carion et al. 2025, "SAM 3: Segment Anything with Concepts", sec. 3): promptable
concept segmentation. A noun phrase goes through a CLIP-style text encoder; a DETR decoder over
the photo's features answers a set of instance queries, each with a mask, a box and a score,
and a presence head says whether the concept is in the photo at all (a query's score is
sigmoid(its logit) x sigmoid(presence)). The selection is the union of the instances above the
threshold.

``Sam3Processor`` and ``Sam3ImageProcessor`` import torchvision in transformers 5 (and SAM 3's
box prompts call ``torchvision.ops.roi_align``), so text only, with the inputs prepared as the
processor prepares them: the photo stretched to the encoder's square (bilinear), rescaled to
[0, 1] and normalised with mean = std = 0.5; the text through its tokenizer padded to 32 tokens.
The output is post-processed as ``Sam3ImageProcessor.post_process_instance_segmentation`` does
(sigmoid scores times presence, kept above the threshold, mask probabilities resized bilinearly
to the photo), without its final binarisation: the soft mask is the instances' pixel-wise
maximum."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from blendedit.errors import InputError
from blendedit.segment.base import Box, PhotoCache, Segmentation, Segmenter, Selection, load_part

SAM3_MEAN = (0.5, 0.5, 0.5)  # Sam3ImageProcessor's IMAGENET_STANDARD_MEAN / _STD
SAM3_STD = (0.5, 0.5, 0.5)
TEXT_LENGTH = 32  # Sam3Processor pads the text to 32 tokens (the text encoder's positions)
SCORE_THRESHOLD = 0.3  # post_process_instance_segmentation's default


class Sam3Segmenter(Segmenter):
    """Text -> soft mask, with ``Sam3Model`` and its tokenizer (inputs prepared here)."""

    model_types: ClassVar[tuple[str, ...]] = ("sam3",)
    takes_text: ClassVar[bool] = True

    def __init__(
        self, model: Any, tokenizer: Any, name: str = "sam3", threshold: float = SCORE_THRESHOLD
    ) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.threshold = threshold
        self.device = next(model.parameters()).device
        self.side = int(model.config.vision_config.image_size)
        self.cache = PhotoCache()

    @classmethod
    def load(
        cls, name: str, device: torch.device, dtype: torch.dtype, local: bool | None
    ) -> Sam3Segmenter:
        from transformers import AutoTokenizer, Sam3Model

        model = load_part(
            "segmenter",
            name,
            lambda lo: Sam3Model.from_pretrained(name, local_files_only=lo),
            local,
        )
        tokenizer = load_part(
            "segmenter", name,
            lambda lo: AutoTokenizer.from_pretrained(name, local_files_only=lo), local,
        )  # fmt: skip
        return cls(model.to(device, dtype), tokenizer, name)

    def check(self, selection: Selection) -> None:
        """Text only: SAM 3's box prompts need torchvision (``roi_align``), which is not here."""
        if selection.points or selection.box is not None:
            raise InputError(
                f"segmenter: {self.name!r} (SAM 3) takes text only here, not points or boxes "
                "(its box prompts need torchvision); choose SAM or SAM 2 for clicks"
            )
        super().check(selection)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, S, S): the photo stretched to the encoder's square, in [0, 1], normalised."""
        square = image.convert("RGB").resize((self.side, self.side), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255).permute(2, 0, 1)
        mean = torch.tensor(SAM3_MEAN)[:, None, None]
        std = torch.tensor(SAM3_STD)[:, None, None]
        return ((x - mean) / std)[None]

    def text_inputs(self, text: str) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (1, 32), as ``Sam3Processor`` pads them."""
        enc = self.tokenizer(
            text, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def embed(self, image: Image.Image) -> Any:
        """The vision encoder's outputs for ``image``, computed once per image."""
        dtype = next(self.model.parameters()).dtype
        return self.cache.get(
            image, lambda im: self.model.get_vision_features(self.pixels(im).to(self.device, dtype))
        )

    @torch.no_grad()
    def instances(
        self, image: Image.Image, text: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The instances ``text`` names scoring above ``threshold``: mask probabilities at the
        photo's size (N, H, W), boxes in pixels (N, 4), scores (N,)."""
        out = self.model(vision_embeds=self.embed(image), **self.text_inputs(text))
        scores = out.pred_logits[0].float().sigmoid()  # (Q,)
        if out.presence_logits is not None:
            scores = scores * out.presence_logits[0].float().sigmoid()  # (1,) broadcast
        keep = (scores > self.threshold).cpu()
        w, h = image.size
        boxes = out.pred_boxes[0].float().cpu()[keep] * torch.tensor([w, h, w, h])  # (N, 4)
        probs = out.pred_masks[0].float().sigmoid().cpu()[keep]  # (N, h', w')
        if len(probs):
            probs = F.interpolate(probs[None], (h, w), mode="bilinear", align_corners=False)[0]
        return probs, boxes, scores.cpu()[keep]

    def segment(self, image: Image.Image, selection: Selection) -> Segmentation:
        self.check(selection)
        assert selection.text is not None
        probs, boxes, scores = self.instances(image, selection.text)
        if not len(probs):
            raise InputError(
                f"mask-from: nothing in the photo matches {selection.text!r} (no instance scored "
                f"above {self.threshold:g}); name it differently or click on it with SAM"
            )
        found: list[Box] = [tuple(b) for b in boxes.tolist()]  # type: ignore[misc]
        mask = probs.amax(dim=0).clamp(0, 1)  # (H, W): the instances' union
        return Segmentation(
            np.ascontiguousarray(mask.numpy(), dtype=np.float32), found, scores.tolist()
        )
