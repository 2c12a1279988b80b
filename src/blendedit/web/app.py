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
line in the browser before a file is sent (``static/editor.js``) and enforced by the server
(Gradio's ``max_file_size``, and the size check on arrival, before the photo is decoded); every
image the paint editor sends is checked from its header, and the layers counted, before Gradio
decodes them (:mod:`~blendedit.web.paint`), and Pillow's own guard is the pixel cap while it
serves; the LoRAs a page may apply are the operator's, by name; one generation runs at a time (a
queue with a visible position, and a lock), stopped by Cancel, a closed tab or ``--max-seconds``
in whatever stage it is in, the lock always released; every bad input is a one-line message,
never a stack trace nor a server path. Gradio's telemetry and version check are switched off
before it is imported, and the page loads nothing from outside the server.

The rooms: :mod:`~blendedit.web.layout` builds the page, :mod:`~blendedit.web.handlers` says what
each event does, :mod:`~blendedit.web.settings` describes the settings controls, ``static/`` holds
the page's script and style; :class:`EditorApp` here ties them: the loaded editor, the queue and
the device lock, serving.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from blendedit.errors import InputError, scrub_paths
from blendedit.io import MIN_SIDE
from blendedit.web._gradio import gr
from blendedit.web.canvas import mask_from_editor, mask_layer
from blendedit.web.handlers import (
    Handlers,
    ServeOptions,
    WebState,
    check_photo_file,
    friendly,
    one_line,
    read_upload,
    result_view,
)
from blendedit.web.layout import build_page
from blendedit.web.paint import png_worst_bytes
from blendedit.web.picker import ModelChoice, ModelChoices, Switcher
from blendedit.web.selecting import Selector
from blendedit.web.session import mask_to_image
from blendedit.web.settings import LoraChoices, settings_from_ui

# How the editor is served whatever its options: in a background thread, nothing offered to or
# fetched from outside (no share link, browser tab, MCP server, PWA, server-side rendering or
# footer links), and no stack trace shown in the page.
SERVE_LOCALLY: dict[str, Any] = {
    "prevent_thread_lock": True,
    "share": False,
    "inbrowser": False,
    "mcp_server": False,
    "pwa": False,
    "ssr_mode": False,
    "footer_links": [],
    "show_error": False,
}


def static_text(name: str) -> str:
    """A file of the page's ``static/`` folder (shipped as package data), as text."""
    return (resources.files("blendedit.web") / "static" / name).read_text(encoding="utf-8")


def page_head(options: ServeOptions) -> str:
    """The page's head: the upload caps, then ``static/editor.js``, which checks a photo
    against them in the browser before it is sent."""
    limits = {
        "maxBytes": int(options.max_upload_mb * 1024 * 1024),
        "maxSide": options.max_side,
        "minSide": MIN_SIDE,
        "maxPixels": options.max_pixels,
    }
    return (
        f"<script>window.blendeditUploadLimits = {json.dumps(limits)};</script>\n"
        f"<script>\n{static_text('editor.js')}</script>\n"
    )


