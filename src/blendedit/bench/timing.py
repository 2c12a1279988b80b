"""Device clocks for the bench: synchronised timestamps, the best of repeated runs, the mean time
of a denoising step (blendedit and diffusers timed the same way)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(device: torch.device, run: Callable[[int], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of ``repeats`` synchronised runs ``run(seed)`` (seeds 100, 200, ...): (seconds,
    what that run returned)."""
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = run(100 * (r + 1))
        sync(device)
        runs.append((time.perf_counter() - t0, out))
    return min(runs, key=lambda x: x[0])


def timed_steps(device: torch.device, run: Callable[[Callable[[], None]], Any]) -> float:
    """Mean ms per denoising step, from device-synchronised timestamps at the end of every step;
    blendedit (progress callback) and diffusers (callback_on_step_end) are timed the same way."""
    stamps: list[float] = []

    def mark() -> None:
        sync(device)
        stamps.append(time.perf_counter())

    run(mark)
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1) * 1000
