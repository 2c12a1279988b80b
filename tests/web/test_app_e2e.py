"""The interactive editor end to end in a real headless browser: ``blendedit serve`` with tiny
random-weight models in a subprocess, driven by Playwright on Debian's Chromium.

Skipped when Playwright or Chromium is missing (``.ci/run`` installs both). Set
``BLENDEDIT_SCREENSHOTS=docs/web`` to write the page's screenshots there (the ones in the docs):
with the toy world present (``../shared/toyworld``, see :mod:`blendedit.eval.toyworld`) that run
serves its trained models instead and edits its scenes (upscaled), so the screenshots show real
edits; the same steps and checks run either way.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)
expect = sync_api.expect
# Each step waits on the server (a keep writes a 12 MP file and the trail); on a loaded 2-core
# machine that is more than Playwright's default 5 s. A passing check returns at once.
expect.set_options(timeout=60_000)


def _chromium() -> str | None:
    for c in (os.environ.get("BLENDEDIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if c and Path(c).is_file():
            return c
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip(
        "Chromium not found (apt-get install chromium, or set BLENDEDIT_CHROMIUM)",
        allow_module_level=True,
    )

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("BLENDEDIT_SCREENSHOTS")
VIEWPORT = {"width": 1400, "height": 1000}


def _toy_world() -> Path | None:
    """The toy world's folder for a screenshot run, when it is there; else None (tiny models)."""
    if not SCREENSHOTS:
        return None
    from blendedit.eval.toyworld import missing, world_dir

    world = world_dir()
    return None if missing(world) else world


TOY = _toy_world()
SERVER_LOG: list[Path] = []  # the running server's log, for a failure's message


@dataclass(frozen=True)
class Edit:
    """What a test uploads, paints and asks for."""

    photo: Path
    mask: list[tuple[float, float, float]]  # brush strokes (x0, x1, y), fractions of the canvas
    prompt: str
    results: int
    steps: int
    keep: int = 1  # the rank kept
    scribble: list[tuple[float, float, float]] | None = None
    colour: str = ""  # the scribble's palette colour, "rgb(r, g, b)"


def _strokes(
    x0: float, x1: float, y0: float, y1: float, n: int
) -> list[tuple[float, float, float]]:
    """n horizontal strokes filling the box x0..x1, y0..y1 (fractions of the canvas)."""
    return [(x0, x1, y0 + (y1 - y0) * i / (n - 1)) for i in range(n)]


def _scene(index: int, box: tuple[int, int, int, int], size: tuple[int, int], path: Path) -> Path:
    """The toy world's held-out scene ``index`` cropped to ``box`` (scene px, of 64x64) and
    upscaled (Lanczos) to ``size``: a photo for the 64 px model, whose edit frame crops the
    region around the mask and works on it at 64 px."""
    from blendedit.eval.toyworld import World

    image = World(TOY).scene(index)[0].crop(box)
    image.resize(size, Image.Resampling.LANCZOS).save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> Iterator[str]:
    """``blendedit serve`` on 127.0.0.1 and a free port; yields the URL it prints. Tiny
    random-weight models, or the toy world's trained ones for a screenshot run."""
    if TOY is not None:
        sd, clip = TOY / "toy-sd", TOY / "toy-clip"
    else:
        sd, clip = request.getfixturevalue("tiny_sd_dir"), request.getfixturevalue("tiny_clip_dir")
    tmp = tmp_path_factory.mktemp("serve")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        "TMPDIR": str(tmp),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "blendedit.cli", "serve",
        "--model", str(sd), "--clip-model", str(clip),
        "--device", "cpu", "--offline", "--port", str(_free_port()),
        "--max-side", "4096", "--max-megapixels", "13", "--max-upload-mb", "6",
        "--max-results", "16",
    ]  # fmt: skip
    SERVER_LOG[:] = [tmp / "server.log"]
    log = open(SERVER_LOG[0], "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=120)
    try:
        if not line or not line[0].startswith("http://127.0.0.1:"):
            log.seek(0)
            pytest.fail(f"blendedit serve printed no URL: {line!r}\n{log.read()[-3000:]}")
        yield line[0].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _page(browser, url: str, outside: list[str]):
    """A new tab (its own session) on the app; requests for anything but the server are recorded
    in ``outside``. (Recorded, not intercepted: routing every request through Python slows the
    editor's many uploads; the test machine has no internet access to reach anyway.)"""
    page = browser.new_context(viewport=VIEWPORT, accept_downloads=True).new_page()

    def watch(request) -> None:
        u = request.url
        if not (u.startswith(url) or u.startswith(("data:", "blob:"))):
            outside.append(u)

    page.on("request", watch)
    page.goto(url)
    page.locator("#editor").wait_for(timeout=60_000)
    return page


def _shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)


