"""The editor's selection panel through its handlers (issue 21), no browser: a box by two corners,
SAM's embedding computed once per photo and kept step, a large photo segmented on the preview
and mapped back as painting is, words selected by the trained toy segmenter
(``examples/toy-segmenter``) against a control, and the one-line errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from blendedit.errors import InputError
from blendedit.segment import load_segmenter
from blendedit.web.app import EditorApp
from blendedit.web.canvas import mask_from_editor
from blendedit.web.handlers import ServeOptions
from blendedit.web.selecting import EDITOR_CANVAS, Selector, editor_layer

ROOT = Path(__file__).resolve().parents[2]
REQUEST = SimpleNamespace(session_hash="tab1")


def _pick(x: float, y: float) -> SimpleNamespace:
    return SimpleNamespace(index=[x, y])


def _box_answer(self, image, points, boxes):
    """SAM's answer, patched (random weights give a diffuse mask): the box itself, or a 10 px
    square around each added click. The image is embedded as the real decoder does (cached by
    its pixels)."""
    self.embed(image)
    out = np.full((image.height, image.width), -8.0)
    for x0, y0, x1, y1 in boxes:
        out[int(y0) : int(y1), int(x0) : int(x1)] = 8.0
    for p in points:
        if p.positive:
            out[max(0, int(p.y) - 10) : int(p.y) + 10, max(0, int(p.x) - 10) : int(p.x) + 10] = 8
    return torch.from_numpy(out[None]), torch.ones(1)


@pytest.fixture()
def sam_app(editor, tmp_path, monkeypatch):
    from blendedit.segment.sam import SamSegmenter
    from tiny_segmenters import build_sam

    monkeypatch.setattr(SamSegmenter, "masks", _box_answer)
    loaded = []

    def load(name):
        loaded.append(load_segmenter(name))
        return loaded[-1]

    app = EditorApp(
        editor,
        options=ServeOptions(max_side=4096, preview_side=320),
        workdir=tmp_path / "web",
        selector=Selector(str(build_sam(tmp_path / "sam")), load),
    )
    app.build()
    yield app, loaded
    app.close()


def test_a_box_on_a_large_photo_maps_back_as_painting_and_embeds_once(sam_app, tmp_path):
    app, loaded = sam_app
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2400, 3), np.uint8)).save(path)
    st = app.on_upload(str(path), None, REQUEST)[0]
    app.on_select_view(st)
    assert st.picks.image.size == (320, 200)  # the preview, not the 3.6 MP photo

    out = app.on_pick(st, "box", _pick(40, 50), REQUEST)
    assert "other corner" in out[3] and st.picks.mask is None
    st, editor, view, status = app.on_pick(st, "box", _pick(120, 100), REQUEST)
    assert view.size == (320, 200) and "selected" in status
    layer = editor["layers"][0]  # padded to the editor's own area, the photo at its top left
    assert layer.shape == (max(200, EDITOR_CANVAS[1]), max(320, EDITOR_CANVAS[0]), 4)
    # The page sends the layer back cropped to the preview; Generate maps it as painting.
    sent = {"background": np.asarray(editor["background"]), "layers": [layer[:200, :320]]}
    full = mask_from_editor(sent, st.session.size, (320, 200))  # (1500, 2400) bool
    assert full[385:740, 310:890].all()  # the box (x 40-120, y 50-100) x 7.5, its edges aside
    assert full.sum() == pytest.approx(80 * 50 * 7.5**2, rel=0.05)

    st = app.on_gesture(st, "box 10 20 60 80", REQUEST)[0]  # a drag, sent by editor.js
    assert st.picks.box == (10, 20, 60, 80) and st.picks.mask[20:80, 10:60].all()
    st = app.on_gesture(st, "remove 12 22", REQUEST)[0]  # a shift-click
    assert not st.picks.points[-1].positive
    with pytest.raises(InputError, match="not a box or a remove click"):
        app.on_gesture(st, "box 1 2", REQUEST)
    app.on_pick(st, "add", _pick(250, 150), REQUEST)
    app.on_pick(st, "remove", _pick(60, 60), REQUEST)
    assert len(loaded) == 1 and loaded[0].encodes == 1  # one load, one image embedding
    st = app.on_select_reset(st, REQUEST)[0]
    assert st.picks.points == [] and st.picks.mask is None


def test_selection_errors_are_one_line(sam_app, editor, tmp_path):
    app, _ = sam_app
    with pytest.raises(InputError, match="upload a photo first"):
        app.on_pick(None, "add", _pick(1, 1), REQUEST)
    path = tmp_path / "p.png"
    Image.new("RGB", (200, 120), (90, 90, 90)).save(path)
    st = app.on_upload(str(path), None, REQUEST)[0]
    app.on_select_view(st)
    with pytest.raises(InputError, match="click to add first"):
        app.on_pick(st, "remove", _pick(5, 5), REQUEST)
    with pytest.raises(InputError, match="names nothing"):
        app.on_select_text(st, "  ", REQUEST)
    with pytest.raises(InputError, match="takes clicks and boxes, not text"):
        app.on_select_text(st, "the red cup", REQUEST)
    bare = EditorApp(editor, workdir=tmp_path / "bare")
    st2 = bare.on_upload(str(path), None, REQUEST)[0]
    bare.on_select_view(st2)
    with pytest.raises(InputError, match="no segmenter"):
        bare.on_pick(st2, "add", _pick(5, 5), REQUEST)
    bare.close()


def test_words_select_the_named_toy_object_not_an_absent_one(editor, tmp_path):
    """The trained toy segmenter through the panel's text box, on 6 held-out toy scenes shown at
    256 px: the named object's IoU against the scene generator's exact coverage beats a caption
    of a class absent from the scene (the control)."""
    from blendedit.eval.toyworld import World, missing

    shared = os.environ.get("BLENDEDIT_SHARED") or ROOT.parent / "shared"
    root = Path(shared) / "toyworld"
    if missing(root):
        pytest.skip("the toy world is not here")
    world = World(root)
    sys.path.insert(0, str(ROOT / "tools"))
    from train_toy_segmenter import scene_objects, target

    toy = str(ROOT / "examples" / "toy-segmenter")
    app = EditorApp(editor, workdir=tmp_path / "web", selector=Selector(toy, load_segmenter))
    main, control = [], []
    for i in range(6):
        img, objects = scene_objects(world.data, 1, i)
        s, c, _ = objects[-1]
        truth = np.asarray(Image.fromarray(target(objects, s, c) >= 0.5).resize((256, 256)))
        path = tmp_path / f"scene-{i}.png"
        Image.fromarray(img).resize((256, 256), Image.Resampling.NEAREST).save(path)
        present = {(o[0], o[1]) for o in objects}
        a, b = next((a, b) for b in range(6) for a in range(5) if (a, b) not in present)
        for caption, into in (
            (world.data.caption(s, c), main),
            (world.data.caption(a, b), control),
        ):
            st = app.on_upload(str(path), None, REQUEST)[0]
            app.on_select_view(st)
            try:
                st = app.on_select_text(st, caption, REQUEST)[0]
                pred = st.picks.mask
            except InputError:  # an empty selection
                pred = np.zeros_like(truth)
            into.append((pred & truth).sum() / max(1, (pred | truth).sum()))
    app.close()
    print(f"toy text selection IoU: named {np.mean(main):.3f}, absent class {np.mean(control):.3f}")
    assert np.mean(main) >= 0.5 and np.mean(main) - np.mean(control) >= 0.25, (main, control)


def test_editor_layer_pads_to_the_editor_area():
    mask = np.zeros((10, 20), bool)
    mask[2:4, 3:5] = True
    layer = editor_layer(mask, (30, 12))
    assert layer.shape == (12, 30, 4) and (layer[..., 3] > 0).sum() == 4
    assert (layer[:10, :20, 3] > 0).sum() == 4
