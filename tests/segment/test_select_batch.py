"""Batch rows that select instead of naming a mask file (issue 21): ``mask_text``,
``mask_points``, ``mask_box`` (JSONL and CSV), the mask used saved beside each result, the row's
key covering the selection, each row edited exactly once; a text naming nothing fails its row
alone, in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from blendedit.batch import Shared, read_manifest, run_batch
from blendedit.config import SelectConfig
from blendedit.errors import InputError
from blendedit.frame.photo import read_photo
from blendedit.segment import load_segmenter, select_mask, selection_from

FAST = {"num_inference_steps": 2, "size": 64, "num_images": 1, "rank": False}


@pytest.fixture()
def manifest(tmp_path, scene, sam_dir, dino_dir):
    scene.save(tmp_path / "scene.png")
    grounded = f"{dino_dir}+{sam_dir}"
    rows = [
        {"image": "scene.png", "prompt": "a blue square", "mask_points": [[25, 30], [70, 20, 0]]},
        {"image": "scene.png", "prompt": "a blue square", "mask_points": [[25, 30]]},
        {"image": "scene.png", "prompt": "a cat", "mask_box": [90, 35, 55, 5], "id": "boxed"},
        {"image": "scene.png", "prompt": "a cat", "mask_text": "a red disc",
         "segmenter": grounded, "select_threshold": 0.99, "mask_largest": True},
        {"image": "scene.png", "prompt": "a cat", "mask_text": "a red disc",
         "segmenter": grounded, "select_threshold": 1.0, "id": "nothing"},
    ]  # fmt: skip
    path = tmp_path / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_manifest_rows_select_and_are_edited_once(
    manifest, tmp_path, tiny_sd_dir, tiny_clip_dir, sam_dir
):
    shared = Shared(
        model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST),
        segmenter=str(sam_dir),
    )  # fmt: skip
    rows = read_manifest(manifest, shared)
    assert rows[0].key != rows[1].key  # the selection is part of the row's key
    assert rows[0].mask == "" and rows[0].selection["points"] == [[25, 30, 1], [70, 20, 0]]
    assert rows[2].selection["box"] == [55, 5, 90, 35]
    out = tmp_path / "out"
    summary = run_batch(manifest, out, shared=shared, device="cpu", progress=False)
    assert (summary["done"], summary["failed"]) == (4, 1)
    error = next(e["error"] for e in summary["entries"] if e["status"] == "failed")
    assert error.startswith("mask-from: nothing in the photo matches 'a red disc'")
    photo = read_photo(tmp_path / "scene.png")
    expected = select_mask(
        load_segmenter(str(sam_dir)), photo, selection_from(points=["25,30", "-70,20"])
    ).levels
    used = np.asarray(Image.open(out / rows[0].key / "mask.png"))
    assert ((used >= 128) == (expected >= 128)).all()
    report = json.loads((out / rows[0].key / "result.json").read_text())
    assert report["batch"]["selection"]["segmenter"] == str(sam_dir)
    again = run_batch(manifest, out, shared=shared, device="cpu", progress=False)
    assert again["last_run"]["done"] == 0 and again["done"] == 4


def test_csv_rows_and_bad_selections(tmp_path, scene):
    scene.save(tmp_path / "scene.png")
    csv = tmp_path / "edits.csv"
    csv.write_text(
        "image,prompt,mask_points,mask_box,mask_combine\n"
        'scene.png,a cat,"25,30;-70,20",,union\n'
        'scene.png,a cat,,"1,2,30,40",\n'
    )
    rows = read_manifest(csv)
    assert rows[0].selection["points"] == [[25, 30, 1], [70, 20, 0]]
    assert rows[1].selection["box"] == [1, 2, 30, 40]
    assert rows[0].selection["config"] == {**SelectConfig().__dict__, "mask_combine": "union"}
    for bad, line in [
        ('scene.png,a cat,"25",,\n', "mask_points: mask-point: '25' is not 2 numbers"),
        ('scene.png,a cat,,"1,2,3",\n', "mask_box: expected x0,y0,x1,y1"),
        ('scene.png,a cat,"1,2",,xor\n', "mask_combine"),
        ("scene.png,a cat,,,\n", "missing 'mask' (or mask_text, mask_points, mask_box)"),
    ]:
        csv.write_text("image,prompt,mask_points,mask_box,mask_combine\n" + bad)
        with pytest.raises(InputError, match=re.escape(line)):
            read_manifest(csv)