def _upload(page, path: Path) -> None:
    page.locator("#photo-file input[type=file]").first.set_input_files(str(path))


def _drop(page, path: Path) -> None:
    """Drop a file on the Photo box, as a user dragging it from a file manager."""
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/png" }));
            const zone = document.querySelector("#photo-file button");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true }));
            }
        }""",
        [base64.b64encode(path.read_bytes()).decode(), path.name],
    )


def _brush_colour(page, rgb: str) -> None:
    """Pick a brush colour from the editor's palette ("rgb(r, g, b)")."""
    page.get_by_role("button", name="Brush", exact=True).click()
    page.get_by_role("button", name="Color", exact=True).click()
    page.locator(f'#editor button.color[style*="background-color: {rgb}"]').first.click()
    page.mouse.click(5, 5)  # close the palette


def _paint(page, strokes: list[tuple[float, float, float]]) -> None:
    """Brush strokes (x0, x1, y as fractions of the canvas); checks that paint appeared."""
    page.get_by_role("button", name="Brush", exact=True).click()
    canvas = page.locator("#editor canvas").first
    for _attempt in range(3):
        canvas.scroll_into_view_if_needed()  # the whole canvas on screen, for the mouse
        box = canvas.bounding_box()
        x0, y0 = box["x"] + box["width"] * strokes[0][0], box["y"] + box["height"] * strokes[0][2]
        clip = {"x": x0 - 4, "y": y0 - 4, "width": 8, "height": 8}
        before = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))), dtype=int)
        for a, b, y in strokes:
            yy = box["y"] + box["height"] * y
            page.mouse.move(box["x"] + box["width"] * a, yy)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * b, yy, steps=3)
            page.mouse.up()
        page.mouse.move(box["x"] + 5, box["y"] + box["height"] - 5)
        time.sleep(0.3)
        after = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))), dtype=int)
        if np.abs(after - before).max() > 40:
            return
        time.sleep(1)  # the canvas was not ready yet
    pytest.fail("the brush left no paint on the editor's canvas")


def _set(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def _toasts(page) -> list[str]:
    return [t.inner_text() for t in page.locator(".toast-body").all()]


def _close_toasts(page) -> None:
    for c in page.locator(".toast-close").all():
        c.click()


# Whether a component shows a pending event (queue position, progress) in its status tracker.
_BUSY = """(sel) => [...document.querySelectorAll(`${sel} [data-testid=status-tracker]`)]
    .some(e => !e.classList.contains('hide') && e.textContent.trim() !== '')"""


def _generate(page, found: str, timeout_s: float, where: str = "#status") -> None:
    """Click Generate and wait until ``where`` (the status) says ``found``. The editor commits a stroke to
    its value asynchronously, so a click landing just before that is told "nothing painted" (or,
    rarely, is lost before it reaches the queue); a user clicks again, and so does this, twice at
    most. Any other outcome fails with the page's toasts, the results panel and the server's log."""
    status, results = page.locator("#status"), page.locator("#results")
    for attempt in range(3):
        _close_toasts(page)
        expect(page.locator(".toast-body")).to_have_count(0, timeout=10_000)
        page.locator("#generate").click()
        start = time.monotonic()
        retry = False
        while not retry and time.monotonic() - start < timeout_s:
            if found in page.locator(where).inner_text():
                return
            toasts = _toasts(page)
            busy = page.evaluate(_BUSY, "#results")
            if toasts and attempt < 2 and all("nothing painted" in t for t in toasts):
                _close_toasts(page)
                retry = True
            elif toasts:
                break
            elif not busy and time.monotonic() - start > 20 and attempt < 2:
                retry = True  # nothing queued, running or said: the click did not arrive
            time.sleep(0.5)
        if not retry:
            break
        print(f"Generate clicked again (attempt {attempt + 2}): the first did not run")
        time.sleep(1)
    log = SERVER_LOG[0].read_text()[-3000:] if SERVER_LOG else ""
    pytest.fail(
        f"no {found!r} in {where} after Generate; status: {status.inner_text()!r}; "
        f"toasts: {_toasts(page)!r}; results panel: {results.inner_text()[:300]!r}\n"
        f"server log:\n{log}"
    )


def _idle(page) -> None:
    """Before a screenshot: wait until no component shows a pending event."""
    if not SCREENSHOTS:
        return
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
        ".every(e => e.classList.contains('hide') || !e.textContent.trim())",
        timeout=30_000,
    )


