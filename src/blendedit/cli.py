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
from blendedit.config import (
    BACKGROUND_MODES,
    BLEND_RULES,
    MASK_SHRINK_MODES,
    PRESET_HELP,
    PRESETS,
    REGION_MODES,
    EditConfig,
    preset_on,
)
from blendedit.editors import load_editor, loading_line, place
from blendedit.errors import BlendEditError, InputError
from blendedit.frame.photo import OUTPUT_FORMATS
from blendedit.frame.ranking import DEFAULT_CLIP_MODEL
from blendedit.models import DEFAULT_MODEL, DTYPES, SCHEDULERS, quiet_libraries
from blendedit.pixel.pipeline import PIXEL_PRESETS, PixelConfig, pixel_preset
from blendedit.pixel.pipeline import default_preset as default_pixel_preset

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


def _kernels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated odd sizes like 7,5,3, got {text!r}"
        ) from None


METHODS = ("latent", "pixel", "local-clip")

# Modules that add a subcommand: each has add_parser(subparsers), which registers its parser with
# set_defaults(run=function), and run(args) -> exit status. Kept apart so this file stays thin.
COMMAND_MODULES: list[str] = [
    "blendedit.bench",
    "blendedit.eval.cli",
    "blendedit.web.cli",
    "blendedit.batch.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blendedit",
        description="Edit a region of a real photo from a text prompt (Blended Latent Diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"blendedit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    e = sub.add_parser(
        "edit",
        help="edit the masked region of a photo; writes ranked results",
        description=(
            "Blended Latent Diffusion (Avrahami et al. 2023): denoise inside the mask with a "
            "text-to-image latent diffusion model while the noised photo is blended back outside "
            "it at every step. Generates several candidates, ranks them by CLIP similarity of the "
            "masked result to the prompt, and keeps the photo's own pixels outside the mask."
        ),
        epilog=EDIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _edit_arguments(e)

    c = sub.add_parser(
        "compare-backgrounds",
        help="one edit, every background mode side by side (paper fig. 4), with metrics",
        description=(
            "Runs one edit (the first seed) and reconstructs its background with each mode: "
            "decoded, stitch, poisson, latent, decoder. Writes comparison.png (full images and "
            "zooms on the mask border) and comparison.md (background PSNR, SSIM, MSE, seam score "
            "and time per mode) into --out. Takes the same options as edit."
        ),
    )
    _edit_arguments(c)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def _edit_arguments(e: argparse.ArgumentParser) -> None:
    """The options of ``edit`` (shared by ``compare-backgrounds``); each maps onto a field."""
    e.add_argument("image", help="the photo to edit (PNG, JPEG, ...; any size)")
    e.add_argument(
        "--mask",
        required=True,
        help="white = region to edit; any size with the photo's aspect; L, RGB, or RGBA alpha",
    )
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
    g = e.add_argument_group("model")
    g.add_argument(
        "--method",
        default="latent",
        choices=METHODS,
        help=(
            "latent: Blended Latent Diffusion on Stable Diffusion (default); pixel: Blended "
            "Diffusion on OpenAI's ADM with CLIP guidance; local-clip: the local CLIP-guided "
            "diffusion baseline (no blending, background loss)"
        ),
    )
    g.add_argument(
        "--model",
        default=None,
        help=(
            f"latent: hub id, local diffusers folder, or .safetensors file (default: "
            f"{DEFAULT_MODEL}); pixel/local-clip: the ADM checkpoint file "
            "(256x256_diffusion_uncond.pt or .safetensors)"
        ),
    )
    g.add_argument(
        "--model-config",
        help=(
            "latent, single-file checkpoint offline: a local diffusers folder with its configs; "
            "pixel/local-clip: guided-diffusion model settings JSON (default: the official 256 "
            "unconditional settings)"
        ),
    )
    g.add_argument(
        "--vae",
        help="latent: a VAE folder or hub id replacing the model's (e.g. an fp16-safe SDXL VAE)",
    )
    g.add_argument(
        "--lora",
        action="append",
        dest="loras",
        metavar="FILE_OR_ID[:SCALE]",
        help="latent, SD 1.x/2.x and SDXL: apply a LoRA (.safetensors file, folder or hub id) at "
        "SCALE (default 1); repeat for several",
    )
    g.add_argument(
        "--offload",
        choices=["model", "sequential"],
        help="latent, smaller GPUs: keep the weights in CPU memory and move each component "
        "(model) or each layer (sequential, least memory, slowest) to the GPU only while it runs",
    )
    g.add_argument(
        "--no-t5",
        action="store_true",
        dest="no_t5",
        help="latent, SD3/SD3.5: run without the T5-XXL text encoder (4.7B parameters; its "
        "tokens become zeros, as in diffusers), at some cost to prompt following",
    )
    g.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        help=f"CLIP used for ranking (default: {DEFAULT_CLIP_MODEL})",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, mps; auto = CUDA if present, else MPS, else CPU",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="auto = fp16 on a GPU, fp32 on the CPU",
    )
    g.add_argument(
        "--offline",
        action="store_true",
        help="never reach the hub; use local files and the cache only",
    )

    s = e.add_argument_group("sampling (default values come from --preset)")
    s.add_argument(
        "--preset",
        default=None,
        choices=sorted(set(PRESETS) | set(PIXEL_PRESETS)),
        help="named settings; latent: "
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
    s.add_argument(
        "--num-images", type=int, dest="num_images", help="candidates to generate (default 8)"
    )
    s.add_argument(
        "--steps",
        type=int,
        dest="num_inference_steps",
        help="length of the full noise schedule (default 50)",
    )
    s.add_argument(
        "--guidance",
        type=float,
        dest="guidance_scale",
        help="classifier-free guidance scale (default 7.5)",
    )
    s.add_argument(
        "--blend-start",
        type=float,
        dest="blend_start",
        help="fraction of the schedule skipped; 0.25 runs 38 of 50 steps (default 0.25)",
    )
    s.add_argument(
        "--seed",
        type=int,
        help="seed of the first candidate; candidate i uses seed + i (default 0)",
    )
    s.add_argument("--negative-prompt", dest="negative_prompt", help="what to steer away from")
    s.add_argument("--scheduler", choices=list(SCHEDULERS), help="noise scheduler (default ddim)")
    s.add_argument(
        "--blend-rule",
        dest="blend_rule",
        choices=list(BLEND_RULES),
        help="background level: diffusers (t' with fixed noise, clean at the end; default) or "
        "official (the official BLD scripts: t with fresh noise every step)",
    )
    s.add_argument("--eta", type=float, help="DDIM eta: 0 = deterministic (default 0)")
    s.add_argument(
        "--size",
        type=int,
        help="long side of the working resolution in px, rounded to multiples of 8 (default: the model's, 512 for SD 2.1-base)",
    )
    s.add_argument(
        "--batch-size", type=int, dest="batch_size", help="candidates per UNet call (default 8)"
    )

    r = e.add_argument_group("working region (photos of any size)")
    r.add_argument(
        "--region",
        choices=REGION_MODES,
        help=(
            "crop = edit a box around the mask at the model's resolution and paste it back; "
            "full = the whole photo at the model's resolution; auto = crop whenever that gives "
            "the mask more pixels (default)"
        ),
    )
    r.add_argument(
        "--context",
        type=int,
        help="px of context around the mask's box for crop (default: a fifth of its mean side, >= 16)",
    )

    m = e.add_argument_group("mask and background")
    m.add_argument(
        "--soft-mask",
        action="store_const",
        const=True,
        dest="soft_mask",
        help="grey levels of the mask are per-pixel change strengths (default: binarised at 50%%)",
    )
    m.add_argument(
        "--mask-grow", type=int, dest="mask_grow", help="px to grow the mask by (negative: shrink)"
    )
    m.add_argument(
        "--mask-blur",
        type=float,
        dest="mask_blur",
        help="px (Gaussian sigma) to blur the mask by: a softer paste edge",
    )
    m.add_argument(
        "--invert-mask",
        action="store_const",
        const=True,
        dest="invert_mask",
        help="edit everything outside the mask (e.g. replace the background)",
    )
    m.add_argument(
        "--mask-shrink",
        choices=MASK_SHRINK_MODES,
        dest="mask_shrink",
        help="progressive mask shrinking (paper 4.3): auto = only for masks with thin parts (default)",
    )
    m.add_argument(
        "--no-mask-shrink",
        action="store_const",
        const="off",
        dest="mask_shrink",
        help="same as --mask-shrink off",
    )
    m.add_argument(
        "--shrink-kernels",
        type=_kernels,
        dest="shrink_kernels",
        help="dilation kernels of the shrinking stages (default 7,5,3)",
    )
    m.add_argument(
        "--background",
        choices=BACKGROUND_MODES,
        help=(
            "how the photo returns outside the mask (paper 4.2): stitch = its own pixels, "
            "feathered (default); decoded = raw decoder output; poisson = seamless cloning "
            "(colours may shift); latent = latent optimisation (over-smooth); decoder = per-image "
            "decoder fine-tuning (the paper's choice, slowest)"
        ),
    )
    m.add_argument(
        "--feather",
        type=int,
        help="px of soft transition outside the mask for stitch, 0-16 (default 8)",
    )
    m.add_argument(
        "--keep",
        type=int,
        help="return only the top K after ranking; background reconstruction runs on those only",
    )
    m.add_argument(
        "--recon-steps",
        type=int,
        dest="recon_steps",
        help="Adam steps for latent/decoder (default 75)",
    )
    m.add_argument(
        "--recon-lr",
        type=float,
        dest="recon_lr",
        help="learning rate for latent/decoder (default 0.1 latent, 1e-4 decoder)",
    )
    m.add_argument(
        "--recon-lambda",
        type=float,
        dest="recon_lambda",
        help="weight of the background term for latent/decoder (default 100)",
    )
    m.add_argument(
        "--paste-back",
        action="store_const",
        const=True,
        dest="paste_back",
        help="after poisson/latent/decoder, put the photo's own pixels back beyond the feather band",
    )

    p = e.add_argument_group("pixel and local-clip methods (Blended Diffusion, SPEC 2)")
    p.add_argument(
        "--respacing", dest="timestep_respacing", help='respaced steps of 1000 (default "100")'
    )
    p.add_argument(
        "--skip-timesteps",
        type=int,
        dest="skip_timesteps",
        help="steps skipped at the start (default 25)",
    )
    p.add_argument("--sampler", choices=["ddpm", "ddim"], help="default ddpm (official)")
    p.add_argument(
        "--clip-guidance",
        type=float,
        dest="clip_guidance_lambda",
        help="CLIP loss weight (default 1000)",
    )
    p.add_argument(
        "--range-lambda", type=float, dest="range_lambda", help="range loss weight (default 50)"
    )
    p.add_argument(
        "--aug-num", type=int, dest="aug_num", help="augmented copies for the CLIP loss (default 8)"
    )
    p.add_argument(
        "--fit",
        choices=["stretch", "pad"],
        help="non-square photos: stretch to the model's square (official) or pad",
    )
    p.add_argument(
        "--lpips-weights",
        nargs=2,
        metavar=("TRUNK", "LIN"),
        help="local-clip: LPIPS VGG trunk and lin weight files (without them only the L2 term is used)",
    )
    p.add_argument(
        "--lpips-lambda",
        type=float,
        dest="lpips_sim_lambda",
        help="local-clip: LPIPS background loss weight (default 1000)",
    )
    p.add_argument(
        "--l2-lambda",
        type=float,
        dest="l2_sim_lambda",
        help="local-clip: L2 background loss weight (default 10000)",
    )

    o = e.add_argument_group("ranking and output")
    o.add_argument(
        "--no-rank",
        action="store_const",
        const=False,
        dest="rank",
        help="keep generation order; skips loading CLIP",
    )
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


LATENT_FIELDS = set(EditConfig.__dataclass_fields__)
PIXEL_FIELDS = set(PixelConfig.__dataclass_fields__)


def config_from_args(
    args: argparse.Namespace, base: EditConfig | None = None
) -> EditConfig | PixelConfig:
    """The method's preset (on ``base``: the model family's defaults, once it is known),
    overridden by every flag the user gave; a flag of the other method is an error, not silently
    ignored."""
    fields = LATENT_FIELDS if args.method == "latent" else PIXEL_FIELDS
    given = {
        k: v for k, v in vars(args).items() if k in LATENT_FIELDS | PIXEL_FIELDS and v is not None
    }
    for name in given.keys() - fields:
        other = "latent" if name in LATENT_FIELDS else "pixel and local-clip"
        raise InputError(f"{name}: applies to --method {other} only, not {args.method}")
    if args.method == "latent":
        return preset_on(args.preset or "default", base or EditConfig()).replace(**given).validate()
    if args.method == "local-clip":
        given["local"] = True
    name = args.preset or default_pixel_preset(args.model)  # adm512 for a class-conditional ADM
    return pixel_preset(name).replace(**given).validate()


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
    """Check every input before any slow work and before creating any folder, then load the
    models. Returns (config, image, mask, editor)."""
    import os

    from blendedit.frame import photo_mask
    from blendedit.frame.photo import read_photo
    from blendedit.io import check_out_dir
    from blendedit.models import parse_device, parse_dtype

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    quiet_libraries()
    cfg = config_from_args(args)
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"quality: {args.quality!r} must be between 1 and 100")
    image = read_photo(args.image, "image")
    photo_mask(args.mask, image, cfg)  # checked now; the editor reads it again
    mask = args.mask
    if args.out is not None:
        check_out_dir(args.out)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    latent = args.method == "latent"
    editor = load_editor(
        args.method,
        args.model,
        model_config=args.model_config,
        clip_model=args.clip_model if not latent or (cfg.rank if rank is None else rank) else None,
        lpips_weights=args.lpips_weights,
        dtype=dtype,
        vae=args.vae,
        loras=args.loras or (),
        drop_t5=args.no_t5,
        offload=args.offload,
        say=lambda name: _say(args, loading_line(name, dtype, device)),
    )
    if latent:
        cfg = config_from_args(args, editor.default_config())  # the family's own defaults
    return cfg, image, mask, place(editor, device, dtype, args.offload)


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
    report["mask"] = str(Path(args.mask))
    report["clip_model"] = args.clip_model if cfg.rank else None
    report["device"] = str(device)
    report["versions"] = {"blendedit": __version__, "torch": torch.__version__}
    for r, name in zip(report["results"], files, strict=True):
        r["file"] = name
    save_json(report, out / "result.json")
    score = f", CLIP score {best.score:.4f}" if best.score is not None else ""
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
