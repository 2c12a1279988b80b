"""Segmenters (issue 21): each one's mask equals what transformers' own pipeline or model call
gives on the same tiny random weights; the registry loads by config; missing models and empty
selections are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from blendedit.errors import BlendEditError, InputError
from blendedit.segment import (
    ClipSegSegmenter,
    GroundedSamSegmenter,
    Point,
    SamSegmenter,
    Segmentation,
    Selection,
    load_segmenter,
    select_mask,
    selection_from,
)
from blendedit.segment.grounded import phrase


def test_clipseg_equals_its_processor_and_model_call(clipseg_dir, scene):
    """The mask is the sigmoid of ``CLIPSegForImageSegmentation``'s logits on what
    ``CLIPSegProcessor`` makes of (text, photo), stretched back to the photo. It fails if the
    text reached the model wrongly: another text gives another mask (checked below)."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    seg = load_segmenter(str(clipseg_dir))
    assert isinstance(seg, ClipSegSegmenter)
    ours = seg.segment(scene, Selection(text="a red disc")).mask
    assert ours.shape == (60, 96) and ours.dtype == np.float32
    proc = CLIPSegProcessor.from_pretrained(clipseg_dir)
    model = CLIPSegForImageSegmentation.from_pretrained(clipseg_dir).eval()
    with torch.no_grad():
        logits = model(
            **proc(text=["a red disc"], images=[scene], padding=True, return_tensors="pt")
        ).logits
    ref = F.interpolate(
        torch.sigmoid(logits).reshape(1, 1, *logits.shape[-2:]), size=(60, 96), mode="bilinear"
    )
    np.testing.assert_allclose(ours, ref[0, 0].numpy(), atol=1e-6)
    other = seg.segment(scene, Selection(text="a blue square")).mask
    assert np.abs(other - ours).max() > 1e-4


def _sam_reference(sam_dir, scene, **prompts):
    """transformers' SAM: the processor, the model, ``post_process_masks``; the best candidate
    by predicted IoU of each prompt, thresholded at 0 as the processor does."""
    from transformers import SamModel, SamProcessor

    proc = SamProcessor.from_pretrained(sam_dir)
    model = SamModel.from_pretrained(sam_dir).eval()
    inputs = proc(images=scene, return_tensors="pt", **prompts)
    with torch.no_grad():
        out = model(**inputs)
    masks = proc.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]
    best = out.iou_scores[0].argmax(dim=1)
    return masks[torch.arange(len(best)), best].any(dim=0).numpy()  # (H, W) union of prompts


def test_sam_points_equal_the_model_call(sam_dir, scene):
    """Positive and negative clicks: our mask (probability >= 0.5) equals SAM's own call
    thresholded at logit 0, pixel for pixel; prompts normalised by us and by the processor
    alike (a wrong scale or a dropped negative label gives another mask, checked below)."""
    seg = load_segmenter(str(sam_dir))
    assert isinstance(seg, SamSegmenter)
    points = (Point(25, 30), Point(70, 20, positive=False))
    logits, _ = seg.masks(scene, points, [])  # (1, H, W) at the photo's size
    ours = (logits > 0).any(dim=0).numpy()
    mask = seg.segment(scene, Selection(points=points)).mask
    np.testing.assert_allclose(mask, torch.sigmoid(logits[0]).numpy(), atol=1e-7)
    ref = _sam_reference(sam_dir, scene, input_points=[[[25, 30], [70, 20]]], input_labels=[[1, 0]])
    assert ours.shape == ref.shape == (60, 96)
    assert (ours == ref).all()
    flipped = _sam_reference(
        sam_dir, scene, input_points=[[[25, 30], [70, 20]]], input_labels=[[1, 1]]
    )
    scaled = _sam_reference(
        sam_dir, scene, input_points=[[[35, 30], [70, 10]]], input_labels=[[1, 0]]
    )
    assert (flipped != ref).any() or (scaled != ref).any()


def test_sam_box_and_point_together_equal_the_model_call(sam_dir, scene):
    seg = load_segmenter(str(sam_dir))
    logits, _ = seg.masks(scene, (Point(70, 20),), [(55, 5, 90, 35)])
    ours = (logits > 0).any(dim=0).numpy()
    ref = _sam_reference(
        sam_dir,
        scene,
        input_points=[[[70, 20]]],
        input_labels=[[1]],
        input_boxes=[[[55, 5, 90, 35]]],
    )
    assert (ours == ref).all()


def test_sam_encodes_a_photo_once(sam_dir, scene):
    seg = load_segmenter(str(sam_dir))
    for x in (10, 20, 30):
        seg.segment(scene, Selection(points=(Point(x, 20),)))
    assert seg.encodes == 1
    seg.segment(scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Selection(points=(Point(5, 5),)))
    assert seg.encodes == 2