class EditorApp(Handlers):
    """The web UI over one loaded editor (latent: BlendedLatentDiffusion; pixel: BlendedDiffusion).
    ``build()`` makes the gr.Blocks; the handlers are plain methods, callable from tests.
    ``loras``: the LoRAs the page may apply, by name (default: those the editor was loaded
    with). ``selector``: the segmenter of the selection panel (clicks, a box, words; None: no
    panel). ``models``: the models the page's picker offers (:mod:`~blendedit.web.picker`; the
    first is ``editor``; default: that one alone, no picker) and ``load_model(choice)`` loads
    one of them on the device."""

    def __init__(
        self,
        editor: Any,
        *,
        model_info: Mapping[str, Any] | None = None,
        options: ServeOptions | None = None,
        workdir: str | os.PathLike[str] | None = None,
        loras: LoraChoices | None = None,
        selector: Selector | None = None,
        models: ModelChoices | None = None,
        load_model: Callable[[ModelChoice], Any] | None = None,
    ) -> None:
        from blendedit.latent.pipeline import BlendedLatentDiffusion

        name = str((model_info or {}).get("name") or getattr(editor, "name", "") or "model")
        self.models = models or ModelChoices((ModelChoice(name, scrub_paths(name)),))
        self.switcher = Switcher(
            self.models, load_model or _no_loader, options.keep_models if options else 1
        )
        self.switcher.start(editor)
        self.kind = "latent" if isinstance(editor, BlendedLatentDiffusion) else "pixel"
        self.options = options or ServeOptions()
        if loras is None:  # the LoRAs the editor was loaded with, and no other
            loaded = editor.loras if self.kind == "latent" else []
            loras = LoraChoices.from_options([spec.rpartition(":")[0] for spec in loaded])
        self.lora_choices = loras
        self.selector = selector  # clicks, boxes and words -> the mask paint (None: no panel)
        self._given_info = dict(model_info or {})  # what the command line said of the model
        self.model_info = self.describe_model(editor)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="blendedit-web-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._device_lock = threading.Lock()  # one generation at a time on the device
        self._cancel: dict[str, threading.Event] = {}
        self._states: dict[str, WebState] = {}  # by tab: emptied when the tab closes
        self._names: dict[Any, str] = {}
        self._pillow_limit: tuple[int | None] | None = None  # Pillow's own, while serving
        self.demo: gr.Blocks | None = None

    @property
    def editor(self) -> Any:
        """The current model's editor (the picker's choice)."""
        return self.switcher.editor

    @editor.setter
    def editor(self, editor: Any) -> None:  # the current model's editor, replaced (tests)
        assert self.switcher.current is not None
        self.switcher.loaded[self.switcher.current.label] = editor

    def describe_model(self, editor: Any) -> dict[str, Any]:
        """What the trail records of a loaded editor, and the page says: method, name (the
        source the operator gave), family, dtype, device, what it is for."""
        choice = self.switcher.current
        first = choice is None or choice == self.models.choices[0]
        given = (
            self._given_info
            if first
            else {k: v for k, v in self._given_info.items() if k not in ("name", "vae")}
        )  # fmt: skip  (--vae goes with the first model)
        name = (choice.source if choice is not None else None) or getattr(editor, "name", "")
        return {
            "method": self.kind,
            "name": name,
            "dtype": str(editor.dtype).removeprefix("torch."),
            "device": str(editor.device),
            "purpose": getattr(editor, "purpose", ""),  # what the model is for (latent models)
            **({"family": editor.family} if self.kind == "latent" else {}),
            **given,
        }

    def build(self) -> gr.Blocks:
        """The page (:func:`~blendedit.web.layout.build_page`) with its queue: Generate requests
        wait in line, at most ``max_queue`` of them, one running at a time."""
        demo, self._names = build_page(self)
        demo.queue(max_size=self.options.max_queue, default_concurrency_limit=1)
        self.demo = demo
        return demo

    @property
    def server_max_bytes(self) -> int:
        """The largest file the server takes: the photo cap, or the editor's lossless PNG of its
        canvas (the preview, RGBA, worst case), whichever is larger."""
        png_worst = png_worst_bytes(self.options.preview_side)
        return max(int(self.options.max_upload_mb * 1024 * 1024), png_worst)

    def launch(self, host: str = "127.0.0.1", port: int = 7860, quiet: bool = True) -> str:
        """Start serving in a background thread; returns the local URL. While it serves, Pillow's
        own guard (``Image.MAX_IMAGE_PIXELS``) is the server's pixel cap."""
        demo = self.demo or self.build()
        page = {"css": static_text("editor.css"), "head": page_head(self.options)}
        if self._pillow_limit is None:
            self._pillow_limit = (Image.MAX_IMAGE_PIXELS,)
        Image.MAX_IMAGE_PIXELS = self.options.max_pixels
        try:
            demo.launch(
                server_name=host,
                server_port=port,
                quiet=quiet,
                max_file_size=self.server_max_bytes,
                allowed_paths=[str(self.workdir)],
                **page,
                **SERVE_LOCALLY,
            )
        except OSError as e:
            raise InputError(
                f"port: cannot listen on {host}:{port} ({one_line(e)}); choose another --port"
            ) from None
        return str(demo.local_url)

    def close(self) -> None:
        if self.demo is not None:
            self.demo.close()
        if self._pillow_limit is not None:
            (Image.MAX_IMAGE_PIXELS,), self._pillow_limit = self._pillow_limit, None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _no_loader(choice: ModelChoice) -> Any:
    raise InputError(f"model: {choice.label} cannot be loaded by this server")


def build_app(editor: Any, **kwargs: Any) -> EditorApp:
    """An :class:`EditorApp` with its Blocks built (``app.demo``); ``app.launch()`` serves it."""
    app = EditorApp(editor, **kwargs)
    app.build()
    return app


__all__ = [
    "EditorApp",
    "ServeOptions",
    "WebState",
    "build_app",
    "check_photo_file",
    "friendly",
    "mask_from_editor",
    "mask_layer",
    "mask_to_image",
    "page_head",
    "read_upload",
    "result_view",
    "settings_from_ui",
    "static_text",
]
