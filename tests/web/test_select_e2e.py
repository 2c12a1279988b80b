"""Selecting in the editor end to end in a headless browser (issue 21): a click selects, a
negative click removes a part, the selection is edited with the brush, Generate edits only there.

The app runs in this process (``EditorApp`` with the tiny random-weight SD and a tiny saved SAM,
through ``blendedit.segment.load_segmenter``), so SAM's decoder can be patched: random weights
give a diffuse mask all over the photo, so ``SamSegmenter.masks`` answers a disc of radius 60
around the added clicks less a disc of radius 25 around the removed ones (as
tests/segment/test_select_cli.py does). Everything else (the page, the selection view's click
coordinates, the mask reaching the editor's paint layer and coming back with the brush's paint
at Generate, the edit) is the real code. Skipped without Playwright or Chromium.

It fails when the mask layer is sent unpadded (``selecting.editor_layer``): Gradio 6 then draws
it centred in its 768x512 area, off the photo, and Generate receives the brush stroke alone
(checked: ``mask[expected].mean()`` was 0.0). ~30 s on this 2-core machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
from test_app_e2e import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _free_port, _paint  # noqa: E402

W, H = 480, 320  # the photo (smaller than the preview side: the canvas is the photo's size)
OBJ = (150, 160)  # the red disc's centre
ADD_R, REMOVE_R = 60, 25
FEATHER = 16  # px: the mask's soft edge blends the result a little beyond it


def _disc(self, image, points, boxes):
    """SAM's answer, patched: added discs and boxes less removed discs, as logits (1, H, W)."""
    yy, xx = np.mgrid[: image.height, : image.width]
    inside = np.zeros((image.height, image.width), bool)
    for p in points:
        d = (yy - p.y) ** 2 + (xx - p.x) ** 2
        if p.positive:
            inside |= d < ADD_R**2
    for x0, y0, x1, y1 in boxes:
        inside[int(y0) : int(y1), int(x0) : int(x1)] = True
    for p in points:
        if not p.positive:
            inside &= (yy - p.y) ** 2 + (xx - p.x) ** 2 >= REMOVE_R**2
    return torch.from_numpy(np.where(inside, 8.0, -8.0)[None]), torch.ones(1)


