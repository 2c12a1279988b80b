"""Where the API's jobs run: the small :class:`Backend` interface the HTTP layer talks to, and
:class:`LocalBackend`, one editor in this process.

A backend admits a job or refuses it at once (:class:`Busy`: the queue is full, or the key has
its most requests in flight; the app answers 429 with ``Retry-After``), then runs it and resolves
the awaitable it returned. Another engine (Ray Serve replicas) is another class with the same
methods; the app does not change.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import torch

from blendedit.api.jobs import EditJob, JobResult, ProgressFn, job_config, run_job
from blendedit.api.settings import ApiOptions
from blendedit.errors import Cancelled
from blendedit.frame.stop import StopFn


class Busy(Exception):
    """A job refused before it was queued: ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int, code: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class Backend(Protocol):
    """What the HTTP layer needs from an engine."""

    model: str  # the served model's id (no server path)
    method: str  # the editing method (latent, pixel, local-clip)

    def check(self, job: EditJob) -> None:
        """Refuse bad settings in one line (InputError) before the job is queued."""

    def submit(
        self, job: EditJob, *, key: str, progress: ProgressFn | None = None,
        stop: StopFn | None = None,
    ) -> Awaitable[JobResult]:  # fmt: skip
        """Admit ``job`` (or raise :class:`Busy` at once) and return what resolves to its result;
        called in the event loop. ``progress`` is called from another thread."""

    def health(self) -> dict[str, Any]:
        """A small JSON-able status (queue length, jobs served)."""

    def close(self) -> None:
        """Stop taking jobs and free the device."""


class Admission:
    """The admission both backends share: at most ``options.max_queue`` jobs waiting besides
    the ``slots`` running, at most ``options.per_key`` in flight per key; a fair
    ``Retry-After`` from the jobs' smoothed time; the served/failed/refused counts."""

    def __init__(self, options: ApiOptions, slots: int = 1) -> None:
        self.options = options
        self.slots = slots  # jobs that run at once (LocalBackend: 1; Ray: the replicas)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._per_key: Counter[str] = Counter()
        self._mean_s = 10.0  # seconds a job takes, smoothed; the first guess before any ran
        self.served = 0
        self.failed = 0
        self.refused = 0

    def retry_after(self) -> int:
        """A fair wait in seconds before trying again: the jobs ahead times their mean time."""
        rounds = max(1, math.ceil(self._in_flight / max(1, self.slots)))
        return max(1, min(3600, math.ceil(self._mean_s * rounds)))

    def _admit(self, key: str) -> None:
        with self._lock:
            if self._in_flight >= self.options.max_queue + self.slots:
                self.refused += 1
                raise Busy(
                    f"the queue is full ({self.options.max_queue} waiting); try again later",
                    self.retry_after(),
                    "queue_full",
                )
            if self._per_key[key] >= self.options.per_key:
                self.refused += 1
                raise Busy(
                    f"this key already has {self.options.per_key} requests in flight, the "
                    "most allowed; wait for one to finish",
                    self.retry_after(),
                    "rate_limit_exceeded",
                )
            self._in_flight += 1
            self._per_key[key] += 1

    def _release(self, key: str) -> None:
        with self._lock:
            self._in_flight -= 1
            self._per_key[key] -= 1
            if self._per_key[key] <= 0:
                del self._per_key[key]

    def _timed(self, seconds: float) -> None:
        with self._lock:
            self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
            self.served += 1


class LocalBackend(Admission):
    """One editor on this machine: one job at a time on the device, at most
    ``options.max_queue`` waiting besides it, at most ``options.per_key`` in flight per key.
    A job whose client left (``stop()`` True) is dropped before it starts, or stopped at the
    next checkpoint of whatever stage it is in."""

    def __init__(self, editor: Any, options: ApiOptions, model: str) -> None:
        super().__init__(options, slots=1)
        self.editor = editor
        self.model = model
        self.method = getattr(editor, "method", "latent")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="blendedit-device")

    def check(self, job: EditJob) -> None:
        job_config(self.editor, job)

    def _run(self, job: EditJob, progress: ProgressFn | None, stop: StopFn) -> JobResult:
        torch.set_flush_denormal(True)  # as the CLI does: the same pixels as a command line
        if stop():
            raise Cancelled("cancelled before it started")
        t0 = time.perf_counter()
        try:
            result = run_job(self.editor, job, progress, stop, self.options.max_seconds)
        except Exception:
            self.failed += 1
            raise
        self._timed(time.perf_counter() - t0)
        return result

    def submit(
        self, job: EditJob, *, key: str, progress: ProgressFn | None = None,
        stop: StopFn | None = None,
    ) -> Awaitable[JobResult]:  # fmt: skip
        self._admit(key)
        left = threading.Event()  # the caller stopped waiting (its client went away)

        def should_stop() -> bool:
            return left.is_set() or (stop is not None and stop())

        try:
            future: Future[JobResult] = self._executor.submit(self._run, job, progress, should_stop)
        except RuntimeError:  # closed
            self._release(key)
            raise
        future.add_done_callback(lambda f: self._release(key))  # run, failed or cancelled
        return _awaited(future, left)

    def health(self) -> dict[str, Any]:
        with self._lock:
            in_flight = self._in_flight
        return {
            "status": "ok",
            "model": self.model,
            "method": self.method,
            "running": min(in_flight, 1),
            "waiting": max(0, in_flight - 1),
            "max_queue": self.options.max_queue,
            "served": self.served,
            "failed": self.failed,
            "refused": self.refused,
        }

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


async def _awaited(future: Future[JobResult], left: threading.Event) -> JobResult:
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        left.set()  # a queued job is dropped, a running one stopped at its next checkpoint
        future.cancel()
        raise


__all__ = ["Admission", "Backend", "Busy", "LocalBackend"]
