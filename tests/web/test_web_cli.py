"""``blendedit serve`` and ``blendedit replay`` from the command line (tiny local models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendedit.cli import build_parser, main
from blendedit.config import EditConfig
from blendedit.io import MAX_PIXELS, MAX_SIDE
from blendedit.web.cli import is_loopback
from blendedit.web.session import Generation, Session


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("blendedit: error: "), err
    assert "\n" not in err and "Traceback" not in err
    return err


def test_serve_defaults_are_safe():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 7860
    assert args.method == "latent"
    # Uploads are capped, at the library's own limits (a 48 MP phone photo is taken).
    assert args.max_side == MAX_SIDE and args.max_megapixels * 1e6 == MAX_PIXELS >= 48e6
    assert args.max_upload_mb == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--port", "70000"], "port: 70000"),
        (["--max-side", "10"], "max_side: 10"),
        (["--max-upload-mb", "0"], "max_upload_mb: 0"),
        (["--max-side", "20000"], "max_side: 20000"),
        (["--max-megapixels", "500"], "max_megapixels: 500"),
        (["--preview-side", "100"], "preview_side: 100"),
        (["--method", "pixel"], "needs --model with the ADM checkpoint"),
    ],
)
def test_serve_rejects_bad_options_in_one_line(flags, match, capsys):
    assert main(["serve", "--device", "cpu", "--quiet", *flags]) == 2
    assert match in _error_line(capsys)


@pytest.fixture()
def trail_file(editor, shared_images: Path, tmp_path: Path) -> tuple[Path, Session]:
    """A one-step session at size 64, written as the page's result.json would be."""
    s = Session(Image.open(shared_images / "chelsea.png"))
    eyes = np.asarray(Image.open(shared_images / "chelsea.mask-eyes.png")) >= 128
    cfg = EditConfig(num_images=2, num_inference_steps=4, size=64, batch_size=1)
    r = editor(s.current_image, eyes, "sunglasses", config=cfg, seed=3)
    s.keep(Generation.from_edit(0, "sunglasses", eyes, "latent", cfg, [3, 4], r), 1)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(s.to_trail({"name": str(editor.name), "dtype": "float32"})))
    return path, s


def test_replay_writes_every_step_and_checks_it(trail_file, tmp_path: Path, capsys):
    path, session = trail_file
    out = tmp_path / "replayed"
    assert main(["replay", str(path), "--out", str(out), "--device", "cpu", "--strict"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "step 1: 'sunglasses' seed" in captured.err and "identical" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "00-original.png",
        "01-mask.png",
        "01-sunglasses.png",
    ]
    with Image.open(out / "01-sunglasses.png") as im:
        assert np.array_equal(np.asarray(im), np.asarray(session.current_image))
        assert "compositeWithTrainedAlgorithmicMedia" in im.info["XML:com.adobe.xmp"]
    assert np.array_equal(np.asarray(Image.open(out / "01-mask.png")) >= 128, session.steps[0].mask)


def test_replay_strict_fails_when_pixels_differ(trail_file, tmp_path: Path, capsys):
    path, _ = trail_file
    data = json.loads(path.read_text())
    data["steps"][0]["result_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    out = tmp_path / "replayed"
    assert main(["replay", str(path), "--out", str(out), "--device", "cpu", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "DIFFERS from the recorded result" in err and "step(s) 1 differ" in err


def test_replay_errors_are_one_line(trail_file, tmp_path: Path, capsys):
    path, _ = trail_file
    assert main(["replay", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")]) == 2
    assert "trail: no such file" in _error_line(capsys)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    assert main(["replay", str(path), "--out", str(full)]) == 2
    assert "already exists and is not empty" in _error_line(capsys)
