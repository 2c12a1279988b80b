"""The web app's handlers and helpers, called directly (no server, no browser)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.frame.photo import read_photo
from blendedit.web.app import EditorApp
from blendedit.web.canvas import mask_from_editor, mask_layer, to_full
from blendedit.web.handlers import ServeOptions, WebState, friendly
from blendedit.web.session import parse_trail, pixels_sha256, replay
from blendedit.web.settings import settings_from_ui

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
        options=ServeOptions(max_side=2048, max_results=4, preview_side=320),
        workdir=tmp_path / "web",
    )
    a.build()
    yield a
    a.close()


def _ui(app: EditorApp, **values) -> dict:
    """Values by name -> the {component: value} dict Gradio passes to generate."""
    by_name = {name: comp for comp, name in app._names.items()}
    return {by_name[k]: v for k, v in values.items()}


def _editor_value(canvas: Image.Image, layer: np.ndarray | None) -> dict:
    """What the page sends: the canvas (the preview) and its paint layer at the canvas size."""
    bg = np.asarray(canvas.convert("RGBA"))
    return {"background": bg, "layers": [] if layer is None else [layer], "composite": bg}


def _canvas_layer(st: WebState, box_frac: tuple[float, float, float, float], rgba) -> np.ndarray:
    """A paint layer at the tab's canvas size with ``rgba`` in a box given as fractions."""
    w, h = st.canvas
    layer = np.zeros((h, w, 4), np.uint8)
    x0, y0, x1, y1 = box_frac
    layer[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)] = rgba
    return layer


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


def _preview(st: WebState) -> Image.Image:
    from blendedit.web.canvas import preview

    return preview(st.session.photo, st.session.current_pixels, 320)


