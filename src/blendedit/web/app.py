"""The interactive editor: a local Gradio app over the library (``blendedit serve``).

Upload a photo (up to the library's caps: 16384 px a side, 100 MP), paint on a preview of it: the
translucent brush marks the region to edit, opaque colours scribble what should appear there (BLD
paper 5.3); type a prompt (or none: fill from the surroundings), Generate: a ranked gallery of
results with their seeds and CLIP scores. The painting is mapped back to full resolution exactly
(:mod:`blendedit.web.canvas`) and the edit runs on the full-resolution photo (the library's edit
frame crops around the mask at the model's resolution). Keep one and it becomes the input of the
next edit; the history strip, Undo and Redo move along the kept steps; the current image
(full resolution, shown the way the upload was, in its format, with the generation parameters
and the AI-edit marker) and the session's ``result.json`` trail (every step's prompt, mask,
scribble, seed and settings: ``blendedit replay`` regenerates it) can be downloaded.

Safe by default: the CLI binds 127.0.0.1; uploads are capped in bytes and in pixels, told in one
line in the browser before a file is sent (``UPLOAD_CHECK_JS``) and enforced by the server
(Gradio's ``max_file_size``, and the size check on arrival, before the photo is decoded); one
generation runs at a time (a queue with a visible position, and a lock, so a cancelled run still
finishing holds the device until it stops); every bad input is a one-line message, never a stack
trace. Gradio's telemetry and version check are switched off before it is imported, and the page
loads nothing from outside the server.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr
import numpy as np
import torch
from PIL import Image

from blendedit import io as bio
from blendedit.config import BACKGROUND_MODES, MASK_SHRINK_MODES, PRESETS
from blendedit.errors import BlendEditError, InputError
from blendedit.frame.photo import Photo, output_format, read_photo, save_photo
from blendedit.io import MIN_SIDE, write_text
from blendedit.models import SCHEDULERS
from blendedit.web.canvas import (
    PREVIEW_SIDE,
    paint_from_editor,
    preview,
    scribble_from_canvas,
    to_full,
)
from blendedit.web.session import (
    Generation,
    Result,
    Session,
    mask_to_image,
    use_loras,
)

logger = logging.getLogger(__name__)

MASK_RGB = (255, 0, 255)  # the mask brush: magenta at half opacity, so the photo shows through
MASK_OPACITY = 0.5
SCRIBBLE_COLORS = (  # opaque scribble colours offered next to the mask brush (any other works too)
    "#e6194b", "#f58231", "#ffe119", "#3cb44b", "#4363d8", "#911eb4", "#8b5a2b", "#000000",
    "#ffffff",
)  # fmt: skip
THUMB_SIDE = 256  # px; history thumbnails
PROGRESS_EVERY_S = 0.25  # at most four progress updates a second reach the page
PHOTO_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".bmp"]


@dataclass
class ServeOptions:
    """Limits of a served editor; the defaults are the library's own caps."""

    max_upload_mb: float = 200.0  # MiB of one photo file (told in the browser before it is sent)
    max_side: int = bio.MAX_SIDE  # px; longest side of an uploaded photo
    max_pixels: int = bio.MAX_PIXELS  # pixels of an uploaded photo (100 MP)
    max_results: int = 16  # results per Generate
    max_queue: int = 16  # Generate requests waiting; more are refused with a message
    default_results: int = 4
    preview_side: int = PREVIEW_SIDE  # px; long side of the canvas the brush paints on


@dataclass
class WebState:
    """What one browser tab holds: its session, the last Generate, and the selected result."""

    session: Session | None = None
    generation: Generation | None = None
    selected: int | None = None
    serial: int = 0  # counts uploads; names this tab's download folders
    canvas: tuple[int, int] = (0, 0)  # (w, h) of the preview the editor shows
    original_thumb: Image.Image | None = None


class Cancelled(Exception):
    """Raised inside the progress callback when the user presses Cancel."""


# -- pure helpers (tested without a browser) ------------------------------------------------------


def mask_from_editor(
    value: Mapping[str, Any] | None, size: tuple[int, int], canvas: tuple[int, int] | None = None
) -> np.ndarray:
    """The painted region (mask and scribble paint) of an ImageEditor value as a bool (H, W)
    array at the photo's full ``size`` = (W, H), from a ``canvas`` (w, h) preview (default: the
    background's size, else the photo's)."""
    if canvas is None:
        bg = (value or {}).get("background")
        canvas = size if bg is None else (np.asarray(bg).shape[1], np.asarray(bg).shape[0])
    return painted_region(value, size, canvas)[0]


def painted_region(
    value: Mapping[str, Any] | None, size: tuple[int, int], canvas: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the painted region as a bool (H, W) at the photo's ``size``, the paint layer of the
    ``canvas`` preview or None); nothing painted is one line."""
    painted, layer = paint_from_editor(value, canvas)
    if not painted.any():
        raise InputError("mask: nothing painted; paint the region to edit with the brush")
    return to_full(painted, size), layer


def mask_layer(mask: np.ndarray) -> np.ndarray:
    """A bool mask as an RGBA editor layer painted with the mask brush."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (*MASK_RGB, round(255 * MASK_OPACITY))
    return layer


