"""``blendedit bench``: the command line of the bench (``measure``, ``report``, ``photos``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from blendedit.bench.catalogue import ARCHITECTURES
from blendedit.errors import InputError
from blendedit.options import add_model_arguments, command

HELP = "time a ranked batch edit, per stage, next to diffusers' inpaint pipeline"
DESCRIPTION = (
    "Times a ranked batch edit end to end and per stage (encode, denoise, decode, rank, "
    "background) with random weights of a full-size architecture (no download), and the "
    "same work through diffusers' inpaint pipeline of the model's family (SD's, SDXL's; "
    "the LDM's parts in SD's) on the same components. "
    "Prints a table (seconds, images/s, per-step ms, UNet TFLOP/s and share of the device's "
    "dense bf16/fp16 peak, peak memory, ratio to diffusers) and appends it to --report."
)
# run_bench's arguments that are flags of the same name
BENCH_FLAGS = ("batch", "steps", "blend_start", "scheduler", "compile", "repeats", "background")
BENCH_FLAGS += ("keep", "peak_tflops", "realtime")
BENCH_FLAGS += ("cache",)


def add_parser(sub: Any) -> None:
    p = command(sub, "bench", HELP, DESCRIPTION)
    p.add_argument(
        "--preset",
        default="sd2-base",
        choices=list(ARCHITECTURES),
        help="architecture (default sd2-base, 512x512): sd15, sd2-base, sd2 (768x768), sdxl "
        "(1024x1024), ldm-1.45b (the paper's LDM, 256x256, batch 24), sdxl-turbo (512x512), "
        "sd35-medium, sd35-large, flux-dev, flux-schnell (1024x1024); tiny, tiny-sdxl, tiny-ldm, "
        "tiny-sd3, tiny-flux for a CPU",
    )
    add_model_arguments(
        p,
        ("device", "dtype"),
        title=None,
        helps={
            "device": "cuda, cpu, ...; auto = CUDA if present",
            "dtype": "auto = fp16 on a GPU, fp32 on a CPU",
        },
    )
    p.add_argument(
        "--batch",
        type=int,
        help="ranked batch size (default: the preset's; 24, the paper's; sdxl 4, its official "
        "script's)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="full schedule length (default: the family's; 50 SD/SDXL/LDM, 28 SD3/FLUX.1-dev, "
        "4 schnell and --realtime)",
    )
    p.add_argument(
        "--blend-start",
        type=float,
        default=0.25,
        help="fraction skipped (default 0.25: 38 steps run)",
    )
    p.add_argument(
        "--scheduler",
        help="noise scheduler (default: the family's; ddim, flow-euler for SD3/FLUX, the "
        "realtime preset's with --realtime)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="the preset's few-step realtime preset (sdxl-turbo: realtime-sdxl-turbo, "
        "flux-schnell: realtime-schnell) on a ranked batch of 8 unless --batch: reports the warm "
        "time from the call to the ranked results",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet (warm-up reported apart)"
    )
    p.add_argument(
        "--cache", default="none", help="step cache NAME[:VALUE] as `blendedit edit --cache` "
        "(calls skipped reported)",
    )  # fmt: skip
    p.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument(
        "--memory",
        action="store_true",
        help="instead: the memory the preset's weights need in bf16 and in each --quantize mode "
        "(nf4, int8, fp8, gguf), from parameter counts on the meta device; nothing is timed",
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="timed runs; the best is reported (default 2)"
    )
    p.add_argument(
        "--background", default="stitch", help="background mode to time (default stitch)"
    )
    p.add_argument("--keep", type=int, help="reconstruct only the top K")
    p.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak, if not in the built-in table"
    )
    p.add_argument(
        "--photo-sizes",
        help="instead: one edit per photo size in MP (e.g. 0.25,12,24,48), time per stage and "
        "peak memory on the CPU, a ~500x400 px mask (--batch images, --steps steps)",
    )
    p.add_argument(
        "--report",
        default="docs/benchmarks.md",
        help="markdown file to append to (default docs/benchmarks.md)",
    )
    p.set_defaults(run=run)


def run(args: Any) -> int:
    import sys

    from blendedit.bench.measure import run_bench
    from blendedit.bench.report import (
        append_report,
        cache_line,
        realtime_line,
        stages_table,
        table,
    )
    from blendedit.models import parse_device, parse_dtype, quiet_libraries

    quiet_libraries()
    if args.memory:
        from blendedit.bench.memory import memory_table

        print(memory_table(args.preset))
        return 0
    if args.photo_sizes:
        return run_photo_sizes(args)
    dev = parse_device(args.device)
    dtype = parse_dtype(args.dtype, dev)
    result = run_bench(
        args.preset, dev, dtype, channels_last=not args.no_channels_last,
        compare_diffusers=not args.no_diffusers, **{k: getattr(args, k) for k in BENCH_FLAGS},
    )  # fmt: skip
    print(table([result]) + "\n" + stages_table([result]))
    if result.realtime:
        print(realtime_line(result))
    if result.cache != "none":
        print(cache_line(result))
    if result.cache_verdict:
        print(result.cache_verdict)
    append_report([result], Path(args.report), "blendedit " + " ".join(sys.argv[1:]))
    print(f"appended to {args.report}", file=sys.stderr)
    return 0


def run_photo_sizes(args: Any) -> int:
    """``--photo-sizes``: the photo-size table (``blendedit.bench.photos``), appended to --report."""
    import sys

    from blendedit.bench.measure import device_name
    from blendedit.bench.photos import run_sizes
    from blendedit.bench.photos import table as photo_table
    from blendedit.bench.report import append_section

    try:
        sizes = [float(v) for v in args.photo_sizes.split(",")]
    except ValueError:
        raise InputError(
            f"photo-sizes: {args.photo_sizes!r} is not a list like 0.25,12,24"
        ) from None
    batch = ARCHITECTURES[args.preset].batch if args.batch is None else args.batch
    steps = 50 if args.steps is None else args.steps
    rows = run_sizes(sizes, args.preset, batch, steps)
    text = photo_table(rows)
    print(text)
    cmd = "blendedit " + " ".join(sys.argv[1:])
    section = (
        f"\n## Photo size: `{args.preset}` preset, CPU ({device_name(torch.device('cpu'))}), "
        f"{batch} image(s), {steps} steps\n\n`{cmd}`\n\n{text}"
    )
    append_section(Path(args.report), section, header="# Benchmarks\n")
    print(f"appended to {args.report}", file=sys.stderr)
    return 0