def test_upload_generate_keep_undo_redo_and_downloads(app, shared_images: Path):
    path = shared_images / "chelsea.png"
    photo = Image.open(path).convert("RGB")
    eyes = np.asarray(Image.open(shared_images / "chelsea.mask-eyes.png")) >= 128

    out = app.on_upload(str(path), None, REQUEST)
    st = out[0]
    assert isinstance(st, WebState) and st.session is not None
    assert np.array_equal(np.asarray(st.session.original), np.asarray(photo))
    assert st.session.source == path.read_bytes()  # the file, for the trail
    assert st.canvas == (320, 213) and out[1]["background"].size == st.canvas
    assert "New photo" in out[3] and "451×300 px" in out[3]
    assert out[4].interactive is False  # nothing to download before a kept step
    canvas = _preview(st)

    # Without paint: one clear line.
    with pytest.raises(InputError, match="nothing painted"):
        app.generate(
            _ui(app, state=st, editor=_editor_value(canvas, None), prompt="x", **_settings()),
            REQUEST,
            lambda *a, **k: None,
        )
    eyes_canvas = np.asarray(Image.fromarray(eyes).resize(st.canvas, Image.Resampling.NEAREST))
    calls = []
    gallery, status, seed, st = app.generate(
        _ui(
            app,
            state=st,
            editor=_editor_value(canvas, mask_layer(eyes_canvas)),
            prompt="sunglasses",
            **_settings(),
        ),
        REQUEST,
        lambda *a, **k: calls.append(a[0]),
    )
    assert seed == 5 and len(gallery) == 2 and "2 results for 'sunglasses'" in status
    assert gallery[0][1].startswith("#1 seed ") and " score " in gallery[0][1]
    r0 = st.generation.results[0]
    x0, y0, x1, y1 = r0.box
    assert gallery[0][0].size == (x1 - x0, y1 - y0)  # larger than the canvas: the region shown
    assert "edited region" in status
    assert calls[-1] == (6, 6)  # (done, total): 2 results x 3 denoising steps
    assert sorted(st.generation.seeds) == [5, 6]
    g = st.generation
    assert g.mask.shape == (300, 451) and np.array_equal(g.mask, to_full(eyes_canvas, (451, 300)))

    st, status = app.select(st, gr.SelectData(None, {"index": 1, "value": None}))
    assert st.selected == 1 and "Selected #2" in status
    view = app.keep(st, REQUEST)
    st, editor_value, history, status = view[:4]
    assert len(history) == 2 and "Kept #2" in status
    assert editor_value["layers"] == [] and editor_value["background"].size == st.canvas
    kept = g.results[1]
    step = st.session.history[0]
    assert step.seed == kept.seed and step.patch is kept.patch  # a patch, not a whole image
    image_path, trail_path = app._files(st, REQUEST.session_hash)
    assert image_path.endswith(".png")  # PNG in, PNG out
    with Image.open(image_path) as im:
        assert im.size == photo.size
        assert "compositeWithTrainedAlgorithmicMedia" in im.info["XML:com.adobe.xmp"]
        assert im.info["parameters"].startswith("sunglasses\n")
        assert f"Seed: {kept.seed}" in im.info["parameters"]
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(st.session.current_image))
    trail = json.loads(Path(trail_path).read_text())
    assert Path(trail_path).name == "result.json" and len(trail["steps"]) == 1
    assert trail["model"]["name"] == str(app.editor.name) and trail["version"] == 2
    assert trail["steps"][0]["result_sha256"] == pixels_sha256(st.session.current_image)

    undone = app.undo(st, REQUEST)
    st, editor_value, history, status = undone[:4]
    assert len(history) == 1 and "Undid step 1" in status and undone[-1] == "sunglasses"
    assert undone[6].interactive is False and undone[7].interactive is True  # undo off, redo on
    assert np.array_equal(np.asarray(st.session.current_image), np.asarray(photo))
    redone = app.redo(st, REQUEST)
    assert len(redone[2]) == 2 and "Redid step 1" in redone[3]

    # The downloaded trail replays to the kept image.
    (replayed,) = replay(parse_trail(Path(trail_path)), app.editor)
    assert np.array_equal(replayed.pixels, st.session.current_pixels)

    # A photo that does not fit: refused with one line, the session unchanged.
    big = app.workdir / "big.png"
    Image.new("RGB", (2500, 600)).save(big)
    with pytest.warns(UserWarning, match="2500x600"):  # gr.Warning outside a request
        refused = app.on_upload(str(big), st, REQUEST)
    assert "2500x600 px" in refused[3] and "--max-side" in refused[3]
    assert len(st.session.history) == 1
    with pytest.raises(InputError, match="editor shows a 1500x600 picture"):
        app.generate(
            _ui(app, state=st, editor=_editor_value(Image.new("RGB", (1500, 600)), None),
                prompt="x", **_settings()),
            REQUEST,
            lambda *a, **k: None,
        )  # fmt: skip

    app.unload(REQUEST)
    assert not (app.workdir / "tab1").exists()
    assert st.session is None and st.generation is None  # the closed tab's photo is let go


def _params_of_jpeg(im: Image.Image) -> str:
    raw = im.getexif().get_ifd(0x8769)[0x9286]
    assert raw.startswith(b"UNICODE\0")
    return raw[8:].decode("utf-16-be")


