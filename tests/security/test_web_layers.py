"""Issue 25, finding 1: a memory bomb through the editor's paint layers. Every image the page sends
(background, composite, each layer) is checked from its header before Gradio decodes it, the
number of layers is bounded, and a bomb is one line; Pillow's own guard is the server's cap while
it serves."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.components.image_editor import EditorData
from gradio.data_classes import DataWithFiles, FileData
from PIL import Image, ImageFile

from blendedit.web.app import EditorApp
from blendedit.web.handlers import ServeOptions
from blendedit.web.paint import PaintEditor

BOMB_SIDE = 14000  # a 1-bit PNG of 14000x14000: about 24 KB, 0.77 GB as RGBA


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "layer.png"
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    return path


@pytest.fixture()
def loads(monkeypatch) -> list[tuple[int, int]]:
    """Every image Pillow decodes, by size; decoding one larger than a preview fails the test at
    once (before the memory is taken)."""
    seen: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(self):
        seen.append(self.size)
        assert max(self.size) <= 4096, f"decoded a {self.size} image"
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


def _editor(max_side: int = 1280, max_layers: int = 4) -> PaintEditor:
    with gr.Blocks():
        return PaintEditor(type="numpy", image_mode="RGBA", format="png").limit(
            max_side, max_layers
        )


def _png(size=(320, 200)) -> bytes:
    buf = io.BytesIO()
    a = np.zeros((size[1], size[0], 4), np.uint8)
    a[10:50, 10:60] = (255, 0, 255, 128)
    Image.fromarray(a, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _blob(editor: PaintEditor, blob_id: str, kind: str, data: bytes, index: int | None = None):
    fields = {"id": blob_id, "type": kind, "index": "null" if index is None else str(index)}
    return editor.accept_blobs(DataWithFiles(data=fields, files=[(f"{kind}.png", data)]))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = e.value.message
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_a_layer_bomb_sent_as_a_file_is_refused_from_its_header(bomb, loads):
    editor = _editor()
    payload = EditorData(layers=[FileData(path=str(bomb), orig_name="layer.png")])
    with pytest.raises(gr.Error) as e:
        editor.preprocess(payload)
    msg = _one_line(e)
    assert msg.startswith("editor: the paint layer is 14000x14000 px") and "--preview-side" in msg
    assert loads == []  # nothing was decoded


def test_a_layer_bomb_sent_as_the_page_sends_it_is_never_kept(bomb, loads):
    editor = _editor()
    _blob(editor, "page1", "background", _png())
    _blob(editor, "page1", "layer", bomb.read_bytes(), index=0)
    assert "page1" not in editor.blob_storage  # the page's PNGs are let go at once
    with pytest.raises(gr.Error) as e:
        editor.preprocess(EditorData(id="page1"))
    assert _one_line(e).startswith("editor: the layer is 14000x14000 px")
    assert loads == []


def test_too_many_layers_are_refused_by_count(loads, tmp_path: Path):
    editor = _editor()
    small = tmp_path / "small.png"
    small.write_bytes(_png())
    payload = EditorData(layers=[FileData(path=str(small))] * 100)
    with pytest.raises(gr.Error) as e:
        editor.preprocess(payload)
    assert _one_line(e) == (
        "editor: 100 paint layers; at most 4 are taken (server option --max-layers)"
    )
    assert loads == []
    _blob(editor, "page2", "layer", _png(), index=99)
    assert "page2" not in editor.blob_storage
    with pytest.raises(gr.Error, match="at most 4 paint layers"):
        editor.preprocess(EditorData(id="page2"))


def test_a_page_within_the_caps_is_decoded_as_before(loads):
    editor = _editor()
    _blob(editor, "page3", "background", _png())
    _blob(editor, "page3", "composite", _png())
    _blob(editor, "page3", "layer", _png(), index=0)
    value = editor.preprocess(EditorData(id="page3"))
    assert value["background"].shape == (200, 320, 4)
    (layer,) = value["layers"]
    assert layer.shape == (200, 320, 4) and layer[20, 20, 3] == 128
    assert "page3" not in editor.blob_storage
    assert set(loads) == {(320, 200)}


def test_not_a_png_and_oversized_files_are_refused(tmp_path: Path, loads):
    editor = _editor(max_side=320)
    with pytest.raises(gr.Error, match="the paint layer is not a PNG image"):
        path = tmp_path / "x.png"
        path.write_bytes(b"GIF89a" + bytes(100))
        editor.preprocess(EditorData(layers=[FileData(path=str(path))]))
    _blob(editor, "big", "layer", bytes(editor.max_blob_bytes + 1), index=0)
    with pytest.raises(gr.Error, match="MiB, more than a 768 px preview"):
        editor.preprocess(EditorData(id="big"))


def test_waiting_pngs_are_bounded(monkeypatch):
    from blendedit.web import paint

    monkeypatch.setattr(paint, "STORED_BYTES", 3 * len(_png()))
    editor = _editor()
    for i in range(10):
        _blob(editor, f"p{i}", "layer", _png(), index=0)
    assert list(editor.blob_storage) == ["p7", "p8", "p9"]  # the oldest pages dropped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_app_uses_the_paint_editor_and_sets_pillows_guard_while_serving(editor, tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    app = EditorApp(
        editor, options=ServeOptions(max_megapixels=13, preview_side=512, max_layers=2),
        workdir=tmp_path / "web",
    )  # fmt: skip
    app.build()
    paint = next(b for b in app.demo.blocks.values() if getattr(b, "elem_id", "") == "editor")
    assert isinstance(paint, PaintEditor) and (paint.max_side, paint.max_layers) == (768, 2)
    assert paint.get_block_name() == "imageeditor"  # drawn by the page as Gradio's own
    try:
        app.launch("127.0.0.1", _free_port())
        assert Image.MAX_IMAGE_PIXELS == 13_000_000
    finally:
        app.close()
    assert before == Image.MAX_IMAGE_PIXELS
