"""The editor's page: its components, their arrangement, and the events wired to the handlers.

Left, the photo column: the file box, the paint editor, the prompt, Generate and Cancel, and the
settings (:func:`controls`, from :func:`~blendedit.web.settings.control_specs`). Right, the
results column: the status line, the ranked results, Keep, the history with Undo and Redo, and
the downloads. What each event does is in :mod:`blendedit.web.handlers`; the page's own script and
style are ``static/editor.js`` and ``static/editor.css`` (:mod:`blendedit.web.app` serves them).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from blendedit.web._gradio import gr
from blendedit.web.canvas import MASK_OPACITY, MASK_RGB
from blendedit.web.handlers import Handlers, ServeOptions, WebState, friendly, intro
from blendedit.web.paint import CANVAS_SIDE, PaintEditor
from blendedit.web.selecting import PICK_MODES
from blendedit.web.settings import Control

if TYPE_CHECKING:
    from gradio.components import Component

SCRIBBLE_COLORS = (  # opaque scribble colours offered next to the mask brush (any other works too)
    "#e6194b", "#f58231", "#ffe119", "#3cb44b", "#4363d8", "#911eb4", "#8b5a2b", "#000000",
    "#ffffff",
)  # fmt: skip
PHOTO_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".bmp"]
SECTIONS = {"settings": ("Settings", True), "advanced": ("Advanced settings", False)}  # open?
KINDS: dict[str, Any] = {  # a control's kind -> its component class
    "slider": gr.Slider,
    "number": gr.Number,
    "dropdown": gr.Dropdown,
    "checkbox": gr.Checkbox,
    "text": gr.Textbox,
}


def build_page(app: Handlers) -> tuple[gr.Blocks, dict[Component, str]]:
    """The page over ``app``'s model, its events wired to ``app``'s handlers; returns the Blocks
    and the names of the components whose values Generate reads."""
    with gr.Blocks(title="blendedit", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(None)
        top = {"intro": gr.Markdown(intro(app.model_info, app.options), elem_id="intro")}
        if len(app.models.choices) > 1:
            top["model"] = model_picker(app)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                left = photo_column(app)
            with gr.Column(scale=2):
                right = results_column(app)
        names = wire(app, demo, {"state": state, **top, **left, **right})
    return demo, names


def photo_column(app: Handlers) -> dict[str, Any]:
    """The photo, its paint, the prompt, Generate and Cancel, and the settings."""
    c: dict[str, Any] = {"photo": photo_box(app.options), "editor": paint_editor(app.options)}
    gr.Markdown(
        "**Brush colours**: the first, translucent magenta, marks the region to "
        "edit. Any opaque colour of the palette draws a *scribble* of what should "
        "appear there (a rough shape in its colours; it is part of the region "
        "too): the edit starts from it, so give it a Blend start of 0.3-0.6. "
        "You paint on a preview; the edit runs on the full-resolution photo.",
        elem_id="brush-help",
    )
    with gr.Row():
        c["invert"] = gr.Checkbox(
            label="Invert mask: edit everything outside the paint", elem_id="invert"
        )
        c["clear"] = gr.Button("Clear paint", size="sm", elem_id="clear-mask")
    if app.selector is not None:
        c.update(select_panel())
    c["prompt"] = gr.Textbox(
        label="Prompt",
        placeholder=(
            "what the painted region should become, e.g. 'sunglasses'; "
            "empty: fill it from its surroundings"
        ),
        elem_id="prompt",
        max_lines=3,
    )
    with gr.Row():
        c["generate"] = gr.Button("Generate", variant="primary", elem_id="generate")
        c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel")
    c["controls"] = controls(app.control_specs())
    return c


def model_picker(app: Handlers) -> gr.Dropdown:
    """The models the server offers (``--model`` repeated, ``--models-dir``), by name and
    family; choosing one loads it in place of the current one (:meth:`Handlers.on_model`)."""
    return gr.Dropdown(
        app.models.labels, value=app.switcher.current.label, label="Model", elem_id="model",
        info="choosing another unloads this one and loads it (after a running Generate); the "
        "settings take its family's defaults",
    )  # fmt: skip


def photo_box(o: ServeOptions) -> gr.File:
    """The file box a photo is dropped on, and the line that tells an over-cap file."""
    box = gr.File(
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
    return box


def select_panel() -> dict[str, Any]:
    """Select instead of painting (:mod:`~blendedit.web.selecting`): click the preview to add
    or remove a part, or two corners of a box, or type what to select; the selection becomes
    the editor's mask paint."""
    c: dict[str, Any] = {}
    with gr.Accordion("Select by clicking or naming it", open=True, elem_id="select-panel"):
        c["select_view"] = gr.Image(
            label="Click the object to select it; shift-click: remove a part; drag: a box (the "
            "selection becomes the mask paint above)",
            elem_id="select-view",
            type="pil",
            interactive=False,
            height=360,
        )
        with gr.Row():
            c["select_mode"] = gr.Radio(
                list(PICK_MODES), value="add", label="A click", elem_id="select-mode",
                info="add: select the object there; remove: take that part away; box: two "
                "clicks, its corners",
            )  # fmt: skip
            c["select_text"] = gr.Textbox(
                label="Or name it", placeholder="the red cup", elem_id="select-text", max_lines=1
            )
        with gr.Row():
            c["select_go"] = gr.Button("Select named", size="sm", elem_id="select-go")
            c["select_reset"] = gr.Button("Clear selection", size="sm", elem_id="select-reset")
        # Drags (a box) and shift-clicks (remove) are sent here by static/editor.js.
        c["select_gesture"] = gr.Textbox(
            elem_id="select-gesture", show_label=False, container=False
        )
        c["select_send"] = gr.Button("send", elem_id="select-send")
    return c


