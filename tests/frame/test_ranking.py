"""Tests for blendedit.frame.ranking: CLIP scores of masked results, aspect-preserving preprocessing,
rank order and load errors (tiny random-weight CLIP)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blendedit.errors import ModelNotFoundError
from blendedit.frame.ranking import ClipScorer, rank_order


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir: Path) -> ClipScorer:
    return ClipScorer.from_pretrained(str(tiny_clip_dir))


def _images(b: int = 3, h: int = 24, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _mask(h: int = 24, w: int = 40) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    m[..., 6:18, 10:30] = 1.0
    return m


# ------------------------------------------------------------------ loading


def test_from_pretrained_local(scorer: ClipScorer) -> None:
    assert scorer.image_size == 32
    assert scorer.device == torch.device("cpu")
    assert scorer.dtype == torch.float32
    assert not any(p.requires_grad for p in scorer.model.parameters())


def test_from_pretrained_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-clip-here")
    with pytest.raises(ModelNotFoundError) as e:
        ClipScorer.from_pretrained(missing)
    msg = str(e.value)
    assert "\n" not in msg
    assert "clip-model" in msg and "--no-rank" in msg and "no-clip-here" in msg


# ------------------------------------------------------------------ score


def test_score_shape_and_range(scorer: ClipScorer) -> None:
    s = scorer.score(_images(5), _mask(), "a red hat", chunk=2)
    assert s.shape == (5,) and s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.all(s >= -1 - 1e-5) and torch.all(s <= 1 + 1e-5)
    assert torch.isfinite(s).all()


def test_score_chunking_is_invisible(scorer: ClipScorer) -> None:
    imgs = _images(5)
    a = scorer.score(imgs, _mask(), "a red hat", chunk=2)
    b = scorer.score(imgs, _mask(), "a red hat", chunk=16)
    assert torch.allclose(a, b, atol=1e-5)


def test_score_ignores_pixels_outside_the_mask(scorer: ClipScorer) -> None:
    imgs = _images(3)
    m = _mask()
    other = torch.where(m.bool(), imgs, _images(3, seed=9))  # same inside, different outside
    a = scorer.score(imgs, m, "a dog")
    b = scorer.score(other, m, "a dog")
    assert torch.equal(a, b)
    inside = torch.where(m.bool(), _images(3, seed=5), imgs)  # different inside
    assert not torch.allclose(scorer.score(inside, m, "a dog"), a)


def test_score_per_image_masks(scorer: ClipScorer) -> None:
    imgs = _images(2)
    m1 = _mask()
    m2 = torch.zeros_like(m1)
    m2[..., :12, :20] = 1
    both = torch.cat([m1, m2])
    s = scorer.score(imgs, both, "a cat")
    assert torch.allclose(s[0], scorer.score(imgs[:1], m1, "a cat")[0], atol=1e-5)
    assert torch.allclose(s[1], scorer.score(imgs[1:], m2, "a cat")[0], atol=1e-5)


def test_embed_text_unit_norm(scorer: ClipScorer) -> None:
    e = scorer.embed_text(["a", "a much longer prompt " * 20])
    assert e.shape == (2, 32)
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)


# ------------------------------------------------------------------ preprocess


def test_preprocess_size(scorer: ClipScorer) -> None:
    for h, w in [(24, 40), (40, 24), (32, 32), (100, 7)]:
        x = scorer.preprocess(torch.rand(2, 3, h, w))
        assert x.shape == (2, 3, scorer.image_size, scorer.image_size)


def test_preprocess_pads_instead_of_cropping(scorer: ClipScorer) -> None:
    black = torch.zeros(1, 3, 16, 64)  # wide: a centre crop would drop the outer columns
    lit = black.clone()
    lit[..., 0, 0] = 1.0  # top-left corner pixel
    diff = (scorer.preprocess(lit) - scorer.preprocess(black)).abs().sum(dim=(0, 1))  # (S, S)
    assert diff.sum() > 0
    ys, xs = torch.nonzero(diff > 1e-6, as_tuple=True)
    assert int(xs.max()) < 4  # seen near the left edge
    # Padded vertically: the image occupies the middle rows (16 of 64 -> 8 of 32, from row 12).
    assert int(ys.min()) >= 10 and int(ys.max()) < 16


def test_preprocess_tall_image_corner(scorer: ClipScorer) -> None:
    black = torch.zeros(1, 3, 64, 16)
    lit = black.clone()
    lit[..., -1, -1] = 1.0  # bottom-right corner pixel
    diff = (scorer.preprocess(lit) - scorer.preprocess(black)).abs().sum(dim=(0, 1))
    assert diff.sum() > 0
    ys, _ = torch.nonzero(diff > 1e-6, as_tuple=True)
    assert int(ys.min()) >= 28


def test_preprocess_padding_is_black(scorer: ClipScorer) -> None:
    white = torch.ones(1, 3, 16, 64)
    x = scorer.preprocess(white)
    black_level = ((0 - scorer.mean) / scorer.std).view(3)
    white_level = ((1 - scorer.mean) / scorer.std).view(3)
    assert torch.allclose(x[0, :, 0, 16], black_level, atol=1e-4)  # top padding
    assert torch.allclose(x[0, :, -1, 16], black_level, atol=1e-4)  # bottom padding
    assert torch.allclose(x[0, :, 16, 16], white_level, atol=1e-4)  # image centre
    assert torch.allclose(x[0, :, 16, 0], white_level, atol=1e-4)  # full width kept


def test_preprocess_is_differentiable(scorer: ClipScorer) -> None:
    img = torch.rand(1, 3, 20, 30, requires_grad=True)
    scorer.embed_images(img).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


# ------------------------------------------------------------------ rank_order


def test_rank_order_descending_ties_in_generation_order() -> None:
    s = torch.tensor([0.1, 0.5, 0.3, 0.5, -0.2])
    assert rank_order(s, 5) == [1, 3, 2, 0, 4]


def test_rank_order_none_is_identity() -> None:
    assert rank_order(None, 4) == [0, 1, 2, 3]
    assert rank_order(None, 0) == []
