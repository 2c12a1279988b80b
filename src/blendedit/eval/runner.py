"""The evaluation loop: cases x methods, predictions cached on disk, resumable, then the report.

Layout of ``out``::

    protocol.json                      the cases (photo, rectangle, prompt, class, seed)
    predictions/<method>/settings.json the settings that made this folder's predictions
    predictions/<method>/<case>/       NN-seedS.png (rank NN) and meta.json (ranks, seeds, times)
    predictions/<method>/<case>/metrics-<hash>.json   every metric of that input
    report.json  report.md  precision_vs_time.png  grid.png

A case is finished when its ``meta.json`` exists (written last, atomically); a folder without one
is an interrupted case and is made again. Resuming never recomputes a finished case; metrics are
cached apart from predictions, keyed by the metric settings, so changing the classifier re-scores
the cached predictions without regenerating them. A folder whose predictions were made with other
settings (or for other cases) is refused, never silently reused.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from blendedit.config import EditConfig
from blendedit.errors import InputError
from blendedit.eval.methods import (
    DEFAULT_METHODS,
    METHODS,
    EvalModels,
    MethodRun,
    Resources,
    Runner,
    Unavailable,
    build_runner,
    recommended_batch,
)
from blendedit.eval.metrics import classifier_top_k, evaluate_case
from blendedit.eval.protocol import DEFAULT_MAX_SIDE, MASK_SIDE_RANGE, EvalCase, make_cases
from blendedit.eval.report import write_report
from blendedit.io import json_digest, read_json, save_json, save_png
from blendedit.pixel.pipeline import PixelConfig

logger = logging.getLogger(__name__)

METRICS_VERSION = 1  # bump when a metric's definition changes: cached metrics are then recomputed


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how. ``latent`` / ``pixel`` are the base settings of the latent
    methods (and diffusers-inpaint) and of the pixel methods; ``num_images`` is replaced by the
    batch (the method's recommended batch unless ``batch`` overrides it: one int for every method
    or a mapping name -> int)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    n_images: int = 50
    seed: int = 0
    batch: int | Mapping[str, int] | None = None
    limit: int | None = None  # evaluate only the first N cases (quick runs)
    latent: EditConfig = field(default_factory=EditConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)
    time_single: bool = True  # also time one prediction alone per input (Table 2, single image)
    warmup: bool = True  # one untimed prediction per method before the first timed one
    max_side: int | None = DEFAULT_MAX_SIDE
    progress: bool = True

    def batch_for(self, method: str) -> int:
        if isinstance(self.batch, int):
            n = self.batch
        elif isinstance(self.batch, Mapping) and method in self.batch:
            n = int(self.batch[method])
        else:
            n = recommended_batch(method)
        if not 1 <= n <= 1024:
            raise InputError(f"batch: {n} for {method} must be between 1 and 1024")
        return n

    def check(self) -> EvalSettings:
        if not self.methods:
            raise InputError("methods: name at least one method")
        for m in self.methods:
            if m not in METHODS:
                raise InputError(f"methods: unknown {m!r}; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"methods: {','.join(self.methods)} names a method twice")
        if isinstance(self.batch, Mapping):
            for m in self.batch:
                if m not in METHODS:
                    raise InputError(f"batch: unknown method {m!r}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit: must be at least 1, got {self.limit}")
        if self.max_side is not None and self.max_side < 64:
            raise InputError(f"max_side: must be at least 64, got {self.max_side}")
        self.latent.validate()
        self.pixel.validate()
        return self


def fingerprint(obj: Any) -> str:
    return json_digest(obj, 12)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class _Store:
    """The on-disk cache of one run folder."""

    def __init__(self, out: Path) -> None:
        self.out = out

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

    @staticmethod
    def load_meta(case_dir: Path, case: EvalCase) -> dict[str, Any] | None:
        path = case_dir / "meta.json"
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
        save_json(meta, case_dir / "meta.json")  # last: marks the case finished
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


def _protocol(images_dir: Path, settings: EvalSettings, cases: Sequence[EvalCase], labels) -> dict:
    return {
        "images_dir": str(images_dir),
        "seed": settings.seed,
        "max_side": settings.max_side,
        "mask_side_range": list(MASK_SIDE_RANGE),
        "labels": fingerprint({int(k): v for k, v in labels.items()}),
        "cases": [c.to_dict() for c in cases],
    }


def _metric_settings(models: EvalModels) -> dict[str, Any]:
    return {
        "version": METRICS_VERSION,
        "classifier": models.classifier,
        "top_k": classifier_top_k(models.classifier),
        "score_clip_model": models.score_clip_model,
        "lpips_weights": list(models.lpips_weights) if models.lpips_weights else None,
        "lpips_net": models.lpips_net if models.lpips_weights else None,
    }


def run_eval(
    images_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: EvalSettings | None = None,
    models: EvalModels | None = None,
    *,
    resources: Resources | None = None,
    engine: str = "local",
    ray: Any = None,
) -> dict[str, Any]:
    """Run the protocol (or resume it) and write the report; returns ``report.json``'s content.

    Every method in ``settings.methods`` that can run does; one whose model was not given is
    recorded as skipped with the reason. Interrupting (Ctrl-C, a crash, a kill) loses at most the
    input being generated: run again with the same arguments to continue.

    ``engine="ray"`` makes the (input, method) units on a Ray cluster first (``ray``: a
    :class:`blendedit.batch.RayOptions`), into the same cache; the loop below then only reads it.
    """
    if engine not in ("local", "ray"):
        raise InputError(f"engine: {engine!r} is not one of local, ray")
    settings = (settings or EvalSettings()).check()
    models = models or EvalModels()
    res = resources or Resources(models)
    images = Path(images_dir)
    out = Path(out)

    # 1. The inputs: cases drawn from the seed, prompts from the classifier's own label map.
    labels = res.labels
    cases = make_cases(images, settings.n_images, settings.seed, labels, settings.max_side)
    todo = cases[: settings.limit] if settings.limit else cases
    store = _Store(out)
    store.open(_protocol(images, settings, cases, labels))

    # 2. The methods that can run; the others get a note.
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    for name in settings.methods:
        try:
            runners[name] = build_runner(
                name, res, settings.batch_for(name), settings.latent, settings.pixel
            )
        except Unavailable as e:
            skipped[name] = str(e)
            logger.warning("%s: skipped: %s", name, e)

    # 3. Predictions and metrics, case by case; finished work is read back, never redone.
    metric_settings = _metric_settings(models)
    metrics_file = f"metrics-{fingerprint(metric_settings)}.json"
    if engine == "ray" and runners:
        from blendedit.batch.eval_ray import fill_cache
        from blendedit.batch.run import RayOptions

        for name, runner in runners.items():  # folders of other settings: refused before any work
            store.method_dir(name, runner.settings())
        fill_cache(
            out, settings, models, list(runners), cases, todo, metrics_file, ray or RayOptions()
        )
    records: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(
        total=len(runners) * len(todo), desc="eval", unit="input", disable=not settings.progress
    )
    try:
        for name, runner in runners.items():
            mdir = store.method_dir(name, runner.settings())
            warm = not settings.warmup  # first calls pay one-time costs: not timed
            records[name] = []
            for case in todo:
                bar.set_postfix_str(f"{name} {case.id}")
                case_dir = mdir / case.id
                meta = store.load_meta(case_dir, case)
                image = mask = None
                if meta is None:
                    image, mask = case.load_image(), case.mask()
                    seeds = [case.seed + i for i in range(settings.batch_for(name))]
                    if not warm:
                        runner.warmup(image, mask, case.prompt, case.seed)
                        warm = True
                    run = runner.run(image, mask, case.prompt, seeds, settings.time_single)
                    meta = store.save_case(case_dir, case, run, str(res.device))
                mpath = case_dir / metrics_file
                if mpath.is_file():
                    scores = read_json(mpath)
                else:
                    scores = score_case(case_dir, meta, case, res.metric_models(), image, mask)
                    save_json(scores, mpath)
                records[name].append({"case": case, "meta": meta, "metrics": _floats(scores)})
                bar.update(1)
    finally:
        bar.close()

    # 4. The report.
    return write_report(
        out,
        images=images,
        cases=cases,
        done=todo,
        settings=settings,
        models=models,
        runners=runners,
        skipped=skipped,
        records=records,
        metric_settings=metric_settings,
        device=str(res.device),
    )


def _floats(scores: dict[str, Any]) -> dict[str, Any]:
    """JSON stores inf as the string "inf"; back to floats."""

    def conv(v: Any) -> Any:
        if isinstance(v, str) and v in ("inf", "-inf", "nan"):
            return float(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in scores.items()}
