"""The ``blendedit`` command end to end, with tiny local models loaded through the real paths."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blendedit.cli import main

FAST = ["--steps", "4", "--size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture()
def edit_args(tiny_sd_dir, tiny_clip_dir, shared_images):
    def make(
        *extra: str, image: str = "chelsea.png", mask: str = "chelsea.mask-eyes.png"
    ) -> list[str]:
        return [
            "edit",
            str(shared_images / image),
            "--mask",
            str(shared_images / mask),
            "--prompt",
            "sunglasses",
            "--model",
            str(tiny_sd_dir),
            "--clip-model",
            str(tiny_clip_dir),
            *FAST,
            *extra,
        ]

    return make


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("blendedit: error: ")
    assert "\n" not in err and "Traceback" not in err
    return err


def test_edit_writes_ranked_pngs_and_result_json(edit_args, tmp_path, shared_images, capsys):
    out = tmp_path / "run"
    assert (
        main(
            edit_args(
                "--out", str(out), "--num-images", "3", "--seed", "5", "--save-process", "gif"
            )
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    report = json.loads((out / "result.json").read_text())
    results = report["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert sorted(r["seed"] for r in results) == [5, 6, 7]
    scores = [r["clip_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    src = Image.open(shared_images / "chelsea.png")
    for r in results:
        assert r["file"] == f"{r['rank']:02d}-seed{r['seed']}.png"
        assert Image.open(out / r["file"]).size == src.size
    assert report["prompt"] == "sunglasses" and report["method"] == "latent"
    settings = report["settings"]
    assert (
        settings["num_inference_steps"] == 4
        and settings["num_images"] == 3
        and settings["seed"] == 5
    )
    assert settings["blend_start"] == 0.25 and settings["scheduler"] == "ddim"
    assert set(report["timings"]) >= {"load", "encode", "denoise", "decode", "rank", "total"}
    gif = out / f"process-{results[0]['file'].removesuffix('.png')}.gif"
    assert Image.open(gif).n_frames == 3
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def test_result_regenerates_from_its_json(edit_args, tmp_path):
    """The recorded seed and settings alone reproduce a result (one candidate per UNet call)."""
    first = tmp_path / "batch"
    assert main(edit_args("--out", str(first), "--num-images", "2", "--batch-size", "1")) == 0
    chosen = json.loads((first / "result.json").read_text())["results"][1]
    again = tmp_path / "again"
    assert (
        main(edit_args("--out", str(again), "--num-images", "1", "--seed", str(chosen["seed"])))
        == 0
    )
    a = np.asarray(Image.open(first / chosen["file"]))
    b = np.asarray(Image.open(again / f"01-seed{chosen['seed']}.png"))
    assert np.array_equal(a, b)


def test_no_rank_and_options_map_onto_settings(edit_args, tmp_path):
    out = tmp_path / "run"
    argv = edit_args(
        "--out",
        str(out),
        "--no-rank",
        "--num-images",
        "2",
        "--scheduler",
        "dpm++",
        "--guidance",
        "5",
        "--blend-start",
        "0.5",
        "--no-mask-shrink",
        "--background",
        "decoded",
        "--feather",
        "4",
        "--negative-prompt",
        "blurry",
        "--invert-mask",
        image="rocket.png",
        mask="rocket.mask-sky.png",
    )
    assert main(argv) == 0
    report = json.loads((out / "result.json").read_text())
    s = report["settings"]
    assert (s["rank"], s["scheduler"], s["guidance_scale"], s["blend_start"]) == (
        False,
        "dpm++",
        5.0,
        0.5,
    )
    assert (s["mask_shrink"], s["background"], s["feather"], s["invert_mask"]) == (
        "off",
        "decoded",
        4,
        True,
    )
    assert s["negative_prompt"] == "blurry"
    assert [r["seed"] for r in report["results"]] == [0, 1] and report["results"][0][
        "clip_score"
    ] is None


def test_existing_output_folder_is_never_overwritten(edit_args, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier work")
    assert main(edit_args("--out", str(out))) == 2
    line = _error_line(capsys)
    assert "out:" in line and "not empty" in line
    assert [p.name for p in out.iterdir()] == ["keep.png"]
    assert (out / "keep.png").read_bytes() == b"earlier work"


def test_default_output_folders_are_fresh(edit_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(edit_args("--num-images", "1")) == 0
    assert main(edit_args("--num-images", "1")) == 0
    runs = sorted((tmp_path / "blendedit-out").iterdir())
    assert len(runs) == 2 and all((r / "result.json").is_file() for r in runs)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--mask", "EMPTY"], "mask: the mask is empty"),
        (["--mask", "MISSING"], "mask: no such file"),
        (["--steps", "0"], "num_inference_steps: 0 must be between 1 and 1000"),
        (["--blend-start", "1.5"], "blend_start: 1.5 must be in [0, 1)"),
        (["--size", "99999"], "size: 99999 must be between 64 and 4096 px"),
        (["--model", "./no-such-model"], "model: './no-such-model' is neither an existing path"),
        (["--model", "someone/not-cached"], "model: could not load 'someone/not-cached'"),
        (["--device", "cuda"], "device: 'cuda' asked for, but this machine has no CUDA GPU"),
        (["--shrink-kernels", "4,2"], "shrink_kernels: (4, 2) must be odd sizes >= 1"),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(
    edit_args, tmp_path, capsys, change, expected
):
    if "--device" in change and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    empty = tmp_path / "empty.png"
    Image.new("L", (451, 300), 0).save(empty)
    change = [
        str(empty) if c == "EMPTY" else str(tmp_path / "nope.png") if c == "MISSING" else c
        for c in change
    ]
    argv = edit_args("--out", str(tmp_path / "run"))
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["edit", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for words in (
        "--mask",
        "--blend-start",
        "--no-mask-shrink",
        "--background",
        "examples:",
        "result.json",
    ):
        assert words in text


def test_console_script_runs_an_edit(tiny_sd_dir, tiny_clip_dir, shared_images, tmp_path):
    """The installed ``blendedit`` entry point, in a fresh process, offline."""
    exe = shutil.which("blendedit") or pytest.skip("console script not installed")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            exe,
            "edit",
            str(shared_images / "coffee.png"),
            "--mask",
            str(shared_images / "coffee.mask-drink.png"),
            "--prompt",
            "green matcha tea",
            "--model",
            str(tiny_sd_dir),
            "--clip-model",
            str(tiny_clip_dir),
            "--num-images",
            "2",
            "--out",
            str(out),
            "--offline",
            *FAST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("0?-seed*.png"))) == 2


@pytest.fixture(scope="module")
def adm_reference():
    # this file's own path: another folder's conftest may be the module named "conftest"
    ref = Path(__file__).resolve().parent / "data" / "reference" / "adm"
    if not (ref / "tiny_adm.safetensors").is_file():
        pytest.skip(f"ADM reference model not found at {ref}")
    return ref


@pytest.mark.parametrize(
    ("method", "algorithm"),
    [("pixel", "blended-diffusion"), ("local-clip", "local-clip-guided-diffusion")],
)
def test_pixel_methods_end_to_end(
    adm_reference, tiny_clip_dir, shared_images, tmp_path, method, algorithm
):
    """Blended Diffusion and the local CLIP-guided baseline on the tiny reference ADM model."""
    out = tmp_path / method
    argv = [
        "edit",
        str(shared_images / "chelsea.png"),
        "--mask",
        str(shared_images / "chelsea.mask-eyes.png"),
        "--prompt",
        "sunglasses",
        "--method",
        method,
        "--model",
        str(adm_reference / "tiny_adm.safetensors"),
        "--model-config",
        str(adm_reference / "tiny_adm_config.json"),
        "--clip-model",
        str(tiny_clip_dir),
        "--respacing",
        "10",
        "--skip-timesteps",
        "6",
        "--aug-num",
        "2",
        "--num-images",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "result.json").read_text())
    assert report["method"] == "pixel" and report["settings"]["algorithm"] == algorithm
    assert [r["rank"] for r in report["results"]] == [1, 2]
    scores = [r["clip_score"] for r in report["results"]]
    assert scores == sorted(scores, reverse=True)
    size = Image.open(shared_images / "chelsea.png").size
    assert all(Image.open(out / r["file"]).size == size for r in report["results"])


def test_flags_of_the_other_method_are_refused(adm_reference, shared_images, capsys):
    argv = [
        "edit",
        str(shared_images / "chelsea.png"),
        "--mask",
        str(shared_images / "chelsea.mask-eyes.png"),
        "--prompt",
        "x",
        "--method",
        "pixel",
        "--model",
        str(adm_reference / "tiny_adm.safetensors"),
        "--steps",
        "10",
    ]
    assert main(argv) == 2
    assert "num_inference_steps: applies to --method latent only" in _error_line(capsys)
    assert main(argv[:-4]) == 2
    assert "model: --method pixel needs --model" in _error_line(capsys)


def test_compare_backgrounds_writes_figure_and_table(edit_args, tmp_path):
    out = tmp_path / "cmp"
    argv = edit_args("--out", str(out), "--recon-steps", "3")
    argv[0] = "compare-backgrounds"
    assert main(argv) == 0
    fig = Image.open(out / "comparison.png")
    assert fig.width == 6 * 256  # input + five modes
    table = (out / "comparison.md").read_text()
    for mode in ("decoded", "stitch", "poisson", "latent", "decoder"):
        assert f"| {mode} |" in table


def test_edit_writes_the_chosen_format_with_parameters_and_marker(edit_args, tmp_path):
    from blendedit.frame.photo import AI_SOURCE_TYPE

    out = tmp_path / "jpeg"
    args = ["--out", str(out), "--num-images", "1", "--format", "jpeg", "--quality", "80"]
    assert main(edit_args(*args, "--region", "crop", "--mask-grow", "4")) == 0
    report = json.loads((out / "result.json").read_text())
    assert report["settings"]["region_used"]["mode"] == "crop"
    name = report["results"][0]["file"]
    assert name.endswith(".jpg")
    raw = (out / name).read_bytes()
    assert AI_SOURCE_TYPE.encode() in raw  # XMP: AI-edited, IPTC DigitalSourceType
    im = Image.open(out / name)
    assert im.format == "JPEG"
    comment = im.getexif().get_ifd(0x8769).get(0x9286)
    assert comment and "sunglasses" in comment.decode("utf-16-be", "ignore")

    bare = tmp_path / "bare"
    assert main(edit_args("--out", str(bare), "--num-images", "1", "--no-metadata")) == 0
    png = Image.open(next(bare.glob("01-*.png")))
    assert "parameters" not in png.info
    assert AI_SOURCE_TYPE.encode() in next(bare.glob("01-*.png")).read_bytes()


def test_bad_region_and_quality_are_one_line(edit_args, capsys):
    with pytest.raises(SystemExit):
        main(edit_args("--region", "middle"))
    capsys.readouterr()
    assert main(edit_args("--quality", "0")) == 2
    assert "quality: 0" in _error_line(capsys)
