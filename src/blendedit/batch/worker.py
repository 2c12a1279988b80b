"""One row, start to finish: the only code that edits and writes, whatever the engine.

:func:`process_row` loads (or reuses) the row's editor, edits, and commits the row's folder through
:class:`~blendedit.batch.store.BatchStore`. Every failure of the row (an unreadable image, an empty
mask, out of memory at batch size 1) becomes an :class:`Outcome` with one line; nothing escapes,
so one bad row never stops an engine. Out of memory during denoising first halves the batch (the
edit frame, ``blendedit.frame``); here it is retried once more with every batch at 1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blendedit.batch.manifest import Row, Shared
from blendedit.batch.store import BatchStore, Outcome, worker_name
from blendedit.errors import BlendEditError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs besides the rows (small, picklable: travels to cluster nodes)."""

    out: str
    shared: dict[str, Any]  # Shared.to_dict()
    device: str = "auto"
    dtype: str = "auto"  # fp16 on CUDA, fp32 elsewhere
    threads: int | None = None  # torch CPU threads; None: leave as is
    offline: bool = False
    judge_models: tuple[str, ...] = ()  # --judge-model NAME=MODEL; the others at their defaults

    def shared_settings(self) -> Shared:
        return Shared(**self.shared)


class EditorCache:
    """The editor of the last model used, loaded once per worker. Holds one model at a time: a
    manifest that switches models often reloads (sort the rows by model)."""

    def __init__(
        self, device: str = "auto", dtype: str = "auto", judge_models: tuple[str, ...] = ()
    ) -> None:
        from blendedit.frame.judges import parse_judge_models
        from blendedit.models import parse_device, parse_dtype

        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        self.judge_models = parse_judge_models(judge_models)  # {name: model}, refused early
        self._key: tuple[Any, ...] | None = None
        self._editor: Any = None
        self.loads = 0

    def get(self, row: Row) -> Any:
        key = (row.method if row.method == "latent" else "pixel", row.model, row.model_config,
               row.clip_model, bool(row.settings.get("rank", True)))  # fmt: skip
        if key == self._key:
            return self._editor
        self._editor, self._key = None, None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
        from blendedit.methods import load_editor

        clip = row.clip_model or DEFAULT_CLIP_MODEL
        editor = load_editor(
            row.method, row.model, model_config=row.model_config, dtype=self.dtype,
            clip_model=clip if row.method != "latent" or key[-1] else None,  # ranking only
        )  # fmt: skip
        self._editor, self._key = editor.to(self.device), key
        if self.judge_models:  # as ModelOptions.load: loaded when a row first ranks with one
            from blendedit.frame.judges import Judges

            self._editor.judges = Judges(self.judge_models)
        self.loads += 1
        return self._editor

    def segmenter(self, name: str) -> Any:
        """The segmenter ``name`` (rows' selections), loaded once per worker while rows use it."""
        held = getattr(self, "_segmenter", None)
        if held is None or held[0] != name:
            from blendedit.segment import load_segmenter

            self._segmenter = (name, load_segmenter(name, self.device, torch.float32))
        return self._segmenter[1]


def read_inputs(row: Row, cache: EditorCache | None = None) -> tuple[Any, Any]:
    """The row's photo and mask, read once and checked (size, aspect, an empty or full mask
    after the row's settings) before any editor is loaded for it: (Photo, mask levels). A
    row's selection is made here by the worker's segmenter and joined to its mask file."""
    from blendedit.frame import photo_mask, read_mask
    from blendedit.frame.photo import read_photo

    photo = read_photo(row.image, "image")
    mask = read_mask(row.mask, photo) if row.mask else None
    if row.selection:
        mask = _selected(row, photo, mask, cache or EditorCache("cpu"))
    photo_mask(mask, photo, row.config())  # refused now if empty, full or of another aspect
    return photo, mask


