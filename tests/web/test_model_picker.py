"""The web editor's model picker (``blendedit serve --model A --model B``, ``--models-dir``): the
choices checked at start and labelled by their detected family, a switch that lets the previous
model go and loads the chosen one, the settings' defaults following the family, a trail that
records each step's model and replays per step, a failed load that leaves the previous model,
and a switch that waits for the running Generate. Handlers called directly: no server, no
browser; two tiny models of different families (SD 1.x and Z-Image-Turbo)."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from diffusers import ZImagePipeline

from blendedit import BlendedLatentDiffusion
from blendedit.cli import main
from blendedit.errors import BlendEditError, InputError
from blendedit.web import picker
from blendedit.web.app import EditorApp
from blendedit.web.handlers import ServeOptions
from blendedit.web.picker import ModelChoice, ModelChoices, Switcher, SwitchError, models_in
from blendedit.web.session import parse_trail, trail_models
from tiny_models import tiny_zimage_parts

REQUEST = SimpleNamespace(session_hash="picker")
OPTIONS = ServeOptions(max_side=2048, max_results=4, preview_side=320)


@pytest.fixture(scope="module")
def zimage_dir(tmp_path_factory) -> Path:
    """A tiny Z-Image-Turbo saved as a diffusers folder ("turbo" in its name: Turbo's defaults)."""
    root = tmp_path_factory.mktemp("picker")
    ZImagePipeline(**tiny_zimage_parts(root / "vocab")).save_pretrained(root / "tiny-z-image-turbo")
    return root / "tiny-z-image-turbo"


def _loader(clip: Path, calls: list | None = None, fail: str = ""):
    """What ``blendedit serve`` gives the app: a choice's editor loaded from its folder."""

    def load(choice):
        if calls is not None:
            calls.append(choice.label)
        if fail and fail in choice.label:
            raise RuntimeError("its weights are truncated")
        return BlendedLatentDiffusion.from_pretrained(choice.source, clip_model=str(clip))

    return load


def _app(choices: ModelChoices, load, tmp_path: Path, keep: int = 1) -> EditorApp:
    app = EditorApp(
        load(choices.choices[0]),
        model_info={"name": choices.choices[0].source},
        options=ServeOptions(**{**OPTIONS.__dict__, "keep_models": keep}),
        workdir=tmp_path / "web",
        models=choices,
        load_model=load,
    )
    app.build()
    return app


def _ui(app: EditorApp, **values) -> dict:
    by_name = {name: comp for comp, name in app._names.items()}
    return {by_name[k]: v for k, v in values.items()}


def _generate_and_keep(app: EditorApp, st, prompt: str, keep: bool = True):
    """One Generate with the page's current settings (2 steps, 64 px, 1 result), kept."""
    from blendedit.web.canvas import mask_layer, preview

    canvas = preview(st.session.photo, st.session.current_pixels, 320)
    mask = np.zeros(canvas.size[::-1], bool)
    mask[60:140, 100:220] = True
    bg = np.asarray(canvas.convert("RGBA"))
    settings = {s.name: s.default for s in app.control_specs()}
    settings.update(num_images=1, steps=2, size=64, random_seed=False, seed=3, invert=False)
    value = {"background": bg, "layers": [mask_layer(mask)], "composite": bg}
    ui = _ui(app, state=st, editor=value, prompt=prompt, **settings)
    _, status, _, st = app.generate(ui, REQUEST, lambda *a, **k: None)
    assert "1 result for" in status and f"Model: {app.switcher.current.label}." in status
    if keep:
        app.keep(st, REQUEST)
    return st


def test_choices_are_checked_at_start_and_named_by_family(
    tiny_sd_dir: Path, zimage_dir: Path, tmp_path: Path, capsys
):
    choices = ModelChoices.from_options([str(tiny_sd_dir), str(zimage_dir), str(tiny_sd_dir)])
    assert choices.labels == ["tiny-sd (sd)", "tiny-z-image-turbo (zimage)"]  # the same one once
    assert [c.family for c in choices.choices] == ["sd", "zimage"]
    # --models-dir: each diffusers folder and checkpoint file in it, nothing else
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a-sd").symlink_to(tiny_sd_dir)
    (folder / "b-zimage").symlink_to(zimage_dir)
    (folder / "notes.txt").write_text("not a model")
    (folder / "empty").mkdir()
    (folder / "c-vae.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}      ")  # no model
    names = ["a-sd", "b-zimage", "c-vae.safetensors"]
    assert [Path(m).name for m in models_in(folder, "latent")] == names
    both = ModelChoices.from_options([str(zimage_dir)], str(folder))
    assert both.labels == ["tiny-z-image-turbo (zimage)", "a-sd (sd)"]  # b-zimage is the same
    assert len(both.skipped) == 1 and both.skipped[0].startswith(
        "models_dir: left out model: 'c-vae.safetensors' is not a checkpoint blendedit recognises"
    )  # an entry of the folder that is no model: left out, said in one line
    # A hub id is taken by its shape (its family is told when it loads, from the hub).
    assert ModelChoices.from_options(["owner/model", str(zimage_dir)]).labels[0] == "owner/model"
    # One line each, naming the option and the value; the page names a model, never a path.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "FooPipeline"}))
    for models, models_dir, match in [
        (["./nope", str(zimage_dir)], None, "model: './nope' is neither an existing path"),
        ([str(bad), str(zimage_dir)], None, "is a FooPipeline model"),
        ([], str(folder / "empty"), "models_dir: .* holds no diffusers folders"),
        ([], str(tmp_path / "none"), "models_dir: .* is not a folder"),
    ]:
        with pytest.raises(BlendEditError, match=match):
            ModelChoices.from_options(models, models_dir)
    with pytest.raises(InputError, match="not a model of this server; offered: tiny-sd"):
        choices.by_label(str(tiny_sd_dir))
    # ``blendedit serve``: --model repeated (the first loads at start); one alone, as before.
    from blendedit.cli import build_parser
    from blendedit.options import ModelOptions
    from blendedit.web.cli import model_choices

    def serve(*flags):
        return ModelOptions.from_args(build_parser().parse_args(["serve", *flags]))

    two = serve("--model", str(zimage_dir), "--model", str(tiny_sd_dir))
    assert two.model == str(zimage_dir) and two.models == (str(zimage_dir), str(tiny_sd_dir))
    assert model_choices(two).labels == ["tiny-z-image-turbo (zimage)", "tiny-sd (sd)"]
    one = serve("--model", "owner/model")
    assert (one.model, one.models) == ("owner/model", ("owner/model",))
    assert [c.source for c in model_choices(one).choices] == ["owner/model"]  # not checked yet
    assert model_choices(serve("--models-dir", str(folder))).labels == [
        "a-sd (sd)",
        "b-zimage (zimage)",
    ]
    # ... checked before any model loads, in one line.
    assert main(["serve", "--model", str(zimage_dir), "--model", "./nope", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blendedit: error: model: './nope'") and "\n" not in err


@pytest.mark.slow
def test_switch_edit_with_each_and_replay_the_mixed_trail(
    tiny_sd_dir: Path, zimage_dir: Path, tiny_clip_dir: Path, shared_images: Path, tmp_path
):
    choices = ModelChoices.from_options([str(tiny_sd_dir), str(zimage_dir)])
    app = _app(choices, _loader(tiny_clip_dir), tmp_path)
    try:
        picker = [b for b in app.demo.blocks.values() if getattr(b, "elem_id", None) == "model"]
        assert picker and [c[0] for c in picker[0].choices] == choices.labels
        st = app.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
        st = _generate_and_keep(app, st, "sunglasses")
        sd_defaults = {s.name: s.default for s in app.control_specs()}
        gone = weakref.ref(app.editor)

        out = app.on_model("tiny-z-image-turbo (zimage)", st, REQUEST, lambda *a, **k: None)
        gc.collect()
        assert gone() is None  # one model in memory: the previous one was let go
        assert app.editor.family == "zimage" and app.model_info["family"] == "zimage"
        assert out[0]["value"] == "tiny-z-image-turbo (zimage)" and "Model `" in out[1]
        assert "Model tiny-z-image-turbo (zimage) loaded" in out[2]
        # The settings that depend on the family take Z-Image-Turbo's defaults; the others stay.
        specs = app.control_specs()
        changed = {s.name: u["value"] for s, u in zip(specs, out[3:], strict=True) if "value" in u}
        want = app.editor.default_config()
        assert changed["steps"] == want.num_inference_steps == 9 != sd_defaults["steps"]
        assert changed["guidance"] == want.guidance_scale == 1.0
        assert changed["scheduler"] == "flow-euler" != sd_defaults["scheduler"]
        assert "seed" not in changed and "num_images" not in changed
        # A tab opened now shows the current model and its settings (the page was built on SD's).
        page = app.on_page()
        assert page[0]["value"] == "tiny-z-image-turbo (zimage)" and page[1] == out[1]
        assert [u["value"] for u in page[2:]] == [s.default for s in specs]
        st = _generate_and_keep(app, st, "a red flower", keep=False)
        # Back to SD before Keep: the kept step is still Z-Image's (the model that made it).
        app.on_model("tiny-sd (sd)", st, REQUEST, lambda *a, **k: None)
        assert app.editor.family == "sd"
        app.keep(st, REQUEST)

        # The trail records which model made each step; replay loads each for its steps.
        _, trail_path = app._files(st, REQUEST.session_hash)
        trail = parse_trail(Path(trail_path))
        assert [s.model for s in trail.steps] == [str(tiny_sd_dir), str(zimage_dir)]
        assert [s.meta.get("name") for s in trail.steps] == trail_models(trail)
        raw = json.loads(Path(trail_path).read_text())
        assert [s["meta"]["family"] for s in raw["steps"]] == ["sd", "zimage"]
        out_dir = tmp_path / "replayed"
        args = ["replay", trail_path, "--out", str(out_dir), "--device", "cpu", "--quiet"]
        assert main([*args, "--strict"]) == 0
        assert len(list(out_dir.glob("0[12]-*.png"))) == 4  # two masks, two results
        assert main([*args[:3], str(tmp_path / "r2"), *args[4:], "--model", "x/y"]) == 2
    finally:
        app.close()


def test_a_failed_load_leaves_the_previous_model(
    tiny_sd_dir: Path, zimage_dir: Path, tiny_clip_dir: Path, shared_images: Path, tmp_path
):
    choices = ModelChoices.from_options([str(tiny_sd_dir), str(zimage_dir)])
    calls: list[str] = []
    app = _app(choices, _loader(tiny_clip_dir, calls, fail="zimage"), tmp_path, keep=2)
    try:
        first = app.editor
        with pytest.warns(UserWarning, match="did not load"):  # gr.Warning outside a request
            out = app.on_model("tiny-z-image-turbo (zimage)", None, REQUEST, lambda *a, **k: 0)
        assert out[2].startswith(
            "⚠ model: tiny-z-image-turbo (zimage) did not load (its weights are truncated); "
            "still on tiny-sd (sd)"
        )
        assert out[0]["value"] == "tiny-sd (sd)" and not any("value" in u for u in out[3:])
        assert app.editor is first and app.model_info["family"] == "sd"  # kept: --keep-models 2
        # With one model in memory the previous one is loaded again, and edits as before.
        app.switcher.keep = 1
        with pytest.raises(SwitchError, match="still on tiny-sd"):
            app.switch_model("tiny-z-image-turbo (zimage)")
        assert calls == ["tiny-sd (sd)", *["tiny-z-image-turbo (zimage)"] * 2, "tiny-sd (sd)"]
        assert app.editor is not first and app.editor.family == "sd"
        st = app.on_upload(str(shared_images / "chelsea.png"), None, REQUEST)[0]
        _generate_and_keep(app, st, "sunglasses")
        with pytest.raises(InputError, match="not a model of this server"):
            app.switch_model("../etc")
    finally:
        app.close()


def test_a_switch_waits_for_the_running_generate(
    tiny_sd_dir: Path, zimage_dir: Path, tmp_path, monkeypatch
):
    """The device lock (and, in the page, the device's queue) orders a switch after the
    Generate that holds the device."""
    monkeypatch.setattr(picker, "release", lambda: None)  # nothing to free: no gc pass
    choices = ModelChoices.from_options([str(tiny_sd_dir), str(zimage_dir)])
    editors = {c.label: SimpleNamespace(name=c.source, dtype="float32", device="cpu")
               for c in choices.choices}  # fmt: skip
    app = EditorApp(
        editors["tiny-sd (sd)"], options=OPTIONS, workdir=tmp_path / "w", models=choices,
        load_model=lambda c: editors[c.label],
    )  # fmt: skip
    try:
        done: list[str] = []
        with app._device_lock:  # a Generate is running
            t = threading.Thread(target=lambda: done.append(app.switch_model(choices.labels[1])))
            t.start()
            time.sleep(0.3)
            assert not done and app.switcher.current.label == "tiny-sd (sd)"
        t.join(10)
        assert done and app.switcher.current.label == "tiny-z-image-turbo (zimage)"
    finally:
        app.close()


def test_the_switcher_keeps_at_most_keep_models_and_recovers(monkeypatch):
    """``--keep-models``: the least recently used let go first; a failed switch whose previous
    model cannot load again either leaves no model, said in one line, until one is chosen."""
    monkeypatch.setattr(picker, "release", lambda: None)  # nothing to free: no gc pass
    choices = ModelChoices(tuple(ModelChoice(n, n) for n in "abc"))
    loads, broken = [], set()

    def load(choice):
        loads.append(choice.label)
        if choice.label in broken:
            raise RuntimeError("gone")
        return object()

    sw = Switcher(choices, load, keep=2)
    sw.start(load(choices.choices[0]))
    a, b, c = choices.choices
    sw.switch(b)
    sw.switch(c)
    assert list(sw.loaded) == ["b", "c"]  # a, the least recently used, let go
    sw.switch(b)
    assert loads == ["a", "b", "c"] and list(sw.loaded) == ["c", "b"]  # b was kept: no load
    sw.keep, broken = 1, {"a", "b"}
    with pytest.raises(SwitchError, match=r"^model: a did not load \(gone\), nor b again \(gone\)"):
        sw.switch(a)
    with pytest.raises(InputError, match="no model is loaded"):
        sw.editor  # noqa: B018
    broken.clear()
    assert sw.switch(c) is sw.editor and sw.current == c
