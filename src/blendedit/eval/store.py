"""The run folder of an evaluation: the cases, each method's predictions and their metrics.

Layout of ``out``::

    protocol.json                      the cases (photo, rectangle, prompt, class, seed)
    predictions/<method>/settings.json the settings that made this folder's predictions
    predictions/<method>/<case>/       NN-seedS.png (rank NN) and meta.json (ranks, seeds, times)
    predictions/<method>/<case>/metrics-<hash>.json   every metric of that input
    report.json  report.md  precision_vs_time.png  grid.png

A case is finished when its ``meta.json`` exists (written last, atomically); a folder without one
is an interrupted case and is made again. Resuming never recomputes a finished case; metrics are
cached apart from predictions, keyed by the metric settings (:func:`metrics_name`), so changing
the classifier re-scores the cached predictions without regenerating them. A folder whose
predictions were made with other settings (or for other cases) is refused, never silently reused.

The local loop (``blendedit.eval.runner``) and the Ray workers (``blendedit.eval.cluster``) read
and write the same folder through :class:`EvalStore`, so either can finish the other's work.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from PIL import Image

from blendedit.errors import InputError
from blendedit.eval.methods import MethodRun
from blendedit.eval.metrics import evaluate_case
from blendedit.eval.protocol import EvalCase
from blendedit.io import json_digest, read_json, save_json, save_png

META = "meta.json"


def fingerprint(obj: Any) -> str:
    return json_digest(obj, 12)


def metrics_name(metric_settings: Any) -> str:
    """The file name of an input's metrics made with ``metric_settings``."""
    return f"metrics-{fingerprint(metric_settings)}.json"


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class EvalStore:
    """The on-disk cache of one run folder ``out``, shared by the driver and every worker."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)

    def open(self, protocol: dict[str, Any]) -> None:
        """Start a new run folder, or resume one made with the same protocol."""
        out, path = self.out, self.out / "protocol.json"
        if path.is_file():
            old = read_json(path)
            # The photo folder may be named differently (relative, moved): the cases compare
            # photo names, sizes, rectangles, prompts and seeds.
            ignore = ("cases", "images_dir")
            a = {k: v for k, v in old.items() if k not in ignore}
            b = {k: v for k, v in protocol.items() if k not in ignore}
            n = min(len(old.get("cases", [])), len(protocol["cases"]))
            if a != b or old["cases"][:n] != protocol["cases"][:n]:
                diff = _diff_keys(a, b) or ["cases"]
                raise InputError(
                    f"out: {str(out)!r} holds an evaluation of other inputs (differs in "
                    f"{', '.join(diff)}); use another --out"
                )
            if len(protocol["cases"]) > len(old["cases"]):
                save_json(protocol, path, replace=True)
            return
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(
                f"out: {str(out)!r} exists and is not an evaluation folder (no protocol.json); "
                "choose a new folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        save_json(protocol, path)

    def method_dir(self, method: str, settings: dict[str, Any]) -> Path:
        """The folder of ``method``'s predictions; its ``settings.json`` is written the first
        time, and a folder made with other settings is refused."""
        d = self.out / "predictions" / method
        path = d / "settings.json"
        record = {"fingerprint": fingerprint(settings), "settings": settings}
        if path.is_file():
            old = read_json(path)
            if old.get("fingerprint") != record["fingerprint"]:
                diff = _diff_keys(old.get("settings", {}), settings) or ["settings"]
                raise InputError(
                    f"out: the {method} predictions in {str(d)!r} were made with other settings "
                    f"({', '.join(diff)}); use another --out, or delete that folder to remake them"
                )
        else:
            save_json(record, path)
        return d

    def case_dir(self, method: str, case: EvalCase) -> Path:
        return self.out / "predictions" / method / case.id

    def finished(self, method: str, case: EvalCase, metrics_file: str) -> bool:
        """Whether the input's predictions and its metrics ``metrics_file`` are both cached."""
        d = self.case_dir(method, case)
        return (d / META).is_file() and (d / metrics_file).is_file()

    def remove_leftovers(self, methods: list[str]) -> None:
        """Remove the private folders of killed workers (names starting with "."; never read)."""
        for name in methods:
            mdir = self.out / "predictions" / name
            for p in mdir.glob(".*.*") if mdir.is_dir() else []:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def load_meta(case_dir: Path, case: EvalCase) -> dict[str, Any] | None:
        """The finished case's ``meta.json``, or None (a half-made folder is removed)."""
        path = case_dir / META
        if not path.is_file():
            if case_dir.exists():  # interrupted while writing: make it again
                shutil.rmtree(case_dir)
            return None
        meta = read_json(path)
        if meta.get("case") != case.to_dict():
            raise InputError(
                f"out: {str(case_dir)!r} holds predictions for another input; use another --out"
            )
        return meta

    @staticmethod
    def save_case(case_dir: Path, case: EvalCase, run: MethodRun, device: str) -> dict[str, Any]:
        """Write the predictions, then ``meta.json`` (last: it marks the case finished)."""
        preds = []
        for p in run.predictions:
            name = f"{p.rank:02d}-seed{p.seed}.png"
            save_png(p.image, case_dir / name)
            preds.append({"file": name, "rank": p.rank, "seed": p.seed, "score": p.score})
        meta = {
            "case": case.to_dict(),
            "predictions": preds,
            "time": {
                "batch_s": round(run.time_batch, 4),
                "single_s": None if run.time_single is None else round(run.time_single, 4),
                **run.details,
            },
            "device": device,
        }
        save_json(meta, case_dir / META)  # last: marks the case finished
        return meta

    @classmethod
    def commit_case(
        cls, case_dir: Path, case: EvalCase, run: MethodRun, device: str
    ) -> dict[str, Any]:
        """:meth:`save_case` into a private folder renamed into place whole, for workers that may
        die or be retried: the case is committed once; a copy committed meanwhile wins."""
        tmp = case_dir.parent / (
            f".{case.id}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        )
        try:
            meta = cls.save_case(tmp, case, run, device)
            try:
                os.rename(tmp, case_dir)
            except OSError:
                if not (case_dir / META).is_file():
                    raise
                meta = read_json(case_dir / META)  # committed meanwhile by a retry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta


def score_case(
    case_dir: Path,
    meta: dict[str, Any],
    case: EvalCase,
    metric_models: Any,
    image: Image.Image | None = None,
    mask: Any = None,
) -> dict[str, Any]:
    """The metrics of one input's cached predictions (``meta``'s files in ``case_dir``); the
    input's ``image`` and ``mask`` are loaded unless given."""
    if image is None:
        image, mask = case.load_image(), case.mask()
    preds = [Image.open(case_dir / p["file"]).convert("RGB") for p in meta["predictions"]]
    return evaluate_case(preds, image, mask, case.class_index, case.prompt, metric_models)


def floats(scores: dict[str, Any]) -> dict[str, Any]:
    """JSON stores inf as the string "inf"; back to floats."""

    def conv(v: Any) -> Any:
        if isinstance(v, str) and v in ("inf", "-inf", "nan"):
            return float(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in scores.items()}
