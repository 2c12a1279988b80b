"""The ``blendedit`` command: a thin layer over the library. Every bad input is one line, exit 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blendedit._version import __version__
from blendedit.config import GROUPS, PIXEL_PRESETS, PRESET_HELP, PRESETS, EditConfig, SelectConfig
from blendedit.errors import BlendEditError, InputError
from blendedit.frame.judges import members
from blendedit.frame.photo import OUTPUT_FORMATS
from blendedit.methods import METHODS, get_method
from blendedit.models import quiet_libraries
from blendedit.options import (
    ModelOptions,
    add_model_arguments,
    add_setting_arguments,
    command,
    given_settings,
)

EDIT_EXAMPLES = """\
examples:
  blendedit edit examples/chelsea.png --mask examples/chelsea.mask-eyes.png --prompt "sunglasses"
  blendedit edit room.jpg --mask sofa.png --prompt "a red leather sofa" --num-images 24 --keep 4
  blendedit edit beach.png --mask person.png --invert-mask --prompt "a snowy mountain"
  blendedit edit photo.png --mask m.png --prompt "fire" --model ./my-sd15-folder --preset fast

Outputs go to --out (default: a new folder under ./blendedit-out/): one file per result named
by rank and seed (01-seed3.png is the best; the photo's own format, colour profile, bit depth and
EXIF, with the generation parameters and an AI-edit marker), and result.json with the prompt, the
settings and, per result, its seed, rank and CLIP score. To regenerate one result alone, run again with
--seed SEED --num-images 1 and the same settings.
"""


# Modules that add a subcommand: each has add_parser(subparsers), which registers its parser with
# set_defaults(run=function), and run(args) -> exit status. Kept apart so this file stays thin.
COMMAND_MODULES: list[str] = [
    "blendedit.bench.cli",
    "blendedit.eval.cli",
    "blendedit.web.cli",
    "blendedit.batch.cli",
    "blendedit.api.cli",
]


EDIT_HELP = "edit the masked region of a photo; writes ranked results"
EDIT_DESCRIPTION = (
    "Blended Latent Diffusion (Avrahami et al. 2023): denoise inside the mask with a "
    "text-to-image latent diffusion model while the noised photo is blended back outside "
    "it at every step. Generates several candidates, ranks them by CLIP similarity of the "
    "masked result to the prompt, and keeps the photo's own pixels outside the mask."
)

COMPARE_HELP = "one edit, every background mode side by side (paper fig. 4), with metrics"
COMPARE_DESCRIPTION = (
    "Runs one edit (the first seed) and reconstructs its background with each mode: "
    "decoded, stitch, poisson, latent, decoder. Writes comparison.png (full images and "
    "zooms on the mask border) and comparison.md (background PSNR, SSIM, MSE, seam score "
    "and time per mode) into --out. Takes the same options as edit."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blendedit",
        description="Edit a region of a real photo from a text prompt (Blended Latent Diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"blendedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    e = command(sub, "edit", EDIT_HELP, EDIT_DESCRIPTION, EDIT_EXAMPLES)
    _edit_arguments(e)

    c = command(sub, "compare-backgrounds", COMPARE_HELP, COMPARE_DESCRIPTION)
    _edit_arguments(c)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def _edit_arguments(e: argparse.ArgumentParser) -> None:
    """The options of ``edit`` (shared by ``compare-backgrounds``): the inputs, the model options
    (:mod:`blendedit.options`), every setting from its description (:mod:`blendedit.config`),
    and the output's own."""
    e.add_argument("image", help="the photo to edit (PNG, JPEG, ...; any size)")
    e.add_argument(
        "--mask",
        help="white = region to edit; any size with the photo's aspect; L, RGB, or RGBA alpha "
        "(or select it: --mask-from, --mask-point, --mask-box)",
    )
    _select_arguments(e)
    e.add_argument(
        "--prompt",
        required=True,
        help='what the masked region should become; "" fills it from its surroundings (removal;'
        " the results are then not ranked)",
    )
    e.add_argument(
        "--out",
        help="output folder; must be new or empty (default: new folder under ./blendedit-out/)",
    )
    add_model_arguments(e)
    e.add_argument(
        "--preset",
        default=None,
        choices=sorted({name for m in METHODS.values() for name in m.presets}),
        help="named settings (default values of the sampling options); latent: "
        + "; ".join(
            f"{k} ({PRESET_HELP.get(k) or f'{v.scheduler}, {v.num_inference_steps} steps'}, "
            f"{v.num_images} images)"
            for k, v in PRESETS.items()
        )
        + "; pixel: "
        + ", ".join(PIXEL_PRESETS)
        + " (default: default, or adm512 for a class-conditional model such as "
        "512x512_diffusion.pt)",
    )
    groups = add_setting_arguments(e)
    o = groups.get("output") or e.add_argument_group(GROUPS["output"])
    o.add_argument(
        "--save-process",
        choices=["gif", "grid"],
        help="also save the best result's denoising process (one-step clean estimates, paper fig. 6)",
    )
    o.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        dest="out_format",
        help="file format of the results (default: the photo's own if png/jpeg/webp, else png)",
    )
    o.add_argument("--quality", type=int, help="jpeg/webp quality 1-100 (default 95)")
    o.add_argument(
        "--no-metadata",
        action="store_true",
        help="leave the generation parameters out of the files (the AI-edit marker stays)",
    )
    o.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def _select_arguments(e: argparse.ArgumentParser) -> None:
    """The options that select the region by naming it or pointing at it (a segmenter makes the
    mask: :mod:`blendedit.segment`), alone or joined to --mask; their settings from
    :class:`blendedit.config.SelectConfig`."""
    g = e.add_argument_group(GROUPS["select"])
    g.add_argument("--mask-from", metavar="TEXT", help='select what TEXT names: "the red cup"')
    g.add_argument(
        "--mask-point", action="append", default=[], metavar="X,Y",
        help="select the object at pixel X,Y of the photo as shown (repeatable); --mask-point=-X,Y "
        "excludes what is there",
    )  # fmt: skip
    g.add_argument(
        "--mask-neg-point", action="append", default=[], metavar="X,Y",
        help="a negative click: exclude the part at X,Y (repeatable)",
    )  # fmt: skip
    g.add_argument("--mask-box", metavar="X0,Y0,X1,Y1", help="select the object in this box")
    g.add_argument(
        "--save-mask", action="store_true",
        help="also write the mask used (after selection, grow and blur) as mask.png in --out",
    )  # fmt: skip
    add_setting_arguments(e, classes=(SelectConfig,))


