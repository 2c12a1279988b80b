"""The evaluation's metrics on cases with known answers."""

from __future__ import annotations

import math
from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit.eval.metrics import (
    ImageNetClassifier,
    MetricModels,
    Preprocessing,
    background_scores,
    clip_score_from_embeddings,
    clip_scores,
    diversity,
    evaluate_case,
    pairwise_lpips,
    precision_top_k,
)
from blendedit.frame.metrics import LPIPS
from blendedit.frame.ranking import ClipScorer
from tiny_eval_models import lpips_weight_files, tiny_efficientnet_classifier


def _logits_with_rank(class_index: int, rank: int, n_classes: int = 20) -> torch.Tensor:
    """(1, n) logits in which ``class_index`` is the ``rank``-th highest (1 = highest)."""
    order = [c for c in range(n_classes) if c != class_index]
    order.insert(rank - 1, class_index)
    logits = torch.empty(n_classes)
    for pos, c in enumerate(order):
        logits[c] = float(n_classes - pos)
    return logits[None]


@pytest.mark.parametrize(("rank", "correct"), [(1, True), (3, True), (5, True), (6, False)])
def test_precision_top5_counts_rank_five_and_not_six(rank, correct):
    logits = _logits_with_rank(7, rank)
    assert precision_top_k(logits, 7).tolist() == [correct]


def test_precision_per_row_class_and_k():
    logits = torch.cat([_logits_with_rank(2, 1), _logits_with_rank(4, 2), _logits_with_rank(9, 4)])
    assert precision_top_k(logits, torch.tensor([2, 4, 9]), k=3).tolist() == [True, True, False]
    assert precision_top_k(logits, 2, k=1).tolist() == [True, False, False]


class _ConstructedClassifier(torch.nn.Module):
    """A fake classifier: its top 5 is constructed from the image's mean brightness, and it
    records the inputs it saw."""

    def __init__(self, class_index: int) -> None:
        super().__init__()
        self.class_index = class_index
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.seen.append(pixel_values)
        rows = []
        for x in pixel_values:  # any bright pixel: the class at rank 3; none: at rank 6
            rows.append(_logits_with_rank(self.class_index, 3 if x.max() > 0 else 6))
        return SimpleNamespace(logits=torch.cat(rows))


def test_classifier_masks_then_judges_by_its_top5():
    model = _ConstructedClassifier(class_index=4)
    pre = Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    clf = ImageNetClassifier(model, pre)
    mask = np.zeros((24, 40), dtype=bool)
    mask[4:20, 10:30] = True
    images = torch.zeros(2, 3, 24, 40)
    images[0] = 1.0  # white: still white inside the mask
    images[1, :, ~torch.from_numpy(mask)] = 1.0  # white only outside the mask: black once masked
    assert clf.correct(images, mask, class_index=4).tolist() == [True, False]
    x = model.seen[0]
    assert x.shape == (2, 3, 16, 16)  # padded to a square and resized, not cropped
    assert x[1].max() <= -0.99  # the second image is all black after masking


def test_preprocessing_matches_efficientnet_processor(tmp_path):
    """Our differentiable-free preprocessing reproduces transformers' own EfficientNet processor
    (rescale, normalise, and include_top's second division by std) on a 32x32 input."""
    from transformers.models.efficientnet.image_processing_pil_efficientnet import (
        EfficientNetImageProcessorPil,
    )

    folder = tiny_efficientnet_classifier(tmp_path / "effnet")
    clf = ImageNetClassifier.from_pretrained(folder)
    assert clf.preprocessing.include_top and clf.preprocessing.size == (32, 32)
    assert clf.id2label[0].startswith("goldfish")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = EfficientNetImageProcessorPil.from_pretrained(folder)(
        images=Image.fromarray(arr), return_tensors="pt"
    ).pixel_values
    ours = clf.preprocessing(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)
    assert clf.logits(torch.rand(3, 3, 40, 50)).shape == (3, 10)