def _selected(row: Row, photo: Any, painted: Any, cache: EditorCache) -> Any:
    """The row's selection (``Row.selection``) as mask levels, joined to ``painted``."""
    from blendedit.config import SelectConfig
    from blendedit.segment import Point, Selection, default_segmenter, select_mask

    sel = row.selection or {}
    points = tuple(Point(x, y, bool(label)) for x, y, label in sel["points"])
    selection = Selection(sel["text"], points, tuple(sel["box"]) if sel["box"] else None)
    name = sel["segmenter"] or default_segmenter(selection)
    cfg = SelectConfig(**sel["config"])
    return select_mask(cache.segmenter(name), photo, selection, cfg, painted)


def _edit(editor: Any, row: Row, inputs: tuple[Any, Any]) -> Any:
    """The edit of the row's ``inputs`` (:func:`read_inputs`); out of memory that the frame's
    halving could not absorb is retried once with every batch at 1 (CUDA caches emptied
    first)."""
    cfg = row.config()
    image, mask = inputs
    try:
        return editor(image, mask, row.prompt, config=cfg)
    except torch.OutOfMemoryError:
        if cfg.batch_size == 1 and getattr(cfg, "decode_batch_size", 1) == 1:
            raise
        logger.warning("%s: out of memory; retrying with batch_size 1", row.name)
        if editor.device.type == "cuda":
            torch.cuda.empty_cache()
        one = {"batch_size": 1}
        if hasattr(cfg, "decode_batch_size"):
            one["decode_batch_size"] = 1
        return editor(image, mask, row.prompt, config=cfg.replace(**one))


def _save_mask(row: Row, inputs: tuple[Any, Any], folder: Path) -> None:
    from PIL import Image

    from blendedit.frame import photo_mask
    from blendedit.io import save_png

    photo, mask = inputs
    save_png(Image.fromarray(photo_mask(mask, photo, row.config())), folder / "mask.png")


def _writer(row: Row, result: Any, shared: Shared, device: str) -> Any:
    from blendedit._version import __version__

    def write(folder: Path) -> dict[str, Any]:
        files = result.save(
            folder, format=shared.out_format, quality=shared.quality, metadata=shared.metadata
        )
        report = result.to_dict()
        report.update(
            image=row.image,
            mask=row.mask or None,
            model=row.model,
            clip_model=row.clip_model,
            device=device,
            versions={"blendedit": __version__, "torch": torch.__version__},
            batch={
                "row": row.index,
                "line": row.line,
                "key": row.key,
                "fingerprint": row.fingerprint,
                "given": row.given,
                "selection": row.selection,
                "worker": worker_name(),
            },
        )
        for r, name in zip(report["results"], files, strict=True):
            r["file"] = name
        return report

    return write


def process_row(cache: EditorCache, store: BatchStore, row: Row, shared: Shared) -> Outcome:
    """Edit one row and commit its folder; never raises for a problem of the row itself."""
    t0 = time.perf_counter()

    def failed(msg: str) -> Outcome:
        return Outcome(row.key, row.index, "failed", msg.splitlines()[0] if msg else "failed",
                       time.perf_counter() - t0, worker_name())  # fmt: skip

    if row.problem:
        return failed(row.problem)
    try:
        if store.state(row) == "done":
            return Outcome(row.key, row.index, "exists", None, 0.0, worker_name())
        inputs = read_inputs(row, cache)  # a bad photo or mask fails the row before the editor
        editor = cache.get(row)

        def make(folder: Path) -> dict[str, Any]:
            result = _edit(editor, row, inputs)
            if row.selection:  # the mask used, beside the results
                _save_mask(row, inputs, folder)
            return _writer(row, result, shared, str(editor.device))(folder)

        status, files = store.commit(row, make)
    except BlendEditError as e:
        return failed(str(e))
    except torch.OutOfMemoryError:
        if cache.device.type == "cuda":
            torch.cuda.empty_cache()
        return failed("out of memory at batch size 1; lower size or use dtype fp16")
    except Exception as e:  # a row's failure is recorded; the run goes on
        logger.debug("%s failed", row.name, exc_info=True)  # the trace, for debugging only
        return failed(f"{type(e).__name__}: {e}")
    return Outcome(row.key, row.index, status, None, time.perf_counter() - t0, worker_name(), files)
