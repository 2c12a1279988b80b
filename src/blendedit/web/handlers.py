"""What each event of the editor's page does: upload, clear, generate, cancel, select, keep, undo,
redo, a tab closing; and the views they return (editor, history, status, downloads, buttons).

The handlers are plain methods of :class:`Handlers` (mixed into
:class:`~blendedit.web.app.EditorApp`), callable from tests without a server or a browser. They
work on the tab's :class:`WebState` (its :class:`~blendedit.web.session.Session`) and the loaded
editor; every failure is one line (:func:`friendly`), never a stack trace.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blendedit.errors import (
    BlendEditError,
    Cancelled,
    InputError,
    TimeLimitError,
    one_line,
    scrub_paths,
)
from blendedit.frame.photo import Photo, output_format, read_photo, save_photo
from blendedit.io import check_upload_size, write_text
from blendedit.web._gradio import gr
from blendedit.web.canvas import (
    Scribble,
    painted_region,
    preview,
    scribble_from_canvas,
)
from blendedit.web.picker import ModelChoices, Switcher, SwitchError
from blendedit.web.selecting import EDITOR_CANVAS, Picks, Selector, editor_layer, overlay
from blendedit.web.session import Generation, Result, Session, use_loras
from blendedit.web.settings import (
    Control,
    LoraChoices,
    ServeOptions,
    control_specs,
    read_number,
    settings_from_ui,
)

logger = logging.getLogger(__name__)

THUMB_SIDE = 256  # px; history thumbnails
PROGRESS_EVERY_S = 0.25  # at most four progress updates a second reach the page


@dataclass
class WebState:
    """What one browser tab holds: its session, the last Generate, and the selected result."""

    session: Session | None = None
    generation: Generation | None = None
    selected: int | None = None
    serial: int = 0  # counts uploads; names this tab's download folders
    canvas: tuple[int, int] = (0, 0)  # (w, h) of the preview the editor shows
    original_thumb: Image.Image | None = None
    picks: Picks = field(default_factory=Picks)  # the selection on the current preview


@dataclass
class EditRequest:
    """One press of Generate, read from the page and checked, before anything runs."""

    prompt: str
    method: str
    config: Any
    loras: list[str]
    mask: np.ndarray  # (H, W) bool, as painted
    layer: np.ndarray | None  # the canvas's paint layer (scribble colours), if any
    scribble: Scribble | None
    seed: int


# -- pure helpers (tested without a browser) ------------------------------------------------------


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
    return check_upload_size(p, "image", options.max_side, options.max_pixels, label=name)


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


def _sid(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "local")


def _safe(name: str) -> str:
    return "".join(ch for ch in name if ch.isalnum() or ch in "-_")[:64] or "session"


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _thumb(photo: Photo, pixels: np.ndarray | None = None) -> Image.Image:
    """A history thumbnail of ``pixels`` of the photo (default: its own)."""
    return preview(photo, pixels, THUMB_SIDE)


def intro(info: Mapping[str, Any], o: ServeOptions) -> str:
    """The page's heading: the model, what to do, and what the model is for."""
    name = scrub_paths(str(info.get("name") or "?"))  # a local model: its name, not its folder
    return (
        "## blendedit: interactive editor\n"
        f"Model `{name}` ({info['method']}, {info['dtype']} on "
        f"{info['device']}). Upload a photo (up to {o.max_pixels / 1e6:g} MP), paint the "
        "region to change with the translucent brush, scribble a rough drawing in colour "
        "inside it if you like, describe what it should become, Generate, Keep the "
        "result you like, and go on editing it. The edit runs on the full-resolution "
        "photo; one generation runs at a time."
        + (f"\n\nThis model is {info['purpose']}." if info.get("purpose") else "")
    )


# -- the handlers ---------------------------------------------------------------------------------