def check_photo_file(path: str | os.PathLike[str], options: ServeOptions) -> tuple[int, int]:
    """An uploaded file against the server's caps, from its header, before it is decoded:
    returns its stored (W, H); one-line InputError naming the cap otherwise."""
    from blendedit.frame.photo import _register_heif

    p = Path(path)
    name = p.name
    size = p.stat().st_size
    if size > options.max_upload_mb * 1024 * 1024:
        raise InputError(
            f"image: {name} is {size / 1048576:.1f} MiB; this editor accepts files up to "
            f"{options.max_upload_mb:g} MiB (server option --max-upload-mb)"
        )
    _register_heif()
    try:
        with Image.open(p) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        w, h = options.max_side + 1, options.max_side + 1
    except Exception:
        raise InputError(f"image: cannot read {name} as an image") from None
    if max(w, h) > options.max_side or min(w, h) < MIN_SIDE:
        raise InputError(
            f"image: {name} is {w}x{h} px; this editor accepts {MIN_SIDE} to {options.max_side} "
            "px a side (server option --max-side); resize it first"
        )
    if w * h > options.max_pixels:
        raise InputError(
            f"image: {name} is {w}x{h} px ({w * h / 1e6:.1f} MP); this editor accepts up to "
            f"{options.max_pixels / 1e6:g} MP (server option --max-megapixels); resize it first"
        )
    return w, h


def read_upload(path: str | os.PathLike[str], options: ServeOptions) -> Session:
    """A new session from an uploaded file: checked against the caps, read as shown (EXIF
    orientation, colour profile, bit depth kept), the file's bytes kept for the trail."""
    check_photo_file(path, options)
    p = Path(path)
    photo = read_photo(p, "image")
    return Session(photo, source=p.read_bytes(), source_name=p.name)


def result_view(photo: Photo, r: Result, side: int) -> tuple[Image.Image, bool]:
    """A result of an edit of ``photo`` as the gallery shows it: (sRGB image, is_detail). The
    whole image when the photo fits in ``side``; else the box the edit worked on (full
    resolution, at most ``side``), so the edit can be judged at its real sharpness."""
    if max(photo.size) <= side:
        out = photo.pixels.copy()
        x0, y0, x1, y1 = r.box
        out[y0:y1, x0:x1] = r.patch
        return Image.fromarray(dataclasses.replace(photo, pixels=out, alpha=None).to_srgb()), False
    image = Image.fromarray(dataclasses.replace(photo, pixels=r.patch, alpha=None).to_srgb())
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image, True


def _num(ui: Mapping[str, Any], key: str, label: str, cast: Callable[[Any], Any]) -> Any:
    v = ui.get(key)
    try:
        if v is None or v == "":
            raise ValueError
        return cast(v)
    except (TypeError, ValueError):
        raise InputError(f"{label}: {v!r} is not a number") from None


def settings_from_ui(
    kind: str, ui: Mapping[str, Any], max_results: int, base: Any = None
) -> tuple[str, Any]:
    """The method and its validated config from the settings controls' values (by name);
    ``base``: the latent model family's defaults (``editor.default_config()``)."""
    from blendedit.pixel.pipeline import PIXEL_PRESETS

    n = _num(ui, "num_images", "results", int)
    if not 1 <= n <= max_results:
        raise InputError(f"results: {n} must be between 1 and {max_results}")
    steps = _num(ui, "steps", "steps", int)
    blend = _num(ui, "blend_start", "blend start", float)
    common = {
        "num_images": n,
        "background": ui.get("background") or "stitch",
        "feather": _num(ui, "feather", "feather", int),
        "batch_size": _num(ui, "batch_size", "batch size", int),
        "invert_mask": bool(ui.get("invert")),
        "metrics": False,  # background metrics are not shown in the page: seconds saved per run
    }
    if kind == "latent":
        size = ui.get("size")
        cfg = (base or PRESETS["default"]).replace(
            **common,
            num_inference_steps=steps,
            guidance_scale=_num(ui, "guidance", "guidance", float),
            blend_start=blend,
            negative_prompt=str(ui.get("negative_prompt") or ""),
            scheduler=ui.get("scheduler") or "ddim",
            size=None if size in (None, "", 0) else _num(ui, "size", "working size", int),
            mask_shrink=ui.get("mask_shrink") or "auto",
        )
        return "latent", cfg.validate()
    method = ui.get("method") or "pixel"
    if method not in ("pixel", "local-clip"):
        raise InputError(f"method: {method!r} needs a different model; this one runs pixel")
    if not 1 <= steps <= 1000:
        raise InputError(f"steps: {steps} must be between 1 and 1000")
    if not 0 <= blend < 1:
        raise InputError(f"blend start: {blend} must be in [0, 1)")
    cfg = PIXEL_PRESETS["local" if method == "local-clip" else "default"].replace(
        **common,
        timestep_respacing=str(steps),
        skip_timesteps=min(steps - 1, int(steps * blend)),
        clip_guidance_lambda=_num(ui, "guidance", "CLIP guidance", float),
        sampler=ui.get("sampler") or "ddpm",
        fit=ui.get("fit") or "stretch",
        aug_num=_num(ui, "aug_num", "augmentations", int),
    )
    return method, cfg.validate()


