"""Non-finite numbers (issue 25, finding 3): refused where they enter (the command line, a batch
row, a trail), and a result with non-finite values is an error for that candidate, never a black
image marked done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from security_fixtures import FAST, error_line, one_line, trail, write_trail

from blendedit import BlendedLatentDiffusion
from blendedit.batch import run_batch
from blendedit.batch.manifest import Shared
from blendedit.cli import main
from blendedit.config import EditConfig
from blendedit.errors import BlendEditError, InputError
from blendedit.web.session import parse_trail

CLI_FAST = ["--steps", "4", "--size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def nan_sd_dir(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model with every UNet weight NaN (a broken fine-tune, or a LoRA gone wrong)."""
    root = tmp_path_factory.mktemp("nan-model") / "nan-sd"
    shutil.copytree(tiny_sd_dir, root)
    (weights,) = (root / "unet").glob("*.safetensors")
    state = load_file(weights)
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, weights)
    return root


def _edit_argv(model: Path, clip: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "edit", str(images / "chelsea.png"), "--mask", str(images / "chelsea.mask-eyes.png"),
        "--prompt", "sunglasses", "--model", str(model), "--clip-model", str(clip),
        "--out", str(out), *CLI_FAST, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_refuses_a_non_finite_eta_in_one_line(
    value, tiny_sd_dir, tiny_clip_dir, shared_images, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = _edit_argv(tiny_sd_dir, tiny_clip_dir, shared_images, out, f"--eta={value}")
    assert main(argv) == 2
    err = error_line(capsys)
    assert "eta" in err and value.lstrip("-") in err
    assert not out.exists()


def test_a_batch_row_with_infinity_is_refused_before_any_work(
    tiny_sd_dir, tiny_clip_dir, shared_images, tmp_path, capsys
):
    manifest = tmp_path / "edits.jsonl"
    row = {
        "image": str(shared_images / "chelsea.png"),
        "mask": str(shared_images / "chelsea.mask-eyes.png"),
        "prompt": "sunglasses",
        "recon_lambda": float("inf"),  # json writes Infinity, which JSON readers accept
    }
    manifest.write_text(json.dumps(row) + "\n")
    assert "Infinity" in manifest.read_text()
    out = tmp_path / "out"
    shared = Shared(model=str(tiny_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    with pytest.raises(InputError) as e:
        run_batch(manifest, out, shared=shared, device="cpu", progress=False)
    assert "row 1" in one_line(e.value) and "recon_lambda: inf" in str(e.value)
    assert not out.exists()
    argv = ["batch", str(manifest), "--out", str(out), "--model", str(tiny_sd_dir), "--quiet"]
    assert main(argv) == 2
    assert "recon_lambda: inf" in error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("field", ["guidance_scale", "eta", "blend_start", "recon_lambda"])
def test_a_trail_with_a_non_finite_setting_is_refused_when_read(field, tmp_path):
    data = trail()
    data["steps"][0]["settings"][field] = float("nan")
    path = write_trail(tmp_path / "result.json", data)  # json writes NaN
    for source in (data, path):
        with pytest.raises(InputError) as e:
            parse_trail(source)
        assert "step 1" in one_line(e.value) and f"{field}: nan" in str(e.value)


# -- results that are not finite ---------------------------------------------------------------


def test_a_model_that_makes_nan_raises_one_line_instead_of_black_images(nan_sd_dir, shared_images):
    editor = BlendedLatentDiffusion.from_pretrained(nan_sd_dir, clip_model=None)
    with pytest.raises(BlendEditError) as e:
        editor(
            shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png", "sunglasses",
            config=EditConfig(**FAST),
        )  # fmt: skip
    text = one_line(e.value)
    assert "not finite" in text and "seed" in text


def test_the_cli_exits_non_zero_and_writes_nothing_for_a_nan_model(
    nan_sd_dir, tiny_clip_dir, shared_images, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(_edit_argv(nan_sd_dir, tiny_clip_dir, shared_images, out, "--num-images", "2")) != 0
    assert "not finite" in error_line(capsys)
    assert not out.exists()


def test_a_batch_row_of_a_nan_model_is_failed_not_done(
    nan_sd_dir, tiny_clip_dir, shared_images, tmp_path
):
    manifest = tmp_path / "edits.jsonl"
    row = {
        "image": str(shared_images / "chelsea.png"),
        "mask": str(shared_images / "chelsea.mask-eyes.png"),
        "prompt": "sunglasses",
    }
    manifest.write_text(json.dumps(row) + "\n")
    shared = Shared(model=str(nan_sd_dir), clip_model=str(tiny_clip_dir), settings=dict(FAST))
    summary = run_batch(manifest, tmp_path / "out", shared=shared, device="cpu", progress=False)
    assert (summary["done"], summary["failed"]) == (0, 1)
    (entry,) = summary["entries"]
    assert entry["status"] == "failed" and "not finite" in entry["error"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.is_dir() and p.name[0] != "."]


def test_one_non_finite_candidate_is_dropped_and_recorded(editor, shared_images, monkeypatch):
    """The candidate of seed 1 decodes to NaN: it is dropped and named in result.json; the
    others are the same as without it."""
    cfg = EditConfig(**{**FAST, "num_images": 3, "batch_size": 1}, rank=False)
    args = (shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png", "sunglasses")
    clean = editor(*args, config=cfg)
    decode = type(editor).decode
    calls = []

    def broken(self, state, samples):
        out = decode(self, state, samples)
        calls.append(len(samples))
        if len(calls) == 1:
            out = out.clone()
            out[1] = float("nan")
        return out

    monkeypatch.setattr(type(editor), "decode", broken)
    result = editor(*args, config=cfg)
    assert result.seeds == [0, 2]
    assert [c.rank for c in result.candidates] == [1, 2]
    (failed,) = result.failed
    assert failed["seed"] == 1 and "not finite" in failed["reason"]
    assert "\n" not in failed["reason"]
    report = json.loads(json.dumps(result.to_dict()))
    assert report["failed"] == [failed]
    assert [r["seed"] for r in report["results"]] == [0, 2]
    want = {c.seed: np.asarray(c.image) for c in clean.candidates}
    for c in result.candidates:
        assert np.array_equal(np.asarray(c.image), want[c.seed])
    assert "failed" not in clean.to_dict()  # result.json of a clean edit is as before


@pytest.mark.parametrize("mode", ["latent", "decoder"])
def test_a_background_reconstruction_that_diverges_is_one_line(
    editor, shared_images, monkeypatch, mode
):
    """The latent/decoder reconstruction (paper 4.2) optimises with Adam; one that diverges to
    NaN is a one-line error, not a black patch pasted into the photo."""
    cfg = EditConfig(**{**FAST, "num_images": 1}, rank=False, background=mode, recon_steps=1)
    args = (shared_images / "chelsea.png", shared_images / "chelsea.mask-eyes.png", "sunglasses")
    monkeypatch.setattr(
        type(editor), "reconstruct", lambda self, state, sample, decoded, cfg: decoded * np.nan
    )
    with pytest.raises(BlendEditError, match=f"^background: the {mode} reconstruction diverged"):
        editor(*args, config=cfg)