def _selection(args: argparse.Namespace) -> Any:
    """The selection the flags give (None: none), checked before any model loads."""
    from blendedit.segment import selection_from

    if not (args.mask_from is not None or args.mask_point or args.mask_neg_point or args.mask_box):
        if args.mask is None:
            raise InputError(
                "mask: give --mask FILE, or select the region: --mask-from TEXT, --mask-point X,Y, "
                "--mask-box X0,Y0,X1,Y1"
            )
        return None
    return selection_from(args.mask_from, args.mask_point, args.mask_neg_point, args.mask_box)


def _select_mask(args: argparse.Namespace, opts: ModelOptions, image: Any, selection: Any) -> Any:
    """The painted mask joined to the selection's (:func:`blendedit.segment.select_mask`)."""
    from blendedit.frame import read_mask
    from blendedit.options import load_segmenter_for, select_config_from_args
    from blendedit.segment import select_mask

    painted = read_mask(args.mask, image) if args.mask is not None else None
    if selection is None:
        return painted
    cfg = select_config_from_args(args)
    segmenter = load_segmenter_for(opts, selection, lambda line: _say(args, line))
    levels = select_mask(segmenter, image, selection, cfg, painted)
    share = float((levels.levels >= 128).mean()) * 100
    _say(args, f"selected {selection.describe()} with {segmenter.name}: {share:.1f}% of the photo")
    return levels