def lora_lines(text: Any) -> list[str]:
    """The LoRAs field: one "FILE_OR_ID[:SCALE]" per line (or comma), normalised to
    "source:scale" as the editor reports them; checked in one line."""
    from blendedit.latent.lora import parse_lora_spec

    items = [t.strip() for t in str(text or "").replace(",", "\n").splitlines() if t.strip()]
    specs = [parse_lora_spec(t) for t in items]
    return [f"{sp.source}:{sp.scale:g}" for sp in specs]


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every failure of a handler as a one-line gr.Error (a red toast), never a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except BlendEditError as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        except torch.OutOfMemoryError:
            raise gr.Error(
                "out of memory: lower Results, Batch size or Working size", print_exception=False
            ) from None
        except Exception as e:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"unexpected error ({type(e).__name__}: {one_line(e)}); see the server log",
                print_exception=False,
            ) from None

    return wrapper


# -- the app ---------------------------------------------------------------------------------------

# Checks a photo in the browser before it is sent: Gradio's upload hangs silently when the server
# refuses a file as too large, so the caps are told here, in one line, first. The server still
# enforces them all (max_file_size, and check_photo_file in on_upload).
UPLOAD_CHECK_JS = """
<script>
(() => {
  const MAX_BYTES = %(max_bytes)d, MAX_SIDE = %(max_side)d, MIN_SIDE = %(min_side)d;
  const MAX_PIXELS = %(max_pixels)d;
  const say = (text) => {
    const el = document.getElementById("upload-check-msg");
    if (el) { el.textContent = text; el.style.display = text ? "block" : "none"; }
    else if (text) { window.alert(text); }
  };
  const problem = async (file) => {
    if (!file) return "";
    if (file.size > MAX_BYTES) {
      return `image: ${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; this editor ` +
        `accepts files up to ${(MAX_BYTES / 1048576).toFixed(1)} MiB (server option --max-upload-mb)`;
    }
    let w = 0, h = 0;
    try {
      const bmp = await createImageBitmap(file);
      w = bmp.width; h = bmp.height;
      bmp.close();
    } catch (err) {
      return "";  // a format this browser cannot decode (HEIC, TIFF): the server checks it
    }
    if (Math.max(w, h) > MAX_SIDE || Math.min(w, h) < MIN_SIDE) {
      return `image: ${file.name} is ${w}x${h} px; this editor accepts ${MIN_SIDE} to ` +
        `${MAX_SIDE} px a side (server option --max-side); resize it first`;
    }
    if (w * h > MAX_PIXELS) {
      return `image: ${file.name} is ${w}x${h} px (${(w * h / 1e6).toFixed(1)} MP); this ` +
        `editor accepts up to ${MAX_PIXELS / 1e6} MP (server option --max-megapixels)`;
    }
    return "";
  };
  const inEditor = (el) => el instanceof Element && el.closest("#photo-file");
  document.addEventListener("change", async (e) => {
    const input = e.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "file" || !inEditor(input)) return;
    if (input.dataset.checked === "1") { delete input.dataset.checked; return; }
    e.stopImmediatePropagation();
    const msg = await problem(input.files && input.files[0]);
    say(msg);
    if (msg) { input.value = ""; return; }
    input.dataset.checked = "1";
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }, true);
  document.addEventListener("drop", async (e) => {
    if (!inEditor(e.target) || !e.dataTransfer || e.dataTransfer.files.length === 0) return;
    if (e.target.dataset && e.target.dataset.checked === "1") {
      delete e.target.dataset.checked; return;
    }
    e.preventDefault();
    e.stopImmediatePropagation();
    const target = e.target, file = e.dataTransfer.files[0];
    const msg = await problem(file);
    say(msg);
    if (msg) return;
    const dt = new DataTransfer();
    dt.items.add(file);
    target.dataset.checked = "1";
    target.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, true);
})();
</script>
"""

CSS = """
#results .caption-label, #history .caption-label { max-width: 100%; white-space: normal; }
#status { min-height: 3em; }
#upload-check-msg { display: none; color: var(--error-text-color, #b91c1c); font-weight: 600; }
"""