def test_preprocessing_defaults_without_a_processor_config():
    pre = Preprocessing.from_config(None, image_size=64)
    assert pre.size == (64, 64) and pre.mean == (0.485, 0.456, 0.406) and not pre.include_top
    crop = Preprocessing.from_config(
        {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": 224}
    )
    assert crop.size == (224, 224)


@pytest.fixture(scope="module")
def lpips_alex(tmp_path_factory):
    trunk, lin = lpips_weight_files(tmp_path_factory.mktemp("lpips"))
    return LPIPS.from_pretrained(trunk, lin, "alex")


def test_pairwise_lpips_equals_the_model_on_each_pair(lpips_alex):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 48, 40)
    pairs = pairwise_lpips(lpips_alex, images)
    expected = [float(lpips_alex(images[i], images[j])) for i, j in combinations(range(3), 2)]
    assert pairs == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_diversity_known_answers(lpips_alex):
    torch.manual_seed(0)
    mask = np.zeros((48, 40), dtype=bool)
    mask[10:40, 5:35] = True
    same = torch.rand(1, 3, 48, 40).expand(4, -1, -1, -1)
    assert diversity(lpips_alex, same, mask) == 0.0  # identical predictions: no diversity
    assert diversity(lpips_alex, same[:1], mask) is None  # fewer than two correct predictions
    # Differences outside the mask do not count: only the masked predictions are compared.
    outside = same.clone()
    outside[1, :, :5] = 0.0
    assert diversity(lpips_alex, outside[:2], mask) == 0.0
    inside = same.clone()
    inside[1, :, 20:30, 10:20] = 0.0
    assert diversity(lpips_alex, inside[:2], mask) > 0.0


def test_clip_score_is_100_cos_clamped_at_zero():
    text = torch.tensor([1.0, 0.0, 0.0])
    images = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0], [-1.0, 0.0, 0.0]])
    got = clip_score_from_embeddings(images, text)
    assert got.tolist() == pytest.approx([100.0, 100 / math.sqrt(2), 0.0, 0.0])


def test_clip_scores_with_a_model(tiny_clip_dir):
    scorer = ClipScorer.from_pretrained(str(tiny_clip_dir))
    torch.manual_seed(0)
    images = torch.rand(2, 3, 40, 48)
    mask = np.zeros((40, 48), dtype=bool)
    mask[5:30, 10:40] = True
    full = clip_scores(scorer, images, "volcano")
    masked = clip_scores(scorer, images, "volcano", mask)
    cos = scorer.embed_images(images) @ scorer.embed_text(["volcano"]).T
    assert full.tolist() == pytest.approx((100 * cos.squeeze(1)).clamp_min(0).tolist(), abs=1e-4)
    assert (full >= 0).all() and (masked >= 0).all() and not torch.equal(full, masked)


def test_background_identical_and_known_shift(lpips_alex):
    torch.manual_seed(0)
    src = torch.rand(1, 3, 64, 64) * 0.5
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:40, 16:44] = True
    edited = src.clone()
    edited[0, :, 16:40, 16:44] = 1.0  # only inside the mask
    shifted = src + 0.1  # every background pixel +0.1 on every channel
    out = background_scores(torch.cat([edited, shifted]), src, mask, lpips_alex)
    assert out["mse"][0] == 0.0 and out["psnr"][0] == math.inf
    assert out["ssim"][0] == pytest.approx(1.0) and out["lpips"][0] == 0.0
    assert out["mse"][1] == pytest.approx(0.01)
    assert out["psnr"][1] == pytest.approx(20.0)
    assert out["lpips"][1] > 0.0


def test_evaluate_case_combines_everything(lpips_alex, tiny_clip_dir):
    model = _ConstructedClassifier(class_index=1)
    clf = ImageNetClassifier(model, Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3))
    scorer = ClipScorer.from_pretrained(str(tiny_clip_dir))
    src = Image.new("RGB", (64, 48), (30, 30, 30))
    mask = np.zeros((48, 64), dtype=bool)
    mask[12:30, 20:44] = True
    preds = []
    for value in (250, 240, 5):  # two bright edits (correct), one dark (incorrect)
        arr = np.asarray(src).copy()
        arr[mask] = value
        preds.append(Image.fromarray(arr))
    res = evaluate_case(preds, src, mask, 1, "goldfish", MetricModels(clf, scorer, lpips_alex))
    assert res["correct"] == [True, True, False] and res["top1_correct"]
    assert res["precision"] == pytest.approx(2 / 3) and res["n_correct"] == 2
    assert res["diversity"] > 0.0
    assert res["psnr"] == [math.inf] * 3 and res["mse"] == [0.0] * 3
    assert len(res["clip_masked"]) == 3 and len(res["clip_full"]) == 3


def test_background_ssim_on_a_photo_too_small_for_a_window_outside_the_mask():
    """No 11x11 window lies wholly outside this mask: SSIM falls back to the windows centred
    outside it instead of failing the whole evaluation."""
    src = torch.rand(1, 3, 32, 40)
    mask = np.zeros((32, 40), dtype=bool)
    mask[8:24, 10:30] = True
    out = background_scores(src.clone(), src, mask)
    assert out["ssim"] == [pytest.approx(1.0)] and out["mse"] == [0.0]
