"""``blendedit api``: the HTTP API (OpenAI's images/edits and a native endpoint) on this machine.

Registered through ``blendedit.cli.COMMAND_MODULES``; FastAPI and uvicorn are imported only when
it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any

from blendedit.api.settings import ApiOptions
from blendedit.config import settings_of
from blendedit.errors import InputError
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.models import DEFAULT_MODEL
from blendedit.options import (
    ModelOptions,
    add_model_arguments,
    add_setting_arguments,
    command,
    engine_group,
    is_loopback,
)

API_OPTIONS = (
    "method", "model", "model_config", "loras", "vae", "clip_model", "lpips_weights", "device",
    "dtype", "offline",
)  # fmt: skip
API_HELP = "an HTTP API for edits that OpenAI's image clients speak (POST /v1/images/edits)"
API_DESCRIPTION = (
    "Loads one model and serves POST /v1/images/edits (OpenAI's images/edits: image, mask whose "
    "transparent pixels are the region, prompt, n, size, response_format), POST "
    "/v1/blendedit/edits (seeds, scores, timings, settings; progress as server-sent events), "
    "GET /v1/models and GET /healthz. One edit runs at a time; more wait in a bounded queue. "
    "With --engine ray, the edits run on Ray Serve replicas (one model load each)."
)
API_EXAMPLES = """\
examples:
  blendedit api                                     # http://127.0.0.1:8000/v1, no key needed
  blendedit api --model ./my-sd15-folder --port 9000 --api-key "$KEY"
  blendedit api --host 0.0.0.0 --api-keys-file keys.txt   # off this machine: keys required

  blendedit api --engine ray --replicas 4           # 4 replicas on Ray Serve, 1 GPU each
  blendedit api --engine ray --min-replicas 1 --max-replicas 8 --gpus-per-replica 0.5

  curl http://127.0.0.1:8000/v1/images/edits -F image=@photo.png -F mask=@mask.png \\
       -F prompt="a red hat" -F n=2
"""


def add_parser(sub: Any) -> None:
    p = command(sub, "api", API_HELP, API_DESCRIPTION, API_EXAMPLES)
    add_model_arguments(p, API_OPTIONS)
    n = add_setting_arguments(p, classes=[ApiOptions], with_defaults=True)["server"]
    n.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only); any other needs API keys",
    )  # fmt: skip
    n.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    n.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY",
        help="a key clients send as 'Authorization: Bearer KEY' (repeatable)",
    )  # fmt: skip
    n.add_argument("--api-keys-file", metavar="FILE", help="keys, one a line (# comments)")
    n.add_argument(
        "--served-model-name", metavar="NAME",
        help="the model's id in /v1/models and the 'model' field (default: the hub id, or a "
        "local model's folder or file name)",
    )  # fmt: skip
    n.add_argument("--quiet", action="store_true", help="print only the URL")
    _add_serve_arguments(p)
    p.set_defaults(run=run)


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """--engine ray's options: the replicas on Ray Serve."""
    e = engine_group(p)
    e.add_argument(
        "--replicas", type=int,
        help="ray: replicas, each with its own model (default: cluster GPUs / per replica; "
        "CPU: 1)",
    )  # fmt: skip
    e.add_argument(
        "--min-replicas", type=int, help="ray: autoscale on queue length, from this many"
    )
    e.add_argument("--max-replicas", type=int, help="ray: autoscale up to this many replicas")
    e.add_argument(
        "--gpus-per-replica", type=float,
        help="ray: GPUs per replica, fractions share a GPU (default 1 with GPUs, else 0)",
    )  # fmt: skip
    e.add_argument(
        "--cpus-per-replica", type=float, default=1.0,
        help="ray: CPUs per replica (default 1)",
    )  # fmt: skip


RAY_ONLY = ("ray_address", "replicas", "min_replicas", "max_replicas", "gpus_per_replica")


def serve_options(args: argparse.Namespace) -> Any:
    """The Ray Serve options of ``--engine ray``; refused without it, in one line."""
    if args.engine == "local":
        for flag in RAY_ONLY:
            if getattr(args, flag) is not None:
                raise InputError(f"{flag}: --{flag.replace('_', '-')} needs --engine ray")
        return None
    from blendedit.api.ray import ServeOptions

    return ServeOptions(
        address=args.ray_address, replicas=args.replicas, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas, gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
    ).check()  # fmt: skip


def make_backend(args: argparse.Namespace, options: ApiOptions, say: Any) -> Any:
    """The backend ``--engine`` names: one editor here, or replicas on Ray Serve."""
    ray = serve_options(args)  # before the (slow) model loading
    model = args.served_model_name or served_name(args.method, args.model)
    models = dataclasses.replace(
        ModelOptions.from_args(args), clip_model=args.clip_model or DEFAULT_CLIP_MODEL
    )
    if ray is not None:
        from blendedit.api.ray import RayBackend

        return RayBackend(models, options, model, ray, say=say)
    from blendedit.api.backend import LocalBackend

    return LocalBackend(models.load(say), options, model)


def read_keys(keys: list[str] | None, keys_file: str | None) -> tuple[str, ...]:
    """The API keys of ``--api-key`` and ``--api-keys-file`` (one a line, # comments)."""
    out = [k.strip() for k in keys or ()]
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(
                f"api-keys-file: cannot read {keys_file!r} ({e.strerror or e})"
            ) from None
        out += [line.strip() for line in text.splitlines()]
        out = [k for k in out if k and not k.startswith("#")]
    for k in out:
        if not k or any(c.isspace() for c in k) or not k.isprintable():
            raise InputError("api-key: a key must be one word of printable characters")
    return tuple(dict.fromkeys(out))


def served_name(method: str, model: str | None) -> str:
    """The model's public id: a hub id as it is, a local model by its file or folder name."""
    name = model or (DEFAULT_MODEL if method == "latent" else method)
    path = Path(name)
    return path.name if path.exists() or path.is_absolute() else name


def api_options(args: argparse.Namespace) -> ApiOptions:
    """The limits and keys the command line gave, checked; keys are required off loopback."""
    if not 0 <= args.port <= 65535:
        raise InputError(f"port: {args.port} must be between 0 and 65535")
    keys = read_keys(args.api_keys, args.api_keys_file)
    if not keys and not is_loopback(args.host):
        raise InputError(
            f"api-key: listening on {args.host} needs --api-key or --api-keys-file (clients "
            "off this machine must send a key)"
        )
    values = {k: getattr(args, k) for k in settings_of(ApiOptions)}
    return ApiOptions(**values, api_keys=keys).check()


def run(args: argparse.Namespace) -> int:
    options = api_options(args)  # before the (slow) model loading

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    backend = make_backend(args, options, say)
    model = backend.model
    import uvicorn

    from blendedit.api.app import create_app

    app = create_app(backend, options)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    host = f"[{args.host}]" if ":" in args.host else args.host

    def announce() -> None:  # the URL once the port is open
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            say(f"serving {model!r}: POST /v1/images/edits (Ctrl+C stops it)")
            print(f"http://{host}:{args.port}/v1", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        backend.close()
    return 0


__all__ = [
    "add_parser", "api_options", "is_loopback", "make_backend", "read_keys", "run",
    "serve_options", "served_name",
]  # fmt: skip
