"""One way to stop an edit, whatever stage it is in: a caller's stop flag and a time limit.

A caller opens a scope (:func:`stopping`, or ``editor(..., stop=..., time_limit=...)``, which opens
one around the whole edit); every long loop of every method calls :func:`checkpoint`: each
denoising tick, each Adam step of the background reconstruction, between decode chunks, before
ranking, before each kept result's background and paste-back, before each file is saved. At a
checkpoint the scope's ``stop()`` returning True raises :class:`~blendedit.errors.Cancelled`, and a
passed deadline :class:`~blendedit.errors.TimeLimitError`; outside any scope a checkpoint does
nothing. The scope lives in a context variable: it belongs to the thread (or task) that opened it,
so one server thread's Cancel never stops another's edit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from blendedit.errors import Cancelled, InputError, TimeLimitError

StopFn = Callable[[], bool]  # True: stop now


@dataclass(frozen=True)
class _Scope:
    stop: StopFn | None
    deadline: float | None  # time.monotonic() after which the edit stops
    limit: float | None  # the time limit in seconds, for the message
    outer: _Scope | None = None


_SCOPE: ContextVar[_Scope | None] = ContextVar("blendedit_stop_scope", default=None)


def checkpoint(stage: str = "") -> None:
    """Raise :class:`Cancelled` or :class:`TimeLimitError` when the open scope (or one around
    it) says stop; ``stage`` names where, for the message. Cheap: a context variable, a clock."""
    scope = _SCOPE.get()
    where = f" during {stage}" if stage else ""
    while scope is not None:
        if scope.stop is not None and scope.stop():
            raise Cancelled(f"cancelled{where}")
        if scope.deadline is not None and time.monotonic() > scope.deadline:
            raise TimeLimitError(
                f"time limit: the edit ran over its {scope.limit:g} s and was stopped{where}"
            )
        scope = scope.outer


def check_time_limit(time_limit: float | None) -> float | None:
    """A time limit in seconds: None (no limit) or a finite number > 0; one line otherwise."""
    if time_limit is None:
        return None
    try:
        value = float(time_limit)
    except (TypeError, ValueError):
        raise InputError(f"time_limit: {time_limit!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"time_limit: {time_limit!r} must be a finite number of seconds > 0")
    return value


@contextmanager
def stopping(stop: StopFn | None = None, time_limit: float | None = None) -> Iterator[None]:
    """A scope in which :func:`checkpoint` stops when ``stop()`` is True or ``time_limit``
    seconds (from now) have passed. Scopes nest: an inner one adds to the outer ones."""
    limit = check_time_limit(time_limit)
    if stop is not None and not callable(stop):
        raise InputError(f"stop: {stop!r} is not a callable returning True to stop")
    if stop is None and limit is None:
        yield
        return
    deadline = None if limit is None else time.monotonic() + limit
    token = _SCOPE.set(_Scope(stop, deadline, limit, _SCOPE.get()))
    try:
        yield
    finally:
        _SCOPE.reset(token)


__all__ = ["StopFn", "check_time_limit", "checkpoint", "stopping"]
