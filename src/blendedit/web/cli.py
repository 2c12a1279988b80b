"""``blendedit serve`` (the interactive editor) and ``blendedit replay`` (a session trail, again).

Registered through ``blendedit.cli.COMMAND_MODULES``. Gradio is imported only when ``serve`` runs,
so every other command starts as fast as before.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import time
from typing import Any

from blendedit import editors
from blendedit.errors import InputError
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.io import MAX_PIXELS, MAX_SIDE
from blendedit.models import DEFAULT_MODEL, DTYPES
from blendedit.web.canvas import PREVIEW_SIDE

SERVE_EXAMPLES = """\
examples:
  blendedit serve                                   # Stable Diffusion 2.1-base, http://127.0.0.1:7860/
  blendedit serve --model ./my-sd15-folder --port 8080
  blendedit serve --method pixel --model 256x256_diffusion_uncond.pt
  blendedit serve --host 0.0.0.0                    # reachable from your network: no login!

In the browser: upload a photo (full resolution, up to the caps below), paint the region to edit
(translucent brush; an opaque colour scribbles what to draw there), type a prompt (or none: fill
from the surroundings), Generate; click a result and Keep it to go on editing it. Undo/Redo move along the kept steps. "Download result.json" saves
the session's trail; `blendedit replay result.json --out DIR` regenerates every step from it.
"""

REPLAY_EXAMPLES = """\
examples:
  blendedit replay result.json --out replayed/
  blendedit replay result.json --out replayed/ --model ./my-sd15-folder --strict