class EditorApp:
    """The web UI over one loaded editor (latent: BlendedLatentDiffusion; pixel: BlendedDiffusion).
    ``build()`` makes the gr.Blocks; the handlers are plain methods, callable from tests."""

    def __init__(
        self,
        editor: Any,
        *,
        model_info: Mapping[str, Any] | None = None,
        options: ServeOptions | None = None,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        from blendedit.latent.pipeline import BlendedLatentDiffusion

        self.editor = editor
        self.kind = "latent" if isinstance(editor, BlendedLatentDiffusion) else "pixel"
        self.options = options or ServeOptions()
        self.model_info = {
            "method": self.kind,
            "name": getattr(editor, "name", ""),
            "dtype": str(editor.dtype).removeprefix("torch."),
            "device": str(editor.device),
            **(model_info or {}),
        }
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="blendedit-web-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._device_lock = threading.Lock()  # one generation at a time on the device
        self._cancel: dict[str, threading.Event] = {}
        self._states: dict[str, WebState] = {}  # by tab: emptied when the tab closes
        self.demo: gr.Blocks | None = None

    # -- views --------------------------------------------------------------------------------

    def editor_value(self, st: WebState) -> Any:
        """The editor showing the current image's preview, unpainted. (Paint is never set from
        the server: Gradio 6 draws a layer given as a value off its place.)"""
        s = st.session
        if s is None:
            return None
        image = preview(s.photo, s.current_pixels, self.options.preview_side)
        st.canvas = image.size
        return {"background": image, "layers": [], "composite": image}

    def _files(self, st: WebState, sid: str) -> tuple[str | None, str | None]:
        """The current image (full resolution, the input's format, with the parameters and the
        AI-edit marker) and the trail as result.json, in a folder per image state; nothing
        before the first kept step. Folders of this tab's other states are removed."""
        s = st.session
        if s is None or s.cursor == 0:
            return None, None
        root = self.workdir / _safe(sid)
        name = f"upload{st.serial}-image{s.current_id}"
        folder = root / name
        fmt = output_format(None, s.photo)
        stem = _safe(Path(s.source_name).stem) or "photo"
        image = folder / f"{stem}-blendedit-step{s.cursor}.{'jpg' if fmt == 'jpeg' else fmt}"
        trail = folder / "result.json"
        if not trail.exists():
            if root.is_dir():
                for old in root.iterdir():
                    if old.name != name:
                        shutil.rmtree(old, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            if not image.exists():
                save_photo(s.current_pixels, s.photo, image, parameters=s.history[-1].parameters)
            write_text(
                json.dumps(s.to_trail(self.model_info), indent=1) + "\n", trail, replace=True
            )
        return str(image), str(trail)

    def _history(self, st: WebState) -> list[tuple[Image.Image, str]]:
        s = st.session
        if s is None:
            return []
        items = [(st.original_thumb or _thumb(s.photo), "original")]
        for i, step in enumerate(s.history, start=1):
            thumb = step.thumb if step.thumb is not None else _thumb(s.photo, s.current_pixels)
            items.append((thumb, f"{i}: {_short(step.prompt) or '(no prompt)'} (seed {step.seed})"))
        return items

    def status_text(self, st: WebState, message: str = "") -> str:
        s = st.session
        if s is None:
            line = "Upload a photo to start: drop it on the Photo box, or click it to browse."
        else:
            w, h = s.size
            n = len(s.history)
            line = (
                f"**{'Original photo' if n == 0 else f'After step {n}'}** · {w}×{h} px "
                f"({w * h / 1e6:.1f} MP, painted on a {st.canvas[0]}×{st.canvas[1]} preview) · "
                f"{n} kept step{'s' if n != 1 else ''}"
            )
            if s.can_redo:
                line += f" · {s.redo_count} to redo"
        return f"{message}\n\n{line}" if message else line

    def view(self, st: WebState, sid: str, message: str = "", editor: bool = False) -> tuple:
        """Everything that shows the session: state, editor, history, status, downloads, buttons.
        ``editor``: show the current image in the editor (unpainted), else leave it as it is."""
        s = st.session
        ed = self.editor_value(st) if editor else gr.skip()
        image, trail = self._files(st, sid)
        return (
            st,
            ed,
            self._history(st),
            self.status_text(st, message),
            gr.DownloadButton(value=image, interactive=image is not None),
            gr.DownloadButton(value=trail, interactive=trail is not None),
            gr.Button(interactive=bool(s and s.can_undo)),
            gr.Button(interactive=bool(s and s.can_redo)),
        )

    # -- handlers -------------------------------------------------------------------------------

    def on_upload(self, path: str | None, state: WebState | None, request: gr.Request) -> tuple:
        """A new photo file: a new session (the previous one's history is dropped)."""
        st = state or WebState()
        sid = _sid(request)
        if not path:  # the file box was cleared
            return (gr.skip(),) * 8
        t0 = time.perf_counter()
        try:
            session = read_upload(path, self.options)
        except BlendEditError as e:
            # Refuse it, with the reason in one line; the session stays as it was.
            gr.Warning(one_line(e))
            return self.view(st, sid, f"⚠ {one_line(e)}")
        had = st.session is not None and bool(st.session.steps)
        st.session, st.generation, st.selected = session, None, None
        self._states[sid] = st
        st.serial += 1
        st.original_thumb = _thumb(session.photo)
        notes = []
        if session.photo.orientation != 1:
            notes.append(f"turned upright by its EXIF orientation {session.photo.orientation}")
        if session.photo.alpha is not None:
            notes.append("its transparency is kept in PNG/WebP downloads")
        msg = (
            f"New photo ({time.perf_counter() - t0:.1f} s): paint the region to edit, type a "
            "prompt, then Generate."
        )
        if notes:
            msg += " The photo was " + "; ".join(notes) + "."
        if had:
            msg += " (The previous photo's history was cleared.)"
        return self.view(st, sid, msg, editor=True)

    def on_clear(self, state: WebState | None, request: gr.Request) -> tuple:
        """Clear the paint (mask and scribble); keep the photo."""
        st = state or WebState()
        return self.view(st, _sid(request), "Paint cleared.", editor=True)

    def _defaults(self) -> Any:
        """The latent model family's own defaults (SDXL guidance 5, FLUX flow-euler, ...)."""
        return self.editor.default_config() if self.kind == "latent" else None

    def generate(
        self, ui: dict[Any, Any], request: gr.Request, progress: Any = gr.Progress()
    ) -> tuple:
        """Run the edit on the current image at full resolution; outputs: results, status, seed
        box, state. The prompt may be empty (fill the region from its surroundings)."""
        values = {self._names.get(k, k): v for k, v in ui.items()}
        st: WebState = values.get("state") or WebState()
        if st.session is None:
            raise InputError("image: upload a photo first")
        prompt = str(values.get("prompt") or "").strip()
        s = st.session
        base = s.current_id
        value = values.get("editor") or {}
        bg = value.get("background")
        canvas = st.canvas
        if bg is not None and (bg.shape[1], bg.shape[0]) != canvas:
            raise InputError(
                f"image: the editor shows a {bg.shape[1]}x{bg.shape[0]} picture, not the "
                f"session's {canvas[0]}x{canvas[1]} preview; upload the photo again"
            )
        method, cfg = settings_from_ui(
            self.kind, values, self.options.max_results, self._defaults()
        )
        loras = lora_lines(values.get("loras")) if self.kind == "latent" else []
        mask, layer = painted_region(value, s.size, canvas)  # (H, W) bool, as painted
        region = ~mask if cfg.invert_mask else mask
        scribble = None if layer is None else scribble_from_canvas(layer, s.size, region)
        seed = (
            secrets.randbelow(10**6)
            if values.get("random_seed")
            else _num(values, "seed", "seed", int)
        )
        if not 0 <= seed < 2**62:
            raise InputError(f"seed: {seed} must be in [0, 2**62)")
        cancel = self._cancel.setdefault(_sid(request), threading.Event())
        cancel.clear()

        last = [0.0]

        def report(done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done == total:  # spare the page's renderer
                last[0] = now
                progress((done, total), desc="denoising", unit="steps")

        # As the CLI does (and replay does): subnormal floats flushed, on this worker thread too,
        # so that a replay from the command line gives the same pixels.
        torch.set_flush_denormal(True)
        progress(0, desc="waiting for the device" if self._device_lock.locked() else "encoding")
        t0 = time.perf_counter()
        photo = s.current_photo
        try:
            with self._device_lock:
                source = photo
                if scribble is not None:  # BLD 5.3: the edit starts from the scribbled photo
                    source = dataclasses.replace(photo, pixels=scribble.apply(photo))
                if self.kind == "latent":
                    use_loras(self.editor, loras)  # loaded only when the list changed
                result = self.editor(source, mask, prompt, config=cfg, seed=seed, progress=report)
                del source
        except Cancelled:
            return gr.skip(), "Cancelled.", gr.skip(), st
        seeds = [seed + i for i in range(cfg.num_images)]
        st.generation = Generation.from_edit(
            base, prompt, mask, method, cfg, seeds, result, scribble,
            self.editor.loras if self.kind == "latent" else (),
        )  # fmt: skip
        st.selected = None
        gallery = []
        details = False
        for r in st.generation.results:
            image, detail = result_view(photo, r, self.options.preview_side)
            details |= detail
            gallery.append((image, r.caption))
        n = len(gallery)
        what = repr(_short(prompt)) if prompt else "an empty prompt (fill from the surroundings)"
        msg = (
            f"{n} result{'s' if n != 1 else ''} for {what} in "
            f"{time.perf_counter() - t0:.1f} s, best first. Click one, then **Keep** to "
            "continue editing from it (Keep takes the best if none is selected)."
        )
        if details:
            x0, y0, x1, y1 = st.generation.results[0].box
            msg += f" The results show the edited region ({x1 - x0}×{y1 - y0} px of the photo)."
        if scribble is not None:
            msg += f" Scribble: {scribble.pixels:,} px of colour inside the edit region."
            if cfg.blend_start < 0.2:
                msg += " (Raise Blend start to 0.3-0.6 so the drawing guides the result.)"
        elif layer is not None:
            msg += " The colour strokes lie outside the edit region and were not used."
        return gallery, self.status_text(st, msg), seed, st

    def cancel(self, request: gr.Request) -> str:
        ev = self._cancel.get(_sid(request))
        if ev is not None:
            ev.set()
        return "Cancelled."

    def select(self, state: WebState | None, evt: gr.SelectData) -> tuple:
        st = state or WebState()
        g = st.generation
        if g is None or not isinstance(evt.index, int) or not 0 <= evt.index < len(g.results):
            return st, gr.skip()
        st.selected = evt.index if evt.selected else None
        if st.selected is None:
            return st, self.status_text(st, "No result selected.")
        r = g.results[st.selected]
        return st, self.status_text(st, f"Selected {r.caption}. **Keep** it to edit on from it.")

    def keep(self, state: WebState | None, request: gr.Request) -> tuple:
        st = state or WebState()
        if st.session is None or st.generation is None:
            raise InputError("keep: nothing to keep yet; Generate first")
        index = st.selected or 0
        st.session.keep(st.generation, index, meta=self.model_info, thumb=_thumb)
        r = st.generation.results[index]
        msg = (
            f"Kept {r.caption} as step {st.session.cursor}. Paint the next region, "
            "or Undo to try another result."
        )
        return self.view(st, _sid(request), msg, editor=True)

    def undo(self, state: WebState | None, request: gr.Request) -> tuple:
        """Back one step; the prompt box gets the undone step's prompt, ready to change and try
        again (paint the region again)."""
        st = state or WebState()
        if st.session is None:
            raise InputError("undo: nothing to undo; upload a photo first")
        step = st.session.undo()
        msg = (
            f"Undid step {st.session.cursor + 1} ({_short(step.prompt)!r}); Redo brings it back. "
            "Paint a region to try again."
        )
        return (*self.view(st, _sid(request), msg, editor=True), step.prompt)

    def redo(self, state: WebState | None, request: gr.Request) -> tuple:
        st = state or WebState()
        if st.session is None:
            raise InputError("redo: nothing to redo")
        step = st.session.redo()
        msg = f"Redid step {st.session.cursor} ({_short(step.prompt)!r})."
        return self.view(st, _sid(request), msg, editor=True)

    def unload(self, request: gr.Request) -> None:
        """A tab closed: drop its cancel flag, its download files and its photo (Gradio keeps a
        closed tab's state for an hour; a 48 MP photo need not stay with it)."""
        sid = _sid(request)
        self._cancel.pop(sid, None)
        st = self._states.pop(sid, None)
        if st is not None:
            st.session, st.generation, st.selected, st.original_thumb = None, None, None, None
        shutil.rmtree(self.workdir / _safe(sid), ignore_errors=True)

    def close(self) -> None:
        if self.demo is not None:
            self.demo.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- layout ---------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        o = self.options
        info = self.model_info
        latent = self.kind == "latent"
        native = getattr(self.editor, "native_size", None) if latent else None
        with gr.Blocks(
            title="blendedit", analytics_enabled=False, delete_cache=(3600, 3600)
        ) as demo:
            state = gr.State(None)
            gr.Markdown(
                "## blendedit: interactive editor\n"
                f"Model `{info.get('name') or '?'}` ({info['method']}, {info['dtype']} on "
                f"{info['device']}). Upload a photo (up to {o.max_pixels / 1e6:g} MP), paint the "
                "region to change with the translucent brush, scribble a rough drawing in colour "
                "inside it if you like, describe what it should become, Generate, Keep the "
                "result you like, and go on editing it. The edit runs on the full-resolution "
                "photo; one generation runs at a time."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    photo_in = gr.File(
                        label=(
                            f"Photo (JPEG, PNG, WebP, HEIC, AVIF, TIFF; up to "
                            f"{o.max_upload_mb:g} MiB and {o.max_pixels / 1e6:g} MP)"
                        ),
                        elem_id="photo-file",
                        file_count="single",
                        file_types=PHOTO_TYPES,
                        type="filepath",
                        height=90,
                    )
                    gr.HTML('<div id="upload-check-msg" role="alert"></div>', padding=False)
                    editor = gr.ImageEditor(
                        label="Paint the region to edit (translucent); scribble in colour (opaque)",
                        elem_id="editor",
                        type="numpy",
                        image_mode="RGBA",
                        format="png",
                        sources=(),
                        transforms=(),
                        layers=False,
                        brush=gr.Brush(
                            default_size="auto",
                            colors=[(_rgb(MASK_RGB), MASK_OPACITY), *SCRIBBLE_COLORS],
                            default_color=(_rgb(MASK_RGB), MASK_OPACITY),
                            color_mode="defaults",
                        ),
                        eraser=gr.Eraser(default_size="auto"),
                        canvas_size=(768, 512),
                        height=560,
                    )
                    gr.Markdown(
                        "**Brush colours**: the first, translucent magenta, marks the region to "
                        "edit. Any opaque colour of the palette draws a *scribble* of what should "
                        "appear there (a rough shape in its colours; it is part of the region "
                        "too): the edit starts from it, so give it a Blend start of 0.3-0.6. "
                        "You paint on a preview; the edit runs on the full-resolution photo.",
                        elem_id="brush-help",
                    )
                    with gr.Row():
                        invert = gr.Checkbox(
                            label="Invert mask: edit everything outside the paint",
                            elem_id="invert",
                        )
                        clear = gr.Button("Clear paint", size="sm", elem_id="clear-mask")
                    prompt = gr.Textbox(
                        label="Prompt",
                        placeholder=(
                            "what the painted region should become, e.g. 'sunglasses'; "
                            "empty: fill it from its surroundings"
                        ),
                        elem_id="prompt",
                        max_lines=3,
                    )
                    with gr.Row():
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    controls = self._controls(latent, native)
                with gr.Column(scale=2):
                    status = gr.Markdown(self.status_text(WebState()), elem_id="status")
                    results = gr.Gallery(
                        label="Results, best first (rank, seed, CLIP score)",
                        elem_id="results",
                        columns=2,
                        height=420,
                        format="png",
                        object_fit="contain",
                        interactive=False,
                    )
                    keep_btn = gr.Button(
                        "Keep selected result and edit on", variant="primary", elem_id="keep"
                    )
                    history = gr.Gallery(
                        label="History: the original and each kept step",
                        elem_id="history",
                        columns=6,
                        fit_columns=False,
                        height=170,
                        allow_preview=False,
                        object_fit="contain",
                        interactive=False,
                    )
                    with gr.Row():
                        undo_btn = gr.Button("Undo", elem_id="undo", interactive=False)
                        redo_btn = gr.Button("Redo", elem_id="redo", interactive=False)
                    with gr.Row():
                        dl_image = gr.DownloadButton(
                            "Download image", elem_id="download-image", interactive=False
                        )
                        dl_trail = gr.DownloadButton(
                            "Download result.json", elem_id="download-trail", interactive=False
                        )
                    gr.Markdown(
                        "`result.json` records the photo and every kept step (prompt, mask, "
                        "scribble, seed, settings); "
                        "`blendedit replay result.json --out DIR` regenerates them.",
                        elem_id="trail-note",
                    )

            view = [state, editor, history, status, dl_image, dl_trail, undo_btn, redo_btn]
            self._names = {state: "state", editor: "editor", prompt: "prompt", invert: "invert"}
            self._names.update({c: name for name, c in controls.items()})
            gen_inputs = {state, editor, prompt, invert, *controls.values()}

            # Progress, queue position and errors show on one component per event, not on all.
            quiet = {"show_progress": "minimal", "show_progress_on": [history]}
            photo_in.upload(friendly(self.on_upload), [photo_in, state], view, **quiet)
            editor.clear(friendly(self.on_clear), [state], view, **quiet)
            clear.click(friendly(self.on_clear), [state], view, **quiet)
            run = {
                "fn": friendly(self.generate),
                "inputs": gen_inputs,
                "outputs": [results, status, controls["seed"], state],
                "concurrency_limit": 1,
                "concurrency_id": "device",
                "show_progress": "full",
                "show_progress_on": [results],
            }
            runs = [gen_btn.click(**run), prompt.submit(**run)]
            cancel_btn.click(self.cancel, None, status, cancels=runs, queue=False)
            results.select(friendly(self.select), [state], [state, status], show_progress="hidden")
            keep_btn.click(friendly(self.keep), [state], view, **quiet)
            undo_btn.click(friendly(self.undo), [state], [*view, prompt], **quiet)
            redo_btn.click(friendly(self.redo), [state], view, **quiet)
            demo.unload(self.unload)
        demo.queue(max_size=o.max_queue, default_concurrency_limit=1)
        self.demo = demo
        return demo

    def _controls(self, latent: bool, native: int | None) -> dict[str, gr.components.Component]:
        """The settings controls by name (see :func:`settings_from_ui`)."""
        from blendedit.pixel.pipeline import FIT_MODES, PIXEL_PRESETS, SAMPLERS

        o = self.options
        d = self._defaults() or PRESETS["default"]
        p = PIXEL_PRESETS["default"]
        c: dict[str, gr.components.Component] = {}
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                c["num_images"] = gr.Slider(
                    1, o.max_results, value=min(o.default_results, o.max_results), step=1,
                    label="Results", info="candidates to generate and rank", elem_id="num-images",
                )  # fmt: skip
                c["steps"] = gr.Slider(
                    1, 200 if latent else 1000, value=d.num_inference_steps if latent else 100,
                    step=1, label="Steps", elem_id="steps",
                    info="length of the noise schedule" if latent else "respaced steps of 1000",
                )  # fmt: skip
            with gr.Row():
                if latent:
                    c["guidance"] = gr.Slider(
                        0, 20, value=d.guidance_scale, step=0.5, label="Guidance",
                        info="how strongly to follow the prompt", elem_id="guidance",
                    )  # fmt: skip
                else:
                    c["guidance"] = gr.Slider(
                        0, 5000, value=p.clip_guidance_lambda, step=50, label="CLIP guidance",
                        info="weight of the CLIP loss", elem_id="guidance",
                    )  # fmt: skip
                c["blend_start"] = gr.Slider(
                    0, 0.95, value=d.blend_start, step=0.05, label="Blend start",
                    info="part of the schedule skipped; higher keeps more of the photo",
                    elem_id="blend-start",
                )  # fmt: skip
            with gr.Row():
                c["seed"] = gr.Number(
                    value=0, precision=0, minimum=0, label="Seed",
                    info="result i uses seed + i", elem_id="seed",
                )  # fmt: skip
                c["random_seed"] = gr.Checkbox(
                    value=True, label="New random seed each time", elem_id="random-seed"
                )
            with gr.Row():
                methods = ["latent"] if latent else ["pixel", "local-clip"]
                asked = self.model_info.get("method")
                c["method"] = gr.Dropdown(
                    methods,
                    value=asked if asked in methods else methods[0],
                    label="Method",
                    interactive=not latent,
                    info="set by the loaded model" if latent else "blended or local CLIP-guided",
                    elem_id="method",
                )
                c["background"] = gr.Dropdown(
                    list(BACKGROUND_MODES) if latent else ["stitch", "decoded"],
                    value="stitch",
                    label="Background",
                    info="how the photo returns outside the mask",
                    elem_id="background",
                )
        with gr.Accordion("Advanced settings", open=False):
            if latent:
                c["negative_prompt"] = gr.Textbox(label="Negative prompt", elem_id="negative")
                c["loras"] = gr.Textbox(
                    value="\n".join(self.editor.loras), lines=2, label="LoRAs",
                    info="one per line: FILE_OR_ID[:SCALE] (SD 1.x/2.x and SDXL); empty: none",
                    elem_id="loras",
                )  # fmt: skip
                with gr.Row():
                    c["scheduler"] = gr.Dropdown(
                        list(SCHEDULERS), value=d.scheduler, label="Scheduler"
                    )
                    c["mask_shrink"] = gr.Dropdown(
                        list(MASK_SHRINK_MODES), value=d.mask_shrink, label="Mask shrinking",
                        info="auto: for thin masks only",
                    )  # fmt: skip
                c["size"] = gr.Number(
                    value=0, precision=0, minimum=0, label="Working size (px)",
                    info=f"long side the model works at; 0 = the model's own ({native})",
                    elem_id="size",
                )  # fmt: skip
            else:
                with gr.Row():
                    c["sampler"] = gr.Dropdown(list(SAMPLERS), value=p.sampler, label="Sampler")
                    c["fit"] = gr.Dropdown(list(FIT_MODES), value=p.fit, label="Fit")
                c["aug_num"] = gr.Slider(0, 32, value=p.aug_num, step=1, label="Augmentations")
            with gr.Row():
                c["feather"] = gr.Slider(
                    0, 16, value=d.feather, step=1, label="Feather (px)",
                    info="soft band outside the mask (stitch)",
                )  # fmt: skip
                c["batch_size"] = gr.Slider(
                    1, 16, value=1, step=1, label="Batch size", elem_id="batch-size",
                    info="results per model call; 1 replays bit for bit, more is faster on a GPU",
                )  # fmt: skip
        return c

    @property
    def server_max_bytes(self) -> int:
        """The largest file the server takes: the photo cap, or the editor's lossless PNG of its
        canvas (the preview, RGBA, worst case), whichever is larger."""
        png_worst = 4 * self.options.preview_side**2 + (1 << 20)
        return max(int(self.options.max_upload_mb * 1024 * 1024), png_worst)

    def launch(self, host: str = "127.0.0.1", port: int = 7860, quiet: bool = True) -> str:
        """Start serving in a background thread; returns the local URL."""
        demo = self.demo or self.build()
        try:
            demo.launch(
                server_name=host,
                server_port=port,
                share=False,
                prevent_thread_lock=True,
                quiet=quiet,
                inbrowser=False,
                show_error=False,
                max_file_size=self.server_max_bytes,
                allowed_paths=[str(self.workdir)],
                ssr_mode=False,
                mcp_server=False,
                pwa=False,
                css=CSS,
                head=UPLOAD_CHECK_JS
                % {
                    "max_bytes": int(self.options.max_upload_mb * 1024 * 1024),
                    "max_side": self.options.max_side,
                    "max_pixels": self.options.max_pixels,
                    "min_side": MIN_SIDE,
                },
                footer_links=[],
            )
        except OSError as e:
            raise InputError(
                f"port: cannot listen on {host}:{port} ({one_line(e)}); choose another --port"
            ) from None
        return str(demo.local_url)


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]}, {c[1]}, {c[2]})"


def _sid(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "local")


def _safe(name: str) -> str:
    return "".join(ch for ch in name if ch.isalnum() or ch in "-_")[:64] or "session"


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _thumb(photo: Photo, pixels: np.ndarray | None = None) -> Image.Image:
    """A history thumbnail of ``pixels`` of the photo (default: its own)."""
    return preview(photo, pixels, THUMB_SIDE)


__all__ = [
    "EditorApp",
    "ServeOptions",
    "WebState",
    "check_photo_file",
    "mask_from_editor",
    "mask_layer",
    "mask_to_image",
    "read_upload",
    "result_view",
    "settings_from_ui",
]


def build_app(editor: Any, **kwargs: Any) -> EditorApp:
    """An :class:`EditorApp` with its Blocks built (``app.demo``); ``app.launch()`` serves it."""
    app = EditorApp(editor, **kwargs)
    app.build()
    return app
