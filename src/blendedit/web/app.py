"""The interactive editor: a local Gradio app over the library (``blendedit serve``).

Upload a photo, paint the region to edit with the brush (size, eraser and clear built into the
editor; invert as a checkbox), type a prompt, Generate: a ranked gallery of results with their seeds
and CLIP scores. Keep one and it becomes the input of the next edit; the history strip, Undo and
Redo move along the kept steps; the current image and the session's ``result.json`` trail (every
step's prompt, mask, seed and settings: ``blendedit replay`` regenerates it) can be downloaded.

Safe by default: the CLI binds 127.0.0.1; uploads are capped in bytes and in pixels, told in one
line in the browser before a file is sent (``UPLOAD_CHECK_JS``) and enforced by the server
(Gradio's ``max_file_size``, and ``max_side`` on arrival); one generation runs at a time (a queue with a visible position, and a
lock, so a cancelled run still finishing holds the device until it stops); every bad input is a
one-line message, never a stack trace. Gradio's telemetry and version check are switched off
before it is imported, and the page loads nothing from outside the server.
"""

from __future__ import annotations

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

from blendedit.config import BACKGROUND_MODES, MASK_SHRINK_MODES, PRESETS
from blendedit.errors import BlendEditError, InputError
from blendedit.io import MIN_SIDE
from blendedit.models import SCHEDULERS
from blendedit.web.session import (
    Generation,
    Session,
    mask_to_image,
)

logger = logging.getLogger(__name__)

MASK_RGB = (255, 0, 255)  # the brush: magenta at half opacity, so the photo shows through
MASK_OPACITY = 0.5
MASK_ALPHA_MIN = 16  # painted layer pixels with at least this alpha (of 255) are in the mask
THUMB_SIDE = 256  # px; history thumbnails
PROGRESS_EVERY_S = 0.25  # at most four progress updates a second reach the page


@dataclass
class ServeOptions:
    """Limits of a served editor."""

    max_upload_mb: float = 20.0  # MiB of one photo file (told in the browser before it is sent)
    max_side: int = 2048  # px; longest side of an uploaded photo
    max_results: int = 16  # results per Generate
    max_queue: int = 16  # Generate requests waiting; more are refused with a message
    default_results: int = 4


@dataclass
class WebState:
    """What one browser tab holds: its session, the last Generate, and the selected result."""

    session: Session | None = None
    generation: Generation | None = None
    selected: int | None = None
    serial: int = 0  # counts uploads; names this tab's download folders


class Cancelled(Exception):
    """Raised inside the progress callback when the user presses Cancel."""


# -- pure helpers (tested without a browser) ------------------------------------------------------


def mask_from_editor(value: Mapping[str, Any] | None, size: tuple[int, int]) -> np.ndarray:
    """The painted region of an ImageEditor value as a bool (H, W) array at ``size`` = (W, H):
    every layer pixel with paint on it (any colour; erased pixels have none)."""
    h, w = size[1], size[0]
    mask = np.zeros((h, w), bool)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] != 4:
            continue
        painted = a[..., 3] >= MASK_ALPHA_MIN
        if painted.shape != (h, w):
            painted = (
                np.asarray(
                    Image.fromarray(painted.astype(np.uint8) * 255).resize(
                        (w, h), Image.Resampling.NEAREST
                    )
                )
                > 0
            )
        mask |= painted
    if not mask.any():
        raise InputError("mask: nothing painted; paint the region to edit with the brush")
    return mask


def mask_layer(mask: np.ndarray) -> np.ndarray:
    """A bool mask as an RGBA editor layer painted with the brush's colour."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (*MASK_RGB, round(255 * MASK_OPACITY))
    return layer


def photo_from_upload(background: np.ndarray | None, max_side: int) -> tuple[Image.Image, str]:
    """The uploaded photo from the editor's background layer, checked: (RGB image, warning)."""
    if background is None:
        raise InputError("image: no photo; upload one (PNG or JPEG)")
    a = np.asarray(background)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    h, w = a.shape[:2]
    if max(w, h) > max_side or min(w, h) < MIN_SIDE:
        raise InputError(
            f"image: {w}x{h} px is outside what this editor accepts ({MIN_SIDE} to {max_side} px "
            f"a side); resize the photo first, or start the server with a larger --max-side"
        )
    note = ""
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255
        if alpha.min() < 1:
            note = "the photo had transparent pixels; they were flattened onto white"
        a = (a[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a[..., :3]), "RGB"), note


