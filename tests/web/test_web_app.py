"""The web app's handlers and helpers, called directly (no server, no browser)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from blendedit.errors import InputError
from blendedit.web.app import (
    EditorApp,
    ServeOptions,
    WebState,
    friendly,
    mask_from_editor,
    mask_layer,
    photo_from_upload,
    settings_from_ui,
)
from blendedit.web.session import parse_trail, pixels_sha256, replay

REQUEST = SimpleNamespace(session_hash="tab1")


def _layer(h: int, w: int, box: tuple[slice, slice], alpha: int = 128) -> np.ndarray:
    a = np.zeros((h, w, 4), np.uint8)
    a[box] = (255, 0, 255, alpha)
    return a


# -- helpers ---------------------------------------------------------------------------------------


def test_mask_from_editor_is_the_union_of_painted_layer_pixels():
    h, w = 30, 40
    value = {
        "background": np.zeros((h, w, 4), np.uint8),
        "layers": [
            _layer(h, w, (slice(0, 5), slice(0, 5))),
            _layer(h, w, (slice(10, 12), slice(20, 30))),
            _layer(h, w, (slice(20, 30), slice(0, 40)), alpha=3),  # antialiasing dust: ignored
        ],
    }
    m = mask_from_editor(value, (w, h))
    assert m.shape == (h, w) and m.sum() == 25 + 20 and m[11, 25] and not m[25, 5]
    # A layer at another size (a canvas larger than the photo) is scaled to the photo.
    big = {"layers": [_layer(60, 80, (slice(0, 30), slice(0, 40)))]}
    m2 = mask_from_editor(big, (w, h))
    assert m2[:15, :20].all() and not m2[15:, :].any()
    for empty in (None, {"layers": []}, {"layers": [np.zeros((h, w, 4), np.uint8)]}):
        with pytest.raises(InputError, match="nothing painted"):
            mask_from_editor(empty, (w, h))


def test_mask_layer_round_trips():
    m = np.zeros((30, 40), bool)
    m[3:9, 4:20] = True
    assert np.array_equal(mask_from_editor({"layers": [mask_layer(m)]}, (40, 30)), m)


def test_photo_from_upload_checks_size_and_flattens_transparency():
    rgba = np.full((30, 40, 4), 200, np.uint8)
    rgba[..., 3] = 255
    photo, note = photo_from_upload(rgba, max_side=64)
    assert photo.mode == "RGB" and photo.size == (40, 30) and note == ""
    rgba[0, 0, 3] = 0
    photo, note = photo_from_upload(rgba, max_side=64)
    assert "flattened onto white" in note and photo.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(InputError, match=r"80x30 px .*16 to 64 px a side.*--max-side"):
        photo_from_upload(np.zeros((30, 80, 4), np.uint8), max_side=64)
    with pytest.raises(InputError, match="no photo"):
        photo_from_upload(None, max_side=64)


UI = {
    "num_images": 3,
    "steps": 20,
    "guidance": 5.0,
    "blend_start": 0.5,
    "background": "poisson",
    "feather": 4,
    "batch_size": 1,
    "invert": True,
    "negative_prompt": "blurry",
    "scheduler": "dpm++",
    "size": 0,
    "mask_shrink": "off",
}


def test_settings_from_ui_latent_and_pixel():
    method, cfg = settings_from_ui("latent", UI, max_results=8)
    assert method == "latent"
    assert (cfg.num_images, cfg.num_inference_steps, cfg.guidance_scale) == (3, 20, 5.0)
    assert cfg.blend_start == 0.5 and cfg.background == "poisson" and cfg.invert_mask
    assert cfg.size is None and cfg.scheduler == "dpm++" and cfg.negative_prompt == "blurry"
    _, cfg = settings_from_ui("latent", {**UI, "size": 256}, max_results=8)
    assert cfg.size == 256

    pixel_ui = {**UI, "background": "stitch", "guidance": 800, "sampler": "ddim", "fit": "pad"}
    method, cfg = settings_from_ui("pixel", {**pixel_ui, "method": "local-clip", "aug_num": 4}, 8)
    assert method == "local-clip" and cfg.local and cfg.timestep_respacing == "20"
    assert cfg.skip_timesteps == 10 and cfg.clip_guidance_lambda == 800 and cfg.aug_num == 4


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_images": 9}, "results: 9 must be between 1 and 8"),
        ({"steps": None}, "steps: None is not a number"),
        ({"guidance": "lots"}, "guidance: 'lots' is not a number"),
        ({"blend_start": 1.0}, "blend_start"),
        ({"size": 8}, "size: 8 must be between"),
        ({"background": "sparkles"}, "background: 'sparkles'"),
    ],
)
def test_settings_from_ui_errors_are_one_line(change, match):
    with pytest.raises(InputError, match=match) as e:
        settings_from_ui("latent", {**UI, **change}, max_results=8)
    assert "\n" not in str(e.value)


def test_friendly_turns_every_failure_into_one_line():
    def boom(kind: str):
        if kind == "input":
            raise InputError("mask: nothing painted")
        raise RuntimeError("CUDA went\nsideways")

    with pytest.raises(gr.Error) as e:
        friendly(boom)("input")
    assert e.value.message == "mask: nothing painted"
    with pytest.raises(gr.Error) as e:
        friendly(boom)("other")
    assert e.value.message.startswith("unexpected error (RuntimeError: CUDA went sideways)")


# -- handlers with the tiny editor ----------------------------------------------------------------


@pytest.fixture()
def app(editor, tmp_path: Path):
    a = EditorApp(
        editor,
        model_info={"name": str(editor.name)},
        options=ServeOptions(max_side=1024, max_results=4),
        workdir=tmp_path / "web",
    )
    a.build()
    yield a
    a.close()


def _ui(app: EditorApp, **values) -> dict:
    """Values by name -> the {component: value} dict Gradio passes to generate."""
    by_name = {name: comp for comp, name in app._names.items()}
    return {by_name[k]: v for k, v in values.items()}


def _editor_value(image: Image.Image, mask: np.ndarray | None) -> dict:
    bg = np.asarray(image.convert("RGBA"))
    layers = [mask_layer(mask)] if mask is not None else []
    return {"background": bg, "layers": layers, "composite": bg}


def _settings(**kw) -> dict:
    base = {
        "num_images": 2,
        "steps": 4,
        "guidance": 7.5,
        "blend_start": 0.25,
        "seed": 5,
        "random_seed": False,
        "method": "latent",
        "background": "stitch",
        "negative_prompt": "",
        "scheduler": "ddim",
        "size": 64,
        "mask_shrink": "auto",
        "feather": 8,
        "batch_size": 1,
        "invert": False,
    }
    return {**base, **kw}


def test_upload_generate_keep_undo_redo_and_downloads(app, shared_images: Path):
    photo = Image.open(shared_images / "chelsea.png").convert("RGB")
    eyes = np.asarray(Image.open(shared_images / "chelsea.mask-eyes.png")) >= 128

    out = app.on_upload(_editor_value(photo, None), None, REQUEST)
    st = out[0]
    assert isinstance(st, WebState) and st.session is not None
    assert np.array_equal(np.asarray(st.session.original), np.asarray(photo))
    assert "New photo" in out[2]  # (state, history, status, ...): no editor output on upload

    # Without paint: one clear line.
    with pytest.raises(InputError, match="nothing painted"):
        app.generate(
            _ui(app, state=st, editor=_editor_value(photo, None), prompt="x", **_settings()),
            REQUEST,
            lambda *a, **k: None,
        )
    calls = []
    gallery, status, seed, st = app.generate(
        _ui(app, state=st, editor=_editor_value(photo, eyes), prompt="sunglasses", **_settings()),
        REQUEST,
        lambda *a, **k: calls.append(a[0]),
    )
    assert seed == 5 and len(gallery) == 2 and "2 results for 'sunglasses'" in status
    assert gallery[0][1].startswith("#1 seed ") and " score " in gallery[0][1]
    assert calls[-1] == (6, 6)  # (done, total): 2 results x 3 denoising steps
    assert sorted(st.generation.seeds) == [5, 6]

    st, status = app.select(st, gr.SelectData(None, {"index": 1, "value": None}))
    assert st.selected == 1 and "Selected #2" in status
    view = app.keep(st, REQUEST)
    st, editor_value, history, status = view[:4]
    assert len(history) == 2 and "Kept #2" in status
    assert editor_value["layers"] == [] and editor_value["background"] is st.session.current_image
    kept = st.generation.results[1]
    assert st.session.history[0].seed == kept.seed
    png, trail_path = app._files(st, REQUEST.session_hash)
    assert Image.open(png).size == photo.size
    trail = json.loads(Path(trail_path).read_text())
    assert Path(trail_path).name == "result.json" and len(trail["steps"]) == 1
    assert trail["model"]["name"] == str(app.editor.name)
    assert trail["steps"][0]["result_sha256"] == pixels_sha256(st.session.current_image)

    # The editor reporting the image we set as an "upload" changes nothing.
    again = app.on_upload(_editor_value(st.session.current_image, None), st, REQUEST)
    assert all(isinstance(v, type(gr.skip())) for v in again)
    assert len(st.session.history) == 1

    undone = app.undo(st, REQUEST)
    st, editor_value, history, status = undone[:4]
    assert len(history) == 1 and "Undid step 1" in status and undone[-1] == "sunglasses"
    assert np.array_equal(mask_from_editor(editor_value, photo.size), eyes)  # to try again
    assert undone[6].interactive is False and undone[7].interactive is True  # undo off, redo on
    redone = app.redo(st, REQUEST)
    assert len(redone[2]) == 2 and "Redid step 1" in redone[3]

    # The downloaded trail replays to the kept image.
    (image,) = replay(parse_trail(Path(trail_path)), app.editor)
    assert np.array_equal(np.asarray(image), np.asarray(st.session.current_image))

    # A photo that does not fit: refused with one line, the session unchanged.
    big = Image.new("RGB", (1500, 600))
    with pytest.warns(UserWarning, match="1500x600"):  # gr.Warning outside a request
        refused = app.on_upload(_editor_value(big, None), st, REQUEST)
    assert "1500x600 px" in refused[2] and "--max-side" in refused[2]
    assert len(st.session.history) == 1
    with pytest.raises(InputError, match="editor shows a 1500x600 picture"):
        app.generate(
            _ui(app, state=st, editor=_editor_value(big, None), prompt="x", **_settings()),
            REQUEST,
            lambda *a, **k: None,
        )

    app.unload(REQUEST)
    assert not (app.workdir / "tab1").exists()


def test_cancel_stops_a_running_generate(app, shared_images: Path):
    photo = Image.open(shared_images / "chelsea.png").convert("RGB")
    st = app.on_upload(_editor_value(photo, None), None, REQUEST)[0]
    eyes = np.asarray(Image.open(shared_images / "chelsea.mask-eyes.png")) >= 128
    seen = []

    def progress(x, **k):
        seen.append(x)
        if x != 0:
            app.cancel(REQUEST)  # the Cancel button, pressed during the first step

    out = app.generate(
        _ui(app, state=st, editor=_editor_value(photo, eyes), prompt="x", **_settings()),
        REQUEST,
        progress,
    )
    assert out[1] == "Cancelled." and st.generation is None
    assert len(seen) == 2  # the start, then one step: stopped at the next step
    assert not app._device_lock.locked()


def test_keep_and_undo_errors(app):
    with pytest.raises(InputError, match="Generate first"):
        app.keep(None, REQUEST)
    with pytest.raises(InputError, match="upload a photo first"):
        app.undo(None, REQUEST)
    with pytest.raises(gr.Error, match="upload a photo first"):
        friendly(app.generate)(_ui(app, state=None, prompt="x"), REQUEST, lambda *a, **k: None)


def test_build_has_the_parts_the_page_needs(app):
    ids = {getattr(b, "elem_id", None) for b in app.demo.blocks.values()}
    assert {"editor", "prompt", "generate", "cancel", "results", "keep", "history"} <= ids
    assert {"undo", "redo", "download-image", "download-trail", "invert", "num-images"} <= ids
    # The device is used by one generation at a time.
    gen = [d for d in app.demo.fns.values() if d.name == "generate"]
    assert gen and all(d.concurrency_limit == 1 for d in gen)
    assert len({d.concurrency_id for d in gen}) == 1
    assert app.server_max_bytes >= 4 * 1024**2  # room for the editor's PNG of a 1024 px photo


def test_pixel_model_page_generates_and_keeps(tiny_clip_dir: Path, tmp_path: Path):
    """The page over Blended Diffusion (tiny reference ADM): its own controls, local-clip too."""
    ref = Path(__file__).resolve().parents[1] / "data" / "reference" / "adm"
    if not ref.is_dir():
        pytest.skip(f"ADM reference data not found at {ref}")
    from blendedit.pixel.pipeline import BlendedDiffusion

    adm = BlendedDiffusion.from_pretrained(
        ref / "tiny_adm.safetensors",
        model_config=ref / "tiny_adm_config.json",
        clip_model=str(tiny_clip_dir),
    )
    app = EditorApp(adm, model_info={"method": "local-clip"}, workdir=tmp_path / "web")
    app.build()
    try:
        names = set(app._names.values())
        assert {"sampler", "fit", "aug_num"} <= names and "scheduler" not in names
        photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), np.uint8))
        mask = np.zeros((48, 64), bool)
        mask[10:30, 20:50] = True
        st = app.on_upload(_editor_value(photo, None), None, REQUEST)[0]
        ui = _settings(method="local-clip", steps=10, blend_start=0.5, guidance=100)
        for k in ("negative_prompt", "scheduler", "size", "mask_shrink"):
            ui.pop(k)
        ui.update(sampler="ddim", fit="pad", aug_num=2)
        gallery, status, _, st = app.generate(
            _ui(app, state=st, editor=_editor_value(photo, mask), prompt="a red ball", **ui),
            REQUEST,
            lambda *a, **k: None,
        )
        assert len(gallery) == 2 and "2 results" in status
        app.keep(st, REQUEST)
        (step,) = st.session.to_trail()["steps"]
        assert step["method"] == "local-clip" and step["settings"]["local"] is True
        assert step["settings"]["timestep_respacing"] == "10"
        assert step["settings"]["skip_timesteps"] == 5
    finally:
        app.close()
