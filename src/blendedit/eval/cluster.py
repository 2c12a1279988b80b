"""``blendedit eval --engine ray``: the evaluation's (input, method) units on a Ray cluster
(:mod:`blendedit.engine`).

Each unit makes one input's predictions with one method and their metrics, written into the same
cache the local run uses (:class:`~blendedit.eval.store.EvalStore`): so a run resumes like the
local one, and a cluster run and a local run can finish each other's work. The driver writes each
method's ``settings.json`` (refusing stale folders) before any work, sends only the units without
a finished cache to the workers, and then the local loop reads everything back and writes the
report, loading no model.

A unit's folder is written under a private name and renamed into place whole (``meta.json``
inside, last; :meth:`~blendedit.eval.store.EvalStore.commit_case`), so a worker that dies mid-unit
leaves nothing half-made, and a retried unit is committed once. A unit that fails is reported and
the others go on; the run then stops with the count, and running again retries only the failed
units.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from blendedit.engine import RayOptions, ray_pool, setup_worker
from blendedit.errors import InputError
from blendedit.eval.methods import Resources, Runner, build_runner
from blendedit.eval.protocol import EvalCase
from blendedit.eval.store import EvalStore, score_case
from blendedit.io import save_json


@dataclasses.dataclass(frozen=True)
class Unit:
    method: str
    case: int  # index into the cases list


class EvalWorker:
    """Callable class of the Ray actor pool: loads each model once (``Resources``) and keeps one
    runner per method."""

    def __init__(self, out: str, settings: Any, models: Any, cases: list[EvalCase],
                 metrics_file: str) -> None:  # fmt: skip
        setup_worker()
        self.store, self.settings, self.cases = EvalStore(out), settings, cases
        self.metrics_file = metrics_file
        self.res = Resources(models)
        self.runners: dict[str, Runner] = {}
        self.warm: set[str] = set()

    def runner(self, name: str) -> Runner:
        if name not in self.runners:
            s = self.settings
            self.runners[name] = build_runner(name, self.res, s.batch_for(name), s.latent, s.pixel)
        return self.runners[name]

    def unit(self, name: str, case: EvalCase) -> None:
        """Predictions (unless cached) and metrics (unless cached) of one input and method."""
        case_dir = self.store.case_dir(name, case)
        meta = self.store.load_meta(case_dir, case)  # None: to make (a half-made one is removed)
        image = mask = None
        if meta is None:
            runner = self.runner(name)
            image, mask = case.load_image(), case.mask()
            seeds = [case.seed + i for i in range(self.settings.batch_for(name))]
            if self.settings.warmup and name not in self.warm:
                runner.warmup(image, mask, case.prompt, case.seed)
            self.warm.add(name)
            run = runner.run(image, mask, case.prompt, seeds, self.settings.time_single)
            meta = self.store.commit_case(case_dir, case, run, str(self.res.device))
        mpath = case_dir / self.metrics_file
        if not mpath.is_file():
            scores = score_case(case_dir, meta, case, self.res.metric_models(), image, mask)
            with contextlib.suppress(InputError):  # written meanwhile by a retried unit
                save_json(scores, mpath)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for text in batch["unit"]:
            u = Unit(**json.loads(str(text)))
            t0 = time.perf_counter()
            error = None
            try:
                self.unit(u.method, self.cases[u.case])
            except Exception as e:  # reported per unit; the run goes on
                first = str(e).strip().splitlines()
                error = f"{type(e).__name__}: {first[0] if first else ''}"
            out.append(
                json.dumps(
                    {
                        **dataclasses.asdict(u),
                        "error": error,
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
            )
        return {"outcome": np.array(out, dtype=object)}


def fill_cache(
    out: Path,
    settings: Any,
    models: Any,
    methods: list[str],
    cases: list[EvalCase],
    todo: list[EvalCase],
    metrics_file: str,
    options: RayOptions,
) -> dict[str, Any]:
    """Make every missing (method, input) unit of ``todo`` on Ray workers; returns the engine's
    numbers. Raises (one line) when units failed, after the others are done and cached."""
    store = EvalStore(out)
    index = {c.id: i for i, c in enumerate(cases)}
    units = [Unit(name, index[case.id]) for name in methods for case in todo
             if not store.finished(name, case, metrics_file)]  # fmt: skip
    info: dict[str, Any] = {"units": len(units)}
    if not units:
        return info
    failed: list[dict[str, Any]] = []
    with ray_pool(options) as pool:
        info.update(workers=pool.workers, gpus_per_worker=pool.gpus_per_worker,
                    connect_s=round(pool.connect_s, 3))  # fmt: skip
        kwargs = {
            "out": str(out.resolve()),
            "settings": settings,
            "models": models,
            "cases": cases,
            "metrics_file": metrics_file,
        }
        items = [json.dumps(dataclasses.asdict(u)) for u in units]
        bar = tqdm(total=len(units), desc="eval (ray)", unit="unit", disable=not settings.progress)
        try:
            for text in pool.stream(EvalWorker, "unit", items, kwargs, 1):
                o = json.loads(text)
                if o["error"]:
                    failed.append(o)
                bar.set_postfix(failed=len(failed), refresh=False)
                bar.update(1)
        finally:
            bar.close()
    store.remove_leftovers(methods)  # what killed workers left under private names
    if failed:
        f = failed[0]
        raise InputError(
            f"eval: {len(failed)} of {len(units)} unit(s) failed on the cluster (first: "
            f"{f['method']} on input {cases[f['case']].id}: {f['error']}); the others are "
            "cached: run again to retry"
        )
    return info
