"""The ranking judges (blendedit.frame.judges): each loads a checkpoint written in its reference
layout and scores as its reference code does on the same tiny random weights; the ensemble; the
one-line errors; ``--rank`` through an edit and into result.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blendedit.config import FrameConfig, parse_weights
from blendedit.errors import BlendEditError, InputError, ModelNotFoundError
from blendedit.frame import judges as J
from blendedit.frame.openclip import clip_model_from_open_clip, convert_state
from judge_references import (
    TINY_OPEN_CLIP,
    aesthetic_reference,
    hps_reference,
    open_clip_state,
    pickscore_reference,
    write_aesthetic,
    write_hps,
    write_pickscore,
)
from tiny_models import tiny_clip, tiny_tokenizer


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 40, 48, generator=g)  # (B, 3, H, W): not square, not 32


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("judges")


def test_pickscore_matches_its_model_card(judge_dir: Path, images: torch.Tensor) -> None:
    """PickScore on a CLIPModel folder = the model card's code (processor, unit features,
    logit_scale.exp() * text . image). Guards: the logit scale (without it the scores differ by
    the factor), the whole image (a masked image scores differently) and the prompt."""
    folder = write_pickscore(judge_dir / "pickscore")
    judge = J.load_pickscore(str(folder))
    mask = torch.ones(1, 1, 40, 48)
    got = judge.score(images, mask, "a red hat")
    want = pickscore_reference(folder, J.to_pil(images), "a red hat")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    other = judge.score(images, mask, "a blue car")
    assert not torch.allclose(other, want, atol=1e-4)  # the prompt matters
    unscaled = J.ClipModelJudge("x", judge.model, judge.processor, judge.tokenizer)
    assert not torch.allclose(unscaled.score(images, mask, "a red hat"), want, atol=1e-4)


def test_hps_open_clip_keys_convert_key_for_key(tmp_path: Path) -> None:
    """Every open_clip key lands on one CLIPModel key and every CLIPModel weight is filled
    (q, k, v split from in_proj; projections transposed); an unknown key is one line."""
    sd = open_clip_state()
    out = convert_state(sd)
    per_block = 8 + 2  # in_proj weight and bias become three each
    n_blocks = TINY_OPEN_CLIP["vision_cfg"]["layers"] + TINY_OPEN_CLIP["text_cfg"]["layers"]
    assert len(out) == len(sd) + n_blocks * (per_block - 6) - 0
    model = clip_model_from_open_clip(sd, None)
    names = {k for k in model.state_dict() if not k.endswith("position_ids")}
    assert names == set(out)
    q = sd["visual.transformer.resblocks.1.attn.in_proj_weight"][:24]
    assert torch.equal(out["vision_model.encoder.layers.1.self_attn.q_proj.weight"], q)
    assert torch.equal(out["visual_projection.weight"], sd["visual.proj"].t())
    with pytest.raises(ModelNotFoundError, match=r"open_clip key 'visual\.extra\.weight'"):
        convert_state({**sd, "visual.extra.weight": torch.zeros(1)})


def test_hps_matches_open_clip_forward(judge_dir: Path, images: torch.Tensor) -> None:
    """HPS v2.1 from ``{"state_dict": open_clip keys}`` = HPS v2's score.py on open_clip's ViT
    (written here in plain torch: conv patches, class token, pre/post LayerNorm, GELU blocks,
    causal text tower pooled at the end token, unit features' dot product). Guards: a head count
    other than the config's changes the scores; so does a perturbed text projection."""
    path = write_hps(judge_dir / "hps")
    judge = J.load_hps(str(path), "unused/tokenizer")
    mask = torch.ones(1, 1, 40, 48)
    got = judge.score(images, mask, "a red hat")
    sd = torch.load(path, weights_only=True)["state_dict"]
    pixels = judge.processor(images=J.to_pil(images), return_tensors="pt")["pixel_values"]
    ids = judge.tokenizer(["a red hat"], return_tensors="pt")["input_ids"]
    text = torch.zeros(1, 77, dtype=torch.long)
    text[:, : ids.shape[1]] = ids  # open_clip pads with 0
    want = hps_reference(sd, pixels, text)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    noise = torch.randn(sd["text_projection"].shape, generator=torch.Generator().manual_seed(5))
    bad = {**sd, "text_projection": sd["text_projection"] + 0.2 * noise}
    assert not torch.allclose(hps_reference(bad, pixels, text), want, atol=1e-4)
    wrong_heads = {
        **TINY_OPEN_CLIP,
        "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "head_width": 24},
    }
    assert not torch.allclose(hps_reference(sd, pixels, text, wrong_heads), want, atol=1e-4)


def test_aesthetic_matches_simple_inference(
    judge_dir: Path, tiny_clip_dir: Path, images: torch.Tensor
) -> None:
    """The LAION predictor's .pth on CLIP's unit image embedding = simple_inference.py; it needs
    no prompt. Guards: without the normalisation the scores differ."""
    pth = write_aesthetic(judge_dir / "aesthetic")
    clip_dir = judge_dir / "aesthetic-clip"
    write_pickscore(clip_dir, seed=2)  # a CLIPModel folder with a processor
    judge = J.load_aesthetic(str(pth), str(clip_dir))
    assert not judge.needs_prompt
    got = judge.score(images, torch.ones(1, 1, 40, 48), "")
    want = aesthetic_reference(pth, clip_dir, J.to_pil(images))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        pixels = judge.processor(images=J.to_pil(images), return_tensors="pt")["pixel_values"]
        raw = judge.model.get_image_features(pixel_values=pixels).pooler_output
        assert not torch.allclose(judge.head(raw).squeeze(-1), want, atol=1e-4)
        # The first LAION predictor (one Linear; BrushBench's aesthetic score) loads too.
        linear = torch.nn.Linear(32, 1)
        torch.save(linear.state_dict(), judge_dir / "sa_0_4_vit_l_14_linear.pth")
        first = J.load_aesthetic(str(judge_dir / "sa_0_4_vit_l_14_linear.pth"), str(clip_dir))
        unit = raw / raw.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(first.score(images, torch.ones(1, 1, 40, 48), ""),
                                   linear(unit).squeeze(-1), atol=1e-5, rtol=1e-5)  # fmt: skip


def test_ensemble_is_weighted_z_scores() -> None:
    s = {"clip": torch.tensor([0.1, 0.2, 0.3]), "hps": torch.tensor([30.0, 10.0, 20.0])}
    z = J.ensemble(s, {"clip": 1.0, "hps": 1.0})
    torch.testing.assert_close(z, (J.z_scores(s["clip"]) + J.z_scores(s["hps"])) / 2)
    assert J.z_scores(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]
    only_clip = J.ensemble(s, {"clip": 1.0, "hps": 0.0})
    heavy = J.ensemble(s, {"clip": 1.0, "hps": 3.0})
    assert only_clip.argmax() == 2 and heavy.argmax() == 0  # weights, not raw scales, decide
    scaled = J.ensemble({**s, "hps": s["hps"] * 1000}, {"clip": 1.0, "hps": 3.0})
    torch.testing.assert_close(scaled, heavy)
    assert parse_weights("clip=2, aesthetic") == {"clip": 2.0, "aesthetic": 1.0}


@pytest.mark.parametrize(
    ("text", "words"),
    [("clip=1,lpips=2", "unknown judge 'lpips'"), ("clip=-1", "clip's weight"),
     ("hps=0", "at least one"), ("clip=abc", "clip's weight")],
)  # fmt: skip
def test_bad_weights_are_one_line(text: str, words: str) -> None:
    with pytest.raises(InputError, match=words) as e:
        FrameConfig(ranker="ensemble", rank_weights=text).validate()
    assert "\n" not in str(e.value) and "rank_weights" in str(e.value)


def test_unknown_ranker_and_missing_models_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ranker: 'lpips' must be one of clip, pickscore"):
        FrameConfig(ranker="lpips").validate()
    with pytest.raises(ModelNotFoundError, match="aesthetic needs its weight file") as e:
        J.Judges().get("aesthetic", torch.device("cpu"))
    assert "improved-aesthetic-predictor" in str(e.value)
    with pytest.raises(ModelNotFoundError, match=r"hps='/no/such\.pt' is not a file"):
        J.Judges({"hps": "/no/such.pt"}).get("hps", torch.device("cpu"))
    with pytest.raises(ModelNotFoundError, match="judge-model") as e:
        J.load_pickscore(str(tmp_path / "nothing-here"))
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        J.load_aesthetic_head(tmp_path / "junk.pth")
    with pytest.raises(InputError, match="NAME=MODEL"):
        J.parse_judge_models(["lpips=/x"])
    assert issubclass(ModelNotFoundError, BlendEditError)


def test_rank_pickscore_and_ensemble_through_an_edit(
    editor, judge_dir: Path, tmp_path: Path
) -> None:
    """--rank through the frame: each judge's score per candidate, the order by the ranking
    score, result.json's ``score``/``judges``; the default CLIP ranking writes what it did."""
    folder = write_pickscore(judge_dir / "pickscore-edit")
    editor.judges = J.Judges({"pickscore": str(folder)})
    try:
        run = {"num_images": 3, "num_inference_steps": 2, "region": "full", "background": "decoded"}
        img, mask = _photo(tmp_path), _mask(tmp_path)
        res = editor(img, mask, "a hat", ranker="pickscore", **run)
        scores = [c.score for c in res.candidates]
        assert scores == sorted(scores, reverse=True)
        assert all(set(c.judges) == {"pickscore"} for c in res.candidates)
        d = res.candidates[0].to_dict()
        assert d["score"] == pytest.approx(scores[0], abs=1e-5) and d["clip_score"] is None
        ens = editor(
            img, mask, "a hat", ranker="ensemble", rank_weights="clip=1,pickscore=1", **run
        )
        for c in ens.candidates:
            assert set(c.judges) == {"clip", "pickscore"}
        z = J.ensemble(
            {k: torch.tensor([c.judges[k] for c in ens.candidates]) for k in ("clip", "pickscore")},
            {"clip": 1.0, "pickscore": 1.0},
        )
        torch.testing.assert_close(
            z, torch.tensor([c.score for c in ens.candidates]), atol=1e-4, rtol=0
        )
        plain = editor(img, mask, "a hat", **run).candidates[0].to_dict()
        assert set(plain) >= {"clip_score"} and "judges" not in plain
        off = editor(img, mask, "a hat", rank=False, ranker="pickscore", **run)
        assert all(c.score is None and not c.judges for c in off.candidates)
    finally:
        editor.judges = None  # the session's editor: back to the default judges


def _photo(tmp_path: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    return tmp_path / "p.png"


def _mask(tmp_path: Path) -> Path:
    import numpy as np
    from PIL import Image

    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    return tmp_path / "m.png"


def test_tiny_clip_folder_is_a_clip_judge(tiny_clip_dir: Path, images: torch.Tensor) -> None:
    """``clip`` without the editor's CLIP loads --judge-model clip=... and scores the masked
    image as ClipScorer does."""
    from blendedit.frame.ranking import ClipScorer

    judge = J.Judges({"clip": str(tiny_clip_dir)}).get("clip", torch.device("cpu"))
    mask = torch.zeros(1, 1, 40, 48)
    mask[..., 10:30, 10:40] = 1
    want = ClipScorer(tiny_clip(), tiny_tokenizer(tiny_clip_dir)).score(images, mask, "a hat")
    torch.testing.assert_close(judge.score(images, mask, "a hat"), want, atol=1e-5, rtol=1e-5)


def test_imagereward_keys_and_forward_match_the_reference(
    judge_dir: Path, images: torch.Tensor
) -> None:
    """ImageReward from ``ImageReward.pt``'s keys = ImageReward.score written in plain torch
    (BLIP ViT, cross-attending BERT as an encoder, first token, MLP, standardisation). Guards:
    dropping the cross-attention's image (zero image tokens) or the padding mask changes the
    scores, so the port must route both as the reference does."""
    from blendedit.frame.imagereward import split_state
    from judge_references import imagereward_reference, imagereward_state, write_imagereward

    vision, text, head = split_state(imagereward_state())
    assert len(vision) + len(text) + len(head) == len(imagereward_state()) - 5  # projs, ids
    with pytest.raises(ModelNotFoundError, match=r"ImageReward key 'blip\.extra'"):
        split_state({**imagereward_state(), "blip.extra": torch.zeros(1)})
    path = write_imagereward(judge_dir / "imagereward")
    judge = J.load_imagereward(str(path), "unused/tokenizer")
    got = judge.score(images, torch.ones(1, 1, 40, 48), "a red hat")
    sd = torch.load(path, weights_only=True)
    pixels = judge.processor(images=J.to_pil(images), return_tensors="pt")["pixel_values"]
    tok = judge.tokenizer("a red hat", padding="max_length", max_length=35, return_tensors="pt")
    want = imagereward_reference(sd, pixels, tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    no_pad_mask = imagereward_reference(sd, pixels, tok["input_ids"], torch.ones(1, 35))
    assert not torch.allclose(no_pad_mask, want, atol=1e-3)
    assert not torch.allclose(
        imagereward_reference(sd, torch.zeros_like(pixels), tok["input_ids"],
                              tok["attention_mask"]), want, atol=1e-3)  # fmt: skip


def test_edit_command_ranks_with_an_ensemble(
    tiny_sd_dir: Path, tiny_clip_dir: Path, judge_dir: Path, tmp_path: Path, capsys
) -> None:
    """``blendedit edit --rank ensemble --rank-weights ... --judge-model pickscore=...``: each
    judge's score and the judges' models in result.json; a bad weight is one line, exit 2."""
    import json

    from blendedit.cli import main

    folder = write_pickscore(judge_dir / "pickscore-cli")
    out = tmp_path / "run"
    argv = [
        "edit", str(_photo(tmp_path)), "--mask", str(_mask(tmp_path)), "--prompt", "a hat",
        "--model", str(tiny_sd_dir), "--clip-model", str(tiny_clip_dir), "--steps", "2",
        "--num-images", "2", "--region", "full", "--device", "cpu", "--quiet",
        "--rank", "ensemble", "--rank-weights", "clip=1,pickscore=2",
        "--judge-model", f"pickscore={folder}",
    ]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "result.json").read_text())
    assert report["settings"]["ranker"] == "ensemble"
    assert report["judge_models"]["pickscore"] == str(folder)
    best = report["results"][0]
    assert set(best["judges"]) == {"clip", "pickscore"} and best["clip_score"] is not None
    capsys.readouterr()
    assert main([*argv[:-4], "--rank-weights", "clip=x", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "rank_weights" in err and "\n" not in err
