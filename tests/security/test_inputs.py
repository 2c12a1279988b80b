"""Careless and hostile inputs (issue 25, findings 5 and 6): manifests in any encoding with a BOM,
JSON nested thousands deep, trails with wrongly typed fields, bad photos refused before a model
loads, multi-frame files said, decompression bombs refused from their header."""

from __future__ import annotations

import base64
import codecs
import json
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from security_fixtures import (
    b64_png,
    bomb_png,
    error_line,
    nested,
    one_line,
    photo,
    trail,
    write_trail,
)

from blendedit.batch import read_manifest, run_batch
from blendedit.batch.manifest import Shared
from blendedit.cli import main
from blendedit.config import EditConfig
from blendedit.errors import InputError
from blendedit.eval import EvalSettings, run_eval
from blendedit.eval.methods import EvalModels, Resources
from blendedit.frame.edit import read_mask
from blendedit.frame.photo import read_photo
from blendedit.io import MAX_JSON_DEPTH, load_image, open_image, read_json
from blendedit.web.session import parse_trail

FAST = {"num_inference_steps": 4, "size": 64, "num_images": 2, "batch_size": 2}


@pytest.fixture()
def no_model(monkeypatch):
    """Loading any model fails the test: what is checked must be checked before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("blendedit.methods.load_editor", refuse)
    monkeypatch.setattr("blendedit.options.ModelOptions.load", refuse)


@pytest.fixture()
def no_decoding(monkeypatch):
    """Decoding the pixels of a PNG over 10 MP fails the test: a bomb is refused from its
    header (smaller ones, the test photos, decode as usual)."""
    load = PngImagePlugin.PngImageFile.load

    def guarded(self, *a, **k):
        if self.size[0] * self.size[1] > 10_000_000:
            raise AssertionError(f"a {self.size[0]}x{self.size[1]} image was decoded")
        return load(self, *a, **k)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", guarded)


# -- manifests in any encoding with a BOM ---------------------------------------------------------


def _manifest_text(images: Path, suffix: str) -> str:
    rows = [
        {"image": str(images / "chelsea.png"), "mask": str(images / "chelsea.mask-eyes.png"),
         "prompt": "café ☕ sunglasses", "seed": 1},
        {"image": str(images / "coffee.png"), "mask": str(images / "coffee.mask-drink.png"),
         "prompt": "thé", "guidance": 5},
    ]  # fmt: skip
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    keys = ["image", "mask", "prompt", "seed", "guidance"]
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    return "\r\n".join(lines) + "\r\n"


ENCODINGS = {
    "utf-8": lambda t: t.encode("utf-8"),
    "utf-8 with BOM": lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
    "utf-16 LE with BOM": lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"),
    "utf-16 BE with BOM": lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_a_manifest_is_read_in_any_encoding_with_a_bom(encoding, suffix, shared_images, tmp_path):
    text = _manifest_text(shared_images, suffix)
    plain = tmp_path / f"plain{suffix}"
    plain.write_bytes(text.encode("utf-8"))
    path = tmp_path / f"edits{suffix}"
    path.write_bytes(ENCODINGS[encoding](text))
    got, want = read_manifest(path), read_manifest(plain)
    assert [(r.key, r.prompt, r.line, r.settings) for r in got] == [
        (r.key, r.prompt, r.line, r.settings) for r in want
    ]
    assert got[0].prompt == "café ☕ sunglasses"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize(
    "data",
    [
        bomb_png(64, 64),  # a binary file (a PNG named edits.jsonl)
        bytes(range(256)) * 4,
        "image,mask,prompt\nà.png,b.png,café\n".encode("latin-1"),  # latin-1, no BOM
        codecs.BOM_UTF16_LE + b"\x00\xd8",  # a UTF-16 BOM, then a lone surrogate
    ],
    ids=["png", "bytes", "latin-1", "broken-utf-16"],
)
def test_a_manifest_in_another_encoding_is_one_line(data, suffix, tmp_path, capsys):
    path = tmp_path / f"edits{suffix}"
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        read_manifest(path)
    assert one_line(e.value).startswith("manifest: ")
    out = tmp_path / "out"
    assert main(["batch", str(path), "--out", str(out), "--quiet"]) == 2
    assert "manifest: " in error_line(capsys)
    assert not out.exists()


def test_a_csv_manifest_with_a_nul_byte_or_a_huge_cell_is_one_line(tmp_path):
    path = tmp_path / "edits.csv"
    path.write_bytes(b"image,mask,prompt\na.png,b.png," + b"x" * 200_000 + b"\n")
    with pytest.raises(InputError) as e:
        read_manifest(path)
    assert one_line(e.value).startswith("manifest: ")


# -- JSON nested thousands of levels deep ---------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 100_000])
def test_a_manifest_row_nested_deep_is_one_line(depth, tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text('{"image": "a.png", "mask": "b.png", "prompt": "x", "seed": '
                    + nested(depth) + "}\n")  # fmt: skip
    with pytest.raises(InputError) as e:
        read_manifest(path)
    assert "line 1" in one_line(e.value) and "nested deeper than" in str(e.value)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 100_000])
def test_a_trail_nested_deep_is_one_line(depth, tmp_path, capsys):
    data = json.dumps(trail())
    path = tmp_path / "result.json"
    path.write_text(data[:-1] + ', "extra": ' + nested(depth) + "}")
    with pytest.raises(InputError) as e:
        parse_trail(path)
    assert one_line(e.value).startswith("trail: ") and "nested deeper than" in str(e.value)
    out = tmp_path / "out"
    assert main(["replay", str(path), "--out", str(out), "--quiet"]) == 2
    assert "nested deeper than" in error_line(capsys)
    assert not out.exists()


def test_a_trail_dict_nested_deep_is_one_line():
    data = trail()
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    data["steps"][0]["meta"] = {"x": deep}
    with pytest.raises(InputError) as e:
        parse_trail(data)
    assert "nested deeper than" in one_line(e.value)


def test_read_json_refuses_deep_nesting_and_bad_text(tmp_path):
    path = tmp_path / "x.json"
    for text in (nested(5000), nested(MAX_JSON_DEPTH + 1), '{"a": '):
        path.write_text(text)
        with pytest.raises(InputError) as e:
            read_json(path)
        assert str(path) in one_line(e.value)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError):
        read_json(path)
    path.write_text(nested(MAX_JSON_DEPTH - 1))
    assert read_json(path)  # deep, but not too deep


# -- trails: every field's type checked before anything is written --------------------------------


def test_a_trail_with_a_number_written_as_text_writes_nothing(tiny_sd_dir, tmp_path, capsys):
    data = trail(model=str(tiny_sd_dir))
    data["steps"][0]["settings"]["guidance_scale"] = "7.5"
    path = write_trail(tmp_path / "result.json", data)
    out = tmp_path / "out"
    assert main(["replay", str(path), "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    err = error_line(capsys)
    assert "step 1" in err and "guidance_scale" in err and "'7.5'" in err
    assert not out.exists()  # 00-original.png is written only after the whole trail is checked


BAD_STEPS = {
    "seed as text": ({"seed": "3"}, "seed"),
    "seed as float": ({"seed": 3.5}, "seed"),
    "seed negative": ({"seed": -1}, "seed"),
    "seed huge": ({"seed": 2**70}, "seed"),
    "seeds as text": ({"seeds": ["3", "4"]}, "seeds"),
    "seeds not a list": ({"seeds": 3}, "seeds"),
    "prompt a number": ({"prompt": 5}, "prompt"),
    "method a number": ({"method": 5}, "method"),
    "settings a list": ({"settings": [1, 2]}, "settings"),
    "steps as text": ({"settings": {"num_inference_steps": "4"}}, "num_inference_steps"),
    "steps as float": ({"settings": {"num_inference_steps": 4.5}}, "num_inference_steps"),
    "rank as text": ({"settings": {"rank": "yes"}}, "rank"),
    "kernels as text": ({"settings": {"shrink_kernels": ["7"]}}, "shrink_kernels"),
    "scheduler a list": ({"settings": {"scheduler": ["ddim"]}}, "scheduler"),
    "loras a number": ({"loras": 5}, "loras"),
    "loras of numbers": ({"loras": [5]}, "loras"),
    "mask a number": ({"mask_png_base64": 5}, "mask"),
    "hash a number": ({"result_sha256": 5}, "result_sha256"),
    "scribble text": ({"scribble": "x"}, "scribble"),
    "full after invert": ({"settings": {"invert_mask": True, "mask_grow": 256}}, "mask"),
}


@pytest.mark.parametrize("name", list(BAD_STEPS))
def test_every_field_of_a_trail_step_is_checked(name):
    step, field = BAD_STEPS[name]
    data = trail(**step)
    with pytest.raises(InputError) as e:
        parse_trail(data)
    text = one_line(e.value)
    assert text.startswith("trail: step 1") and field in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(model="sd"), "model"),
        (lambda d: d.update(model={"name": 5}), "model"),
        (lambda d: d.update(steps=[5]), "step 1"),
        (lambda d: d.update(steps={"a": 1}), "steps"),
        (lambda d: d["original"].update(file_base64=5), "original"),
        (lambda d: d["original"].update(file_name=5), "original"),
        (lambda d: d.update(original="x"), "original"),
    ],
)
def test_every_field_of_a_trail_is_checked(change, field):
    data = trail()
    change(data)
    with pytest.raises(InputError) as e:
        parse_trail(data)
    text = one_line(e.value)
    assert text.startswith("trail: ") and field in text


def test_a_trail_mask_bomb_is_refused_from_its_header(no_decoding):
    data = trail()
    data["steps"][0]["mask_png_base64"] = base64.b64encode(bomb_png(14000, 14000)).decode()
    with pytest.raises(InputError) as e:
        parse_trail(data)
    assert "14000x14000" in one_line(e.value)


# -- bad photos refused before a model loads ------------------------------------------------------


@pytest.fixture()
def bad_inputs(tmp_path: Path, shared_images: Path) -> dict[str, tuple[Path, Path, str]]:
    """(photo, mask, what the error says) of photos a model should never be loaded for."""
    d = tmp_path / "bad"
    d.mkdir()
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    Image.new("L", (1, 1), 255).save(d / "tiny.mask.png")
    Image.new("L", (300, 100), 255).save(d / "wide.mask.png")  # chelsea is 451x300
    Image.new("L", (451, 300), 255).save(d / "white.mask.png")
    (d / "bomb.mask.png").write_bytes(bomb_png(14000, 14000))
    chelsea = shared_images / "chelsea.png"
    return {
        "1x1": (d / "tiny.png", d / "tiny.mask.png", "1x1"),
        "aspect": (chelsea, d / "wide.mask.png", "aspect"),
        "white": (chelsea, d / "white.mask.png", "whole"),
        "bomb": (chelsea, d / "bomb.mask.png", "14000x14000"),
    }


def test_batch_rows_with_bad_photos_fail_without_loading_a_model(
    bad_inputs, tmp_path, no_model, no_decoding
):
    manifest = tmp_path / "edits.jsonl"
    rows = [{"image": str(p), "mask": str(m), "prompt": "x"} for p, m, _ in bad_inputs.values()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_batch(
        manifest, tmp_path / "out", shared=Shared(settings=dict(FAST)), progress=False
    )
    assert (summary["done"], summary["failed"]) == (0, len(rows))
    for entry, (_, _, says) in zip(summary["entries"], bad_inputs.values(), strict=True):
        assert says in entry["error"], entry["error"]
        assert "model was loaded" not in entry["error"] and "\n" not in entry["error"]


@pytest.mark.parametrize("case", ["1x1", "aspect", "white", "bomb"])
def test_the_cli_refuses_bad_photos_before_loading(
    case, bad_inputs, tmp_path, capsys, no_model, no_decoding
):
    image, mask, says = bad_inputs[case]
    out = tmp_path / "out"
    argv = ["edit", str(image), "--mask", str(mask), "--prompt", "x", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    assert says in error_line(capsys)
    assert not out.exists()


class _NoModels(Resources):
    """Eval's resources with a label map and no model: loading one fails the test."""

    labels: ClassVar[dict[int, str]] = {0: "tabby", 1: "goldfish", 2: "volcano"}

    def __getattribute__(self, name: str):
        if name in ("latent_editor", "pixel_editor", "ranking_clip", "classifier", "score_clip"):
            raise AssertionError("a model was loaded")
        return super().__getattribute__(name)


