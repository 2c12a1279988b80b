"""Where the work of ``blendedit batch`` and ``blendedit eval`` runs: a worker process's settings
and the Ray engine, work items spread over a Ray Data actor pool, one model set per worker,
loaded once.

The engine is only a transport and knows neither batch rows nor evaluation units: a caller gives
a callable class (its constructor loads the models; each call takes one item, a text, and returns
a small outcome, a text), the items, and :class:`RayOptions`; :meth:`RayPool.stream` returns the
outcomes as the workers finish them. The workers write their files straight into the shared
output folder (each caller commits its own units once), and the driver streams the outcomes
(``iter_rows``) into its log and progress bar. Users: ``blendedit.batch.cluster`` (manifest rows)
and ``blendedit.eval.cluster`` (evaluation units).

Why Ray Data's actor pool rather than hand-made actors: it gives one long-lived worker per GPU
(``ActorPoolStrategy``, ``num_gpus`` per actor), streaming with backpressure, and restarts an actor
that dies (out-of-memory kill, segfault, lost node) and retries its items, all with Ray's defaults.
Exactly-once does not rely on Ray: a retried item finds its folder committed, or commits it
itself, and a killed driver's rerun skips every committed item. Ray Data's own checkpointing is not
used (beta, block-granular; the callers' folders are finer and engine-independent).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from blendedit.errors import InputError, first_line

logger = logging.getLogger(__name__)

TESTED_RAY = ">=2.51,<2.64"  # the pin of the ``ray`` extra (pyproject.toml)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None  # None: RAY_ADDRESS, else a running local cluster, else a new one
    workers: int | None = None  # None: every GPU the cluster has / gpus_per_worker (CPU: 1)
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    actor_wait_s: float = 600.0  # how long workers may take to start before the run gives up


def setup_worker(threads: int | None = None, offline: bool = False) -> None:
    """Process-wide settings of a worker process, local or on Ray (the CLI sets the same for a
    local run)."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from blendedit.models import quiet_libraries

    quiet_libraries()
    torch.set_flush_denormal(True)  # as the CLI: subnormals make CPU arithmetic 30x slower
    if threads:
        torch.set_num_threads(threads)


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


def connect(address: str | None, ray: Any = None) -> tuple[Any, bool, float]:
    """(ray, started_here, seconds). No address and no ``RAY_ADDRESS``: a new private local
    cluster (``address="auto"`` finds a running one). ``ray``: the module, already imported
    by a caller that needs other parts of Ray than Ray Data (``api``'s Ray Serve)."""
    ray = ray or import_ray()
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


@dataclass(frozen=True)
class RayPool:
    """A connected cluster and the worker pool it can hold (see :func:`ray_pool`)."""

    ray: Any
    options: RayOptions
    workers: int
    gpus_per_worker: float
    connect_s: float  # seconds to connect (0 when Ray was already initialised)

    def stream(
        self, fn: type, column: str, items: list[str], fn_kwargs: dict[str, Any], in_flight: int
    ) -> Iterator[str]:
        """The ``outcome`` texts of ``fn`` (a callable class, built with ``fn_kwargs``) on
        ``items`` (texts in ``column``), one item per call, as the pool's actors finish them;
        ``in_flight``: items queued per actor."""
        from ray.data import ActorPoolStrategy, DataContext

        ray, opts, workers, gpw = self.ray, self.options, self.workers, self.gpus_per_worker
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


@contextlib.contextmanager
def ray_pool(options: RayOptions) -> Iterator[RayPool]:
    """Connect to the cluster of ``options`` (or start a private one, shut down on leaving) and
    plan its workers; a cluster that cannot hold them is one line, at once."""
    ray, started, init_s = connect(options.address)
    try:
        workers, gpw = plan_workers(
            ray.cluster_resources(), options.workers, options.gpus_per_worker,
            options.cpus_per_worker,
        )  # fmt: skip
        yield RayPool(ray, options, workers, gpw, init_s)
    finally:
        if started:
            ray.shutdown()
