"""``blendedit batch``: every row of a manifest edited into one folder, locally or on Ray."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from blendedit.errors import InputError
from blendedit.options import (
    add_engine_arguments,
    add_model_arguments,
    add_setting_arguments,
    command,
    given_settings,
    ray_options,
)

# The settings ``batch`` takes as flags of its own (any other: --set KEY=VALUE).
SHARED_FLAGS = ("num_images", "keep", "seed", "num_inference_steps", "size", "batch_size", "rank")

EXAMPLES = """\
examples:
  blendedit batch edits.jsonl --out catalogue-edits --num-images 4 --keep 1
  blendedit batch edits.csv --out /shared/run1 --engine ray --ray-address auto --workers 8
  RAY_ADDRESS=head:6379 blendedit batch edits.jsonl --out /nfs/run1 --engine ray

A manifest row (JSONL; CSV takes the same keys as columns):
  {"image": "shoes/12.jpg", "mask": "shoes/12.mask.png", "prompt": "red suede", "seed": 3}
Keys: image, mask, prompt (may be empty), id (folder name), method, model, model_config,
clip_model, and any edit setting by field or flag name (num_images, steps, guidance, ...); or,
instead of a mask file, mask_text "the car", mask_points [[x, y], [x, y, 0]], mask_box
[x0, y0, x1, y1] (and segmenter, mask_combine, ...), the mask used saved beside the results. Rows
override the command line. Run again with the same arguments to resume: rows already done are
skipped, failed rows retried. Outputs: one folder per row (ranked images + result.json),
summary.jsonl (log), summary.json and summary.md.
"""


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE like steps=30, got {text!r}")
    return key.strip().replace("-", "_"), value


BATCH_HELP = "edit every row of a JSONL/CSV manifest (here or on a Ray cluster), resumable"
BATCH_DESCRIPTION = (
    "Edits many photos from a manifest, one row per edit, into one folder: a subfolder "
    "per row, written once (result.json last), summary.jsonl as rows finish, "
    "summary.json/.md at the end. A failed row (unreadable image, empty mask, missing "
    "file) is recorded and the run goes on. --engine ray spreads the rows over a Ray "
    "cluster, one editor per worker."
)


def add_parser(sub: Any) -> None:
    p = command(sub, "batch", BATCH_HELP, BATCH_DESCRIPTION, EXAMPLES)
    p.add_argument("manifest", help="JSONL or CSV, one row per edit")
    p.add_argument("--out", required=True, help="run folder: new, or an earlier run to resume")
    add_engine_arguments(p)
    add_model_arguments(
        p, ("method", "model", "model_config", "clip_model"), title="shared model (rows override it)",
        defaults={"clip_model": None},
        helps={"clip_model": "CLIP for ranking (default: blendedit's)"},
    )  # fmt: skip
    p.add_argument("--preset", default="default", help="named settings, as for edit")
    add_setting_arguments(p, SHARED_FLAGS)
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other edit setting, by field or flag name (repeatable): --set guidance=5",
    )
    o = p.add_argument_group("output and device")
    o.add_argument("--format", dest="out_format", choices=["png", "jpeg", "webp"])
    o.add_argument("--quality", type=int, help="jpeg/webp quality 1-100")
    o.add_argument("--no-metadata", action="store_true", help="no generation parameters in files")
    o.add_argument("--threads", type=int, help="torch CPU threads per worker")
    o.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    add_model_arguments(
        p, ("segmenter",), title=None,
        helps={"segmenter": "the segmenter of rows with mask_text, mask_points or mask_box (a "
               "row's segmenter key overrides it; default: text GroundingDINO-tiny+SAM ViT-B, "
               "clicks SAM ViT-B)"},
    )  # fmt: skip
    add_model_arguments(
        p, ("judge_models",), title=None,
        helps={"judge_models": "a ranking judge's model in every worker (rank=JUDGE rows): "
               "NAME=MODEL as for edit; repeat for several (default: the published models)"},
    )  # fmt: skip
    add_model_arguments(
        p, ("device", "dtype", "offline"), title="each worker's device",
        helps={"device": "each worker's device (auto: its GPU if any)"},
    )  # fmt: skip
    p.set_defaults(run=run)


def shared_from_args(args: argparse.Namespace) -> Any:
    from blendedit.batch.manifest import Shared, _coerce, aliases, setting_hints

    settings = given_settings(args)
    for key, value in args.set:
        name = aliases().get(key, key)
        if name not in setting_hints():
            raise InputError(f"set: unknown setting {key!r}")
        settings[name] = _coerce(name, value, "set")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"quality: {args.quality!r} must be between 1 and 100")
    named = ("method", "model", "model_config", "clip_model", "preset", "out_format", "quality",
             "segmenter")  # fmt: skip
    return Shared(
        **{k: getattr(args, k) for k in named}, settings=settings, metadata=not args.no_metadata
    )


def run(args: argparse.Namespace) -> int:
    from blendedit.batch.run import run_batch
    from blendedit.models import quiet_libraries

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_libraries()
    ray = ray_options(args)
    summary = run_batch(
        args.manifest,
        args.out,
        shared=shared_from_args(args),
        engine=args.engine,
        ray=ray,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        offline=args.offline,
        judge_models=tuple(args.judge_models or ()),
        progress=not args.quiet,
    )
    if not args.quiet:
        last = summary["last_run"]
        print(
            f"blendedit: {summary['rows']} rows: {summary['done']} done, {summary['failed']} "
            f"failed, {summary['pending']} pending (this run: {last['done']} edited in "
            f"{last['seconds']:.1f} s, {last['skipped_done']} already done)",
            file=sys.stderr,
        )
        for e in summary["entries"]:
            if e["status"] == "failed":
                print(
                    f"blendedit: row {e['row']} (line {e['line']}): {e['error']}", file=sys.stderr
                )
    print(os.path.join(args.out, "summary.md"))
    return 1 if summary["failed"] or summary["pending"] else 0