def config_from_args(args: argparse.Namespace, base: EditConfig | None = None) -> Any:
    """The method's preset (on ``base``: the model family's defaults, once it is known),
    overridden by every flag the user gave; a flag of another method is an error, not silently
    ignored."""
    method = get_method(args.method)
    return method.settings(given_settings(args), args.preset, base=base, model=args.model)


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def process_grid(frames: list[Any], columns: int = 8) -> Any:
    from PIL import Image

    w, h = frames[0].size
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, f in enumerate(frames):
        grid.paste(f, ((i % cols) * w, (i // cols) * h))
    return grid


def _prepare(args: argparse.Namespace, rank: bool | None = None) -> tuple[Any, Any, Any, Any]:
    """Check every input before any slow work and before creating any folder (the settings, the
    photo, the mask, read once, and the output folder), then load the models. Returns (config,
    image, mask, editor)."""
    from blendedit.frame import photo_mask
    from blendedit.frame.photo import read_photo
    from blendedit.io import check_out_dir, check_writable

    opts = ModelOptions.from_args(args)
    opts.apply_offline()
    quiet_libraries()
    cfg = config_from_args(args)
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"quality: {args.quality!r} must be between 1 and 100")
    image = read_photo(args.image, "image")
    selection = _selection(args)
    mask = _select_mask(args, opts, image, None)  # the painted mask alone
    if mask is not None:
        photo_mask(mask, image, cfg)  # refused now if empty, full or of another aspect
    if args.out is not None:
        check_out_dir(args.out)  # new or empty, and can be made and written
    else:
        check_writable("blendedit-out")  # where the default folder will be made
    if selection is not None:  # the segmenter runs once every cheap check has passed
        mask = _select_mask(args, opts, image, selection)
        photo_mask(mask, image, cfg)
    ranks = (cfg.rank if rank is None else rank) and "clip" in members(cfg.ranker, cfg.rank_weights)
    clip = ranks or get_method(opts.method).needs_clip
    editor = opts.load(lambda line: _say(args, line), clip_model=opts.clip_model if clip else None)
    if isinstance(cfg, EditConfig):
        cfg = config_from_args(args, editor.default_config())  # the family's own defaults
    return cfg, image, mask, editor


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from blendedit.io import prepare_out_dir, save_gif, save_json, save_png

    # 1-2. Check the inputs, load the models.
    t0 = time.perf_counter()
    cfg, image, mask, editor = _prepare(args)
    load_s = time.perf_counter() - t0
    device = editor.device

    # 3. Edit, then write: the folder is made only now, so a failure above leaves nothing behind.
    result = editor(
        image,
        mask,
        args.prompt,
        config=cfg,
        progress=not args.quiet,
        return_process=args.save_process is not None,
    )
    result.timings.load = load_s
    out = prepare_out_dir(args.out, args.prompt)
    files = result.save(
        out, format=args.out_format, quality=args.quality, metadata=not args.no_metadata
    )
    best = result.best
    stem = files[0].rsplit(".", 1)[0]
    if args.save_process and best.process:
        if args.save_process == "gif":
            save_gif(best.process, out / f"process-{stem}.gif")
        else:
            save_png(process_grid(best.process), out / f"process-{stem}.png")
    report = result.to_dict()
    report["image"] = str(Path(args.image))
    report["mask"] = str(Path(args.mask)) if args.mask is not None else None
    selection = _selection(args)
    if selection is not None:
        from blendedit.segment import default_segmenter

        report["selection"] = selection.to_dict()
        report["segmenter"] = args.segmenter or default_segmenter(selection)
    if args.save_mask:
        from PIL import Image

        from blendedit.frame import photo_mask

        save_png(Image.fromarray(photo_mask(mask, image, cfg)), out / "mask.png")
    report["clip_model"] = args.clip_model if cfg.rank else None
    if cfg.rank and cfg.ranker != "clip":
        judges = getattr(editor, "judges", None)
        report["judge_models"] = None if judges is None else dict(judges.models)
    report["device"] = str(device)
    report["versions"] = {"blendedit": __version__, "torch": torch.__version__}
    for r, name in zip(report["results"], files, strict=True):
        r["file"] = name
    save_json(report, out / "result.json")
    judge = "CLIP" if cfg.ranker == "clip" else cfg.ranker
    score = f", {judge} score {best.score:.4f}" if best.score is not None else ""
    first = "best" if best.score is not None or len(files) == 1 else "not ranked, first"
    _say(
        args,
        f"wrote {len(files)} result(s) to {out}/ ({first}: {files[0]}{score}) in {result.timings.total:.1f} s",
    )
    print(out)
    return 0


def cmd_compare_backgrounds(args: argparse.Namespace) -> int:
    from blendedit.figures import compare_backgrounds, comparison_figure, comparison_table
    from blendedit.io import prepare_out_dir, save_png, write_text

    if args.method != "latent":
        raise InputError(f"method: compare-backgrounds needs --method latent, not {args.method}")
    from blendedit.frame import photo_mask

    cfg, image, mask, editor = _prepare(args, rank=False)
    rows = compare_backgrounds(
        editor, image, mask, args.prompt, config=cfg.replace(num_images=1, rank=False)
    )
    out = prepare_out_dir(args.out, args.prompt)
    shown = photo_mask(mask, image, cfg) >= 128
    save_png(comparison_figure(image.to_pil(), shown, rows), out / "comparison.png")
    for r in rows:
        save_png(r.image, out / f"{r.mode}.png")
    w, h = image.size
    header = (
        f"# Background reconstruction on {Path(args.image).name} ({w}x{h}), prompt {args.prompt!r}\n\n"
        f"Model `{args.model}`, working size {cfg.size or editor.native_size}, seed {cfg.seed}, "
        f"{cfg.num_inference_steps} steps, device {editor.device}.\n\n"
    )
    write_text(header + comparison_table(rows), out / "comparison.md")
    _say(args, comparison_table(rows))
    print(out)
    return 0


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a message comes, not when the handler was made."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    # Subnormal floats make CPU arithmetic (Adam states, tiny activations) up to 30x slower; values
    # below 1e-38 do not change any image. The library leaves this process-wide switch alone.
    torch.set_flush_denormal(True)
    log = logging.getLogger("blendedit")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):  # once per process
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("blendedit: %(message)s"))
        log.addHandler(handler)
    try:
        if args.command == "edit":
            return cmd_edit(args)
        if args.command == "compare-backgrounds":
            return cmd_compare_backgrounds(args)
        return int(args.run(args))  # a command from COMMAND_MODULES
    except BlendEditError as e:
        print(f"blendedit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blendedit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # out of memory and other device failures: one line, not a traceback
        if isinstance(e, torch.OutOfMemoryError):
            print(
                "blendedit: error: out of memory; lower --batch-size or --size, use --dtype fp16, "
                "or --offload model",
                file=sys.stderr,
            )
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
