"""A model family added from the test suite alone: a ``Backbone`` subclass registered at run time
(``register_family``) and a tiny random model folder whose ``model_index.json`` names a pipeline
class no module of blendedit knows. Every front end edits with it (``blendedit edit``, ``batch``,
``eval``, the web editor's generate handler, ``bench`` with its own preset), and no file under
``src/`` names it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from blendedit import BlendedLatentDiffusion
from blendedit.bench import ARCHITECTURES
from blendedit.cli import main
from blendedit.errors import InputError
from blendedit.latent.backbones import (
    FAMILIES,
    StableDiffusion,
    detect_family,
    family_defaults,
    register_family,
    unregister_family,
)
from blendedit.latent.backbones.parts import TINY_CLIP, TINY_TEXT, TINY_UNET, TINY_VAE, Architecture
from tiny_eval_models import tiny_resnet_classifier

SRC = Path(__file__).resolve().parents[1] / "src"
PHOTO, MASK = "chelsea.png", "chelsea.mask-eyes.png"
FAST = ["--steps", "4", "--size", "64", "--device", "cpu"]


class TinyTest(StableDiffusion):
    """SD's parts under a pipeline class name of its own, with its own default guidance (so the
    family's defaults are seen to arrive) and its own bench preset."""

    family: ClassVar[str] = "tiny-test"
    name: ClassVar[str] = "TinyTest"
    title: ClassVar[str] = "the test suite's TinyTest"
    pipelines: ClassVar[tuple[str, ...]] = ("TinyTestPipeline",)
    single_file: ClassVar[bool] = False
    bare_folder: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {"guidance_scale": 6.5}
    catalogue: ClassVar[dict[str, Architecture]] = {
        "tiny-test": Architecture(
            {"unet": TINY_UNET, "vae": TINY_VAE, "text": TINY_TEXT}, 64, clip=TINY_CLIP, batch=2
        )
    }
    made: ClassVar[list[str]] = []  # "load" / "build", once per model made

    @classmethod
    def load(cls, *args: Any, **kwargs: Any) -> Any:
        cls.made.append("load")
        return super().load(*args, **kwargs)

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        cls.made.append("build")
        return super().build(*args, **kwargs)


@pytest.fixture()
def family():
    TinyTest.made.clear()
    register_family(TinyTest)
    yield TinyTest
    unregister_family(TinyTest.family)


@pytest.fixture(scope="module")
def model_dir(tiny_sd_dir, tmp_path_factory) -> Path:
    """The tiny SD model's parts, its model_index.json naming ``TinyTestPipeline``."""
    folder = tmp_path_factory.mktemp("family") / "tiny-test-model"
    shutil.copytree(tiny_sd_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps({**index, "_class_name": TinyTest.pipelines[0]})
    )
    return folder


def test_no_file_under_src_names_the_family():
    for path in SRC.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".js", ".css", ".md", ".toml", ".json"):
            text = path.read_text(errors="replace")
            assert "TinyTest" not in text and "tiny-test" not in text, path


def test_registered_at_run_time_detected_then_gone(family, model_dir):
    assert FAMILIES["tiny-test"] is TinyTest and detect_family(model_dir) == "tiny-test"
    assert family_defaults(model_dir) == {"guidance_scale": 6.5}
    assert ARCHITECTURES["tiny-test"].family == "tiny-test"
    with pytest.raises(ValueError, match="registered already"):
        register_family(TinyTest)

    class Clash(StableDiffusion):  # SD's pipeline class names and presets, inherited
        family = "clash"

    with pytest.raises(ValueError, match="StableDiffusionPipeline"):
        register_family(Clash)
    unregister_family("tiny-test")
    with pytest.raises(InputError, match="TinyTestPipeline model; the latent method supports"):
        detect_family(model_dir)
    assert "tiny-test" not in ARCHITECTURES and "clash" not in FAMILIES


def test_edit(family, model_dir, tiny_clip_dir, shared_images, tmp_path):
    out = tmp_path / "edit"
    argv = ["edit", str(shared_images / PHOTO), "--mask", str(shared_images / MASK),
            "--prompt", "sunglasses", "--model", str(model_dir), "--clip-model", str(tiny_clip_dir),
            "--num-images", "2", "--out", str(out), "--quiet", *FAST]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "result.json").read_text())
    assert family.made == ["load"] and len(report["results"]) == 2
    assert "tiny-test" in json.dumps(report)  # the family the edit ran on
    assert report["settings"]["guidance_scale"] == 6.5  # the family's default


