"""blendedit's per-step time against its family's diffusers pipeline, on the tiny presets,
interleaved so a loaded machine does not bias the ratio (issue 20: within 0.9-1.1x).

For each preset: the editor built once with random weights (``blendedit.bench.build``), the edit
``blendedit bench`` times (``--steps 8 --batch 4``: 6 steps blended after ``blend_start`` 0.25),
and diffusers' pipeline on the same components (``blendedit.bench.reference.reference_run``: the
inpaint pipeline, or where the family names a ``timing_pipeline``, FLUX.2 [klein]'s, [dev]'s
and Krea 2's, its text-to-image pipeline's loop run as an img2img with diffusers' blend in a
callback). Each
round times one of ours then one of diffusers' (mean ms per step from step-end stamps, as the
bench does) and, from forward hooks, the time in denoiser calls per edit on each side (diffusers'
FLUX.2 and Chroma pipelines call it twice a step for guidance, as blendedit's Chroma does); the table
gives the medians over rounds and the median of the rounds' ratios, with the load average
before and after.

One intra-op thread by default (``--threads``): with other jobs on the two cores, a two-thread
step waits for whichever thread was descheduled, and single calls vary by 10x; one thread keeps a
round's two measurements comparable.

``--keep-heap``: glibc's malloc keeps freed memory instead of returning it to the kernel
(``mallopt``: no trimming, no mmap for large blocks), so no side page-faults its large tensors
afresh on every call; by default a call of 2B (blendedit's batched guidance) faults thousands of
pages a call where diffusers' two calls of B fault few (docs/benchmarks.md).

    nice -n 5 python tools/step_ratio.py --rounds 9 > /tmp/ratio.md

The table goes into docs/benchmarks.md ("The models of 2025-2026").
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from blendedit.bench.build import build_editor
from blendedit.bench.measure import _config, _inputs, architecture
from blendedit.bench.reference import PROMPT, reference_run
from blendedit.bench.timing import timed_steps

PRESETS = ("tiny-flux", "tiny-chroma", "tiny-zimage", "tiny-qwen-image", "tiny-flux2-klein")
PRESETS += ("tiny-krea2", "tiny-flux2-dev")  # their text-to-image pipeline's loop (LoopRun)


class CallClock:
    """Forward hooks on the denoiser: the duration of each call while installed."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.times, self.t0 = module, [], 0.0

    def __enter__(self) -> CallClock:
        self.times = []
        self.hooks = [
            self.module.register_forward_pre_hook(
                lambda *a: setattr(self, "t0", time.perf_counter())
            ),
            self.module.register_forward_hook(
                lambda *a: self.times.append(time.perf_counter() - self.t0)
            ),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.hooks:
            h.remove()


def measure(preset: str, rounds: int, steps: int, batch: int) -> dict[str, Any]:
    """One preset: per round (ours step ms, diffusers step ms, ours and diffusers' seconds in
    denoiser calls)."""
    arch = architecture(preset)
    dev = torch.device("cpu")
    photo, mask = _inputs(None, None, arch.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        editor = build_editor(arch, dev, torch.float32, Path(tmp))
    cfg = _config(editor, arch, False, batch, steps, None, 0.25, "stitch", None)
    edit = partial(editor, photo, mask, PROMPT, config=cfg)
    ref = reference_run(editor, photo, mask, cfg, dev)
    edit(seed=0)
    ref.edit(0)  # warm-up of both
    clock = CallClock(editor.backbone.unet)
    rows = []
    for _ in range(rounds):
        with clock:
            ours = timed_steps(dev, lambda mark: edit(seed=7, progress=lambda d, n: mark()))
        ours_call = sum(clock.times)
        with clock:
            theirs = ref.step_ms()
        theirs_call = sum(clock.times)
        rows.append((ours, theirs, ours_call, theirs_call))
    return {
        "preset": preset,
        "reference": type(ref.pipe).__name__,
        "ours_ms": statistics.median(r[0] for r in rows),
        "theirs_ms": statistics.median(r[1] for r in rows),
        "ratio": statistics.median(r[0] / r[1] for r in rows),
        "call_ratio": statistics.median(r[2] / r[3] for r in rows),
    }


def keep_heap() -> None:
    """glibc's ``mallopt``: never trim the heap (M_TRIM_THRESHOLD -1), no mmap below 1 GB
    (M_MMAP_THRESHOLD -3), 256 MB of top padding (M_TOP_PAD -2)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    for option, value in ((-1, 2**31 - 1), (-3, 2**30), (-2, 2**28)):
        if not libc.mallopt(option, value):
            raise SystemExit(f"--keep-heap: mallopt({option}, {value}) failed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-heap", action="store_true", help="glibc keeps freed memory")
    args = p.parse_args()
    if args.keep_heap:
        keep_heap()
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    heap = "; glibc keeps freed memory" if args.keep_heap else ""
    print(f"load average before: {os.getloadavg()[0]:.1f}; {args.threads} thread(s){heap}")
    print("\n| preset | ours per step (ms) | diffusers per step (ms) | reference | per-step ratio "
          "(median of rounds) | time in denoiser calls, ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = measure(preset, args.rounds, args.steps, args.batch)
        print(
            f"| {r['preset']} | {r['ours_ms']:.1f} | {r['theirs_ms']:.1f} | `{r['reference']}` "
            f"| {r['ratio']:.2f} | {r['call_ratio']:.2f} |",
            flush=True,
        )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
