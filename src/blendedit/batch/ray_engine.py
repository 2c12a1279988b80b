"""The Ray engine: rows spread over a Ray Data actor pool, one editor per worker, loaded once.

Only a transport: each actor runs :func:`~blendedit.batch.worker.process_row` on the rows it is
given and returns the small :class:`~blendedit.batch.store.Outcome`; the files are written by the
actor straight into the shared output folder (committed once, see ``blendedit.batch.store``), and
the driver streams the outcomes (``iter_rows``) into ``summary.jsonl`` and its progress bar.

Why Ray Data's actor pool rather than hand-made actors: it gives one long-lived worker per GPU
(``ActorPoolStrategy``, ``num_gpus`` per actor), streaming with backpressure, and restarts an actor
that dies (out-of-memory kill, segfault, lost node) and retries its rows, all with Ray's defaults.
Exactly-once does not rely on Ray: a retried row finds its folder committed, or commits it itself,
and a killed driver's rerun skips every committed row. Ray Data's own checkpointing is not used (beta,
block-granular; the row folders are finer and engine-independent).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from blendedit.batch.manifest import Row
from blendedit.batch.store import BatchStore, Outcome
from blendedit.batch.worker import EditorCache, WorkerSpec, process_row, setup_worker
from blendedit.errors import InputError, first_line

logger = logging.getLogger(__name__)

TESTED_RAY = ">=2.51,<2.64"  # the pin of the ``ray`` extra (pyproject.toml)


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(
            'engine: ray needs Ray Data; install it with pip install "blendedit[ray]" '
            f"(ray[data]{TESTED_RAY})"
        ) from None
    return ray


class RayWorker:
    """The callable class of the actor pool: one per worker process, its editor loaded on the
    first row and kept."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = WorkerSpec(**spec)
        setup_worker(self.spec.threads, self.spec.offline)
        self.cache = EditorCache(self.spec.device, self.spec.dtype)
        self.store = BatchStore(self.spec.out)
        self.shared = self.spec.shared_settings()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for text in batch["row"]:
            row = Row.from_dict(json.loads(str(text)))
            o = process_row(self.cache, self.store, row, self.shared)
            out.append(json.dumps(dataclasses.asdict(o)))
        return {"outcome": np.array(out, dtype=object)}


def connect(address: str | None) -> tuple[Any, bool, float]:
    """(ray, started_here, seconds). No address and no ``RAY_ADDRESS``: a new private local
    cluster (``address="auto"`` finds a running one)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False, 0.0
    t0 = time.perf_counter()
    try:
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(
            f"ray_address: cannot reach a Ray cluster at {address or os.environ.get('RAY_ADDRESS') or 'local'!r} ({first_line(e, None)})"
        ) from None
    return ray, True, time.perf_counter() - t0


def plan_workers(resources: dict[str, float], workers: int | None, gpus: float | None,
                 cpus: float) -> tuple[int, float]:  # fmt: skip
    """(workers, gpus per worker) that the cluster can hold, else one line saying why not: Ray
    itself would wait for ever for resources that do not exist."""
    have_gpu, have_cpu = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    gpw = (1.0 if have_gpu else 0.0) if gpus is None else float(gpus)
    if gpw < 0 or cpus <= 0:
        raise InputError(f"gpus_per_worker: {gpw} and cpus_per_worker {cpus} must be >= 0 and > 0")
    if workers is None:
        workers = max(1, int(have_gpu // gpw)) if gpw else 1
    if workers < 1:
        raise InputError(f"workers: {workers} must be at least 1")
    if gpw * workers > have_gpu + 1e-9:
        raise InputError(
            f"gpus_per_worker: {workers} worker(s) x {gpw:g} GPU need {gpw * workers:g} GPUs; "
            f"the cluster has {have_gpu:g} (use fewer --workers, a smaller --gpus-per-worker, "
            "or --gpus-per-worker 0 for CPU workers)"
        )
    if cpus * workers > have_cpu + 1e-9:
        raise InputError(
            f"workers: {workers} worker(s) x {cpus:g} CPU need {cpus * workers:g} CPUs; "
            f"the cluster has {have_cpu:g}"
        )
    return workers, gpw


def stream_pool(
    ray: Any,
    fn: type,
    column: str,
    items: list[str],
    opts: Any,
    workers: int,
    gpw: float,
    fn_kwargs: dict[str, Any],
    in_flight: int,
) -> Iterator[str]:
    """The ``outcome`` texts of ``fn`` (a callable class) on ``items`` (texts in ``column``), one
    item per call, as a Ray Data pool of ``workers`` actors (``gpw`` GPUs each) finishes them."""
    from ray.data import ActorPoolStrategy, DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress notes
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver has its own bar
    ctx.print_on_execution_start = False
    ctx.wait_for_min_actors_s = opts.actor_wait_s
    ds = ray.data.from_items(
        [{column: t} for t in items], override_num_blocks=min(len(items), 8 * workers)
    )
    ds = ds.map_batches(
        fn,
        batch_size=1,  # one item per call: a retry after a worker death redoes one item
        compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=in_flight),
        fn_constructor_kwargs=fn_kwargs,
        num_gpus=gpw or None,
        num_cpus=opts.cpus_per_worker,
    )
    try:
        for rec in ds.iter_rows():
            yield str(rec["outcome"])
    except Exception as e:
        if type(e).__name__ == "GetTimeoutError":
            raise InputError(
                f"workers: no worker started within {opts.actor_wait_s:g} s "
                f"({workers} x {gpw:g} GPU, {opts.cpus_per_worker:g} CPU asked; cluster: "
                f"{ray.cluster_resources()})"
            ) from None
        raise


def run_rows(
    rows: list[Row], spec: WorkerSpec, opts: Any, extra: dict[str, Any]
) -> Iterator[Outcome]:
    """Outcomes of ``rows`` as the workers finish them (any order). ``extra`` receives the
    engine's numbers (workers, GPUs, seconds to connect) for the summary."""
    ray, started, init_s = connect(opts.address)
    try:
        workers, gpw = plan_workers(
            ray.cluster_resources(), opts.workers, opts.gpus_per_worker, opts.cpus_per_worker
        )
        extra.update(ray_workers=workers, ray_gpus_per_worker=gpw, ray_connect_s=round(init_s, 3))
        items = [json.dumps(r.to_dict()) for r in rows]
        spec_kwargs = {"spec": dataclasses.asdict(spec)}
        for text in stream_pool(ray, RayWorker, "row", items, opts, workers, gpw, spec_kwargs, 2):
            yield Outcome(**json.loads(text))
    finally:
        if started:
            ray.shutdown()
