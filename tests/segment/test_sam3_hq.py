"""SAM 3 (text) and SAM-HQ (clicks, boxes), issue 21: SAM 3's processor needs torchvision in
transformers 5, so its inputs and post-processing are prepared here and checked against the
model's own outputs; SAM-HQ runs through its own processor, checked against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blendedit.errors import InputError
from blendedit.segment import Point, Sam3Segmenter, SamHQSegmenter, Selection, load_segmenter
from tiny_segmenters import build_sam3, build_sam_hq


@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    seg = load_segmenter(str(build_sam3(tmp_path_factory.mktemp("sam3"))))
    seg.threshold = 0.0  # random weights: keep every query
    return seg


@pytest.fixture(scope="module")
def sam_hq(tmp_path_factory):
    return load_segmenter(str(build_sam_hq(tmp_path_factory.mktemp("samhq"))))


def test_sam3_loads_by_its_config_and_pads_text_to_32(sam3, scene):
    assert isinstance(sam3, Sam3Segmenter)
    assert sam3.text_inputs("a red disc")["input_ids"].shape == (1, 32)
    for text in ("a red disc", "a blue square"):
        seg = sam3.segment(scene, Selection(text=text))
        assert seg.mask.shape == (60, 96) and seg.mask.dtype == np.float32
    assert sam3.encodes == 1


def test_sam3_mask_is_the_union_of_the_models_scored_instances(sam3, scene):
    """The mask equals the model's full call (pixels and text in one call) post-processed as
    ``post_process_instance_segmentation`` does (score = sigmoid(logit) x sigmoid(presence),
    kept above the threshold, mask probabilities resized bilinearly), as the instances' maximum;
    its 0.5 cut is the union of that method's binary masks; another text gives another mask."""
    sam3.threshold = 0.3
    with torch.no_grad():
        out = sam3.model(pixel_values=sam3.pixels(scene), **sam3.text_inputs("a red disc"))
    scores = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    keep = scores > 0.3
    sam3.threshold = 0.0 if not keep.any() else 0.3
    keep = scores > sam3.threshold
    probs = F.interpolate(out.pred_masks[:, keep].sigmoid(), (60, 96), mode="bilinear")[0]
    seg = sam3.segment(scene, Selection(text="a red disc"))
    np.testing.assert_allclose(seg.mask, probs.amax(0).numpy(), atol=1e-5)
    assert np.array_equal(seg.mask > 0.5, (probs > 0.5).any(0).numpy())
    assert seg.scores == pytest.approx(scores[keep].tolist(), abs=1e-6)
    boxes = out.pred_boxes[0, keep] * torch.tensor([96, 60, 96, 60])
    np.testing.assert_allclose(np.array(seg.boxes), boxes.numpy(), atol=1e-4)
    other = sam3.segment(scene, Selection(text="a blue square")).mask
    assert np.abs(other - seg.mask).max() > 1e-6
    sam3.threshold = 0.0


def test_sam3_refuses_clicks_and_an_empty_selection_in_one_line(sam3, scene):
    with pytest.raises(InputError, match="takes text only here") as e:
        sam3.segment(scene, Selection(text="cup", box=(0, 0, 10, 10)))
    assert "\n" not in str(e.value)
    sam3.threshold = 1.0
    with pytest.raises(InputError, match="nothing in the photo matches 'cup'") as e:
        sam3.segment(scene, Selection(text="cup"))
    assert "\n" not in str(e.value)
    sam3.threshold = 0.0


def test_sam_hq_equals_its_processor_model_and_post_processing(sam_hq, scene):
    """Points and a box through SamHQProcessor + SamHQModel (full call) + post_process_masks,
    the best candidate by IoU: the segmenter's cached path gives the same logits; a flipped
    label gives another mask."""
    assert isinstance(sam_hq, SamHQSegmenter)
    points, box = (Point(25, 30), Point(70, 20, positive=False)), (10.0, 12.0, 50.0, 48.0)
    logits, iou = sam_hq.masks(scene, points, [box])
    proc = sam_hq.processor
    inputs = proc(
        images=scene, input_points=[[[[25, 30], [70, 20]]]], input_labels=[[[1, 0]]],
        input_boxes=[[list(box)]], return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        out = sam_hq.model(
            pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],
            input_labels=inputs["input_labels"], input_boxes=inputs["input_boxes"],
            multimask_output=True,
        )  # fmt: skip
    best = out.iou_scores[0, 0].argmax()
    ref = proc.post_process_masks(
        out.pred_masks[:, :, best : best + 1], inputs["original_sizes"],
        inputs["reshaped_input_sizes"], binarize=False,
    )[0][:, 0]  # fmt: skip
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert iou[0] == pytest.approx(out.iou_scores[0, 0, best].item(), abs=1e-6)
    flipped, _ = sam_hq.masks(scene, (Point(25, 30), Point(70, 20)), [box])
    assert (flipped - logits).abs().max() > 1e-3
    seg = sam_hq.segment(scene, Selection(points=points, box=box))
    assert seg.mask.shape == (60, 96) and sam_hq.encodes == 1