def test_a_large_sideways_jpeg_with_a_scribble(app, shared_images: Path, tmp_path: Path):
    """A 1600x1200 JPEG stored sideways (EXIF 6): painted on a 240x320 preview, edited at full
    resolution with a scribble, downloaded as an upright 1200x1600 JPEG with its metadata; far
    from the mask the pixels are the input's (within JPEG re-encoding); the trail replays it."""
    shown = Image.open(shared_images / "coffee.png").convert("RGB").resize((1200, 1600))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    shown.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    shown_px = np.asarray(read_photo(path).pixels)

    st = app.on_upload(str(path), None, REQUEST)[0]
    assert st.session.size == (1200, 1600) and st.canvas == (240, 320)
    canvas = _preview(st)
    layer = _canvas_layer(st, (0.3, 0.3, 0.7, 0.6), (255, 0, 255, 128))  # the mask brush
    layer[120:150, 100:140] = (250, 200, 0, 255)  # a yellow scribble inside it
    ui = _settings(num_images=1, blend_start=0.5)
    fed = []
    real = app.editor

    class Spy:  # the real editor, recording what it is fed
        def __call__(self, image, mask, prompt, **kw):
            fed.append(np.array(image.pixels))
            return real(image, mask, prompt, **kw)

        def __getattr__(self, name):
            return getattr(real, name)

    app.editor = Spy()
    try:
        gallery, status, _, st = app.generate(
            _ui(app, state=st, editor=_editor_value(canvas, layer), prompt="a lemon", **ui),
            REQUEST,
            lambda *a, **k: None,
        )
    finally:
        app.editor = real
    assert "Scribble:" in status and "edited region" in status
    g = st.generation
    assert g.scribble is not None and g.mask.shape == (1600, 1200)
    sx0, sy0, sx1, sy1 = g.scribble.box
    assert (sx0, sy0, sx1, sy1) == (500, 600, 700, 750)  # the canvas box x 5, exactly
    assert g.scribble.pixels == 200 * 150
    # The photo fed to the edit: the scribble's colour there, the photo as shown elsewhere.
    (src,) = fed
    assert (src[600:750, 500:700] == (250, 200, 0)).all()
    src[600:750, 500:700] = shown_px[600:750, 500:700]
    assert np.array_equal(src, shown_px)
    (r,) = g.results
    assert gallery[0][0].size[0] <= 320 and gallery[0][1].startswith("#1")

    app.keep(st, REQUEST)
    image_path, trail_path = app._files(st, REQUEST.session_hash)
    assert image_path.endswith(".jpg")
    with Image.open(image_path) as im:
        assert im.format == "JPEG" and im.size == (1200, 1600)
        assert im.getexif().get(0x0112, 1) == 1  # upright pixels, orientation reset
        assert "compositeWithTrainedAlgorithmicMedia" in im.info["xmp"].decode()
        assert _params_of_jpeg(im).startswith("a lemon\n")
        out = np.asarray(im.convert("RGB")).astype(int)
    far = np.ones((1600, 1200), bool)
    x0, y0, x1, y1 = r.box
    far[max(0, y0 - 16) : y1 + 16, max(0, x0 - 16) : x1 + 16] = False
    assert far.mean() > 0.3
    diff = np.abs(out - shown_px.astype(int))[far]
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8  # JPEG re-encoding only
    # The edit changed the region; the kept pixels inside the box are the session's.
    assert np.array_equal(st.session.current_pixels[y0:y1, x0:x1], r.patch)
    (replayed,) = replay(parse_trail(Path(trail_path)), app.editor)
    assert np.array_equal(replayed.pixels, st.session.current_pixels)


def test_an_empty_prompt_reaches_the_library(app, shared_images: Path):
    """An empty prompt is an edit: the library's "fill from the surroundings"; the page passes it
    on, the results come, and Keep records it."""
    st = app.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
    seen = []
    real = app.editor

    class Spy:
        def __call__(self, image, mask, prompt, **kw):
            seen.append(prompt)
            return real(image, mask, prompt, **kw)

        def __getattr__(self, name):
            return getattr(real, name)

    app.editor = Spy()
    try:
        layer = _canvas_layer(st, (0.3, 0.3, 0.6, 0.6), (255, 0, 255, 128))
        gallery, status, _, st = app.generate(
            _ui(app, state=st, editor=_editor_value(_preview(st), layer), prompt="  ",
                **_settings(num_images=1)),
            REQUEST,
            lambda *a, **k: None,
        )  # fmt: skip
    finally:
        app.editor = real
    assert seen == [""] and "empty prompt" in status and len(gallery) == 1
    view = app.keep(st, REQUEST)
    assert "(no prompt)" in view[2][1][1]  # the history caption
    assert st.session.to_trail()["steps"][0]["prompt"] == ""