def test_batch(family, model_dir, tiny_clip_dir, shared_images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (PHOTO, MASK):
        shutil.copy(shared_images / name, folder / name)
    rows = [{"image": PHOTO, "mask": MASK, "prompt": "sunglasses", "seed": s} for s in (0, 1)]
    manifest = folder / "edits.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--out", str(out), "--model", str(model_dir),
            "--clip-model", str(tiny_clip_dir), "--num-images", "2", "--batch-size", "2", *FAST]  # fmt: skip
    assert main(argv) == 0
    results = sorted(out.glob("*/result.json"))
    assert family.made == ["load"] and len(results) == 2
    assert all("tiny-test" in p.read_text() for p in results)


def test_eval(family, model_dir, tiny_clip_dir, shared_images, tmp_path):
    out = tmp_path / "eval"
    argv = [
        "eval", "--images", str(shared_images), "--out", str(out), "--model", str(model_dir),
        "--methods", "latent,diffusers-inpaint", "--n-images", "1", "--batch", "2",
        "--steps", "4", "--size", "64", "--max-side", "128", "--no-single-timing", "--quiet",
        "--clip-model", str(tiny_clip_dir), "--score-clip-model", str(tiny_clip_dir),
        "--classifier", str(tiny_resnet_classifier(tmp_path / "classifier")), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert family.made == ["load"]
    latent, ref = report["methods"]["latent"], report["methods"]["diffusers-inpaint"]
    assert latent["status"] == ref["status"] == "ok"
    assert latent["settings"]["config"]["guidance_scale"] == 6.5  # family_defaults, by registry
    assert ref["settings"]["pipeline"] == "StableDiffusionInpaintPipeline"  # its reference call
    for method in ("latent", "diffusers-inpaint"):
        assert len(list((out / "predictions" / method).rglob("*.png"))) == 2, method


def _layer(size: tuple[int, int]) -> np.ndarray:
    """A paint layer (H, W, 4) with a translucent box in the middle of a canvas of (W, H)."""
    w, h = size
    layer = np.zeros((h, w, 4), np.uint8)
    layer[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = (255, 0, 255, 128)
    return layer


def test_web_generate(family, model_dir, tiny_clip_dir, shared_images, tmp_path):
    from types import SimpleNamespace

    from blendedit.web.app import EditorApp, ServeOptions

    editor = BlendedLatentDiffusion.from_pretrained(model_dir, clip_model=str(tiny_clip_dir))
    assert family.made == ["load"] and editor.family == "tiny-test"
    app = EditorApp(
        editor,
        model_info={"name": str(model_dir)},
        options=ServeOptions(max_side=2048, max_results=4, preview_side=320),
        workdir=tmp_path / "web",
    )
    app.build()
    request = SimpleNamespace(session_hash="tab1")
    try:
        st = app.on_upload(str(shared_images / PHOTO), None, request)[0]
        canvas = np.asarray(Image.open(shared_images / PHOTO).convert("RGBA").resize(st.canvas))
        values = {
            "state": st, "editor": {"background": canvas, "layers": [_layer(st.canvas)],
                                    "composite": canvas},
            "prompt": "sunglasses", "num_images": 2, "steps": 4, "guidance": 6.5,
            "blend_start": 0.25, "seed": 5, "random_seed": False, "method": "latent",
            "background": "stitch", "negative_prompt": "", "scheduler": "ddim", "size": 64,
            "mask_shrink": "auto", "feather": 8, "batch_size": 1, "invert": False,
        }  # fmt: skip
        by_name = {name: comp for comp, name in app._names.items()}
        ui = {by_name[k]: v for k, v in values.items()}
        gallery, status, seed, st = app.generate(ui, request, lambda *a, **k: None)
    finally:
        app.close()
    assert seed == 5 and len(gallery) == 2 and "2 results for 'sunglasses'" in status


def test_bench(family, tmp_path, capsys):
    report = tmp_path / "b.md"
    argv = ["bench", "--preset", "tiny-test", "--device", "cpu", "--steps", "4", "--repeats",
            "1", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0  # with its reference call: diffusers' SD inpaint pipeline
    assert "| tiny-test | CPU" in capsys.readouterr().out
    row = json.loads(report.with_suffix(".json").read_text())[0]
    assert family.made == ["build"] and row["family"] == "tiny-test" and row["batch"] == 2
    assert row["diffusers_total_s"] > 0 and row["guidance_scale"] == 6.5