@pytest.mark.parametrize("case", ["1x1", "8x8", "transparent", "bomb"])
def test_eval_refuses_bad_photos_before_loading(case, tmp_path, no_decoding):
    """Named, before the run folder is made and before any model loads."""
    images = tmp_path / "photos"
    images.mkdir()
    photo(64, 64).save(images / "good.png")
    if case == "1x1":
        Image.new("RGB", (1, 1)).save(images / "bad.png")
    elif case == "8x8":
        Image.new("RGB", (8, 8)).save(images / "bad.png")
    elif case == "transparent":
        Image.new("RGBA", (64, 64), (1, 2, 3, 0)).save(images / "bad.png")
    else:
        (images / "bad.png").write_bytes(bomb_png(14000, 14000))
    settings = EvalSettings(
        methods=("latent",), n_images=2, batch=1, latent=EditConfig(**FAST), progress=False,
        time_single=False, warmup=False,
    )  # fmt: skip
    with pytest.raises(InputError) as e:
        run_eval(images, tmp_path / "out", settings, resources=_NoModels(EvalModels()))
    assert "bad.png" in one_line(e.value)
    assert not (tmp_path / "out").exists()


# -- multi-frame files ----------------------------------------------------------------------------


def _animated(path: Path, fmt: str) -> Path:
    frames = [photo(48, 32, seed=i) for i in range(3)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_a_multi_frame_photo_says_which_frame_it_uses(fmt, tmp_path, caplog):
    path = _animated(tmp_path / f"anim.{fmt.lower()}", fmt)
    with caplog.at_level(logging.WARNING, logger="blendedit"):
        p = read_photo(path, "image")
    assert p.frames == 3
    (msg,) = [r.getMessage() for r in caplog.records if "frame" in r.getMessage()]
    assert "frame 1 of 3" in msg and "anim" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blendedit"):
        assert read_photo(photo(48, 32)).frames == 1
    assert not caplog.records


def test_result_json_records_the_frame_used(editor, tmp_path):
    path = _animated(tmp_path / "anim.gif", "GIF")
    mask = np.zeros((32, 48), bool)
    mask[8:24, 12:36] = True
    result = editor(path, mask, "a cat", config=EditConfig(**FAST))
    assert result.to_dict()["input_frame"] == {"used": 1, "of": 3}
    plain = editor(photo(48, 32), mask, "a cat", config=EditConfig(**FAST))
    assert "input_frame" not in plain.to_dict()


# -- decompression bombs, refused from the header -------------------------------------------------


@pytest.mark.parametrize(
    ("size", "rows"), [((14000, 14000), None), ((100_000, 100_000), 2), ((20000, 100), None)]
)
def test_bombs_are_refused_from_the_header(size, rows, tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(*size, rows=rows))
    assert path.stat().st_size < 200_000
    w, h = size
    mask = read_photo(photo(64, 64))
    for read in (
        lambda: read_photo(path, "image"),
        lambda: load_image(path, "image"),
        lambda: open_image(path, "mask"),
        lambda: read_mask(path, mask),
    ):
        with pytest.raises(InputError) as e:
            read()
        text = one_line(e.value)
        # Ours, or Pillow's own guard (above twice MAX_PIXELS), both from the header.
        assert f"{w}x{h}" in text or "too large" in text or "exceeds limit" in text, text
        assert "was decoded" not in text


def test_a_trail_scribble_bomb_is_refused(no_decoding):
    data = trail(scribble={"box": [0, 0, 40, 30], "png_base64": b64_png(photo(40, 30))})
    assert parse_trail(data).steps[0].scribble is not None
    data["steps"][0]["scribble"]["png_base64"] = base64.b64encode(bomb_png(14000, 14000)).decode()
    with pytest.raises(InputError) as e:
        parse_trail(data)
    assert "scribble is 14000x14000, its box 40x30" in one_line(e.value)
