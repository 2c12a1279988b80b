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
from blendedit.errors import InputError, scrub_paths
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.models import DEFAULT_MODEL, DTYPES
from blendedit.options import (
    OPTIONS,
    ModelOptions,
    add_model_arguments,
    add_setting_arguments,
    command,
    is_loopback,
)
from blendedit.web.picker import ModelChoice, ModelChoices
from blendedit.web.settings import LoraChoices, ServeOptions

SERVE_EXAMPLES = """\
examples:
  blendedit serve                                   # Stable Diffusion 2.1-base, http://127.0.0.1:7860/
  blendedit serve --model ./my-sd15-folder --port 8080
  blendedit serve --method pixel --model 256x256_diffusion_uncond.pt
  blendedit serve --host 0.0.0.0                    # reachable from your network: no login!
  blendedit serve --model ./sdxl-folder --model ./z-image-turbo   # the page's picker switches
  blendedit serve --models-dir ./models             # every diffusers folder / checkpoint in it

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
    "segmenter", "models_dir",
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
        p, SERVE_OPTIONS + LOCAL_OPTIONS, repeat=("model",),
        helps={
            "model": OPTIONS["model"].help + "; repeat it for the page's model picker (the first "
            "is loaded at start, another when chosen; --vae and --lora go with the first)",
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
    "Starts a local web app over blendedit and prints its URL. One model is loaded at start "
    "(with several --model or a --models-dir, the page's picker loads another in its place); "
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


def model_choices(opts: ModelOptions) -> ModelChoices:
    """The models the page offers: the --model ones (the first loaded at start) and those of
    --models-dir, each checked at start with its family detected; one model alone as given,
    checked as it loads (no picker)."""
    default = DEFAULT_MODEL if opts.method == "latent" else ""
    models = list(opts.models) or ([opts.model] if opts.model else [])
    if len(models) <= 1 and opts.models_dir is None:
        name = models[0] if models else (default or None)
        return ModelChoices((ModelChoice(name, scrub_paths(name or "")),))
    return ModelChoices.from_options(
        models, opts.models_dir, method=opts.method, default=default, offline=opts.offline
    )


def run_serve(args: argparse.Namespace) -> int:
    options = _serve_options(args)
    loras = LoraChoices.from_options(args.loras or (), args.lora_dir)
    if loras.sources and args.method != "latent":
        raise InputError(f"lora: LoRAs apply to the latent method, not {args.method}")
    clip = args.clip_model or DEFAULT_CLIP_MODEL
    model_options = ModelOptions.from_args(args)
    models = model_choices(model_options)
    for line in models.skipped:
        _say(args, line)
    first = models.choices[0]

    def load_model(choice: ModelChoice) -> Any:  # --vae and --lora go with the first model
        with_first = choice == first
        return model_options.load(
            lambda m: _say(args, m), model=choice.source, clip_model=clip,
            loras=model_options.loras if with_first else (),
            vae=model_options.vae if with_first else None,
        )  # fmt: skip

    editor = load_model(first)
    _say(args, "starting the web app ...")
    from blendedit.options import load_segmenter_for
    from blendedit.segment import Selection
    from blendedit.web.app import EditorApp
    from blendedit.web.selecting import Selector

    def load(name: str) -> Any:
        return load_segmenter_for(
            dataclasses.replace(model_options, segmenter=name), Selection(), lambda m: _say(args, m)
        )

    app = EditorApp(
        editor,
        model_info={
            "method": args.method,
            "name": first.source or (DEFAULT_MODEL if args.method == "latent" else ""),
            "model_config": args.model_config,
            "clip_model": clip,
            **({"vae": args.vae} if args.vae else {}),
        },
        options=options,
        loras=loras,
        selector=Selector(args.segmenter, load),
        models=models,
        load_model=load_model,
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
    from blendedit.web.session import (
        mask_to_image,
        parse_trail,
        pixels_sha256,
        replay,
        trail_models,
    )

    trail = parse_trail(args.trail)
    check_out_dir(args.out)
    if not trail.steps:
        _say(args, "the trail has no steps; writing the original only")
    methods = {s.method for s in trail.steps}
    if len(methods) > 1 and "latent" in methods:
        raise InputError("trail: mixes latent and pixel steps; replay needs one model")
    method = next(iter(methods), "latent")
    recorded = trail.model
    models = trail_models(trail)
    if len(models) > 1 and args.model:
        raise InputError(
            f"model: the trail's steps ran on {len(models)} models "
            f"({', '.join(scrub_paths(m) for m in models)}); replay "
            "loads each for its steps, so it takes no --model"
        )
    model = args.model or recorded.get("name") or None
    dtype = args.dtype
    if dtype == "auto" and recorded.get("dtype") in DTYPES:
        dtype = recorded["dtype"]
    if method == "latent":
        clip = None  # ranking does not change pixels: no need to load CLIP
    else:
        clip = args.clip_model or recorded.get("clip_model") or DEFAULT_CLIP_MODEL
    editor = None
    if len(models) > 1:  # the page's picker switched models: each step's own, one at a time
        editor_for = StepEditors(ModelOptions.from_args(args), lambda m: _say(args, m), {
            "method": method, "clip_model": clip, "dtype": dtype,
            "model_config": args.model_config or recorded.get("model_config"),
        }, recorded)  # fmt: skip
    elif trail.steps:
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
    elif len(models) > 1:
        replay(
            trail, None, progress=not args.quiet, on_step=on_step, keep=False, editor_for=editor_for
        )
    print(out)
    if differ and args.strict:
        print(
            f"blendedit: error: step(s) {', '.join(map(str, differ))} differ from the recording",
            file=sys.stderr,
        )
        return 1
    return 0


class StepEditors:
    """The editor of each step of a trail whose steps ran on several models (the page's model
    picker): each step's recorded model, loaded when its steps come, the previous one let go
    first (one model in memory). ``loading``: the load options every model shares."""

    def __init__(
        self,
        options: ModelOptions,
        say: Any,
        loading: dict[str, Any],
        recorded: dict[str, Any],
    ) -> None:
        self.options, self.say, self.loading, self.recorded = options, say, loading, recorded
        self.name: str | None = None
        self.editor: Any = None

    def __call__(self, step: Any) -> Any:
        name = step.model or self.recorded.get("name")
        if self.editor is None or name != self.name:
            from blendedit.web.picker import release

            self.editor, self.name = None, name
            release()
            vae = step.meta.get("vae") if self.loading["method"] == "latent" else None
            self.editor = self.options.load(self.say, model=name, vae=vae, **self.loading)
        return self.editor


__all__ = ["add_parser", "is_loopback", "run", "run_replay", "run_serve"]