@pytest.fixture(scope="module")
def served(editor, tmp_path_factory):
    from blendedit.segment import load_segmenter
    from blendedit.segment.sam import SamSegmenter
    from blendedit.web.app import EditorApp, ServeOptions
    from blendedit.web.selecting import Selector
    from tiny_segmenters import build_sam

    tmp = tmp_path_factory.mktemp("select-web")
    sam = build_sam(tmp / "sam")
    loads: list[str] = []

    def load(name: str):
        loads.append(name)
        return load_segmenter(name)

    app = EditorApp(
        editor,
        options=ServeOptions(max_results=2, default_results=1),
        workdir=tmp / "web",
        selector=Selector(str(sam), load),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SamSegmenter, "masks", _disc)
        url = app.launch("127.0.0.1", _free_port())
        try:
            yield app, url, tmp, loads
        finally:
            app.close()


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    a = (rng.integers(90, 140, (H, W, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    a[(yy - OBJ[1]) ** 2 + (xx - OBJ[0]) ** 2 < 70**2] = (220, 30, 30)
    Image.fromarray(a).save(path)
    return path


def _view_xy(page, x: float, y: float) -> tuple[float, float]:
    """The page position of pixel (x, y) of the preview the selection view shows (contain)."""
    img = page.locator("#select-view img").first
    img.scroll_into_view_if_needed()
    b = img.bounding_box()
    s = min(b["width"] / W, b["height"] / H)
    ox, oy = b["x"] + (b["width"] - W * s) / 2, b["y"] + (b["height"] - H * s) / 2
    return ox + (x + 0.5) * s, oy + (y + 0.5) * s


def _click_view(page, x: float, y: float, modifiers: list[str] | None = None) -> None:
    """Click the selection view at pixel (x, y) of the preview it shows."""
    for key in modifiers or []:
        page.keyboard.down(key)
    page.mouse.click(*_view_xy(page, x, y))
    for key in modifiers or []:
        page.keyboard.up(key)


def _wait(cond, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_click_remove_brush_and_generate_in_a_browser(served):
    app, url, tmp, loads = served
    photo = _photo(tmp / "disc.png")
    source = np.asarray(Image.open(photo).convert("RGB"))
    yy, xx = np.mgrid[:H, :W]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(url)
        page.locator("#photo-file input[type=file]").first.set_input_files(str(photo))
        _wait(lambda: len(app._states) == 1, "the upload")

        def tab():  # the tab's state, as the last event left it
            return next(iter(app._states.values()))

        _wait(lambda: tab().picks.image is not None, "the selection view")
        page.locator("#select-view img").first.wait_for()

        # A click on the object selects the disc around it (SAM's answer, patched).
        _click_view(page, *OBJ)
        _wait(lambda: tab().picks.mask is not None, "the first selection")
        st = tab()
        first = st.picks.points[0]
        print("clicked", OBJ, "recorded", first)
        assert first.positive and abs(first.x - OBJ[0]) <= 15 and abs(first.y - OBJ[1]) <= 15
        added = (yy - first.y) ** 2 + (xx - first.x) ** 2 < ADD_R**2
        assert (st.picks.mask == added).mean() > 0.995

        # A negative click (shift-click, sent by static/editor.js) takes a part away.
        hole = (OBJ[0] + 40, OBJ[1])
        _click_view(page, *hole, modifiers=["Shift"])
        _wait(lambda: len(tab().picks.points) == 2, "the negative click", timeout=30)
        st = tab()
        neg = st.picks.points[1]
        assert not neg.positive
        removed = (yy - neg.y) ** 2 + (xx - neg.x) ** 2 < REMOVE_R**2
        expected = added & ~removed
        assert (st.picks.mask == expected).mean() > 0.995
        # A drag draws a box (sent by static/editor.js); SAM's patched answer adds the box.
        page.mouse.move(*_view_xy(page, 330, 230))
        page.mouse.down()
        page.mouse.move(*_view_xy(page, 380, 260), steps=4)
        page.mouse.move(*_view_xy(page, 420, 290), steps=4)
        page.mouse.up()
        _wait(lambda: tab().picks.box is not None, "the dragged box", timeout=30)
        st = tab()
        bx0, by0, bx1, by1 = st.picks.box
        assert abs(bx0 - 330) <= 15 and abs(by1 - 290) <= 15 and len(st.picks.points) == 2
        boxed = np.zeros_like(added)
        boxed[int(by0) : int(by1), int(bx0) : int(bx1)] = True
        expected = (added | boxed) & ~removed
        assert (st.picks.mask == expected).mean() > 0.995
        assert loads == [loads[0]]  # the segmenter loaded once
        time.sleep(1.5)  # the editor draws the layer the server sent

        # The brush adds a stroke to the selection; Generate edits the union only.
        _paint(page, [(0.75, 0.95, 0.2)])
        page.locator("#generate").click()
        _wait(lambda: tab().generation is not None, "Generate", timeout=240)
        gen = tab().generation  # (the tab's state is emptied when the tab closes)
        browser.close()
    mask = gen.mask  # (H, W) bool: what Generate received from the page
    assert (mask[expected]).mean() > 0.98  # the selection reached the paint layer in place
    assert not mask[removed & added].any()  # the removed part stayed out
    assert mask[:, int(0.75 * W) :].any()  # the brush stroke
    r = gen.results[0]
    x0, y0, x1, y1 = r.box
    inside = mask[y0:y1, x0:x1]
    changed = (r.patch[..., :3] != source[y0:y1, x0:x1]).any(axis=-1)
    away = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)  # px to the mask
    print("CHANGED max distance", away[changed].max(), "inside share", changed[inside].mean())
    assert changed[inside].mean() > 0.5  # the edit happened in the selection
    assert not changed[away > FEATHER].any()  # and nowhere away from it
