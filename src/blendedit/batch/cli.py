"""``blendedit batch``: every row of a manifest edited into one folder, locally or on Ray."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from blendedit.errors import InputError
from blendedit.models import DTYPES

EXAMPLES = """\
examples:
  blendedit batch edits.jsonl --out catalogue-edits --num-images 4 --keep 1
  blendedit batch edits.csv --out /shared/run1 --engine ray --ray-address auto --workers 8
  RAY_ADDRESS=head:6379 blendedit batch edits.jsonl --out /nfs/run1 --engine ray

A manifest row (JSONL; CSV takes the same keys as columns):
  {"image": "shoes/12.jpg", "mask": "shoes/12.mask.png", "prompt": "red suede", "seed": 3}
Keys: image, mask, prompt (may be empty), id (folder name), method, model, model_config,
clip_model, and any edit setting by field or flag name (num_images, steps, guidance, ...). Rows
override the command line. Run again with the same arguments to resume: rows already done are
skipped, failed rows retried. Outputs: one folder per row (ranked images + result.json),
summary.jsonl (log), summary.json and summary.md.
"""


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE like steps=30, got {text!r}")
    return key.strip().replace("-", "_"), value


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--engine and the Ray options (shared by ``batch`` and ``eval``)."""
    e = p.add_argument_group("engine")
    e.add_argument("--engine", choices=["local", "ray"], default="local", help="default local")
    e.add_argument(
        "--ray-address",
        help="Ray cluster (host:6379, ray://host:10001, auto); default: RAY_ADDRESS, else a new "
        "local cluster",
    )
    e.add_argument(
        "--workers", type=int, help="ray: editors in parallel (default: cluster GPUs / per worker)"
    )
    e.add_argument(
        "--gpus-per-worker",
        type=float,
        help="ray: GPUs per editor, fractions share a GPU (default 1 with GPUs, else 0)",
    )
    e.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per editor (default 1)"
    )
    e.add_argument(
        "--worker-start-timeout",
        type=float,
        default=600.0,
        help="ray: seconds the workers may take to start before the run stops (default 600)",
    )


def ray_options(args: argparse.Namespace) -> Any:
    """The Ray options of :func:`add_engine_arguments`; refused without --engine ray."""
    from blendedit.batch.run import RayOptions

    if args.engine == "local":
        for flag in ("ray_address", "workers", "gpus_per_worker"):
            if getattr(args, flag) is not None:
                raise InputError(f"{flag}: --{flag.replace('_', '-')} needs --engine ray")
    return RayOptions(
        address=args.ray_address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        actor_wait_s=args.worker_start_timeout,
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "batch",
        help="edit every row of a JSONL/CSV manifest (here or on a Ray cluster), resumable",
        description=(
            "Edits many photos from a manifest, one row per edit, into one folder: a subfolder "
            "per row, written once (result.json last), summary.jsonl as rows finish, "
            "summary.json/.md at the end. A failed row (unreadable image, empty mask, missing "
            "file) is recorded and the run goes on. --engine ray spreads the rows over a Ray "
            "cluster, one editor per worker."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", help="JSONL or CSV, one row per edit")
    p.add_argument("--out", required=True, help="run folder: new, or an earlier run to resume")
    add_engine_arguments(p)
    g = p.add_argument_group("shared settings (rows override them)")
    g.add_argument("--method", choices=["latent", "pixel", "local-clip"], default="latent")
    g.add_argument("--model", help="latent: hub id / folder / file; pixel: the ADM checkpoint")
    g.add_argument("--model-config", help="configs for a single-file checkpoint (see edit)")
    g.add_argument("--clip-model", help="CLIP for ranking (default: blendedit's)")
    g.add_argument("--preset", default="default", help="named settings, as for edit")
    g.add_argument("--num-images", type=int, dest="num_images", help="candidates per row")
    g.add_argument("--keep", type=int, help="keep only the top K per row")
    g.add_argument("--seed", type=int, help="seed of each row's first candidate")
    g.add_argument("--steps", type=int, dest="num_inference_steps", help="schedule length")
    g.add_argument("--size", type=int, help="working long side in px")
    g.add_argument("--batch-size", type=int, dest="batch_size", help="candidates per model call")
    g.add_argument("--no-rank", action="store_const", const=False, dest="rank", help="no CLIP")
    g.add_argument(
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
    o.add_argument("--device", default="auto", help="each worker's device (auto: its GPU if any)")
    o.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: fp16 on CUDA")
    o.add_argument("--threads", type=int, help="torch CPU threads per worker")
    o.add_argument("--offline", action="store_true", help="never reach the hub (HF_HUB_OFFLINE)")
    o.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(run=run)


def shared_from_args(args: argparse.Namespace) -> Any:
    from blendedit.batch.manifest import ALIASES, SETTING_FIELDS, Shared, _coerce

    settings: dict[str, Any] = {}
    for k in ("num_images", "keep", "seed", "num_inference_steps", "size", "batch_size", "rank"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    for key, value in args.set:
        name = ALIASES.get(key, key)
        if name not in SETTING_FIELDS:
            raise InputError(f"set: unknown setting {key!r}")
        settings[name] = _coerce(name, value, "set")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"quality: {args.quality!r} must be between 1 and 100")
    return Shared(
        method=args.method,
        model=args.model,
        model_config=args.model_config,
        clip_model=args.clip_model,
        preset=args.preset,
        settings=settings,
        out_format=args.out_format,
        quality=args.quality,
        metadata=not args.no_metadata,
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