class Handlers:
    """The page's event handlers and views, over the attributes :class:`EditorApp` sets up."""

    editor: Any
    kind: str  # "latent" or "pixel"
    options: ServeOptions
    lora_choices: LoraChoices  # the LoRAs the page may apply, by name
    model_info: dict[str, Any]
    workdir: Path
    _device_lock: threading.Lock  # one generation at a time on the device
    _cancel: dict[str, threading.Event]  # by tab
    _states: dict[str, WebState]  # by tab: emptied when the tab closes
    selector: Selector | None  # the segmenter for clicks, boxes and words (None: not offered)
    _names: dict[Any, str]  # generate's input components -> their names
    models: ModelChoices  # the models the page may switch to (web/picker.py)
    switcher: Switcher  # the loaded editors; ``editor`` is its current one
    _shown_specs: list[Control]  # the settings controls as last made

    def describe_model(self, editor: Any) -> dict[str, Any]:
        """What the trail and the page say of a loaded editor (set by :class:`EditorApp`)."""
        raise NotImplementedError

    # -- views ------------------------------------------------------------------------------------

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

    # -- the photo and its paint ------------------------------------------------------------------

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

    # -- generate and cancel ----------------------------------------------------------------------

    def _defaults(self) -> Any:
        """The latent model family's own defaults (SDXL guidance 5, FLUX flow-euler, ...)."""
        return self.editor.default_config() if self.kind == "latent" else None

    def control_specs(self) -> list[Control]:
        """The settings controls over the current model (its family's defaults, native size and
        LoRAs): :func:`~blendedit.web.settings.control_specs`."""
        latent = self.kind == "latent"
        if self.switcher.current is None:  # no model loaded (web/picker.py): as last shown
            return self._shown_specs
        self._shown_specs = control_specs(
            self.kind,
            self._defaults(),
            max_results=self.options.max_results,
            default_results=self.options.default_results,
            method=self.model_info.get("method"),
            loras=self.lora_choices.shown(self.editor.loras) if latent else (),
            native=getattr(self.editor, "native_size", None) if latent else None,
            lora_choices=self.lora_choices.offered(),
        )
        return self._shown_specs

    # -- the model picker (web/picker.py) ---------------------------------------------------------

    def switch_model(self, label: Any, say: Callable[[str], None] = lambda m: None) -> str:
        """Make the model the page names current: after the running Generate (the device lock),
        the current one is let go and the chosen one loaded; one that fails to load leaves the
        previous one current (:class:`~blendedit.web.picker.SwitchError`, one line)."""
        choice = self.models.by_label(label)
        before = self.switcher.current
        if before is not None and choice.label == before.label:
            return f"Model {choice.label} is the one loaded."
        t0 = time.perf_counter()
        with self._device_lock:
            try:
                self.switcher.switch(choice, say)
            finally:  # the previous model may have been loaded again
                if self.switcher.current is not None:
                    self.model_info = self.describe_model(self.editor)
        seconds = time.perf_counter() - t0
        return (
            f"Model {choice.label} loaded in {seconds:.1f} s"
            + (f" in place of {before.label}" if before is not None else "")
            + "; the settings that depend on the model are its own defaults now."
        )

    def on_page(self) -> tuple:
        """A tab opened: the picker, the heading and the settings as the current model has them
        (the page was built with the first; another tab may have switched since)."""
        current = self.switcher.current.label if self.switcher.current else None
        heading = intro(self.model_info, self.options)
        specs = self.control_specs()
        return (gr.update(value=current), heading, *(gr.update(value=s.default) for s in specs))

    def on_model(
        self, label: Any, state: WebState | None, request: gr.Request, progress: Any = gr.Progress()
    ) -> tuple:
        """The model picker changed: switch (:meth:`switch_model`); outputs: the picker (back on
        the previous model when the chosen one failed), the heading, the status, and every
        settings control, in :meth:`control_specs` order (set to the new model's defaults where
        they differ from the previous model's, else left as the user set them)."""
        st = state or WebState()
        old = self.control_specs()
        try:
            msg = self.switch_model(label, lambda m: progress(0, desc=scrub_paths(m)))
        except SwitchError as e:
            gr.Warning(one_line(e))
            msg = f"⚠ {one_line(e)}"
        new = self.control_specs()
        updates = [
            gr.skip()
            if (a.default, a.info) == (b.default, b.info)
            else gr.update(value=b.default, info=b.info)
            for a, b in zip(old, new, strict=True)
        ]
        heading = intro(self.model_info, self.options)
        current = self.switcher.current.label if self.switcher.current else None
        return (gr.update(value=current), heading, self.status_text(st, msg), *updates)

    def generate(
        self, ui: dict[Any, Any], request: gr.Request, progress: Any = gr.Progress()
    ) -> tuple:
        """Run the edit on the current image at full resolution; outputs: results, status, seed
        box, state. The prompt may be empty (fill the region from its surroundings)."""
        values = {self._names.get(k, k): v for k, v in ui.items()}
        st: WebState = values.get("state") or WebState()
        job = self._edit_request(st, values)
        # A flag of its own: a Generate pressed right after a Cancel never clears the flag the
        # cancelled run (still finishing on the device) stops on.
        cancel = self._cancel[_sid(request)] = threading.Event()
        assert st.session is not None
        base, photo = st.session.current_id, st.session.current_photo
        t0 = time.perf_counter()
        try:
            result = self._run(job, photo, cancel, progress)
        except Cancelled:
            return gr.skip(), "Cancelled.", gr.skip(), st
        except TimeLimitError as e:
            raise TimeLimitError(f"{e} (server option --max-seconds)") from None
        seeds = [job.seed + i for i in range(job.config.num_images)]
        st.generation = Generation.from_edit(
            base, job.prompt, job.mask, job.method, job.config, seeds, result, job.scribble,
            self.editor.loras if self.kind == "latent" else (),
        )  # fmt: skip
        st.generation.meta = dict(self.model_info)  # the model it ran on (a switch may follow)
        st.selected = None
        self._states[_sid(request)] = st  # the tab's latest state (Gradio hands events copies)
        gallery, details = [], False
        for r in st.generation.results:
            image, detail = result_view(photo, r, self.options.preview_side)
            details |= detail
            gallery.append((image, r.caption))
        msg = self._generated_message(st.generation, job, details, time.perf_counter() - t0)
        if len(self.models.choices) > 1:  # the server's model, which any tab may switch
            msg += f" Model: {self.switcher.current.label}."
        return gallery, self.status_text(st, msg), job.seed, st

    def _edit_request(self, st: WebState, values: Mapping[str, Any]) -> EditRequest:
        """What Generate asks for, from the page's values by name, checked in one line each."""
        s = st.session
        if s is None:
            raise InputError("image: upload a photo first")
        prompt = str(values.get("prompt") or "").strip()
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
        loras = self.lora_choices.parse(values.get("loras")) if self.kind == "latent" else []
        mask, layer = painted_region(value, s.size, canvas)  # (H, W) bool, as painted
        region = ~mask if cfg.invert_mask else mask
        scribble = None if layer is None else scribble_from_canvas(layer, s.size, region)
        seed = (
            secrets.randbelow(10**6)
            if values.get("random_seed")
            else read_number(values, "seed", "seed", int)
        )
        if not 0 <= seed < 2**62:
            raise InputError(f"seed: {seed} must be in [0, 2**62)")
        return EditRequest(prompt, method, cfg, loras, mask, layer, scribble, seed)

    def _run(self, job: EditRequest, photo: Photo, cancel: threading.Event, progress: Any) -> Any:
        """The edit on the device, one at a time (the lock, always released); Cancelled when
        Cancel is pressed, TimeLimitError after ``--max-seconds`` on the device, in any stage
        (:mod:`blendedit.frame.stop`)."""
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done == total:  # spare the page's renderer
                last[0] = now
                progress((done, total), desc="denoising", unit="steps")

        # As the CLI does (and replay does): subnormal floats flushed, on this worker thread too,
        # so that a replay from the command line gives the same pixels.
        torch.set_flush_denormal(True)
        progress(0, desc="waiting for the device" if self._device_lock.locked() else "encoding")
        with self._device_lock:
            if cancel.is_set():  # cancelled while it waited for the device
                raise Cancelled("cancelled before it started")
            source = photo
            if job.scribble is not None:  # BLD 5.3: the edit starts from the scribbled photo
                source = dataclasses.replace(photo, pixels=job.scribble.apply(photo))
            if self.kind == "latent":
                use_loras(self.editor, job.loras)  # loaded only when the list changed
            return self.editor(
                source, job.mask, job.prompt, config=job.config, seed=job.seed, progress=report,
                stop=cancel.is_set, time_limit=self.options.max_seconds,
            )  # fmt: skip

    @staticmethod
    def _generated_message(g: Generation, job: EditRequest, details: bool, seconds: float) -> str:
        n = len(g.results)
        what = (
            repr(_short(job.prompt))
            if job.prompt
            else "an empty prompt (fill from the surroundings)"
        )
        msg = (
            f"{n} result{'s' if n != 1 else ''} for {what} in {seconds:.1f} s, best first. "
            "Click one, then **Keep** to continue editing from it (Keep takes the best if none "
            "is selected)."
        )
        if details:
            x0, y0, x1, y1 = g.results[0].box
            msg += f" The results show the edited region ({x1 - x0}×{y1 - y0} px of the photo)."
        if job.scribble is not None:
            msg += f" Scribble: {job.scribble.pixels:,} px of colour inside the edit region."
            if job.config.blend_start < 0.2:
                msg += " (Raise Blend start to 0.3-0.6 so the drawing guides the result.)"
        elif job.layer is not None:
            msg += " The colour strokes lie outside the edit region and were not used."
        return msg

    def cancel(self, request: gr.Request) -> str:
        ev = self._cancel.get(_sid(request))
        if ev is not None:
            ev.set()
        return "Cancelled."

    # -- results and history ----------------------------------------------------------------------

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
        meta = st.generation.meta or self.model_info  # the model that made it
        st.session.keep(st.generation, index, meta=meta, thumb=_thumb)
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

    # -- selecting by clicks, a box or words (web/selecting.py) ----------------------------------

    def on_select_view(self, state: WebState | None) -> Any:
        """The selection view after the photo changed (upload, keep, undo, redo, clear): the
        current preview, nothing selected; the preview object is kept for the segmenter."""
        st = state or WebState()
        s = st.session
        image = None if s is None else preview(s.photo, s.current_pixels, self.options.preview_side)
        st.picks = Picks(image=image)
        return overlay(st.picks)

    def _selected(self, st: WebState, message: str, sid: str) -> tuple:
        """Segment the tab's picks; outputs: state, editor (the preview and the mask as its
        paint layer, which the brush and eraser then edit), selection view, status."""
        picks = st.picks
        if self.selector is None:
            raise InputError("select: this server has no segmenter (blendedit serve --segmenter)")
        if picks.image is None or st.session is None:
            raise InputError("image: upload a photo first")
        t0 = time.perf_counter()
        picks.mask = self.selector.mask(picks)  # (h, w) bool at the canvas size
        self._states[sid] = st
        st.canvas = picks.image.size
        image = picks.image
        layer = editor_layer(picks.mask, EDITOR_CANVAS)  # (>=h, >=w, 4) mask paint
        editor = {"background": image, "layers": [layer], "composite": image}
        seconds = time.perf_counter() - t0
        msg = f"{message} ({seconds:.2f} s): {int(picks.mask.sum())} preview pixels selected."
        return st, editor, overlay(picks), self.status_text(st, msg)

    def on_pick(
        self, state: WebState | None, mode: str, evt: gr.SelectData, request: gr.Request
    ) -> tuple:
        """A click on the selection view: add, remove (a negative click) or a box corner."""
        st = state or WebState()
        if st.picks.image is None:
            raise InputError("image: upload a photo first")
        x, y = (float(v) for v in evt.index[:2])
        if not st.picks.pick(str(mode), x, y):
            view = overlay(st.picks)
            return st, gr.skip(), view, self.status_text(st, "Box: now click its other corner.")
        return self._selected(st, f"Selected ({mode} at {x:.0f},{y:.0f})", _sid(request))

    def on_gesture(self, state: WebState | None, text: str | None, request: gr.Request) -> tuple:
        """A gesture the page's script sends: ``box X0 Y0 X1 Y1`` (a drag) or ``remove X Y`` (a
        shift- or alt-click), in the preview's pixels."""
        st = state or WebState()
        if st.picks.image is None:
            raise InputError("image: upload a photo first")
        kind, *numbers = str(text or "").split()
        try:
            values = [float(v) for v in numbers]
        except ValueError:
            values = []
        if kind == "box" and len(values) == 4:
            x0, y0, x1, y1 = values
            st.picks.corner = (x0, y0)
            st.picks.pick("box", x1, y1)
        elif kind == "remove" and len(values) == 2:
            st.picks.pick("remove", *values)
        else:
            raise InputError(f"select: {str(text)[:40]!r} is not a box or a remove click")
        return self._selected(st, f"Selected ({kind})", _sid(request))

    def on_select_text(
        self, state: WebState | None, text: str | None, request: gr.Request
    ) -> tuple:
        """Select what the words name (with the clicks and box already given)."""
        st = state or WebState()
        text = str(text or "").strip()
        if not text:
            raise InputError('select: "" names nothing; say what to select ("the red cup")')
        st.picks.text = text
        return self._selected(st, f"Selected {text!r}", _sid(request))

    def on_select_reset(self, state: WebState | None, request: gr.Request) -> tuple:
        """Forget the selection's clicks, box and words; the paint is cleared too."""
        st = state or WebState()
        view = self.view(st, _sid(request), "Selection cleared.", editor=True)
        return (*view, self.on_select_view(st))

    def unload(self, request: gr.Request) -> None:
        """A tab closed: stop its Generate if one is running (the device is freed for the
        others), drop its cancel flag, its download files and its photo (Gradio keeps a closed
        tab's state for an hour; a 48 MP photo need not stay with it)."""
        sid = _sid(request)
        running = self._cancel.pop(sid, None)
        if running is not None:
            running.set()
        st = self._states.pop(sid, None)
        if st is not None:
            st.session, st.generation, st.selected, st.original_thumb = None, None, None, None
        shutil.rmtree(self.workdir / _safe(sid), ignore_errors=True)