def paint_editor(o: ServeOptions) -> PaintEditor:
    """The canvas: the photo's preview, the mask brush (translucent) and scribble colours; what
    the page sends is checked against the preview's size and ``--max-layers`` before it is
    decoded (:class:`~blendedit.web.paint.PaintEditor`)."""
    mask_colour = (f"rgb({MASK_RGB[0]}, {MASK_RGB[1]}, {MASK_RGB[2]})", MASK_OPACITY)
    return PaintEditor(
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
            colors=[mask_colour, *SCRIBBLE_COLORS],
            default_color=mask_colour,
            color_mode="defaults",
        ),
        eraser=gr.Eraser(default_size="auto"),
        canvas_size=(CANVAS_SIDE, CANVAS_SIDE * 2 // 3),
        height=560,
    ).limit(o.preview_side, o.max_layers)


def results_column(app: Handlers) -> dict[str, Any]:
    """The status line, the results, Keep, the history, Undo and Redo, and the downloads."""
    c: dict[str, Any] = {}
    c["status"] = gr.Markdown(app.status_text(WebState()), elem_id="status")
    c["results"] = gr.Gallery(
        label="Results, best first (rank, seed, CLIP score)",
        elem_id="results",
        columns=2,
        height=420,
        format="png",
        object_fit="contain",
        interactive=False,
    )
    c["keep"] = gr.Button("Keep selected result and edit on", variant="primary", elem_id="keep")
    c["history"] = gr.Gallery(
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
        c["undo"] = gr.Button("Undo", elem_id="undo", interactive=False)
        c["redo"] = gr.Button("Redo", elem_id="redo", interactive=False)
    with gr.Row():
        c["download_image"] = gr.DownloadButton(
            "Download image", elem_id="download-image", interactive=False
        )
        c["download_trail"] = gr.DownloadButton(
            "Download result.json", elem_id="download-trail", interactive=False
        )
    gr.Markdown(
        "`result.json` records the photo and every kept step (prompt, mask, "
        "scribble, seed, settings); "
        "`blendedit replay result.json --out DIR` regenerates them.",
        elem_id="trail-note",
    )
    return c


def wire(app: Handlers, demo: gr.Blocks, c: Mapping[str, Any]) -> dict[Component, str]:
    """The page's events, each to its handler; returns the names of Generate's inputs."""
    view = [c["state"], c["editor"], c["history"], c["status"]]
    view += [c["download_image"], c["download_trail"], c["undo"], c["redo"]]
    settings: dict[str, Component] = c["controls"]
    names = {c[k]: k for k in ("state", "editor", "prompt", "invert")}
    names.update({comp: name for name, comp in settings.items()})
    state, results, status = c["state"], c["results"], c["status"]

    # Progress, queue position and errors show on one component per event, not on all.
    quiet: dict[str, Any] = {"show_progress": "minimal", "show_progress_on": [c["history"]]}
    upload = c["photo"].upload(friendly(app.on_upload), [c["photo"], state], view, **quiet)
    cleared = c["editor"].clear(friendly(app.on_clear), [state], view, **quiet)
    cleared_too = c["clear"].click(friendly(app.on_clear), [state], view, **quiet)
    run = {
        "fn": friendly(app.generate),
        "inputs": set(names),
        "outputs": [results, status, settings["seed"], state],
        "concurrency_limit": 1,
        "concurrency_id": "device",
        "show_progress": "full",
        "show_progress_on": [results],
    }
    runs = [c["generate"].click(**run), c["prompt"].submit(**run)]
    c["cancel"].click(app.cancel, None, status, cancels=runs, queue=False)
    if "model" in c:  # in the device's queue: a switch waits for the running Generate
        outputs = [c["model"], c["intro"], status, *(settings[s.name] for s in app.control_specs())]
        c["model"].input(
            friendly(app.on_model), [c["model"], state], outputs, concurrency_limit=1,
            concurrency_id="device", show_progress="full", show_progress_on=[status],
        )  # fmt: skip
        shown = [o for o in outputs if o is not status]
        demo.load(friendly(app.on_page), None, shown, show_progress="hidden")
    results.select(friendly(app.select), [state], [state, status], show_progress="hidden")
    kept = c["keep"].click(friendly(app.keep), [state], view, **quiet)
    undone = c["undo"].click(friendly(app.undo), [state], [*view, c["prompt"]], **quiet)
    redone = c["redo"].click(friendly(app.redo), [state], view, **quiet)
    if "select_view" in c:
        wire_select(app, c, [upload, cleared, cleared_too, kept, undone, redone], view)
    demo.unload(app.unload)
    return names


def wire_select(app: Handlers, c: Mapping[str, Any], changes: list[Any], view: list) -> None:
    """The selection panel's events: a click on the view, the named selection, Clear; and a
    fresh view (nothing selected) after every event that changes the photo or clears paint."""
    state, sel = c["state"], c["select_view"]
    quiet: dict[str, Any] = {"show_progress": "minimal", "show_progress_on": [sel]}
    for event in changes:
        event.then(friendly(app.on_select_view), [state], [sel], **quiet)
    # One selection at a time, whichever way it comes: the tabs share one segmenter.
    quiet.update(concurrency_limit=1, concurrency_id="select")
    out = [state, c["editor"], sel, c["status"]]
    sel.select(friendly(app.on_pick), [state, c["select_mode"]], out, **quiet)
    named = {"fn": friendly(app.on_select_text), "inputs": [state, c["select_text"]]}
    c["select_text"].submit(**named, outputs=out, **quiet)
    c["select_go"].click(**named, outputs=out, **quiet)
    reset = {k: v for k, v in quiet.items() if not k.startswith("concurrency")}
    c["select_reset"].click(friendly(app.on_select_reset), [state], [*view, sel], **reset)
    gesture = [state, c["select_gesture"]]
    c["select_send"].click(friendly(app.on_gesture), gesture, out, **quiet)


def controls(specs: Sequence[Control]) -> dict[str, Component]:
    """The settings controls by name, built from their descriptions: each section an accordion
    (:data:`SECTIONS`), its controls in order; neighbours with the same ``row`` share a row."""
    made: dict[str, Component] = {}
    for section, (title, is_open) in SECTIONS.items():
        with gr.Accordion(title, open=is_open):
            mine = [s for s in specs if s.section == section]
            for (row, _), group in itertools.groupby(mine, key=lambda s: (s.row, s.row or s.name)):
                with gr.Row() if row else contextlib.nullcontext():
                    made.update((s.name, control(s)) for s in group)
    return made


def control(s: Control) -> Component:
    """One settings control from its description; what the description leaves None is Gradio's
    own default."""
    given = {
        "value": s.default,
        "minimum": s.minimum,
        "maximum": s.maximum,
        "step": s.step,
        "precision": s.precision,
        "choices": None if s.choices is None else list(s.choices),
        "label": s.label,
        "info": s.info,
        "elem_id": s.elem_id,
        "interactive": s.interactive,
        "lines": s.lines,
    }
    return KINDS[s.kind](**{k: v for k, v in given.items() if v is not None})