def _share(pixels: np.ndarray, colour: str) -> float:
    """The fraction of (..., 3) RGB pixels that are clearly ``colour`` ("yellow" or "red")."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    if colour == "yellow":
        return float(((r > 180) & (g > 180) & (b < 110)).mean())
    return float(((r > 160) & (g < 90) & (b < 110)).mean())


def _fixed_seed(page, seed: int) -> None:
    """Screenshots of the toy world: the same seeds each run (not a new random one)."""
    page.locator("#random-seed input").uncheck()
    _set(page, "seed", str(seed))


@pytest.fixture(scope="module")
def first_edit(shared_images: Path, tmp_path_factory) -> Edit:
    if TOY is None:  # the cat's eyes; keep the second result
        eyes = [(0.3, 0.7, 0.36), (0.3, 0.7, 0.42)]
        return Edit(shared_images / "chelsea.png", eyes, "sunglasses", results=2, steps=4, keep=2)
    # Scene 7 of the toy world, a red square left of centre, at 512 px: paint over it, ask for a
    # yellow circle (the edit works on the painted box and its surroundings at 64 px).
    photo = _scene(7, (0, 0, 64, 64), (512, 512), tmp_path_factory.mktemp("toy") / "scene-7.png")
    square = _strokes(0.27, 0.56, 0.25, 0.64, 8)
    return Edit(photo, square, "a yellow circle", results=4, steps=20, keep=1)


def test_paint_generate_keep_undo_queue_cancel_in_a_browser(server, browser, first_edit: Edit):
    e = first_edit
    w, h = Image.open(e.photo).size
    outside: list[str] = []
    page = _page(browser, server, outside)
    _shot(page, "01-start.png")
    other = _page(browser, server, outside)  # a second tab, for the queue at the end

    for tab in (page, other):
        _upload(tab, e.photo)
    for tab in (page, other):
        expect(tab.locator("#status")).to_contain_text("New photo", timeout=60_000)
    expect(page.locator("#status")).to_contain_text(f"{w}×{h} px")

    # A bad input is one clear line, not a stack trace.
    page.locator("#prompt textarea").fill(e.prompt)
    page.locator("#generate").click()
    expect(page.locator(".toast-body").first).to_contain_text(
        "mask: nothing painted", timeout=30_000
    )
    assert not any("Traceback" in t for t in _toasts(page))
    _close_toasts(page)

    _paint(page, e.mask)
    _set(page, "num-images", str(e.results))
    _set(page, "steps", str(e.steps))
    if TOY is not None:
        _fixed_seed(page, 0)
    _shot(page, "02-painted.png")
    _generate(page, f"{e.results} results for '{e.prompt}'", timeout_s=90)
    thumbs = page.locator("#results .thumbnail-item")
    expect(thumbs).to_have_count(e.results)
    captions = [c.inner_text() for c in page.locator("#results .caption-label").all()]
    assert re.fullmatch(r"#1 seed \d+ score -?\d\.\d{4}", captions[0]), captions
    assert captions[1].startswith("#2 seed ")
    kept_seed = int(captions[e.keep - 1].split()[2])
    _idle(page)
    _shot(page, "03-results.png")

    thumbs.nth(e.keep - 1).click()
    expect(page.locator("#status")).to_contain_text(f"Selected #{e.keep}")
    page.locator("#keep").click()
    expect(page.locator("#status")).to_contain_text(f"Kept #{e.keep}")
    expect(page.locator("#history .thumbnail-item")).to_have_count(2)  # original + step 1
    expect(page.locator("#undo")).to_be_enabled()
    _idle(page)
    _shot(page, "04-kept.png")

    with page.expect_download() as dl:
        page.locator("#download-trail").click()
    assert dl.value.suggested_filename == "result.json"
    trail = json.loads(Path(dl.value.path()).read_text())
    (step,) = trail["steps"]
    assert step["prompt"] == e.prompt and step["seed"] == kept_seed and step["rank"] == e.keep
    assert step["settings"]["num_inference_steps"] == e.steps
    assert step["settings"]["batch_size"] == 1
    assert 0.02 < step["mask_fraction"] < 0.5  # the painted strokes, nothing else
    with page.expect_download() as dl:
        page.locator("#download-image").click()
    assert dl.value.suggested_filename == f"{e.photo.stem}-blendedit-step1.png"
    kept = np.asarray(Image.open(dl.value.path()).convert("RGB")).astype(int)  # (h, w, 3)
    assert kept.shape == (h, w, 3)
    if TOY is not None:  # the trained model drew what was asked: yellow where none was
        before, after = _share(np.asarray(Image.open(e.photo)), "yellow"), _share(kept, "yellow")
        assert before < 0.001 and after > 0.02, (before, after)

    page.locator("#undo").click()
    expect(page.locator("#status")).to_contain_text("Undid step 1")
    expect(page.locator("#history .thumbnail-item")).to_have_count(1)
    expect(page.locator("#prompt textarea")).to_have_value(e.prompt)
    expect(page.locator("#redo")).to_be_enabled()
    _idle(page)
    _shot(page, "05-undone.png")

    # Paint again and run it long, so that a second tab waits in the queue behind it (one
    # generation at a time), then cancel it.
    _paint(page, [(0.3, 0.7, 0.36)])
    _set(page, "num-images", "16")
    _set(page, "steps", "200")  # 16 results x 150 steps
    _generate(page, "denoising", timeout_s=60, where="#results")
    other.locator("#prompt textarea").fill("a hat" if TOY is None else "a blue ring")
    other.locator("#generate").click()  # nothing painted: it says so, but only on its turn
    expect(other.locator("#results")).to_contain_text("queue: 1/1", timeout=30_000)
    _shot(other, "07-queue.png")
    assert _toasts(other) == []
    page.locator("#cancel").click()
    expect(page.locator("#status")).to_contain_text("Cancelled.")
    expect(other.locator(".toast-body").first).to_contain_text(
        "mask: nothing painted", timeout=60_000
    )

    page.locator("#redo").click()
    expect(page.locator("#history .thumbnail-item")).to_have_count(2)
    assert outside == [], f"the page tried to reach outside the server: {outside}"


def test_upload_caps_are_told_in_one_line(server, browser, tmp_path: Path):
    outside: list[str] = []
    page = _page(browser, server, outside)
    noise = tmp_path / "noise.png"  # about 6.9 MiB, over the server's 6 MiB cap
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1550, 1550, 3), dtype=np.uint8)).save(noise)
    _upload(page, noise)
    msg = page.locator("#upload-check-msg")
    expect(msg).to_contain_text("noise.png is 6.9 MiB")
    expect(msg).to_contain_text("--max-upload-mb")
    wide = tmp_path / "wide.png"  # small file, a side over --max-side 4096
    Image.new("RGB", (5000, 800), "teal").save(wide)
    _drop(page, wide)  # dropped rather than browsed: checked the same way
    expect(msg).to_contain_text("wide.png is 5000x800 px")
    expect(msg).to_contain_text("--max-side")
    many = tmp_path / "many.png"  # small file, over --max-megapixels 13
    Image.new("RGB", (4000, 3500), "teal").save(many)
    _upload(page, many)
    expect(msg).to_contain_text("many.png is 4000x3500 px (14.0 MP)")
    expect(msg).to_contain_text("--max-megapixels")
    _shot(page, "06-upload-cap.png")
    expect(page.locator("#status")).to_contain_text("Upload a photo to start")
    assert outside == []


def _exif_params(im: Image.Image) -> str:
    raw = im.getexif().get_ifd(0x8769)[0x9286]
    return raw[8:].decode("utf-16-be") if raw.startswith(b"UNICODE\0") else ""


@pytest.fixture
def scribble_edit(shared_images: Path, tmp_path: Path) -> Edit:
    if TOY is None:  # a yellow blob for "a lemon" on the coffee photo
        return Edit(
            shared_images / "coffee.png", [(0.42, 0.58, y) for y in (0.41, 0.44, 0.47, 0.50)],
            "a lemon", results=1, steps=4,
            scribble=[(0.47, 0.53, 0.46)], colour="rgb(255, 225, 25)",
        )  # fmt: skip
    # Scene 3 of the toy world (a yellow circle at the top) as a portrait 3:4 photo: mark the
    # empty background below it and scribble a red disc there for "a red circle".
    photo = _scene(3, (0, 0, 48, 64), (300, 400), tmp_path / "scene-3.png")
    # (Canvas fractions for this page's layout: the 960x1280 preview fills x 0.24-0.76, y 0-0.89,
    # and its auto brush is thin: strokes 0.025 apart.)
    disc = [(0.5 - half, 0.5 + half, y) for half, y in ((0.035, 0.607), (0.049, 0.632),
            (0.055, 0.657), (0.055, 0.683), (0.049, 0.708), (0.035, 0.733))]  # fmt: skip
    return Edit(
        photo, _strokes(0.37, 0.63, 0.55, 0.79, 10), "a red circle", results=4, steps=20,
        scribble=disc, colour="rgb(230, 25, 75)",
    )  # fmt: skip


def test_a_sideways_12mp_phone_photo_with_a_scribble(server, browser, scribble_edit, tmp_path):
    """A 4000x3000 JPEG stored sideways (EXIF orientation 6), as phones write them: upload, paint
    the mask, scribble in colour, generate, keep and download a full-resolution 3000x4000 JPEG,
    upright, with its parameters and the AI-edit marker; far from the mask its pixels are the
    input's as shown (up to JPEG re-encoding)."""
    from blendedit.frame.photo import read_photo
    from blendedit.web.session import b64_to_image

    e = scribble_edit
    shown = Image.open(e.photo).convert("RGB").resize((3000, 4000), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = 6
    phone = tmp_path / "phone.jpg"
    shown.transpose(Image.Transpose.ROTATE_90).save(phone, quality=90, exif=exif.tobytes())
    assert Image.open(phone).size == (4000, 3000)
    shown_px = np.asarray(read_photo(phone).pixels).astype(int)

    outside: list[str] = []
    page = _page(browser, server, outside)
    _upload(page, phone)
    expect(page.locator("#status")).to_contain_text("New photo", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("3000×4000 px")
    expect(page.locator("#status")).to_contain_text("960×1280 preview")
    _paint(page, e.mask)
    _brush_colour(page, e.colour)  # an opaque colour: a scribble
    _paint(page, e.scribble)
    page.locator("#prompt textarea").fill(e.prompt)
    _set(page, "num-images", str(e.results))
    _set(page, "steps", str(e.steps))
    _set(page, "blend-start", "0.5")  # the edit starts from the noised scribble
    if TOY is not None:
        _fixed_seed(page, 0)
    found = f"{e.results} result{'s' if e.results > 1 else ''} for '{e.prompt}'"
    _generate(page, found, timeout_s=240)
    expect(page.locator("#status")).to_contain_text("Scribble:")
    _idle(page)
    _shot(page, "08-scribble.png")  # the scribble and what it became
    page.locator("#keep").click()
    expect(page.locator("#status")).to_contain_text("Kept #1")

    with page.expect_download() as dl:
        page.locator("#download-image").click()
    assert dl.value.suggested_filename == "phone-blendedit-step1.jpg"
    with Image.open(dl.value.path()) as im:
        assert im.format == "JPEG" and im.size == (3000, 4000)  # full resolution, upright
        assert im.getexif().get(0x0112, 1) == 1
        assert "compositeWithTrainedAlgorithmicMedia" in im.info["xmp"].decode()
        params = _exif_params(im)
        out = np.asarray(im.convert("RGB")).astype(int)
    assert params.startswith(f"{e.prompt}\n") and f"Steps: {e.steps}" in params
    with page.expect_download() as dl:
        page.locator("#download-trail").click()
    (step,) = json.loads(Path(dl.value.path()).read_text())["steps"]
    mask = np.asarray(b64_to_image(step["mask_png_base64"], "mask").convert("L")) >= 128
    assert mask.shape == (4000, 3000) and "scribble" in step
    ys, xs = np.nonzero(mask)
    far = np.ones(mask.shape, bool)
    far[max(0, ys.min() - 64) : ys.max() + 64, max(0, xs.min() - 64) : xs.max() + 64] = False
    assert far.mean() > 0.5
    diff = np.abs(out - shown_px)[far]
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8, (diff.mean(), diff.max())
    assert np.abs(out - shown_px)[mask].mean() > 2  # and inside the mask it was edited
    if TOY is not None:  # into something red (the scribble's colour and the prompt's)
        assert _share(shown_px[mask], "red") < 0.001 and _share(out[mask], "red") > 0.02
    assert outside == []
