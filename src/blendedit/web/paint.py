"""The paint editor: Gradio's ImageEditor, with every image a client sends checked from its header
before anything is decoded.

Gradio decodes the editor's background, composite and every paint layer before the app sees them,
and keeps the PNGs the page sends (``accept_blobs``) in memory until the next event reads them. A
layer is never legitimately larger than the preview the brush paints on (``--preview-side``), and
the page has one layer; so :class:`PaintEditor` refuses, in one line and before decoding:

* a layer index, a layer count or a PNG larger than ``--max-layers`` layers of the preview allow;
* any image that is not a PNG, or whose header says it is larger than the preview;

and keeps at most :data:`STORED_BYTES` of waiting PNGs (the oldest page's are dropped first).
Checking the header reads a few hundred bytes: a 24 KB PNG that says 14000x14000 costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradio.components.base import server
from PIL import Image

from blendedit.errors import InputError
from blendedit.web._gradio import gr
from blendedit.web.canvas import PREVIEW_SIDE

BLOB_KINDS = ("background", "composite", "layer")
STORED_BYTES = 256 * 1024 * 1024  # waiting PNGs of every page together
REFUSALS_KEPT = 1024  # refused pages remembered, to say why at their next event
CANVAS_SIDE = 768  # the editor's own canvas before a photo is shown (layout.paint_editor)


def png_worst_bytes(side: int) -> int:
    """The largest PNG of a ``side`` x ``side`` RGBA canvas (stored, uncompressed) and its
    chunks: the most one image of the editor may take."""
    return 4 * side * side + (1 << 20)


def check_paint_image(source: str | Path | bytes, what: str, max_side: int) -> tuple[int, int]:
    """One image of the editor (a file path or a PNG's bytes) against the canvas cap, from its
    header alone (nothing is decoded): returns its (w, h); one-line InputError otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            f = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
            with Image.open(f, formats=["PNG"]) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError:
        raise InputError(
            f"editor: the {what} is larger than the {max_side} px preview the brush paints on"
        ) from None
    except Exception:
        raise InputError(f"editor: the {what} is not a PNG image") from None
    if max(w, h) > max_side:
        raise InputError(
            f"editor: the {what} is {w}x{h} px, larger than the {max_side} px preview the brush "
            "paints on (server option --preview-side); reload the page"
        )
    return w, h


def _refused(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def _no_stub_file() -> Iterator[None]:
    """Gradio writes a ``.pyi`` stub next to the module of every component class defined (to type
    its events); a package never writes into its own folder (an install may be read-only)."""
    import gradio.component_meta as meta

    write = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = write


with _no_stub_file():

    class PaintEditor(gr.ImageEditor):
        """A ``gr.ImageEditor`` (the same component in the page) that refuses oversized or too many
        images before Gradio decodes them. Built like ``gr.ImageEditor``, then :meth:`limit`."""

        is_template = True  # the page draws it as Gradio's own ImageEditor

        max_side: int = PREVIEW_SIDE
        max_layers: int = 4

        def limit(self, max_side: int, max_layers: int) -> PaintEditor:
            """Set the caps: the longest side of any image (the preview's, at least the editor's own
            canvas) and the most layers."""
            self.max_side = max(int(max_side), CANVAS_SIDE)
            self.max_layers = int(max_layers)
            return self

        @functools.cached_property
        def _lock(self) -> threading.Lock:
            return threading.Lock()

        @functools.cached_property
        def _refusals(self) -> OrderedDict[str, str]:
            return OrderedDict()

        @property
        def max_blob_bytes(self) -> int:
            return png_worst_bytes(self.max_side)

        # -- the page's PNGs, as they arrive -----------------------------------------------------

        @server
        def accept_blobs(self, data: Any) -> None:
            """One PNG of the page (background, composite or a layer), checked before it is kept."""
            fields = getattr(data, "data", None)
            files = getattr(data, "files", None)
            if not isinstance(fields, dict) or not files:
                return None
            blob_id = str(fields.get("id", ""))[:128]
            try:
                self._check_blob(fields, files)
            except InputError as e:
                self._refuse(blob_id, str(e))
                return None
            with self._lock:
                if blob_id in self._refusals:  # a part of a page already refused
                    return None
                super().accept_blobs(data)
                self._bound_storage()
            return None

        def _check_blob(self, fields: dict[str, Any], files: list[Any]) -> None:
            kind = fields.get("type")
            if kind not in BLOB_KINDS or len(files) != 1:
                raise InputError("editor: not an image of the editor")
            if kind == "layer":
                index = fields.get("index")
                try:
                    i = int(str(index))
                except ValueError:
                    raise InputError(
                        f"editor: layer index {str(index)[:20]!r} is not a number"
                    ) from None
                if not 0 <= i < self.max_layers:
                    raise InputError(
                        f"editor: at most {self.max_layers} paint layers are taken (server option "
                        "--max-layers)"
                    )
            blob = files[0][1]
            if len(blob) > self.max_blob_bytes:
                raise InputError(
                    f"editor: the {kind} is {len(blob) / 1048576:.1f} MiB, more than a "
                    f"{self.max_side} px preview can take"
                )
            check_paint_image(bytes(blob), kind, self.max_side)

        def _refuse(self, blob_id: str, message: str) -> None:
            with self._lock:
                self.blob_storage.pop(blob_id, None)
                self._refusals[blob_id] = message
                while len(self._refusals) > REFUSALS_KEPT:
                    self._refusals.popitem(last=False)

        def _bound_storage(self) -> None:
            """Drop the oldest pages' PNGs while all of them take more than :data:`STORED_BYTES`."""
            sizes = {k: _stored_bytes(v) for k, v in list(self.blob_storage.items())}
            total = sum(sizes.values())
            for k in list(sizes):
                if total <= STORED_BYTES:
                    break
                self.blob_storage.pop(k, None)
                total -= sizes[k]

        # -- an event's value, before Gradio decodes it ------------------------------------------

        def preprocess(self, payload: Any) -> Any:
            if payload is None:
                return None
            try:
                self._check_payload(payload)
            except InputError as e:
                if payload.id is not None:
                    with self._lock:
                        self.blob_storage.pop(payload.id, None)
                raise _refused(str(e)) from None
            return super().preprocess(payload)

        def _check_payload(self, payload: Any) -> None:
            if payload.id is not None:
                with self._lock:
                    message = self._refusals.pop(payload.id, None)
                    cached = self.blob_storage.get(payload.id)
                if message is not None:
                    raise InputError(message)
                if cached is None:
                    return
                images = [("background", cached.background), ("composite", cached.composite)]
                layers = cached.layers
            else:
                images = [("background", payload.background), ("composite", payload.composite)]
                layers = payload.layers
            if len(layers) > self.max_layers:
                raise InputError(
                    f"editor: {len(layers)} paint layers; at most {self.max_layers} are taken "
                    "(server option --max-layers)"
                )
            images += [("paint layer", layer) for layer in layers]
            for what, image in images:
                if image is None:
                    continue
                source = image if isinstance(image, bytes | bytearray) else image.path
                check_paint_image(source, what, self.max_side)


def _stored_bytes(blobs: Any) -> int:
    parts = [blobs.background, blobs.composite, *blobs.layers]
    return sum(len(p) for p in parts if p is not None)


__all__ = ["PaintEditor", "check_paint_image", "png_worst_bytes"]