def _num(ui: Mapping[str, Any], key: str, label: str, cast: Callable[[Any], Any]) -> Any:
    v = ui.get(key)
    try:
        if v is None or v == "":
            raise ValueError
        return cast(v)
    except (TypeError, ValueError):
        raise InputError(f"{label}: {v!r} is not a number") from None


def settings_from_ui(kind: str, ui: Mapping[str, Any], max_results: int) -> tuple[str, Any]:
    """The method and its validated config from the settings controls' values (by name)."""
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
    }
    if kind == "latent":
        size = ui.get("size")
        cfg = PRESETS["default"].replace(
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

# Checks a photo in the browser before the editor reads it: Gradio's editor hangs silently when the
# server refuses an upload as too large, so the caps are told here, in one line, first. The server
# still enforces both (max_file_size, and the size check in on_upload).
UPLOAD_CHECK_JS = """
<script>
(() => {
  const MAX_BYTES = %(max_bytes)d, MAX_SIDE = %(max_side)d, MIN_SIDE = %(min_side)d;
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
    try {
      const bmp = await createImageBitmap(file);
      const w = bmp.width, h = bmp.height;
      bmp.close();
      if (Math.max(w, h) > MAX_SIDE || Math.min(w, h) < MIN_SIDE) {
        return `image: ${file.name} is ${w}x${h} px; this editor accepts ${MIN_SIDE} to ` +
          `${MAX_SIDE} px a side (server option --max-side); resize it first`;
      }
    } catch (err) {
      return `image: cannot read ${file.name} as an image`;
    }
    return "";
  };
  const inEditor = (el) => el instanceof Element && el.closest("#editor");
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
        self.demo: gr.Blocks | None = None

    # -- views --------------------------------------------------------------------------------

    @staticmethod
    def editor_value(image: Image.Image | None, mask: np.ndarray | None = None) -> Any:
        if image is None:
            return None
        layers = [mask_layer(mask)] if mask is not None else []
        return {"background": image, "layers": layers, "composite": image}

    def _files(self, st: WebState, sid: str) -> tuple[str | None, str | None]:
        """The current image as PNG and the trail as result.json, in a folder per image state."""
        s = st.session
        if s is None:
            return None, None
        folder = self.workdir / _safe(sid) / f"upload{st.serial}-image{s.current_id}"
        png = folder / f"blendedit-step{s.cursor}.png"
        trail = folder / "result.json"
        if not trail.exists():
            folder.mkdir(parents=True, exist_ok=True)
            s.current_image.save(png, format="PNG")
            tmp = folder / ".result.json.tmp"
            tmp.write_text(json.dumps(s.to_trail(self.model_info), indent=1) + "\n")
            tmp.replace(trail)
        return str(png), str(trail)

    def _history(self, st: WebState) -> list[tuple[Image.Image, str]]:
        s = st.session
        if s is None:
            return []
        items = [(_thumb(s.original), "original")]
        for i, step in enumerate(s.history, start=1):
            items.append((_thumb(step.image), f"{i}: {_short(step.prompt)} (seed {step.seed})"))
        return items

    def status_text(self, st: WebState, message: str = "") -> str:
        s = st.session
        if s is None:
            line = "Upload a photo to start: drop it on the editor, or click it to browse."
        else:
            w, h = s.current_image.size
            n = len(s.history)
            line = (
                f"**{'Original photo' if n == 0 else f'After step {n}'}** · {w}×{h} px · "
                f"{n} kept step{'s' if n != 1 else ''}"
            )
            if s.can_redo:
                line += f" · {s.redo_count} to redo"
        return f"{message}\n\n{line}" if message else line

    def view(self, st: WebState, sid: str, message: str = "", editor: Any = None) -> tuple:
        """Everything that shows the session: state, editor, history, status, downloads, buttons.
        ``editor``: the editor's new value, or None to leave it as it is."""
        s = st.session
        png, trail = self._files(st, sid)
        return (
            st,
            gr.skip() if editor is None else editor,
            self._history(st),
            self.status_text(st, message),
            gr.DownloadButton(value=png, interactive=png is not None),
            gr.DownloadButton(value=trail, interactive=trail is not None),
            gr.Button(interactive=bool(s and s.can_undo)),
            gr.Button(interactive=bool(s and s.can_redo)),
        )

    # -- handlers -------------------------------------------------------------------------------

    def on_upload(self, value: Any, state: WebState | None, request: gr.Request) -> tuple:
        """A new photo: a new session (the previous one's history is dropped)."""
        st = state or WebState()
        sid = _sid(request)
        try:
            photo, note = photo_from_upload((value or {}).get("background"), self.options.max_side)
            session = Session(photo)
        except BlendEditError as e:
            # Refuse it, with the reason in one line; the session stays as it was (Generate
            # checks that the editor still shows the session's image).
            gr.Warning(one_line(e))
            return _without_editor(self.view(st, sid, f"⚠ {one_line(e)}"))
        if st.session is not None and _same_pixels(photo, st.session.current_image):
            # The editor reports the image we set ourselves (keep, undo, redo) as an upload too.
            return (gr.skip(),) * 7
        had = st.session is not None and bool(st.session.steps)
        st.session, st.generation, st.selected = session, None, None
        st.serial += 1
        if note:
            gr.Warning(note)
        msg = "New photo: paint the region to edit, type a prompt, then Generate."
        if had:
            msg += " (The previous photo's history was cleared.)"
        return _without_editor(self.view(st, sid, msg))

    def on_clear(self, state: WebState | None, request: gr.Request) -> tuple:
        """The editor's own clear (trash) button: keep the photo, drop the paint."""
        st = state or WebState()
        img = st.session.current_image if st.session else None
        return self.view(st, _sid(request), "Mask cleared.", editor=self.editor_value(img))

    def generate(
        self, ui: dict[Any, Any], request: gr.Request, progress: Any = gr.Progress()
    ) -> tuple:
        """Run the edit on the current image; outputs: results, status, seed box, state."""
        values = {self._names.get(k, k): v for k, v in ui.items()}
        st: WebState = values.get("state") or WebState()
        if st.session is None:
            raise InputError("image: upload a photo first")
        prompt = str(values.get("prompt") or "").strip()
        if not prompt:
            raise InputError("prompt: type what the painted region should become")
        s = st.session
        image, base = s.current_image, s.current_id
        bg = (values.get("editor") or {}).get("background")
        if bg is not None and (bg.shape[1], bg.shape[0]) != image.size:
            raise InputError(
                f"image: the editor shows a {bg.shape[1]}x{bg.shape[0]} picture, not the session's "
                f"{image.width}x{image.height} photo; upload the photo again"
            )
        mask = mask_from_editor(values.get("editor"), image.size)
        method, cfg = settings_from_ui(self.kind, values, self.options.max_results)
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
        try:
            with self._device_lock:
                result = self.editor(image, mask, prompt, config=cfg, seed=seed, progress=report)
        except Cancelled:
            return gr.skip(), "Cancelled.", gr.skip(), st
        seeds = [seed + i for i in range(cfg.num_images)]
        st.generation = Generation.from_edit(base, prompt, mask, method, cfg, seeds, result)
        st.selected = None
        gallery = [(r.image, r.caption) for r in st.generation.results]
        n = len(gallery)
        msg = (
            f"{n} result{'s' if n != 1 else ''} for {_short(prompt)!r} in "
            f"{time.perf_counter() - t0:.1f} s, best first. Click one, then **Keep** to "
            "continue editing from it (Keep takes the best if none is selected)."
        )
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
        step = st.session.keep(st.generation, index, meta=self.model_info)
        r = st.generation.results[index]
        msg = (
            f"Kept {r.caption} as step {st.session.cursor}. Paint the next region, "
            "or Undo to try another result."
        )
        return self.view(st, _sid(request), msg, editor=self.editor_value(step.image))

    def undo(self, state: WebState | None, request: gr.Request) -> tuple:
        """Back one step; the editor shows the undone step's mask and the prompt box its prompt,
        ready to change and try again."""
        st = state or WebState()
        if st.session is None:
            raise InputError("undo: nothing to undo; upload a photo first")
        step = st.session.undo()
        msg = f"Undid step {st.session.cursor + 1} ({_short(step.prompt)!r}); Redo brings it back."
        ed = self.editor_value(st.session.current_image, step.mask)
        return (*self.view(st, _sid(request), msg, editor=ed), step.prompt)

    def redo(self, state: WebState | None, request: gr.Request) -> tuple:
        st = state or WebState()
        if st.session is None:
            raise InputError("redo: nothing to redo")
        step = st.session.redo()
        msg = f"Redid step {st.session.cursor} ({_short(step.prompt)!r})."
        return self.view(st, _sid(request), msg, editor=self.editor_value(step.image))

    def unload(self, request: gr.Request) -> None:
        """A tab closed: drop its cancel flag and its download files."""
        sid = _sid(request)
        self._cancel.pop(sid, None)
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
        with gr.Blocks(title="blendedit", analytics_enabled=False) as demo:
            state = gr.State(None)
            gr.Markdown(
                "## blendedit: interactive editor\n"
                f"Model `{info.get('name') or '?'}` ({info['method']}, {info['dtype']} on "
                f"{info['device']}). Upload a photo, paint the region to change, describe what "
                "it should become, Generate, Keep the result you like, and go on editing it. "
                "One generation runs at a time; your place in the queue shows over the results."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    editor = gr.ImageEditor(
                        label="Photo and mask (brush: paint the region to edit; eraser; clear)",
                        elem_id="editor",
                        type="numpy",
                        image_mode="RGBA",
                        format="png",
                        sources=("upload",),
                        transforms=(),
                        layers=False,
                        brush=gr.Brush(
                            default_size="auto",
                            colors=[(_rgb(MASK_RGB), MASK_OPACITY)],
                            color_mode="fixed",
                        ),
                        eraser=gr.Eraser(default_size="auto"),
                        canvas_size=(768, 512),
                        height=560,
                    )
                    gr.HTML('<div id="upload-check-msg" role="alert"></div>', padding=False)
                    with gr.Row():
                        invert = gr.Checkbox(
                            label="Invert mask: edit everything outside the paint",
                            elem_id="invert",
                        )
                        clear = gr.Button("Clear mask", size="sm", elem_id="clear-mask")
                    prompt = gr.Textbox(
                        label="Prompt",
                        placeholder="what the painted region should become, e.g. 'sunglasses'",
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
                        "`result.json` records every kept step (prompt, mask, seed, settings); "
                        "`blendedit replay result.json --out DIR` regenerates them.",
                        elem_id="trail-note",
                    )

            view = [state, editor, history, status, dl_image, dl_trail, undo_btn, redo_btn]
            self._names = {state: "state", editor: "editor", prompt: "prompt", invert: "invert"}
            self._names.update({c: name for name, c in controls.items()})
            gen_inputs = {state, editor, prompt, invert, *controls.values()}

            # Progress, queue position and errors show on one component per event, not on all.
            quiet = {"show_progress": "minimal", "show_progress_on": [history]}
            editor.upload(
                friendly(self.on_upload),
                [editor, state],
                [v for v in view if v is not editor],
                **quiet,
            )
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
        d = PRESETS["default"]
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
        """The largest file the server takes: the photo cap, or the editor's lossless PNG of the
        largest photo it accepts (RGBA, worst case), whichever is larger."""
        png_worst = 4 * self.options.max_side**2 + (1 << 20)
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


def _thumb(image: Image.Image) -> Image.Image:
    t = image.copy()
    t.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return t


__all__ = [
    "EditorApp",
    "ServeOptions",
    "WebState",
    "mask_from_editor",
    "mask_layer",
    "mask_to_image",
    "photo_from_upload",
    "settings_from_ui",
]


def build_app(editor: Any, **kwargs: Any) -> EditorApp:
    """An :class:`EditorApp` with its Blocks built (``app.demo``); ``app.launch()`` serves it."""
    app = EditorApp(editor, **kwargs)
    app.build()
    return app


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b))


def _without_editor(view: tuple) -> tuple:
    """A view's outputs less the editor (the upload event does not set the editor it came from)."""
    return (view[0], *view[2:])
