"""An empty prompt is a valid edit: "fill the region from its surroundings" (object removal), the
natural control of every prompt-following claim. Tiny random-weight models; the effect on the
trained toy world is measured in tests/quality/test_removal.py."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from blendedit.cli import main
from blendedit.errors import InputError

SMALL = {"num_inference_steps": 4, "size": 64, "num_images": 3, "metrics": False}


def _inputs(shared_images):
    return shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png"


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(c.image) for c in result.candidates]


def test_empty_prompt_is_the_unguided_edit_in_generation_order(editor, shared_images):
    image, mask = _inputs(shared_images)
    empty = editor(image, mask, "", seed=7, guidance_scale=7.5, **SMALL)
    # Nothing to rank against: generation order, no scores, the prompt recorded as given.
    assert [c.seed for c in empty.candidates] == [7, 8, 9]
    assert all(c.score is None for c in empty.candidates)
    assert empty.prompt == ""
    # With the empty negative prompt, the prompt's and the empty prompt's predictions are the
    # same, so guidance has nothing to scale: the edit equals guidance 0 (the unguided control).
    unguided = editor(image, mask, "", seed=7, guidance_scale=0.0, **SMALL)
    for a, b in zip(_pixels(empty), _pixels(unguided), strict=True):
        np.testing.assert_array_equal(a, b)
    # Whitespace is no content either.
    blank = editor(image, mask, "  \t", seed=7, guidance_scale=7.5, **SMALL)
    assert blank.prompt == ""
    for a, b in zip(_pixels(empty), _pixels(blank), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_prompt_with_a_negative_prompt_steers_away(editor, shared_images):
    image, mask = _inputs(shared_images)
    plain = editor(image, mask, "", seed=1, **SMALL)
    away = editor(image, mask, "", seed=1, negative_prompt="sunglasses", **SMALL)
    assert any(not np.array_equal(a, b) for a, b in zip(_pixels(plain), _pixels(away), strict=True))
    # Beyond the mask and its feather band the photo is the input's own, as for any prompt.
    src = np.asarray(Image.open(image).convert("RGB"))
    edit = np.asarray(Image.open(mask).convert("L").resize(src.shape[1::-1])) >= 128
    band = cv2.dilate(edit.astype(np.uint8), np.ones((2 * 8 + 3,) * 2, np.uint8)) > 0
    for out in _pixels(away):
        np.testing.assert_array_equal(out[~band], src[~band])


def test_prompt_must_be_text(editor, shared_images):
    image, mask = _inputs(shared_images)
    with pytest.raises(InputError, match=r"^prompt: 3 must be a text$"):
        editor(image, mask, 3, **SMALL)


def test_cli_accepts_an_empty_prompt(tiny_sd_dir, tiny_clip_dir, shared_images, tmp_path, capsys):
    image, mask = _inputs(shared_images)
    out = tmp_path / "removed"
    argv = ["edit", str(image), "--mask", str(mask), "--prompt", "", "--model", str(tiny_sd_dir)]
    argv += ["--clip-model", str(tiny_clip_dir), "--out", str(out), "--num-images", "2"]
    argv += ["--steps", "4", "--size", "64", "--device", "cpu", "--seed", "3"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "not ranked, first: 01-seed3.png" in captured.err + captured.out
    report = json.loads((out / "result.json").read_text())
    assert report["prompt"] == ""
    assert [r["file"] for r in report["results"]] == ["01-seed3.png", "02-seed4.png"]
    assert all(r["clip_score"] is None for r in report["results"])
