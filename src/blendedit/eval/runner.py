"""The evaluation loop: cases x methods, predictions cached on disk, resumable, then the report.

The run folder and its cache (what is finished, what is refused) are
:class:`~blendedit.eval.store.EvalStore`'s; ``engine="ray"`` first makes the missing units on a
Ray cluster (:mod:`blendedit.eval.cluster`) into the same cache, which the loop here then reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from blendedit.config import EditConfig
from blendedit.engine import RayOptions
from blendedit.errors import InputError
from blendedit.eval.cluster import fill_cache
from blendedit.eval.methods import (
    DEFAULT_METHODS,
    METHODS,
    EvalModels,
    Resources,
    Runner,
    Unavailable,
    build_runner,
    recommended_batch,
)
from blendedit.eval.metrics import classifier_top_k
from blendedit.eval.protocol import DEFAULT_MAX_SIDE, MASK_SIDE_RANGE, EvalCase, make_cases
from blendedit.eval.report import write_report
from blendedit.eval.store import EvalStore, fingerprint, floats, metrics_name, score_case
from blendedit.io import check_writable, read_json, save_json
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
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Run the protocol (or resume it) and write the report; returns ``report.json``'s content.

    Every method in ``settings.methods`` that can run does; one whose model was not given is
    recorded as skipped with the reason. Interrupting (Ctrl-C, a crash, a kill) loses at most the
    input being generated: run again with the same arguments to continue.

    ``engine="ray"`` makes the (input, method) units on a Ray cluster first (``ray``: a
    :class:`blendedit.engine.RayOptions`), into the same cache; the local loop then only reads it.
    """
    if engine not in ("local", "ray"):
        raise InputError(f"engine: {engine!r} is not one of local, ray")
    settings = (settings or EvalSettings()).check()
    check_writable(out)  # before any model (or the classifier's labels) is looked at
    models = models or EvalModels()
    res = resources or Resources(models)
    images = Path(images_dir)
    store = EvalStore(out)

    # 1. The inputs: cases drawn from the seed, prompts from the classifier's own label map.
    cases, todo = _open_cases(store, images, settings, res.labels)

    # 2. The methods that can run; the others get a note.
    runners, skipped = _build_runners(settings, res)

    # 3. Predictions and metrics, case by case; finished work is read back, never redone.
    metric_settings = _metric_settings(models)
    metrics_file = metrics_name(metric_settings)
    if engine == "ray" and runners:
        for name, runner in runners.items():  # folders of other settings: refused before any work
            store.method_dir(name, runner.settings())
        fill_cache(store.out, settings, models, list(runners), cases, todo, metrics_file,
                   ray or RayOptions())  # fmt: skip
    records = _predict_and_score(store, settings, res, runners, todo, metrics_file)

    # 4. The report.
    return write_report(
        store.out,
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


def _open_cases(
    store: EvalStore, images: Path, settings: EvalSettings, labels: Mapping[int, str]
) -> tuple[list[EvalCase], list[EvalCase]]:
    """(every case of the protocol, the cases to evaluate now); the run folder opened (or
    resumed) for them."""
    cases = make_cases(images, settings.n_images, settings.seed, labels, settings.max_side)
    todo = cases[: settings.limit] if settings.limit else cases
    store.open(_protocol(images, settings, cases, labels))
    return cases, todo


def _build_runners(
    settings: EvalSettings, res: Resources
) -> tuple[dict[str, Runner], dict[str, str]]:
    """(name -> runner of each method that can run, name -> why for the others)."""
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
    return runners, skipped


def _predict_and_score(
    store: EvalStore,
    settings: EvalSettings,
    res: Resources,
    runners: Mapping[str, Runner],
    todo: Sequence[EvalCase],
    metrics_file: str,
) -> dict[str, list[dict[str, Any]]]:
    """Each method's records (case, meta.json, metrics) of ``todo``: cached ones read back,
    missing predictions made and missing metrics computed, each written to the cache."""
    records: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(
        total=len(runners) * len(todo), desc="eval", unit="input", disable=not settings.progress
    )
    try:
        for name, runner in runners.items():
            store.method_dir(name, runner.settings())
            warm = not settings.warmup  # first calls pay one-time costs: not timed
            records[name] = []
            for case in todo:
                bar.set_postfix_str(f"{name} {case.id}")
                case_dir = store.case_dir(name, case)
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
                records[name].append({"case": case, "meta": meta, "metrics": floats(scores)})
                bar.update(1)
    finally:
        bar.close()
    return records