def test_grounded_sam_equals_the_detection_pipeline_then_sam(dino_dir, sam_dir, scene):
    """Boxes equal transformers' ``zero-shot-object-detection`` pipeline on the same phrase and
    weights; the mask equals SAM's model call on those boxes (union). Another phrase gives other
    boxes (so a phrase that did not reach the detector would fail this)."""
    from transformers import pipeline

    seg = load_segmenter(f"{dino_dir}+{sam_dir}")
    assert isinstance(seg, GroundedSamSegmenter)
    seg.threshold = 0.5
    boxes, scores = seg.detect(scene, "A red disc")
    pipe = pipeline("zero-shot-object-detection", model=str(dino_dir))
    found = pipe(scene, candidate_labels=[phrase("A red disc")], threshold=0.5)
    assert len(found) == len(boxes) > 0
    ref = sorted((f["score"], *f["box"].values()) for f in found)
    got = sorted((s, *(int(v) for v in b)) for s, b in zip(scores, boxes, strict=True))
    assert [r[1:] for r in ref] == [g[1:] for g in got]
    np.testing.assert_allclose([r[0] for r in ref], [g[0] for g in got], rtol=1e-5)
    logits, _ = seg.sam.masks(scene, (), boxes)
    ref = _sam_reference(sam_dir, scene, input_boxes=[[list(b) for b in boxes]])
    assert ((logits > 0).any(dim=0).numpy() == ref).all()
    mask = seg.segment(scene, Selection(text="A red disc")).mask
    np.testing.assert_allclose(mask, torch.sigmoid(logits).amax(dim=0).numpy(), atol=1e-7)
    other, _ = seg.detect(scene, "a blue square")
    assert other != boxes


def test_text_naming_nothing_is_one_line(dino_dir, sam_dir, scene):
    seg = load_segmenter(f"{dino_dir}+{sam_dir}")
    with pytest.raises(InputError, match=r"^mask-from: nothing in the photo matches 'a red disc'"):
        select_mask(seg, scene, selection_from("a red disc"), config=_cfg(select_threshold=1.0))


def test_an_empty_mask_is_one_line(clipseg_dir, scene):
    seg = load_segmenter(str(clipseg_dir))
    seg.segment = lambda image, sel: Segmentation(np.zeros((60, 96), np.float32))
    with pytest.raises(InputError, match=r"^mask-from: the selection is empty: text 'cup'"):
        select_mask(seg, scene, selection_from("cup"))


def _cfg(**kw):
    from blendedit.config import SelectConfig

    return SelectConfig(**kw)


@pytest.mark.parametrize("name", ["./no/such/folder", "nobody/no-such-segmenter"])
def test_a_missing_model_is_one_line_naming_it(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BlendEditError) as e:
        load_segmenter(name, local_files_only=True)
    text = str(e.value)
    assert "\n" not in text and text.startswith("segmenter: ") and repr(name) in text


def test_a_model_of_another_kind_is_one_line(tiny_clip_dir):
    with pytest.raises(InputError, match=r"^segmenter: .* is a 'clip' model; blendedit segments"):
        load_segmenter(str(tiny_clip_dir))


def test_text_to_a_click_segmenter_is_one_line(sam_dir, scene):
    seg = load_segmenter(str(sam_dir))
    with pytest.raises(InputError, match=r"^segmenter: .* takes clicks and boxes, not text"):
        seg.segment(scene, Selection(text="cup"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("12", "mask-point: '12' is not 2 numbers"),
        ("a,b", "mask-point: 'a,b'"),
        ("1,nan", "mask-point"),
    ],
)
def test_bad_points_are_one_line(text, match):
    with pytest.raises(InputError, match=match):
        selection_from(points=[text])


def test_points_and_boxes_parse():
    sel = selection_from(points=["3,4", "-5,6"], negative=["7,8"], box="10,20,2,4")
    assert sel.points == (Point(3, 4), Point(5, 6, False), Point(7, 8, False))
    assert sel.box == (2, 4, 10, 20)
    with pytest.raises(InputError, match="mask-box: '1,1,1,5' encloses no pixel"):
        selection_from(box="1,1,1,5")


def test_refinement_fills_holes_keeps_the_largest_part_and_combines():
    from blendedit.segment.refine import combine, fill_holes, keep_largest

    ring = np.zeros((20, 30), np.uint8)
    ring[2:12, 2:12] = 255
    ring[5:8, 5:8] = 0  # a hole
    ring[15:18, 20:23] = 200  # a second, smaller part
    ring[0:3, 25:30] = 0
    filled = fill_holes(ring)
    assert (filled[5:8, 5:8] == 255).all() and (filled[19] == 0).all()
    largest = keep_largest(filled)
    assert (largest[15:18, 20:23] == 0).all() and (largest[2:12, 2:12] == 255).all()
    painted = np.zeros_like(ring)
    painted[:, :15] = 255
    assert (combine(ring, painted, "union") == np.maximum(ring, painted)).all()
    cut = combine(ring, painted, "subtract")
    assert (cut[2:12, 2:12][ring[2:12, 2:12] == 255] == 0).all() and (cut[19, :15] == 255).all()
    with pytest.raises(ValueError, match="unknown combine mode"):
        combine(ring, painted, "xor")
