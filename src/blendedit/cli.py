"""The ``blendedit`` command: a thin layer over the library. Every bad input is one line, exit 2."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blendedit import __version__
from blendedit.config import BACKGROUND_MODES, MASK_SHRINK_MODES, PRESETS, EditConfig, preset
from blendedit.errors import BlendEditError
from blendedit.models import DEFAULT_MODEL, DTYPES, SCHEDULERS
from blendedit.ranking import DEFAULT_CLIP_MODEL

EDIT_EXAMPLES = """\
examples:
  blendedit edit examples/chelsea.png --mask examples/chelsea.mask-eyes.png --prompt "sunglasses"
  blendedit edit room.jpg --mask sofa.png --prompt "a red leather sofa" --num-images 24 --keep 4
  blendedit edit beach.png --mask person.png --invert-mask --prompt "a snowy mountain"
  blendedit edit photo.png --mask m.png --prompt "fire" --model ./my-sd15-folder --preset fast

Outputs go to --out (default: a new folder under ./blendedit-out/): one PNG per result named
by rank and seed (01-seed3.png is the best), and result.json with the prompt, the settings and,
per result, its seed, rank and CLIP score. To regenerate one result alone, run again with
--seed SEED --num-images 1 and the same settings.
"""


def _kernels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated odd sizes like 7,5,3, got {text!r}"
        ) from None


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
    e.add_argument("image", help="the photo to edit (PNG, JPEG, ...; any size)")
    e.add_argument(
        "--mask",
        required=True,
        help="white = region to edit; any size with the photo's aspect; L, RGB, or RGBA alpha",
    )
    e.add_argument("--prompt", required=True, help="what the masked region should become")
    e.add_argument(
        "--out",
        help="output folder; must be new or empty (default: new folder under ./blendedit-out/)",
    )
    g = e.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local diffusers folder, or .safetensors file (default: {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--model-config",
        help="for a single-file checkpoint offline: a local diffusers folder with its configs",
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
        default="default",
        choices=list(PRESETS),
        help="named settings: "
        + "; ".join(
            f"{k}: {v.scheduler}, {v.num_inference_steps} steps, {v.num_images} images"
            for k, v in PRESETS.items()
        ),
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
    s.add_argument("--eta", type=float, help="DDIM eta: 0 = deterministic (default 0)")
    s.add_argument(
        "--size",
        type=int,
        help="long side of the working resolution in px, rounded to multiples of 8 (default: the model's, 512 for SD 2.1-base)",
    )
    s.add_argument(
        "--batch-size", type=int, dest="batch_size", help="candidates per UNet call (default 8)"
    )

    m = e.add_argument_group("mask and background")
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
    o.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    return parser


CONFIG_FIELDS = {f for f in EditConfig.__dataclass_fields__}


def config_from_args(args: argparse.Namespace) -> EditConfig:
    given = {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS and v is not None}
    return preset(args.preset).replace(**given).validate()


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _quiet_libraries() -> None:
    """Our own messages and progress bar only; the libraries' chatter would bury them."""
    import warnings

    import diffusers
    import huggingface_hub
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    warnings.filterwarnings("ignore", category=FutureWarning)


def process_grid(frames: list[Any], columns: int = 8) -> Any:
    from PIL import Image

    w, h = frames[0].size
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, f in enumerate(frames):
        grid.paste(f, ((i % cols) * w, (i // cols) * h))
    return grid


def cmd_edit(args: argparse.Namespace) -> int:
    import os

    import torch

    from blendedit.io import (
        check_out_dir,
        load_image,
        open_image,
        prepare_out_dir,
        save_gif,
        save_json,
        save_png,
    )
    from blendedit.latent.pipeline import BlendedLatentDiffusion
    from blendedit.masks import load_mask
    from blendedit.models import parse_device, parse_dtype

    # 1. Check everything the user gave before any slow work and before creating any folder.
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    _quiet_libraries()
    cfg = config_from_args(args)
    image = load_image(args.image, "image")
    mask = load_mask(open_image(args.mask, "mask"), image.size, cfg.invert_mask)
    if args.out is not None:
        check_out_dir(args.out)
    device = parse_device(args.device)
    dtype = parse_dtype(
        ("fp16" if device.type == "cuda" else "fp32") if args.dtype == "auto" else args.dtype
    )

    # 2. Load the models.
    t0 = time.perf_counter()
    _say(args, f"loading {args.model} ({str(dtype).removeprefix('torch.')} on {device}) ...")
    editor = BlendedLatentDiffusion.from_pretrained(
        args.model,
        clip_model=args.clip_model if cfg.rank else None,
        torch_dtype=dtype,
        model_config=args.model_config,
    ).to(device)
    load_s = time.perf_counter() - t0

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
    files = []
    for c in result.candidates:
        name = f"{c.rank:02d}-seed{c.seed}.png"
        save_png(c.image, out / name)
        files.append(name)
    best = result.best
    if args.save_process and best.process:
        if args.save_process == "gif":
            save_gif(best.process, out / f"process-{files[0].removesuffix('.png')}.gif")
        else:
            save_png(process_grid(best.process), out / f"process-{files[0]}")
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
    _say(
        args,
        f"wrote {len(files)} result(s) to {out}/ (best: {files[0]}{score}) in {result.timings.total:.1f} s",
    )
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    # Subnormal floats make CPU arithmetic (Adam states, tiny activations) up to 30x slower; values
    # below 1e-38 do not change any image. The library leaves this process-wide switch alone.
    torch.set_flush_denormal(True)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("blendedit: %(message)s"))
    logging.getLogger("blendedit").addHandler(handler)
    try:
        if args.command == "edit":
            return cmd_edit(args)
        parser.error(f"unknown command {args.command!r}")
    except BlendEditError as e:
        print(f"blendedit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blendedit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # out of memory and other device failures: one line, not a traceback
        if isinstance(e, torch.OutOfMemoryError):
            print(
                "blendedit: error: out of memory; lower --batch-size or --size, or use --dtype fp16",
                file=sys.stderr,
            )
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
