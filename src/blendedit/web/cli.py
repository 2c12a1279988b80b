"""``blendedit serve`` (the interactive editor) and ``blendedit replay`` (a session trail, again).

Registered through ``blendedit.cli.COMMAND_MODULES``. Gradio is imported only when ``serve`` runs,
so every other command starts as fast as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from typing import Any

from blendedit.config import settings_of
from blendedit.errors import InputError
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.models import DEFAULT_MODEL, DTYPES
from blendedit.options import (
    ModelOptions,
    add_model_arguments,
    add_setting_arguments,
    command,
    is_loopback,
)
from blendedit.web.settings import LoraChoices, ServeOptions

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


SERVE_OPTIONS = (
    "method", "model", "model_config", "loras", "lora_dir", "vae", "clip_model", "lpips_weights",
    "segmenter",
)  # fmt: skip
REPLAY_OPTIONS = ("model", "model_config", "clip_model", "lpips_weights")
LOCAL_OPTIONS = ("device", "dtype", "offline")


def _model_arguments(p: argparse.ArgumentParser, *, for_replay: bool) -> None:
    if for_replay:
        add_model_arguments(
            p, REPLAY_OPTIONS + LOCAL_OPTIONS,
            helps={
                "model": "the trail's model (default: the one recorded in it)",
                "clip_model": "CLIP for pixel guidance (default: the trail's, else "
                f"{DEFAULT_CLIP_MODEL})",
                "dtype": "auto = the trail's dtype (identical pixels need the same one)",
            },
            defaults={"clip_model": None},
        )  # fmt: skip
        return
    add_model_arguments(
        p, SERVE_OPTIONS + LOCAL_OPTIONS,
        helps={
            "method": "latent: Blended Latent Diffusion (default); pixel and local-clip: "
            "Blended Diffusion on an ADM checkpoint (both selectable in the page)",
            "loras": "latent: a LoRA applied from the start (repeatable); the page offers it by "
            "name (with those of --lora-dir) and can take it off",
            "segmenter": "the page's selection panel (clicks, a box, words): hub id or folder of "
            "SAM, CLIPSeg or DETECTOR+SAM, loaded once on first use (default: text "
            "IDEA-Research/grounding-dino-tiny+facebook/sam-vit-base, clicks facebook/sam-vit-base)",
        },
    )  # fmt: skip


SERVE_HELP = (
    "the interactive editor in your browser: paint a mask, see ranked results, keep editing"
)
SERVE_DESCRIPTION = (
    "Starts a local web app over blendedit and prints its URL. One model is loaded at start; "
    "one generation runs at a time (others wait in a visible queue)."
)

REPLAY_HELP = "regenerate every step of an interactive session from its result.json trail"
REPLAY_DESCRIPTION = (
    "Reads a trail downloaded from `blendedit serve` (Download result.json) and redoes "
    "each step from the previous step's regenerated image, with the recorded prompt, mask, "
    "seed and settings. Writes every step's image into --out."
)


def add_parser(sub: Any) -> None:
    s = command(sub, "serve", SERVE_HELP, SERVE_DESCRIPTION, SERVE_EXAMPLES)
    _model_arguments(s, for_replay=False)
    n = add_setting_arguments(s, classes=[ServeOptions], with_defaults=True)["server"]
    n.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 = every interface, "
        "with no login)",
    )
    n.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    n.add_argument("--quiet", action="store_true", help="print only the URL")
    s.set_defaults(run=run)

    r = command(sub, "replay", REPLAY_HELP, REPLAY_DESCRIPTION, REPLAY_EXAMPLES)
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


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    if not 0 <= args.port <= 65535:
        raise InputError(f"port: {args.port} must be between 0 and 65535")
    return ServeOptions(**{k: getattr(args, k) for k in settings_of(ServeOptions)}).check()


def run_serve(args: argparse.Namespace) -> int:
    options = _serve_options(args)
    loras = LoraChoices.from_options(args.loras or (), args.lora_dir)
    if loras.sources and args.method != "latent":
        raise InputError(f"lora: LoRAs apply to the latent method, not {args.method}")
    clip = args.clip_model or DEFAULT_CLIP_MODEL
    editor = ModelOptions.from_args(args).load(lambda m: _say(args, m), clip_model=clip)
    _say(args, "starting the web app ...")
    from blendedit.options import load_segmenter_for
    from blendedit.segment import Selection
    from blendedit.web.app import EditorApp
    from blendedit.web.selecting import Selector

    model_options = ModelOptions.from_args(args)

    def load(name: str) -> Any:
        return load_segmenter_for(
            dataclasses.replace(model_options, segmenter=name), Selection(), lambda m: _say(args, m)
        )

    app = EditorApp(
        editor,
        model_info={
            "method": args.method,
            "name": args.model or (DEFAULT_MODEL if args.method == "latent" else ""),
            "model_config": args.model_config,
            "clip_model": clip,
            **({"vae": args.vae} if args.vae else {}),
        },
        options=options,
        loras=loras,
        selector=Selector(args.segmenter, load),
    )
    if not is_loopback(args.host):  # said even with --quiet
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the "
            "editor and its device (there is no login)",
            file=sys.stderr,
            flush=True,
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
        editor = ModelOptions.from_args(args).load(
            lambda m: _say(args, m),
            method=method,
            model=model,
            model_config=args.model_config or recorded.get("model_config"),
            clip_model=clip,
            dtype=dtype,
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


__all__ = ["add_parser", "is_loopback", "run", "run_replay", "run_serve"]
