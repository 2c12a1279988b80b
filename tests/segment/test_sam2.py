"""SAM 2 on single images (issue 21): ``Sam2Processor`` needs torchvision in transformers 5, so
the inputs are prepared as it does (the photo stretched to the square, ImageNet normalisation,
prompts one level deeper than SAM's, logits bilinearly resized); the model runs here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blendedit.errors import InputError
from blendedit.segment import Point, Sam2Segmenter, Selection, load_segmenter
from tiny_segmenters import build_sam2


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    return load_segmenter(str(build_sam2(tmp_path_factory.mktemp("sam2"))))


def test_sam2_loads_by_its_config_and_encodes_a_photo_once(sam2, scene):
    assert isinstance(sam2, Sam2Segmenter)
    for x in (10, 40, 70):
        mask = sam2.segment(scene, Selection(points=(Point(x, 20),))).mask
        assert mask.shape == (60, 96) and mask.dtype == np.float32
    assert sam2.encodes == 1


def test_sam2_prompts_scale_x_and_y_apart(sam2):
    """The photo is stretched to the square, not padded as SAM's: the centre of a 96x60 photo
    is the square's centre (SAM's longest-side scaling would put it at y = 40 of 128)."""
    kw = sam2.prompts((96, 60), (Point(48, 30), Point(0, 60, False)), [(0, 0, 96, 60)])
    assert kw["input_points"].tolist() == [[[[64.0, 64.0], [0.0, 128.0]]]]
    assert kw["input_labels"].tolist() == [[[1, 0]]]
    assert kw["input_boxes"].tolist() == [[[0.0, 0.0, 128.0, 128.0]]]


def test_sam2_cached_path_equals_the_models_full_call(sam2, scene):
    """With the cached embedding, the mask equals ``Sam2Model`` called on the pixels (encoder
    and decoder in one call), the best candidate resized as ``Sam2ImageProcessor``'s
    ``post_process_masks`` does; a flipped label gives another mask (so the labels count)."""
    points = (Point(25, 30), Point(70, 20, positive=False))
    logits, _ = sam2.masks(scene, points, [])
    kw = sam2.prompts(scene.size, points, [])
    with torch.no_grad():
        out = sam2.model(pixel_values=sam2.pixels(scene), multimask_output=True, **kw)
    best = out.iou_scores[0, 0].argmax()
    ref = F.interpolate(out.pred_masks[0, :, best][:, None], (60, 96), mode="bilinear")[:, 0]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    flipped, _ = sam2.masks(scene, (Point(25, 30), Point(70, 20)), [])
    assert (flipped - logits).abs().max() > 1e-6


def test_sam2_takes_no_text(sam2, scene):
    with pytest.raises(InputError, match="takes clicks and boxes, not text"):
        sam2.segment(scene, Selection(text="cup"))
