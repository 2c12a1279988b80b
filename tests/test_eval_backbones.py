"""``blendedit eval`` accepts any backbone: the latent methods and diffusers' inpaint pipeline of
the model's own family, with the family's default settings under the flags (tiny SDXL and SD3)."""

from __future__ import annotations

import json

import pytest

from blendedit.cli import main
from tiny_eval_models import tiny_resnet_classifier
from tiny_models import tiny_sd3_parts


@pytest.fixture(scope="module")
def tiny_sd3_dir(tmp_path_factory):
    from diffusers import StableDiffusion3Pipeline

    root = tmp_path_factory.mktemp("sd3")
    StableDiffusion3Pipeline(**tiny_sd3_parts(root / "vocab")).save_pretrained(root / "tiny-sd3")
    return root / "tiny-sd3"


@pytest.mark.parametrize(
    ("family", "pipeline", "defaults"),
    [
        ("sdxl", "StableDiffusionXLInpaintPipeline", {"guidance_scale": 5.0, "scheduler": "ddim"}),
        ("sd3", "StableDiffusion3InpaintPipeline", {"scheduler": "flow-euler"}),
    ],
)
def test_eval_runs_any_backbone(
    request, tmp_path, shared_images, tiny_clip_dir, family, pipeline, defaults
):
    model = request.getfixturevalue("tiny_sdxl_dir" if family == "sdxl" else "tiny_sd3_dir")
    out = tmp_path / "eval"
    argv = [
        "eval", "--images", str(shared_images), "--out", str(out), "--model", str(model),
        "--methods", "latent,diffusers-inpaint", "--n-images", "1", "--batch", "2",
        "--steps", "4", "--size", "64", "--max-side", "128", "--no-single-timing", "--quiet",
        "--clip-model", str(tiny_clip_dir), "--score-clip-model", str(tiny_clip_dir),
        "--classifier", str(tiny_resnet_classifier(tmp_path / "classifier")), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    ref = report["methods"]["diffusers-inpaint"]
    assert ref["status"] == "ok" and ref["settings"]["pipeline"] == pipeline
    latent = report["methods"]["latent"]["settings"]["config"]
    for key, value in defaults.items():
        assert latent[key] == value, key
    for method in ("latent", "diffusers-inpaint"):
        preds = list((out / "predictions" / method).rglob("*.png"))
        assert len(preds) == 2, method