def test_cancel_stops_a_running_generate(app, shared_images: Path):
    st = app.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
    layer = _canvas_layer(st, (0.3, 0.3, 0.6, 0.5), (255, 0, 255, 128))
    seen = []

    def progress(x, **k):
        seen.append(x)
        if x != 0:
            app.cancel(REQUEST)  # the Cancel button, pressed during the first step

    out = app.generate(
        _ui(app, state=st, editor=_editor_value(_preview(st), layer), prompt="x", **_settings()),
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
    assert app.server_max_bytes >= 4 * 320**2  # room for the editor's PNG of its canvas


def test_page_script_and_style_are_package_files_with_the_server_caps():
    from blendedit.io import MIN_SIDE
    from blendedit.web.app import page_head, static_text

    js, css = static_text("editor.js"), static_text("editor.css")
    assert "upload-check-msg" in js and "#upload-check-msg" in css
    head = page_head(ServeOptions(max_upload_mb=6, max_side=4096, max_megapixels=13))
    limits = {"maxBytes": 6 * 1024 * 1024, "maxSide": 4096, "minSide": MIN_SIDE}
    limits["maxPixels"] = 13_000_000
    assert f"window.blendeditUploadLimits = {json.dumps(limits)};" in head
    assert head.index("blendeditUploadLimits =") < head.index(js)  # the caps come first


def test_controls_are_built_from_their_descriptions():
    from gradio.layouts import Form

    from blendedit.web.layout import controls
    from blendedit.web.settings import Control, control_specs

    specs = [
        Control("a", "slider", "A", 3, 1, 9, 1, info="help a", elem_id="a", row="r"),
        Control("b", "dropdown", "B", "y", choices=("x", "y"), row="r"),
        Control("c", "checkbox", "C", True),
        Control("d", "number", "D", 0, 0, precision=0, section="advanced"),
        Control("e", "text", "E", lines=2, section="advanced"),
    ]
    with gr.Blocks():
        made = controls(specs)
    assert list(made) == ["a", "b", "c", "d", "e"]
    a, b, c, d, e = made.values()
    assert isinstance(a, gr.Slider) and (a.minimum, a.maximum, a.step, a.value) == (1, 9, 1, 3)
    assert a.info == "help a" and a.elem_id == "a" and a.label == "A"
    assert isinstance(b, gr.Dropdown) and b.value == "y" and isinstance(c, gr.Checkbox)
    assert isinstance(d, gr.Number) and d.precision == 0 and isinstance(e, gr.Textbox)

    def box(comp):  # the layout a control sits in (Gradio puts form controls in a Form)
        return comp.parent.parent if isinstance(comp.parent, Form) else comp.parent

    assert box(a) is box(b) and isinstance(box(a), gr.Row)  # one row
    assert isinstance(box(c), gr.Accordion) and box(c).open  # "settings": open
    assert isinstance(box(d), gr.Accordion) and not box(d).open  # "advanced": closed
    # The page's own controls are the descriptions of control_specs, by name.
    latent = control_specs("latent", max_results=4, default_results=4)
    pixel = control_specs("pixel", max_results=4, default_results=4, method="local-clip")
    assert {"scheduler", "size", "loras"} <= {s.name for s in latent}
    assert {"sampler", "fit", "aug_num"} <= {s.name for s in pixel}
    assert next(s for s in pixel if s.name == "method").default == "local-clip"


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
        src = tmp_path / "noise.png"
        photo.save(src)
        st = app.on_upload(str(src), None, REQUEST)[0]
        ui = _settings(method="local-clip", steps=10, blend_start=0.5, guidance=100)
        for k in ("negative_prompt", "scheduler", "size", "mask_shrink"):
            ui.pop(k)
        ui.update(sampler="ddim", fit="pad", aug_num=2)
        gallery, status, _, st = app.generate(
            _ui(
                app,
                state=st,
                editor=_editor_value(photo, mask_layer(mask)),
                prompt="a red ball",
                **ui,
            ),
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


@pytest.mark.parametrize("kind", ["heic", "png16"])
def test_phone_and_deep_photos_download_in_their_own_kind(app, shared_images: Path, tmp_path, kind):
    """A HEIC upload (no HEIC output) comes back as PNG; a 16-bit PNG comes back at 16 bits,
    its pixels outside the edit the input's own samples."""
    shown = Image.open(shared_images / "chelsea.png").convert("RGB")
    if kind == "heic":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
        path = tmp_path / "p.heic"
        try:
            shown.save(path, format="HEIF", quality=90)
        except (OSError, ValueError, KeyError) as e:
            pytest.skip(f"no HEIF encoder: {e}")
    else:
        import cv2

        path = tmp_path / "deep.png"
        deep = np.asarray(shown).astype(np.uint16) * 257 + 100  # not a multiple of 257
        cv2.imwrite(str(path), deep[..., ::-1])
    st = app.on_upload(str(path), None, REQUEST)[0]
    assert st.session is not None and st.session.size == shown.size
    layer = _canvas_layer(st, (0.3, 0.3, 0.6, 0.6), (255, 0, 255, 128))
    _, _, _, st = app.generate(
        _ui(app, state=st, editor=_editor_value(_preview(st), layer), prompt="a hat",
            **_settings(num_images=1)),
        REQUEST,
        lambda *a, **k: None,
    )  # fmt: skip
    app.keep(st, REQUEST)
    image_path, _ = app._files(st, REQUEST.session_hash)
    assert image_path.endswith(".png")
    with Image.open(image_path) as im:
        assert im.size == shown.size and "parameters" in im.info
    if kind == "png16":
        out = read_photo(image_path).pixels
        assert out.dtype == np.uint16
        x0, y0, x1, y1 = st.session.history[0].box
        keep = np.ones(shown.size[::-1], bool)
        keep[y0:y1, x0:x1] = False
        assert np.array_equal(out[keep], deep[keep])


def test_loras_from_the_page_are_applied_recorded_and_replayed(
    editor, shared_images: Path, tmp_path: Path
):
    """The LoRAs field (issue: LoRA in the library, CLI and web editor): a step made with a LoRA
    (offered by name from the server's --lora-dir) records it in the trail; replay applies it
    again and gives the kept pixels; an empty field takes it off, and the base weights come back
    bit for bit."""
    from blendedit.web.settings import LoraChoices
    from test_lora import _save_sd_lora

    folder, _, _ = _save_sd_lora(tmp_path, editor.unet, editor.backbone.text_encoder)
    lora = (folder / "pytorch_lora_weights.safetensors").resolve()
    weights = {k: v.clone() for k, v in editor.unet.state_dict().items()}
    a = EditorApp(
        editor,
        model_info={"name": str(editor.name)},
        options=ServeOptions(max_side=2048, max_results=4, preview_side=320),
        workdir=tmp_path / "web",
        loras=LoraChoices.from_options(lora_dir=str(folder)),
    )
    a.build()
    try:
        st = a.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
        layer = _canvas_layer(st, (0.3, 0.3, 0.6, 0.6), (255, 0, 255, 128))
        ui = _settings(num_images=1)

        def generate(st, loras):
            return a.generate(
                _ui(a, state=st, editor=_editor_value(_preview(st), layer), prompt="a hat",
                    loras=loras, **ui),
                REQUEST,
                lambda *x, **k: None,
            )[3]  # fmt: skip

        st = generate(st, "pytorch_lora_weights:0.7")
        assert editor.loras == [f"{lora}:0.7"] and st.generation.loras == editor.loras
        with_lora = st.generation.results[0].patch.copy()
        st = a.keep(st, REQUEST)[0]
        _, trail_path = a._files(st, REQUEST.session_hash)
        trail = json.loads(Path(trail_path).read_text())
        assert trail["steps"][0]["loras"] == [f"{lora}:0.7"]
        st2 = a.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
        st2 = generate(st2, "")  # the field emptied: the LoRA comes off
        assert editor.loras == []
        assert all(torch.equal(v, editor.unet.state_dict()[k]) for k, v in weights.items())
        assert not np.array_equal(st2.generation.results[0].patch, with_lora)
        (replayed,) = replay(parse_trail(Path(trail_path)), editor)  # applies the step's LoRA
        assert editor.loras == [f"{lora}:0.7"]
        assert np.array_equal(replayed.pixels, st.session.current_pixels)
        with pytest.raises(InputError, match="lora: "):
            generate(st2, "x.safetensors:abc")
    finally:
        editor.unload_loras()
        a.close()
