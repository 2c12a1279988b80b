"""The bench's tables (markdown) and its report: a dated section appended to ``docs/benchmarks.md``
(earlier sections kept) with the rows in its JSON twin."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from blendedit.bench.measure import BenchResult

REPORT_HEADER = "# Benchmarks\n\nWritten by `blendedit bench`.\n"


def table(results: list[BenchResult]) -> str:
    """Markdown table of the runs."""
    head = (
        "| preset | device | dtype | batch | steps | compile | end to end (s) | images/s | per step (ms) "
        "| UNet TFLOP/s | of peak | peak mem (GB) | diffusers (s) | speed-up | per-step ratio | warm-up (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    for r in results:
        name = f"{r.preset} ({r.realtime})" if r.realtime else r.preset
        name += f" +{r.cache}" if r.cache != "none" else ""
        lines.append(
            f"| {name} | {r.device} | {r.dtype} | {r.batch} | {r.steps_run} | {r.compile} | "
            f"{r.total_s:.3f} | {r.images_per_s:.2f} | {r.per_step_ms:.1f} | {r.unet_tflops:.3g} | "
            f"{f(r.peak_fraction and 100 * r.peak_fraction, '.0f')}{'%' if r.peak_fraction else ''} | "
            f"{f(r.peak_memory_gb, '.1f')} | {f(r.diffusers_total_s, '.3f')} | "
            f"{f(r.speedup_vs_diffusers, '.2f')}{'x' if r.speedup_vs_diffusers else ''} | {f(r.per_step_ratio_vs_diffusers, '.3f')} | {r.warmup_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def realtime_line(r: BenchResult) -> str:
    """The realtime figure: warm wall-clock time from the call to the ranked batch."""
    return (
        f"Time to a ranked batch of {r.batch} ({r.preset}, {r.realtime}: {r.scheduler}, "
        f"{r.steps_run} of the schedule's steps, guidance {r.guidance_scale:g}, {r.resolution}x"
        f"{r.resolution}, {r.dtype}, warm, best of the repeats): **{r.total_s:.3f} s** on {r.device}"
    )


def cache_line(r: BenchResult) -> str:
    """The step cache's figure: denoiser calls skipped in the timed edit."""
    return (
        f"Step cache {r.cache} ({r.preset}): {r.cache_skipped} of {r.cache_calls} denoiser calls "
        f"skipped, {r.total_s:.3f} s end to end on {r.device}"
    )


def cache_verdict_table() -> str:
    """Every published bench preset's step-cache verdicts (``Architecture.caches``, issue 24) as
    the markdown table of docs/cache-presets.md."""
    from blendedit.bench.catalogue import ARCHITECTURES

    lines = [
        "| preset | schedule | calls | cache | skipped | skipped call / full | speed-up "
        "| toy-world quality | helps | measured on |",
        "|" + "---|" * 10,
    ]
    for name, arch in ARCHITECTURES.items():
        for v in arch.caches if arch.source else ():
            cost = "-" if v.cost is None else f"{v.cost:.3f}"
            speed = "-" if v.speedup is None else f"{v.speedup:.2f}x"
            helps = {True: "yes", False: "no", None: "faster, quality not measured"}[v.helps]
            helps = "not measured" if v.speedup is None else helps
            helps = "no cache applies" if v.cache == "none" else helps
            quality = {True: "within noise", False: "drops", None: "-"}[v.quality]
            lines.append(
                f"| {name} | {v.schedule} | {v.calls} | {v.cache} | {v.skipped} | {cost} | "
                f"{speed} | {quality} | {helps} | {v.measured} |"
            )
    return "\n".join(lines) + "\n"


def stages_table(results: list[BenchResult]) -> str:
    names = ["encode", "denoise", "decode", "rank", "background"]
    lines = [
        "| preset | device | " + " | ".join(f"{n} (s)" for n in names) + " |",
        "|" + "---|" * (len(names) + 2),
    ]
    for r in results:
        lines.append(
            f"| {r.preset} | {r.device} | "
            + " | ".join(f"{r.stages_s.get(n, 0):.3f}" for n in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


def append_section(path: Path, section: str, header: str = REPORT_HEADER) -> None:
    """``section`` added to the markdown file ``path`` (written with ``header`` if new)."""
    from blendedit.io import write_text

    old = path.read_text() if path.is_file() else header
    write_text(old + section, path, replace=True)


def append_report(results: list[BenchResult], path: Path, command: str) -> None:
    """Add a dated section to ``docs/benchmarks.md`` (earlier sections are kept) and a JSON copy."""
    from blendedit.io import write_text

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (
        f"\n## {stamp}: {results[0].device}\n\n`{command}`; torch {torch.__version__}, random weights.\n\n"
        + table(results)
        + "\nStages of the best end-to-end run:\n\n"
        + stages_table(results)
        + "".join(f"\n{realtime_line(r)}.\n" for r in results if r.realtime)
        + "".join(f"\n{cache_line(r)}.\n" for r in results if r.cache != "none")
        + "".join(f"\n{r.cache_verdict}.\n" for r in results if r.cache_verdict)
    )
    append_section(path, section)
    json_path = path.with_suffix(".json")
    data = json.loads(json_path.read_text()) if json_path.is_file() else []
    data.extend({"time": stamp, "command": command, **asdict(r)} for r in results)
    write_text(json.dumps(data, indent=2) + "\n", json_path, replace=True)
