"""``blendedit api --engine ray``: the same app, its edits run on Ray Serve replicas.

:class:`RayBackend` has :class:`~blendedit.api.backend.LocalBackend`'s members, so
:func:`~blendedit.api.app.create_app` does not change: the HTTP server (uvicorn) stays in this
process, admits or refuses each job (the same queue and per-key limits, counted over all the
replicas), and sends the admitted ones through a Serve deployment handle. Serve's own HTTP proxy is
not started (``proxy_location="Disabled"``): nothing listens but the app.

Each replica (:class:`EditorReplica`, one Ray actor) loads the editor once, with the server's
:class:`~blendedit.options.ModelOptions`, and runs one job at a time
(``max_ongoing_requests=1``); the others wait in Serve's router. Its ``edit`` method is a stream:
``started`` (the replica's process id), ``progress`` (done, total) as the steps run, then
``result`` (a :class:`~blendedit.api.jobs.JobResult`) or ``error``, so the native endpoint's
progress events come from whichever replica runs the job. A client that leaves cancels its
request; the replica stops the edit at its next checkpoint.

A replica that dies (killed, out of memory, its node lost) fails its requests with a Ray actor
error; the backend sends such a job again, up to ``retries`` times (a job is seeded, so a retry
gives the same pixels), and answers 500 after that: no request is lost silently. Serve starts a
new replica in the dead one's place.

Scaling: ``replicas`` fixed, or autoscaling between ``min_replicas`` and ``max_replicas`` on
queue length (Serve's ``target_ongoing_requests=1``: one job running or waiting per replica).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from blendedit.api.backend import Admission
from blendedit.api.jobs import EditJob, JobResult, ProgressFn, job_config, run_job
from blendedit.api.settings import ApiOptions
from blendedit.engine import TESTED_RAY, connect, plan_workers, setup_worker
from blendedit.errors import BlendEditError, Cancelled, InputError, first_line, one_line
from blendedit.frame.stop import StopFn
from blendedit.options import ModelOptions

logger = logging.getLogger("blendedit.api")


@dataclass(frozen=True)
class ServeOptions:
    """Where the replicas run and how many: ``replicas`` fixed, or autoscaling between
    ``min_replicas`` and ``max_replicas`` (either given); None everywhere: one replica per GPU
    (CPU: one)."""

    address: str | None = None  # None: RAY_ADDRESS, else a new private local cluster
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    gpus_per_replica: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_replica: float = 1.0
    retries: int = 2  # a job whose replica died is sent again this many times
    start_timeout_s: float = 600.0  # how long the replicas may take to load

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def check(self) -> ServeOptions:
        if self.autoscaling and self.replicas is not None:
            raise InputError("replicas: --replicas is fixed; leave it out with --min/max-replicas")
        low, high = self.min_replicas or 1, self.max_replicas or max(1, self.min_replicas or 1)
        if self.autoscaling and not 1 <= low <= high:
            raise InputError(
                f"min_replicas: {low} must be at least 1 and at most max_replicas ({high})"
            )
        if self.retries < 0:
            raise InputError(f"retries: {self.retries} must be >= 0")
        return self


class EditorReplica:
    """One Serve replica: the editor, loaded once, and one job at a time on its device."""

    def __init__(self, model_options: ModelOptions, threads: int, time_limit: float) -> None:
        setup_worker(threads, model_options.offline)
        self.editor = model_options.load()
        self.time_limit = time_limit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="blendedit-replica")

    def defaults(self) -> tuple[str, Any]:
        """(method, default config): what the server checks a job's settings against."""
        return getattr(self.editor, "method", "latent"), self.editor.default_config()

    def _run(self, job: EditJob, progress: ProgressFn, stop: StopFn) -> JobResult:
        import torch

        torch.set_flush_denormal(True)  # per thread, as LocalBackend: the same pixels
        return run_job(self.editor, job, progress, stop, self.time_limit)

    async def edit(self, job: EditJob) -> AsyncIterator[tuple[str, Any]]:
        """``("started", pid)``, ``("progress", (done, total))``..., then ``("result",
        JobResult)`` or ``("error", exception)``; cancelled: the edit stops at its next
        checkpoint."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        left = threading.Event()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (done, total))

        yield "started", os.getpid()
        work = loop.run_in_executor(self._executor, self._run, job, progress, left.is_set)
        try:
            while not work.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, work}, return_when="FIRST_COMPLETED")
                if getter in done:
                    yield "progress", getter.result()
                else:
                    getter.cancel()
            try:
                result = work.result()
            except BlendEditError as e:  # sent as it is: the app knows its kinds
                yield "error", e
                return
            except Exception as e:  # any other: one line (its class may not unpickle)
                yield "error", RuntimeError(one_line(e))
                return
            yield "result", result
        finally:
            left.set()  # cancelled: stop the edit (a no-op once it is done)


class _Defaults:
    """What :func:`~blendedit.api.jobs.job_config` needs of an editor, without the editor."""

    def __init__(self, method: str, config: Any) -> None:
        self.method, self._config = method, config

    def default_config(self) -> Any:
        return self._config


def _import_serve() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError:
        raise InputError(
            'engine: --engine ray needs Ray Serve; install it with pip install "blendedit[serve]" '
            f"(ray[serve]{TESTED_RAY})"
        ) from None
    return ray


def _lost_errors() -> tuple[type[BaseException], ...]:
    """The errors of a replica that died under its request (not of the edit itself)."""
    from ray import exceptions as rx
    from ray.serve import exceptions as sx

    return (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError,
            sx.ReplicaUnavailableError, sx.DeploymentUnavailableError)  # fmt: skip


class RayBackend(Admission):
    """The API's jobs on Ray Serve replicas (see the module's notes). ``close()`` deletes the
    Serve application, and the cluster when this backend started it."""

    def __init__(
        self, model_options: ModelOptions, options: ApiOptions, model: str,
        serve_options: ServeOptions | None = None, say: Any = None,
        autoscaling_overrides: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.serve_options = so = (serve_options or ServeOptions()).check()
        if autoscaling_overrides and not so.autoscaling:
            raise InputError("autoscaling_overrides: needs min_replicas or max_replicas")
        # Serve's autoscaling_config keys over the defaults below (tests: short delays); the
        # command line gives none.
        self._autoscaling_overrides = dict(autoscaling_overrides or {})
        self.model = model
        self.ray, self._started_ray, _ = connect(so.address, _import_serve())
        serve = self.ray.serve
        try:
            replicas, gpus = self._plan()
            super().__init__(options, slots=replicas)
            self.name = f"blendedit-api-{secrets.token_hex(3)}"
            if say is not None:
                many = f"{so.min_replicas or 1} to {replicas}" if so.autoscaling else replicas
                say(f"starting {many} replica(s) on Ray Serve, {gpus:g} GPU each")
            self._handle = self._run(serve, model_options, replicas, gpus)
            method, config = self._handle.defaults.remote().result(timeout_s=so.start_timeout_s)
        except BaseException:
            self._shutdown()
            raise
        self._defaults = _Defaults(method, config)
        self.method = method
        self._lost = _lost_errors()
        self._running: dict[str, int] = {}  # job id -> pid of the replica running it
        self.served_by: Counter[int] = Counter()  # replica pid -> jobs it answered
        self.retried = 0

    def _run(self, serve: Any, model_options: ModelOptions, replicas: int, gpus: float) -> Any:
        """Start the replicas (each loads the editor) and return the deployment's handle."""
        serve.start(proxy_location="Disabled")  # no HTTP proxy: the app is the only server
        app = self._deployment(serve, replicas, gpus).bind(
            model_options, max(1, int(self.serve_options.cpus_per_replica)),
            self.options.max_seconds,
        )  # fmt: skip
        try:
            return serve.run(app, name=self.name, route_prefix=None)
        except RuntimeError as e:
            raise InputError(f"engine: the replicas did not start ({first_line(e)})") from None

    def _plan(self) -> tuple[int, float]:
        """(replicas to start, GPUs each), checked against the cluster in one line."""
        so = self.serve_options
        want = so.replicas if not so.autoscaling else (so.min_replicas or 1)
        n, gpus = plan_workers(
            self.ray.cluster_resources(), want, so.gpus_per_replica, so.cpus_per_replica
        )
        return (so.max_replicas or n) if so.autoscaling else n, gpus

    def _deployment(self, serve: Any, replicas: int, gpus: float) -> Any:
        so = self.serve_options
        scale: dict[str, Any] = {"num_replicas": replicas}
        if so.autoscaling:
            low = so.min_replicas or 1
            scale = {"autoscaling_config": {
                "min_replicas": low, "initial_replicas": low,
                "max_replicas": so.max_replicas or max(low, replicas),
                "target_ongoing_requests": 1,  # queue length: one job per replica
                "upscale_delay_s": 5, "downscale_delay_s": 120,
                **self._autoscaling_overrides,
            }}  # fmt: skip
        return serve.deployment(
            EditorReplica,
            name="EditorReplica",
            max_ongoing_requests=1,  # one job at a time on a replica's device
            max_constructor_retry_count=2,  # a model that does not load fails the start soon
            ray_actor_options={"num_gpus": gpus, "num_cpus": so.cpus_per_replica},
            **scale,
        )

    def check(self, job: EditJob) -> None:
        job_config(self._defaults, job)

    def submit(
        self, job: EditJob, *, key: str, progress: ProgressFn | None = None,
        stop: StopFn | None = None,
    ) -> Awaitable[JobResult]:  # fmt: skip
        self._admit(key)
        return asyncio.ensure_future(self._job(job, key, progress, stop))

    async def _job(
        self, job: EditJob, key: str, progress: ProgressFn | None, stop: StopFn | None
    ) -> JobResult:
        t0 = time.perf_counter()
        try:
            for attempt in range(self.serve_options.retries + 1):
                try:
                    result = await self._attempt(job, progress, stop)
                    break
                except self._lost as e:
                    if attempt == self.serve_options.retries:
                        raise RuntimeError(
                            f"the replica running it died {attempt + 1} time(s) "
                            f"({type(e).__name__})"
                        ) from None
                    self._running.pop(job.id, None)
                    self.retried += 1
                    logger.warning("job %s: its replica died; sent again", job.id)
                    await asyncio.sleep(0.5 * (attempt + 1))
        except Exception:
            with self._lock:
                self.failed += 1
            raise
        finally:
            self._running.pop(job.id, None)
            self._release(key)
        self._timed(time.perf_counter() - t0)
        return result

    async def _attempt(
        self, job: EditJob, progress: ProgressFn | None, stop: StopFn | None
    ) -> JobResult:
        """One try on a replica: its events relayed, the request cancelled when ``stop()``."""
        if stop is not None and stop():
            raise Cancelled("cancelled before it started")
        stream = self._handle.options(stream=True).edit.remote(job)
        watch = asyncio.ensure_future(self._watch(stream, stop))
        pid = 0
        try:
            async for kind, value in stream:
                if kind == "started":
                    pid = self._running[job.id] = value
                elif kind == "progress" and progress is not None:
                    progress(*value)
                elif kind == "error":
                    raise value
                elif kind == "result":
                    self.served_by[pid] += 1
                    return value
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as e:
            if type(e).__name__ in ("RequestCancelledError", "TaskCancelledError"):
                raise Cancelled("cancelled") from None
            raise
        finally:
            watch.cancel()
        raise RuntimeError("the replica ended the job without a result")

    @staticmethod
    async def _watch(stream: Any, stop: StopFn | None) -> None:
        """Cancel the request when the caller's ``stop()`` turns true."""
        if stop is None:
            return
        while not stop():
            await asyncio.sleep(0.25)
        stream.cancel()

    def health(self) -> dict[str, Any]:
        with self._lock:
            in_flight, running = self._in_flight, len(self._running)
        return {
            "status": "ok",
            "model": self.model,
            "method": self.method,
            "engine": "ray",
            "replicas": self.slots,
            "running": running,
            "waiting": max(0, in_flight - running),
            "max_queue": self.options.max_queue,
            "served": self.served,
            "failed": self.failed,
            "refused": self.refused,
            "retried": self.retried,
        }

    def close(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        """Delete this server's application; Serve and the cluster too when started here."""
        from ray import serve

        name = getattr(self, "name", None)
        try:
            if self._started_ray:
                serve.shutdown()
            elif name is not None:
                serve.delete(name)
        finally:
            if self._started_ray and self.ray.is_initialized():
                self.ray.shutdown()
            self._started_ray = False


__all__ = ["EditorReplica", "RayBackend", "ServeOptions"]
