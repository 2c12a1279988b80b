"""``blendedit edit`` with a selection instead of (or joined to) a painted mask, end to end with
tiny saved models: the mask the segmenter makes takes the painted mask's path, --save-mask writes
it, the edit changes only there, and every bad selection is one line that leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit.cli import main
from blendedit.config import SelectConfig
from blendedit.frame.photo import read_photo
from blendedit.segment import load_segmenter, select_mask, selection_from

FAST = ["--steps", "2", "--size", "64", "--device", "cpu", "--quiet", "--num-images", "1"]


@pytest.fixture()
def photo(tmp_path, scene):
    path = tmp_path / "scene.png"
    scene.save(path)
    return path


@pytest.fixture()
def run(photo, tiny_sd_dir, tiny_clip_dir, capsys):
    def go(*extra: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(
            ["edit", str(photo), "--prompt", "a blue square", "--model", str(tiny_sd_dir),
             "--clip-model", str(tiny_clip_dir), *FAST, *extra]
        )  # fmt: skip
        return code, capsys.readouterr().err.strip()

    return go


def test_a_click_selects_the_segmenters_mask(run, photo, sam_dir, tmp_path):
    """The mask used (--save-mask) is the segmenter's for those clicks, the report says so."""
    out = tmp_path / "out"
    code, err = run("--mask-point", "25,30", "--mask-point=-70,20", "--segmenter", str(sam_dir),
                    "--save-mask", "--out", str(out), "--no-rank")  # fmt: skip
    assert code == 0, err
    used = np.asarray(Image.open(out / "mask.png"))
    sel = selection_from(points=["25,30", "-70,20"])
    expected = select_mask(load_segmenter(str(sam_dir)), read_photo(photo), sel).levels
    assert ((used >= 128) == (expected >= 128)).all() and 0 < (used >= 128).mean() < 1
    report = json.loads((out / "result.json").read_text())
    assert report["mask"] is None and report["segmenter"] == str(sam_dir)
    assert report["selection"]["points"] == [[25, 30, 1], [70, 20, 0]]


def test_the_edit_changes_only_the_selection(run, photo, sam_dir, tmp_path, monkeypatch):
    """With SAM's decoder answering a disc of radius 12 around the click (random weights give a
    mask all over the photo), the edit leaves every pixel away from the disc as it was."""
    from blendedit.segment.sam import SamSegmenter

    def disc(self, image, points, boxes):
        yy, xx = np.mgrid[: image.height, : image.width]
        p = points[0]
        inside = (yy - p.y) ** 2 + (xx - p.x) ** 2 < 144
        return torch.from_numpy(np.where(inside, 8.0, -8.0)[None]), torch.ones(1)

    monkeypatch.setattr(SamSegmenter, "masks", disc)
    out = tmp_path / "out"
    code, err = run("--mask-point", "25,30", "--segmenter", str(sam_dir), "--save-mask",
                    "--out", str(out), "--no-rank")  # fmt: skip
    assert code == 0, err
    used = np.asarray(Image.open(out / "mask.png")) >= 128
    assert 400 < used.sum() < 500
    report = json.loads((out / "result.json").read_text())
    result = np.asarray(Image.open(out / report["results"][0]["file"]).convert("RGB"))
    source = np.asarray(Image.open(photo).convert("RGB"))
    changed = (result != source).any(axis=-1)
    yy, xx = np.mgrid[:60, :96]
    assert changed[used].mean() > 0.5
    assert not changed[(yy - 30) ** 2 + (xx - 25) ** 2 > 20**2].any()


def test_a_box_subtracted_from_a_painted_mask(run, photo, sam_dir, tmp_path):
    painted = np.zeros((60, 96), np.uint8)
    painted[5:55, 5:90] = 255
    Image.fromarray(painted).save(tmp_path / "painted.png")
    out = tmp_path / "out"
    code, err = run("--mask", str(tmp_path / "painted.png"), "--mask-box", "55,5,90,35",
                    "--mask-combine", "subtract", "--segmenter", str(sam_dir), "--save-mask",
                    "--out", str(out))  # fmt: skip
    assert code == 0, err
    used = np.asarray(Image.open(out / "mask.png")) >= 128
    sel = select_mask(
        load_segmenter(str(sam_dir)), read_photo(photo), selection_from(box="55,5,90,35")
    )
    assert (used == ((painted >= 128) & (sel.levels < 128))).all()


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ((), "blendedit: error: mask: give --mask FILE, or select the region"),
        (("--mask-from", "a red disc", "--select-threshold", "1"),
         "blendedit: error: mask-from: nothing in the photo matches 'a red disc'"),
        (("--mask-point", "500,5"), "blendedit: error: mask-point: 500,5 lies outside the 96x60 photo"),
        (("--mask-point", "5"), "blendedit: error: mask-point: '5' is not 2 numbers"),
        (("--mask-from", "cup", "--segmenter", "./no/such/segmenter"),
         "blendedit: error: segmenter: './no/such/segmenter' is neither an existing path nor a hub id"),
        (("--mask-from", "cup", "--segmenter", "nobody/no-such-sam", "--offline"), "blendedit: error: segmenter: could not load"),
    ],
)  # fmt: skip
def test_bad_selections_are_one_line_and_write_nothing(
    run, extra, line, dino_dir, sam_dir, tmp_path
):
    out = tmp_path / "out"
    if "--segmenter" not in extra:
        extra = (
            *extra,
            "--segmenter",
            f"{dino_dir}+{sam_dir}" if "--mask-from" in extra else str(sam_dir),
        )
    code, err = run(*extra, "--out", str(out))
    assert code == 2 and "\n" not in err and err.startswith(line), err
    assert not out.exists()


def test_select_settings_are_described_once():
    from blendedit.cli import build_parser

    parser = build_parser()
    edit = next(a for a in parser._actions if a.dest == "command").choices["edit"]
    flags = {f for a in edit._actions for f in a.option_strings}
    assert {"--mask-from", "--mask-point", "--mask-neg-point", "--mask-box", "--segmenter",
            "--save-mask", "--mask-combine", "--mask-fill-holes", "--mask-largest",
            "--select-threshold", "--select-preview"} <= flags  # fmt: skip
    with pytest.raises(Exception, match="mask_combine"):
        from blendedit.config import check_settings

        check_settings(SelectConfig(mask_combine="xor"))