Writes 00-original.png, then per step NN-mask.png and NN-<prompt>.png, and says whether each
regenerated image is identical to the one kept in the session (it is, on the same kind of device
with the same dtype and versions).
"""


def _model_arguments(p: argparse.ArgumentParser, *, for_replay: bool) -> None:
    g = p.add_argument_group("model")
    if not for_replay:
        g.add_argument(
            "--method",
            default="latent",
            choices=["latent", "pixel", "local-clip"],
            help="latent: Blended Latent Diffusion on Stable Diffusion (default); pixel and "
            "local-clip: Blended Diffusion on an ADM checkpoint (both selectable in the page)",
        )
    g.add_argument(
        "--model",
        default=None,
        help=(
            "the trail's model (default: the one recorded in it)"
            if for_replay
            else f"latent: hub id, local diffusers folder or .safetensors file (default: "
            f"{DEFAULT_MODEL}); pixel: the ADM checkpoint file"
        ),
    )
    g.add_argument(
        "--model-config",
        help="single-file SD checkpoint offline: a diffusers folder with its configs; pixel: "
        "guided-diffusion settings JSON",
    )
    if not for_replay:
        g.add_argument(
            "--lora",
            action="append",
            dest="loras",
            metavar="FILE_OR_ID[:SCALE]",
            help="latent: a LoRA applied from the start (repeatable); the page can change them",
        )
        g.add_argument("--vae", help="latent: a VAE folder or hub id replacing the model's")
    g.add_argument(
        "--clip-model",
        default=None,
        help=f"CLIP for ranking (and pixel guidance) (default: {DEFAULT_CLIP_MODEL})",
    )
    g.add_argument(
        "--lpips-weights",
        nargs=2,
        metavar=("TRUNK", "LIN"),
        help="local-clip: LPIPS VGG trunk and lin weight files",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps; auto = best found")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help=(
            "auto = the trail's dtype (identical pixels need the same one)"
            if for_replay
            else "auto = fp16 on a GPU, fp32 on the CPU"
        ),
    )
    g.add_argument(
        "--offline", action="store_true", help="never reach the hub; local files and cache only"
    )


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "serve",
        help="the interactive editor in your browser: paint a mask, see ranked results, keep editing",
        description=(
            "Starts a local web app over blendedit and prints its URL. One model is loaded at start; "
            "one generation runs at a time (others wait in a visible queue)."
        ),
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(s, for_replay=False)
    n = s.add_argument_group("server")
    n.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 = every interface, "
        "with no login)",
    )
    n.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    n.add_argument(
        "--max-upload-mb",
        type=float,
        default=200.0,
        help="largest uploaded file in MiB (default 200)",
    )
    n.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help=f"longest side of an uploaded photo in px (default {MAX_SIDE}, the library's cap); "
        "results come at its full size",
    )
    n.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_PIXELS / 1e6,
        help=f"most pixels of an uploaded photo, in millions (default {MAX_PIXELS / 1e6:g}, the "
        "library's cap)",
    )
    n.add_argument(
        "--preview-side",
        type=int,
        default=PREVIEW_SIDE,
        help=f"long side in px of the preview the brush paints on (default {PREVIEW_SIDE}); the "
        "painting is mapped back to the full-resolution photo",
    )
    n.add_argument(
        "--max-results", type=int, default=16, help="most results per Generate (default 16)"
    )
    n.add_argument(
        "--max-queue", type=int, default=16, help="most Generate requests waiting (default 16)"
    )
    n.add_argument("--quiet", action="store_true", help="print only the URL")
    s.set_defaults(run=run)

    r = sub.add_parser(
        "replay",
        help="regenerate every step of an interactive session from its result.json trail",
        description=(
            "Reads a trail downloaded from `blendedit serve` (Download result.json) and redoes "
            "each step from the previous step's regenerated image, with the recorded prompt, mask, "
            "seed and settings. Writes every step's image into --out."
        ),
        epilog=REPLAY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("trail", help="the session's result.json")
    r.add_argument("--out", required=True, help="output folder; must be new or empty")
    _model_arguments(r, for_replay=True)
    r.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a regenerated image differs from the recorded one",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    r.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return run_serve(args)
    return run_replay(args)


def _say(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def load_editor(
    method: str,
    model: str | None,
    *,
    model_config: str | None = None,
    clip_model: str | None = DEFAULT_CLIP_MODEL,
    lpips_weights: list[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    offline: bool = False,
    say: Any = None,
    loras: list[str] | None = None,
    vae: str | None = None,
) -> Any:
    """Load the editor for ``method`` onto ``device`` (the same choices as ``blendedit edit``)."""
    from blendedit.models import parse_device, parse_dtype, quiet_libraries

    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_libraries()
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
    editor = editors.load_editor(
        method, model, model_config=model_config, clip_model=clip_model,
        lpips_weights=lpips_weights, dtype=dt, vae=vae, loras=loras or (),
        say=None if say is None else lambda name: say(editors.loading_line(name, dt, dev)),
    )  # fmt: skip
    return editors.place(editor, dev, dt)


def _check_serve_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise InputError(f"port: {args.port} must be between 0 and 65535")
    if not 0 < args.max_upload_mb <= 4096:
        raise InputError(f"max_upload_mb: {args.max_upload_mb} must be in (0, 4096]")
    if not 64 <= args.max_side <= MAX_SIDE:
        raise InputError(f"max_side: {args.max_side} must be between 64 and {MAX_SIDE} px")
    if not 0.01 <= args.max_megapixels <= MAX_PIXELS / 1e6:
        raise InputError(
            f"max_megapixels: {args.max_megapixels} must be between 0.01 and {MAX_PIXELS / 1e6:g}"
        )
    if not 256 <= args.preview_side <= 4096:
        raise InputError(f"preview_side: {args.preview_side} must be between 256 and 4096 px")
    if not 1 <= args.max_results <= 256:
        raise InputError(f"max_results: {args.max_results} must be between 1 and 256")
    if not 1 <= args.max_queue <= 1024:
        raise InputError(f"max_queue: {args.max_queue} must be between 1 and 1024")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    _check_serve_args(args)
    clip = args.clip_model or DEFAULT_CLIP_MODEL
    editor = load_editor(
        args.method,
        args.model,
        model_config=args.model_config,
        clip_model=clip,
        lpips_weights=args.lpips_weights,
        device=args.device,
        dtype=args.dtype,
        offline=args.offline,
        say=lambda m: _say(args, m),
        loras=args.loras,
        vae=args.vae,
    )
    _say(args, "starting the web app ...")
    from blendedit.web.app import EditorApp, ServeOptions

    app = EditorApp(
        editor,
        model_info={
            "method": args.method,
            "name": args.model or (DEFAULT_MODEL if args.method == "latent" else ""),
            "model_config": args.model_config,
            "clip_model": clip,
            **({"vae": args.vae} if args.vae else {}),
        },
        options=ServeOptions(
            max_upload_mb=args.max_upload_mb,
            max_side=args.max_side,
            max_pixels=int(args.max_megapixels * 1e6),
            preview_side=args.preview_side,
            max_results=args.max_results,
            max_queue=args.max_queue,
        ),
    )
    if not is_loopback(args.host):
        _say(
            args,
            f"warning: listening on {args.host}: anyone who can reach this machine can use the "
            "editor and its device (there is no login)",
        )

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        url = app.launch(args.host, args.port)
        _say(args, "the editor is running; open the URL below in a browser (Ctrl+C stops it)")
        print(url, flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        _say(args, "stopping")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.close()


def run_replay(args: argparse.Namespace) -> int:
    from blendedit.frame.photo import save_photo
    from blendedit.io import check_out_dir, prepare_out_dir, save_png, slug
    from blendedit.web.session import mask_to_image, parse_trail, pixels_sha256, replay

    trail = parse_trail(args.trail)
    check_out_dir(args.out)
    if not trail.steps:
        _say(args, "the trail has no steps; writing the original only")
    methods = {s.method for s in trail.steps}
    if len(methods) > 1 and "latent" in methods:
        raise InputError("trail: mixes latent and pixel steps; replay needs one model")
    method = next(iter(methods), "latent")
    recorded = trail.model
    model = args.model or recorded.get("name") or None
    dtype = args.dtype
    if dtype == "auto" and recorded.get("dtype") in DTYPES:
        dtype = recorded["dtype"]
    if method == "latent":
        clip = None  # ranking does not change pixels: no need to load CLIP
    else:
        clip = args.clip_model or recorded.get("clip_model") or DEFAULT_CLIP_MODEL
    editor = None
    if trail.steps:
        editor = load_editor(
            method,
            model,
            model_config=args.model_config or recorded.get("model_config"),
            clip_model=clip,
            lpips_weights=args.lpips_weights,
            device=args.device,
            dtype=dtype,
            offline=args.offline,
            say=lambda m: _say(args, m),
            vae=recorded.get("vae") if method == "latent" else None,
        )
    out = prepare_out_dir(args.out, "replay")
    original = trail.original
    save_photo(original.pixels, original, out / "00-original.png", format="png", marker=False)
    differ = []

    def on_step(i: int, step: Any, photo: Any) -> None:
        save_png(mask_to_image(step.mask), out / f"{i:02d}-mask.png")
        save_photo(photo.pixels, photo, out / f"{i:02d}-{slug(step.prompt)}.png", format="png")
        if step.result_sha256 is None:
            verdict = "no recorded hash to compare with"
        elif pixels_sha256(photo) == step.result_sha256:
            verdict = "identical to the recorded result"
        else:
            verdict = "DIFFERS from the recorded result (other device, dtype or versions?)"
            differ.append(i)
        _say(args, f"step {i}: {step.prompt!r} seed {step.seed}: {verdict}")

    if editor is not None:
        replay(trail, editor, progress=not args.quiet, on_step=on_step, keep=False)
    print(out)
    if differ and args.strict:
        print(
            f"blendedit: error: step(s) {', '.join(map(str, differ))} differ from the recording",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = ["add_parser", "is_loopback", "load_editor", "run", "run_replay", "run_serve"]
