"""``blendedit eval --engine ray``: the evaluation's (input, method) units on a Ray cluster.

Each unit makes one input's predictions with one method and their metrics, written into the same
cache the local run uses (``predictions/<method>/<case>/``, see ``blendedit.eval.runner``): so a run
resumes like the local one, and a cluster run and a local run can finish each other's work. The
driver writes each method's ``settings.json`` (refusing stale folders) before any work, sends only
the units without a finished cache to the workers, and then the local loop reads everything back
and writes the report, loading no model.

A unit's folder is written under a private name and renamed into place whole (``meta.json``
inside, last), so a worker that dies mid-unit leaves nothing half-made, and a retried unit is
committed once. A unit that fails is reported and the others go on; the run then stops with the
count, and running again retries only the failed units.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from blendedit.errors import InputError


@dataclasses.dataclass(frozen=True)
class Unit:
    method: str
    case: int  # index into the cases list


def _case_dir(out: Path, method: str, case: Any) -> Path:
    return out / "predictions" / method / case.id


class EvalWorker:
    """Callable class of the Ray actor pool: loads each model once (``Resources``) and keeps one
    runner per method."""

    def __init__(self, out: str, settings: Any, models: Any, cases: list[Any],
                 metrics_file: str) -> None:  # fmt: skip
        from blendedit.batch.worker import setup_worker
        from blendedit.eval.methods import Resources

        setup_worker()
        self.out, self.settings, self.cases = Path(out), settings, cases
        self.metrics_file = metrics_file
        self.res = Resources(models)
        self.runners: dict[str, Any] = {}
        self.warm: set[str] = set()

    def runner(self, name: str) -> Any:
        from blendedit.eval.methods import build_runner

        if name not in self.runners:
            s = self.settings
            self.runners[name] = build_runner(name, self.res, s.batch_for(name), s.latent, s.pixel)
        return self.runners[name]

    def unit(self, name: str, case: Any) -> None:
        """Predictions (unless cached) and metrics (unless cached) of one input and method."""
        from blendedit.eval.runner import _Store, score_case
        from blendedit.io import read_json, save_json

        case_dir = _case_dir(self.out, name, case)
        meta = _Store.load_meta(case_dir, case)  # None: to make (a half-made folder is removed)
        image = mask = None
        if meta is None:
            runner = self.runner(name)
            image, mask = case.load_image(), case.mask()
            seeds = [case.seed + i for i in range(self.settings.batch_for(name))]
            if self.settings.warmup and name not in self.warm:
                runner.warmup(image, mask, case.prompt, case.seed)
            self.warm.add(name)
            run = runner.run(image, mask, case.prompt, seeds, self.settings.time_single)
            tmp = case_dir.parent / (
                f".{case.id}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
            )
            try:
                meta = _Store.save_case(tmp, case, run, str(self.res.device))
                try:
                    os.rename(tmp, case_dir)
                except OSError:
                    if not (case_dir / "meta.json").is_file():
                        raise
                    meta = read_json(case_dir / "meta.json")  # committed meanwhile by a retry
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
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


def _units(out: Path, names: list[str], cases: list[Any], todo: list[Any], metrics_file: str):
    index = {c.id: i for i, c in enumerate(cases)}
    for name in names:
        for case in todo:
            d = _case_dir(out, name, case)
            if not ((d / "meta.json").is_file() and (d / metrics_file).is_file()):
                yield Unit(name, index[case.id])


def fill_cache(
    out: Path,
    settings: Any,
    models: Any,
    methods: list[str],
    cases: list[Any],
    todo: list[Any],
    metrics_file: str,
    options: Any,
) -> dict[str, Any]:
    """Make every missing (method, input) unit of ``todo`` on Ray workers; returns the engine's
    numbers. Raises (one line) when units failed, after the others are done and cached."""
    from blendedit.batch.ray_engine import connect, plan_workers, stream_pool

    units = list(_units(out, methods, cases, todo, metrics_file))
    info: dict[str, Any] = {"units": len(units)}
    if not units:
        return info
    ray, started, init_s = connect(options.address)
    failed: list[dict[str, Any]] = []
    try:
        workers, gpw = plan_workers(
            ray.cluster_resources(), options.workers, options.gpus_per_worker,
            options.cpus_per_worker,
        )  # fmt: skip
        info.update(workers=workers, gpus_per_worker=gpw, connect_s=round(init_s, 3))
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
            for text in stream_pool(
                ray, EvalWorker, "unit", items, options, workers, gpw, kwargs, 1
            ):
                o = json.loads(text)
                if o["error"]:
                    failed.append(o)
                bar.set_postfix(failed=len(failed), refresh=False)
                bar.update(1)
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    # Leftovers of killed workers (private folder names start with "."): never read, removed.
    for name in methods:
        mdir = out / "predictions" / name
        for p in mdir.glob(".*.*") if mdir.is_dir() else []:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    if failed:
        f = failed[0]
        raise InputError(
            f"eval: {len(failed)} of {len(units)} unit(s) failed on the cluster (first: "
            f"{f['method']} on input {cases[f['case']].id}: {f['error']}); the others are "
            "cached: run again to retry"
        )
    return info
